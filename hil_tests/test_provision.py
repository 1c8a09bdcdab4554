"""Provisioning (identity file over USB serial) and flashing, against the board under test.

Tests provision into SCRATCH_DIR, never the board's own /data, so a real board keeps its
identity. The firmware reads the identity with firmware.board.parse_identity: these tests
put that module on the board and read the file back through it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from board_fixture import REPO_DIR, SCRATCH_DIR

from gateway.provision import (
    FlashError,
    IdentityExistsError,
    ProvisionError,
    check_mpy_compatible,
    firmware_files,
    flash,
    load_key_file,
    provision,
)
from gateway.serial_repl import RawRepl

DATA_DIR = f"{SCRATCH_DIR}/data"
IDENTITY_PATH = f"{DATA_DIR}/identity"
DEVICE_ID = "0123456789abcdef"
KEY = bytes(range(1, 33))
BOARD_MODULES = ("firmware.board", "firmware.frame_encoder", "firmware.flash_log",
                 "firmware.clock", "sensor_drivers.tmp117")
MPY_CROSS_MAJOR_FILE_VERSION = 6  # what mpy-cross 1.2x writes (.mpy header byte 1)


def put_board_module(repl: RawRepl) -> None:
    """Just enough firmware for parse_identity: /lib/firmware/{__init__,board}.py."""
    for name in ("__init__.py", "board.py"):
        repl.put_file(REPO_DIR / "firmware" / name, f"/lib/firmware/{name}")


def identity_on_board(repl: RawRepl) -> tuple[str, bytes]:
    return repl.eval(
        "__import__('firmware.board').board.parse_identity("
        f"open({IDENTITY_PATH!r}).read())")


def test_provision_writes_an_identity_the_firmware_reads(board):
    put_board_module(board)
    result = provision(board, data_dir=DATA_DIR)
    assert len(result.device_id) == 16 and int(result.device_id, 16) >= 0
    assert len(result.key) == 32 and result.key != bytes(32)
    assert result.identity_path == IDENTITY_PATH and result.port == board.port
    assert not result.replaced
    assert identity_on_board(board) == (result.device_id, result.key)
    # ... and through the firmware's Board, as the patch does at boot.
    assert board.eval(
        "__import__('firmware.board').board.Board('t', (0, 0, 0), "
        f"{DATA_DIR!r}).identity()") == (result.device_id, result.key)
    assert result.key.hex() not in repr(result)  # the key stays out of logs


def test_given_id_and_key_are_written_exactly(board):
    put_board_module(board)
    result = provision(board, DEVICE_ID.upper(), KEY.hex(), data_dir=DATA_DIR)
    assert (result.device_id, result.key) == (DEVICE_ID, KEY)
    assert board.get_file(IDENTITY_PATH) == f"device_id={DEVICE_ID}\nkey={KEY.hex()}\n".encode()
    assert identity_on_board(board) == (DEVICE_ID, KEY)
    assert board.listdir(DATA_DIR) == ["identity"]  # no .part file left behind


def test_refuses_to_overwrite_an_identity_without_the_flag(board):
    provision(board, DEVICE_ID, KEY, data_dir=DATA_DIR)
    before = board.get_file(IDENTITY_PATH)
    with pytest.raises(IdentityExistsError) as caught:
        provision(board, "fedcba9876543210", data_dir=DATA_DIR)
    message = str(caught.value)
    assert DEVICE_ID in message and "--replace-identity" in message and board.port in message
    assert "force" not in message
    assert caught.value.device_id == DEVICE_ID
    assert board.get_file(IDENTITY_PATH) == before
    replaced = provision(board, "fedcba9876543210", data_dir=DATA_DIR, replace_identity=True)
    assert replaced.replaced and replaced.device_id == "fedcba9876543210"
    assert replaced.key != KEY
    put_board_module(board)
    assert identity_on_board(board) == ("fedcba9876543210", replaced.key)


@pytest.mark.parametrize("kwargs, field, fragment", [
    ({"device_id_hex": "0123456789abcde"}, "device_id", "16 hex characters"),
    ({"device_id_hex": "0123456789abcdef0"}, "device_id", "got 17 characters"),
    ({"device_id_hex": "0123456789abcdeg"}, "device_id", "hexadecimal"),
    ({"key": bytes(31)}, "key", "got 31 bytes"),
    ({"key": b"\x01" * 33}, "key", "32 bytes"),
    ({"key": "ab" * 31 + "a"}, "key", "got 63 characters"),
    ({"key": "zz" * 32}, "key", "hexadecimal"),
    ({"key": bytes(32)}, "key", "all zeros"),
])
def test_bad_device_id_or_key_is_refused_naming_the_field(board, kwargs, field, fragment):
    with pytest.raises(ProvisionError) as caught:
        provision(board, data_dir=DATA_DIR, **kwargs)
    assert caught.value.field == field
    assert str(caught.value).startswith(field) and fragment in str(caught.value)
    assert not board.exists(IDENTITY_PATH)


def test_validation_happens_before_touching_the_port():
    with pytest.raises(ProvisionError, match="^device_id"):
        provision("/dev/dermtwin-no-such-port", "abc")


def test_provision_by_port_path(board_target):
    """The CLI path: provision() opens the port itself."""
    result = provision(board_target.port, DEVICE_ID, KEY, data_dir=DATA_DIR)
    with RawRepl(board_target.port) as repl:
        try:
            assert repl.get_file(IDENTITY_PATH).decode().startswith(f"device_id={DEVICE_ID}\n")
        finally:
            repl.remove(SCRATCH_DIR, recursive=True)
    assert result.port == board_target.port


def test_key_file_forms(tmp_path):
    hex_file = tmp_path / "key.hex"
    hex_file.write_text(KEY.hex()[:32] + "\n" + KEY.hex()[32:] + "\n")
    raw_file = tmp_path / "key.bin"
    raw_file.write_bytes(KEY)
    assert load_key_file(hex_file) == KEY == load_key_file(raw_file)
    short = tmp_path / "short.hex"
    short.write_text("abcd\n")
    with pytest.raises(ProvisionError, match="short.hex: key must be"):
        load_key_file(short)


# -- flashing -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def firmware_build(tmp_path_factory) -> Path:
    """A fresh mpy-cross build (tools/build_firmware.py), as the technician makes it."""
    out = tmp_path_factory.mktemp("build") / "firmware"
    # micropython-lib's aioble comes from a local directory at build time; dermtwin ships no
    # aioble source, so this stands in with two tiny modules of our own.
    aioble_root = tmp_path_factory.mktemp("aioble-src")
    (aioble_root / "aioble").mkdir()
    (aioble_root / "aioble" / "__init__.py").write_text("from .core import log_info\n")
    (aioble_root / "aioble" / "core.py").write_text("def log_info(*args):\n    pass\n")
    completed = subprocess.run(
        [sys.executable, str(REPO_DIR / "tools" / "build_firmware.py"), "--out", str(out),
         "--aioble", str(aioble_root)],
        capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return out


def test_flash_copies_the_build_and_the_board_imports_it(board, firmware_build):
    put_board_module(board)
    provision(board, DEVICE_ID, KEY, data_dir=DATA_DIR)
    board.put_file(b"raise ImportError('stale')\n", "/lib/firmware/stale_module.py")
    updates = []
    result = flash(board, firmware_build, progress=updates.append)

    files = firmware_files(firmware_build)
    assert result.files == len(files) and result.board_paths == tuple(p for _, p in files)
    assert result.bytes == sum(local.stat().st_size for local, _ in files)
    finished = [u for u in updates if u.file_finished]
    assert [u.files_done for u in finished] == list(range(1, len(files) + 1))
    assert finished[-1].bytes_done == result.bytes == finished[-1].bytes_total
    assert all(a.bytes_done <= b.bytes_done for a, b in zip(updates, updates[1:], strict=False))

    for local, board_path in files:
        assert board.stat_size(board_path) == local.stat().st_size, board_path
    assert not board.exists("/lib/firmware/stale_module.py")  # old package contents replaced
    assert not board.exists("/lib/sensor_drivers/emulators")  # a patch carries no emulators
    assert identity_on_board(board) == (DEVICE_ID, KEY)  # flashing leaves data alone
    for module in BOARD_MODULES:
        origin = board.eval(f"__import__({module!r}, None, None, ['x']).__file__")
        assert origin == "/lib/" + module.replace(".", "/") + ".mpy"


def test_flash_sources(board):
    result = flash(board, source=True)
    assert result.source
    assert set(result.board_paths) >= {"/main.py", "/lib/firmware/board.py",
                                       "/lib/sensor_drivers/tmp117.py"}
    assert not any("/host/" in path for path in result.board_paths)
    for module in BOARD_MODULES:
        origin = board.eval(f"__import__({module!r}, None, None, ['x']).__file__")
        assert origin == "/lib/" + module.replace(".", "/") + ".py"


def test_flash_with_emulators_for_a_board_without_chips(board):
    result = flash(board, source=True, with_emulators=True)
    assert "/lib/sensor_drivers/emulators/tmp117.py" in result.board_paths
    assert board.eval("__import__('sensor_drivers.emulators.tmp117', None, None, ['x'])"
                      ".__file__") == "/lib/sensor_drivers/emulators/tmp117.py"
    plain = flash(board, source=True)
    assert not any("/emulators/" in path or "environment_model" in path
                   for path in plain.board_paths)
    assert not board.exists("/lib/sensor_drivers/emulators")   # replaced with the package


@pytest.mark.virtual_only
def test_flash_refuses_over_unsent_samples_in_the_old_log_format(board):
    # (the virtual board is fresh per test, so its /data, where the patch keeps its log)
    import struct

    from firmware.flash_format import crc16

    header = struct.pack("<3sBIHIH", b"DTL", 1, 100, 3, 0, 0) * 2      # format 1, first seq 100
    board.put_file(header + bytes(8 * 5), "/data/log/seg_100.log")   # 5 records
    with pytest.raises(FlashError, match="holds 5 samples in an older flash-log format"):
        flash(board, source=True)
    acked = struct.pack("<I", 103)
    board.put_file(acked + struct.pack("<H", crc16(acked, 4)), "/data/log/acked")
    with pytest.raises(FlashError, match="holds 2 samples"):     # 100..102 acknowledged
        flash(board, source=True)
    assert flash(board, source=True, discard_old_log=True).files > 0
    acked = struct.pack("<I", 105)
    board.put_file(acked + struct.pack("<H", crc16(acked, 4)), "/data/log/acked")
    assert flash(board, source=True).files > 0                   # drained: nothing to lose


@pytest.mark.virtual_only
def test_flash_installs_aioble_with_the_firmware(board, firmware_build, tmp_path, monkeypatch):
    """No network at the clinic: the build carries the aioble it was given at build time."""
    result = flash(board, firmware_build)
    assert result.aioble_on_board is True
    for module in ("__init__", "core"):
        assert f"/lib/aioble/{module}.mpy" in result.board_paths
        assert board.exists(f"/lib/aioble/{module}.mpy")   # size and SHA-256 checked by flash
    source_aioble = tmp_path / "aioble-src"
    (source_aioble / "aioble").mkdir(parents=True)
    (source_aioble / "aioble" / "__init__.py").write_text("from .server import x\n")
    (source_aioble / "aioble" / "server.py").write_text("x = 1\n")
    monkeypatch.setenv("AIOBLE_DIR", str(source_aioble))
    sources = flash(board, source=True)
    assert "/lib/aioble/server.py" in sources.board_paths and sources.aioble_on_board
    assert not board.exists("/lib/aioble/core.mpy")          # the package was replaced
    # a build without it (an older build dir) is reported
    old = tmp_path / "old"
    shutil.copytree(firmware_build, old)
    shutil.rmtree(old / "lib" / "aioble")
    board.remove("/lib/aioble", recursive=True)
    assert flash(board, old).aioble_on_board is False


def test_board_reads_what_mpy_cross_writes(board, firmware_build):
    """The compatibility check flash() relies on, against this board's own number."""
    board_mpy = board.eval("__import__('sys').implementation._mpy")
    header = (firmware_build / "lib" / "firmware" / "board.mpy").read_bytes()[:4]
    assert header[1] == MPY_CROSS_MAJOR_FILE_VERSION
    check_mpy_compatible(board_mpy, header)  # does not raise


def test_flash_refuses_an_incompatible_build_before_writing(board, board_target, tmp_path):
    build = tmp_path / "firmware"
    (build / "lib" / "firmware").mkdir(parents=True)
    (build / "main.py").write_text("print('main')\n")
    (build / "lib" / "firmware" / "board.mpy").write_bytes(b"M\x05\x00\x1f" + bytes(20))
    with pytest.raises(FlashError, match="--source") as caught:
        flash(board, build)
    assert "mpy v5" in str(caught.value)
    if board_target.virtual:  # fresh: nothing may have been written
        assert not board.exists("/main.py") and not board.exists("/lib/firmware")


def test_flash_without_a_build_says_how_to_make_one(tmp_path):
    with pytest.raises(FlashError, match="`make firmware`"):
        flash("/dev/dermtwin-no-such-port", tmp_path / "nothing")


def test_flash_shows_a_bar_with_rate_and_eta_on_a_terminal(board):
    import io

    from rich.console import Console

    from gateway.progress_bar import flash_progress

    console = Console(file=io.StringIO(), force_terminal=True, width=100, color_system=None)
    with flash_progress(console) as progress:
        result = flash(board, source=True, progress=progress)
    out = console.file.getvalue()
    assert f"[{result.files}/{result.files}]" in out and "ETA" in out
    assert f"{result.bytes / 1000:.1f} kB" in out or f"{result.bytes / 1000:.0f}" in out
