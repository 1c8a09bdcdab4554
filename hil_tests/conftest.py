"""Hardware-in-the-loop tests: a real board when DERMTWIN_BOARD=/dev/ttyACM0 (or another
port) is set, the virtual board (MicroPython VM on a pty) otherwise. Self-sufficient: it
does not rely on tests/conftest.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HIL_DIR = Path(__file__).resolve().parent
if str(HIL_DIR) not in sys.path:
    sys.path.insert(0, str(HIL_DIR))

from board_fixture import (  # noqa: E402
    BoardUnderTest,
    board_under_test,
    connected_repl,
    real_board_port,
)

from gateway.serial_repl import RawRepl  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hil: talks to a MicroPython board over serial")
    config.addinivalue_line("markers", "virtual_only: needs the virtual board (skipped on hardware)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    virtual = real_board_port() is None
    for item in items:
        if HIL_DIR not in Path(str(item.fspath)).resolve().parents:
            continue
        item.add_marker(pytest.mark.hil)
        if virtual:
            # Runs under the real MicroPython VM, like the tests marked so in tests/.
            item.add_marker(pytest.mark.micropython)
        elif item.get_closest_marker("virtual_only"):
            item.add_marker(pytest.mark.skip(reason="needs the virtual board"))


@pytest.fixture
def board_target() -> BoardUnderTest:
    """Where the board is (port, virtual or real); a fresh virtual board per test."""
    with board_under_test() as target:
        yield target


@pytest.fixture
def board(board_target: BoardUnderTest) -> RawRepl:
    """A RawRepl in the raw REPL of the board under test."""
    with connected_repl(board_target.port) as repl:
        yield repl
