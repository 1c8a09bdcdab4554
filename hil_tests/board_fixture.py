"""The board under test: a real MicroPython board when DERMTWIN_BOARD names its serial port
(e.g. DERMTWIN_BOARD=/dev/ttyACM0), otherwise a fresh virtual board (tools/virtual_board.py).

Either way the tests talk to it through gateway.serial_repl.RawRepl over pyserial: the
same code path. A real board keeps its files between tests, so tests work under
SCRATCH_DIR and never touch the board's own /data.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
for _path in (REPO_DIR, REPO_DIR / "tools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from virtual_board import VirtualBoard  # noqa: E402

from gateway.serial_repl import RawRepl  # noqa: E402

BOARD_ENV = "DERMTWIN_BOARD"
SCRATCH_DIR = "/hil_scratch"
REPL_TIMEOUT_S = 10.0


def real_board_port() -> str | None:
    return os.environ.get(BOARD_ENV) or None


@dataclass
class BoardUnderTest:
    port: str
    virtual: bool
    vboard: VirtualBoard | None = None


@contextmanager
def board_under_test() -> Iterator[BoardUnderTest]:
    port = real_board_port()
    if port is not None:
        yield BoardUnderTest(port, virtual=False)
        return
    with VirtualBoard() as vboard:
        assert vboard.port is not None
        yield BoardUnderTest(vboard.port, virtual=True, vboard=vboard)


@contextmanager
def connected_repl(port: str) -> Iterator[RawRepl]:
    with RawRepl(port, timeout_s=REPL_TIMEOUT_S) as repl:
        try:
            yield repl
        finally:
            # Leave a real board as we found it (the virtual one is thrown away).
            try:
                if repl.exists(SCRATCH_DIR):
                    repl.remove(SCRATCH_DIR, recursive=True)
            except Exception:  # noqa: BLE001  # cleanup must not hide the test's own error
                pass
