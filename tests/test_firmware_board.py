"""Board detection (firmware/board.py): the one place board differences live."""

import pytest

from firmware import board


@pytest.mark.parametrize("platform, machine, name, pins", [
    ("esp32", "Generic ESP32S3 module with ESP32S3", "esp32s3", (0, 9, 8)),
    ("esp32", "ESP32C3 module with ESP32C3", "esp32c3", (0, 7, 6)),
    ("rp2", "Raspberry Pi Pico W with RP2040", "rp2-pico-w", (0, 5, 4)),
    ("rp2", "Raspberry Pi Pico 2 W with RP2350", "rp2-pico-w", (0, 5, 4)),
])
def test_supported_boards_are_recognised(platform, machine, name, pins):
    assert board.board_spec(platform, machine) == (name, pins)


@pytest.mark.parametrize("platform, machine", [
    ("esp32", "ESP32 module with ESP32"),            # classic ESP32: other pins, not ours
    ("rp2", "Raspberry Pi Pico with RP2040"),        # no radio
    ("webassembly", "JS with Emscripten"),
])
def test_other_boards_are_refused(platform, machine):
    assert board.board_spec(platform, machine) is None


def test_detect_names_the_board_it_refuses(micropython):
    out = micropython("""
from firmware import board
try:
    board.detect()
except RuntimeError as e:
    print("refused:", e)
""")
    assert "refused: unsupported board 'JS with Emscripten' (webassembly)" in out
    assert "ESP32-S3, ESP32-C3 and Pico W" in out
