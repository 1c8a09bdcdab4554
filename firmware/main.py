# Device entry point (copied to / as main.py): run the patch on the detected board.
import asyncio

from firmware import app, board

asyncio.run(app.run(board.detect()))
