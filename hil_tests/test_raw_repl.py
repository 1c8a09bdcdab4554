"""The raw-REPL protocol against the board under test (real or virtual)."""

from __future__ import annotations

import hashlib
import os
import pty
import random
import time
import tty

import pytest
import serial
from board_fixture import SCRATCH_DIR

from gateway.serial_repl import BoardConnectionError, BoardError, RawRepl


def test_fresh_virtual_board_has_an_empty_filesystem(board, board_target):
    if not board_target.virtual:
        pytest.skip("a real board keeps whatever was flashed before")
    assert board.listdir("/") == ["dev", "proc"]  # the VM's devices; no lib/, no data/
    assert board.eval("__import__('os').getcwd()") == "/"
    assert "/lib" in board.eval("__import__('sys').path")


def test_exec_returns_what_the_code_printed(board):
    out = board.exec("for i in range(3):\n    print('line', i)\nprint('°C', end='')\n")
    assert out == "line 0\nline 1\nline 2\n°C"
    assert board.exec("x = 41") == ""


def test_globals_survive_between_execs(board):
    board.exec("counter = 41")
    board.exec("counter += 1")
    assert board.eval("counter") == 42
    assert board.eval("sys.implementation.name if 'sys' in dir() else "
                      "__import__('sys').implementation.name") == "micropython"


def test_exception_surfaces_with_the_board_traceback(board):
    with pytest.raises(BoardError) as caught:
        board.exec("print('before')\ndef f():\n    return 1 / 0\nf()\n")
    error = caught.value
    assert error.stdout == "before\n"
    assert error.exception_line == "ZeroDivisionError: divide by zero"
    assert 'File "<stdin>", line 3, in f' in error.traceback
    assert 'File "<stdin>", line 4, in <module>' in error.traceback
    assert board.port in str(error)
    # The board is still at its prompt.
    assert board.exec("print('after')") == "after\n"


def test_syntax_error_is_a_board_error(board):
    with pytest.raises(BoardError, match="SyntaxError"):
        board.exec("def broken(:\n")
    assert board.eval("1 + 1") == 2


def test_ctrl_c_interrupts_a_running_loop(board):
    board.exec_raw_no_follow(
        "import time\nloops = 0\nwhile True:\n    loops += 1\n    time.sleep_ms(2)\n")
    time.sleep(0.3)  # let it run
    board.interrupt()
    out, err = board.follow(timeout_s=5)
    assert out == ""
    assert err.strip().splitlines()[-1].startswith("KeyboardInterrupt")
    assert board.eval("loops") > 10
    assert board.exec("print('responsive')") == "responsive\n"


def test_enter_stops_a_program_left_running(board_target):
    with RawRepl(board_target.port, timeout_s=5) as first:
        first.exec_raw_no_follow("import time\nwhile True:\n    print('busy')\n    time.sleep_ms(5)\n")
        first.serial.close()  # walk away, as a crashed tool would
    with RawRepl(board_target.port, timeout_s=5) as second:
        assert second.exec("print('hello')") == "hello\n"


def test_large_file_round_trip(board):
    data = random.Random(4).randbytes(40_000) + bytes(range(256))
    progress = []
    path = f"{SCRATCH_DIR}/deep/er/blob.bin"
    assert board.put_file(data, path, progress=lambda done, total: progress.append(done)) == len(data)
    assert progress == sorted(progress) and progress[-1] == len(data)
    assert board.stat_size(path) == len(data)
    assert board.get_file(path) == data
    assert board.eval(f"__import__('os').listdir({SCRATCH_DIR + '/deep/er'!r})") == ["blob.bin"]


def test_paced_raw_repl_without_raw_paste(board_target):
    """The fallback for boards without raw-paste mode: 256-byte writes, 10 ms apart."""
    data = bytes(range(256)) * 12
    with RawRepl(board_target.port, raw_paste=False) as repl:
        assert repl.exec("print(sum(range(10)))") == "45\n"
        repl.put_file(data, f"{SCRATCH_DIR}/paced.bin")
        assert hashlib.sha256(repl.get_file(f"{SCRATCH_DIR}/paced.bin")).digest() == \
            hashlib.sha256(data).digest()
        repl.remove(SCRATCH_DIR, recursive=True)


def test_put_file_from_a_local_path(board, tmp_path):
    local = tmp_path / "hello.txt"
    local.write_text("hello board\n")
    board.put_file(local, f"{SCRATCH_DIR}/hello.txt")
    assert board.exec(f"print(open({SCRATCH_DIR + '/hello.txt'!r}).read(), end='')") == "hello board\n"


def test_listdir_remove_and_missing_files(board):
    board.put_file(b"a", f"{SCRATCH_DIR}/d/a.txt")
    board.put_file(b"bb", f"{SCRATCH_DIR}/d/b.txt")
    assert board.listdir(f"{SCRATCH_DIR}/d") == ["a.txt", "b.txt"]
    assert board.stat_size(f"{SCRATCH_DIR}/d") == -1
    board.remove(f"{SCRATCH_DIR}/d/a.txt")
    assert board.listdir(f"{SCRATCH_DIR}/d") == ["b.txt"]
    assert not board.exists(f"{SCRATCH_DIR}/d/a.txt")
    with pytest.raises(BoardError, match="ENOENT"):
        board.get_file(f"{SCRATCH_DIR}/d/a.txt")
    with pytest.raises(BoardError, match="OSError"):
        board.remove(f"{SCRATCH_DIR}/d")  # not empty
    board.remove(f"{SCRATCH_DIR}/d", recursive=True)
    assert not board.exists(f"{SCRATCH_DIR}/d")


def test_soft_reset_clears_state_and_keeps_files(board):
    board.put_file(b"kept", f"{SCRATCH_DIR}/kept.txt")
    board.exec("forgotten = 1")
    board.soft_reset()
    with pytest.raises(BoardError, match="NameError"):
        board.exec("forgotten")
    assert board.get_file(f"{SCRATCH_DIR}/kept.txt") == b"kept"


def test_missing_port_is_a_clear_error():
    repl = RawRepl("/dev/dermtwin-no-such-port", timeout_s=1)
    with pytest.raises(BoardConnectionError) as caught:
        repl.enter()
    assert "/dev/dermtwin-no-such-port" in str(caught.value)
    assert isinstance(caught.value, serial.SerialException)


def test_silent_port_times_out_naming_the_port():
    master, slave = pty.openpty()  # a "board" that never answers
    tty.setraw(slave)
    port = os.ttyname(slave)
    try:
        started = time.monotonic()
        with pytest.raises(BoardConnectionError) as caught:
            RawRepl(port, timeout_s=0.5).enter()
        assert time.monotonic() - started < 10
        assert port in str(caught.value) and "raw REPL" in str(caught.value)
    finally:
        os.close(slave)
        os.close(master)


@pytest.mark.virtual_only
def test_virtual_board_stops_without_leftovers():
    from virtual_board import VirtualBoard

    vboard = VirtualBoard().start()
    pid, port = vboard.pid, vboard.port
    with RawRepl(port) as repl:
        assert repl.eval("1 + 2") == 3
    vboard.stop()
    vboard.stop()  # idempotent
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not vboard.alive
