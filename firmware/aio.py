# asyncio names the firmware uses, on MicroPython and on CPython (virtual patch).
import asyncio

try:
    sleep_ms = asyncio.sleep_ms
except AttributeError:  # CPython
    async def sleep_ms(ms):
        await asyncio.sleep(ms / 1000)

Event = asyncio.Event
create_task = asyncio.create_task
CancelledError = asyncio.CancelledError
TimeoutError = asyncio.TimeoutError
