"""The technician's path through the CLI, against the virtual board on a pty (the same code
drives /dev/ttyACM0): flash, provision + pair, devices, unpair; clear errors."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from virtual_board import VirtualBoard  # noqa: E402


def dermtwin(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def board():
    with VirtualBoard() as vb:
        yield vb


def test_flash_provision_pair_and_list(board, tmp_path):
    db = tmp_path / "gw.sqlite3"
    flashed = dermtwin("flash", "--port", board.port, "--source")
    assert flashed.returncode == 0, flashed.stderr
    assert f"to {board.port}" in flashed.stdout and "flashed" in flashed.stdout
    # no aioble given to bundle and none on the board: said once, with the ways to fix it
    assert flashed.stderr.count("aioble is not on the board") == 1
    assert "AIOBLE_DIR" in flashed.stderr and "Traceback" not in flashed.stderr
    done = dermtwin("provision", "--port", board.port, "--subject", "s-0042", "--skin-type", "2",
                    "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert "paired" in done.stdout and "s-0042" in done.stdout
    device_id = done.stdout.split("device ")[1].split()[0]
    assert len(device_id) == 16
    listed = dermtwin("devices", "--db", str(db))
    assert device_id in listed.stdout and "skin_type=2" in listed.stdout
    again = dermtwin("provision", "--port", board.port, "--db", str(db), "--subject", "s-0043")
    assert again.returncode == 2 and "--replace-identity" in again.stderr   # refuses to overwrite
    assert "force" not in again.stderr and "Traceback" not in again.stderr
    listed = dermtwin("devices", "--db", str(db))
    assert "s-0043" not in listed.stdout                          # nothing was paired
    moved = dermtwin("provision", "--port", board.port, "--db", str(db), "--subject", "s-0043",
                     "--replace-identity")
    assert moved.returncode == 0, moved.stderr
    device_id = moved.stdout.split("device ")[1].split()[0]
    gone = dermtwin("unpair", "--device-id", device_id, "--db", str(db))
    assert gone.returncode == 0 and device_id in gone.stdout


def test_bad_input_is_refused_naming_the_field(tmp_path):
    bad_id = dermtwin("pair", "--db", str(tmp_path / "db"), "--device-id", "xyz",
                      "--key-file", str(tmp_path / "none"), "--subject", "s-1")
    assert bad_id.returncode == 2 and "--device-id 'xyz'" in bad_id.stderr
    bad_subject = dermtwin("provision", "--port", "/dev/does-not-exist", "--subject", "Jane Doe")
    assert bad_subject.returncode == 2 and "--subject" in bad_subject.stderr
    no_port = dermtwin("provision", "--port", "/dev/does-not-exist")
    assert no_port.returncode != 0 and "/dev/does-not-exist" in no_port.stderr
    bad_broker = dermtwin("run", "--db", str(tmp_path / "db"), "--broker", "http://x")
    assert bad_broker.returncode == 1 and "scheme must be mqtt or mqtts" in bad_broker.stderr


def test_pair_clashes_are_one_line_errors_naming_the_flag(tmp_path):
    db, key = str(tmp_path / "gw.sqlite3"), tmp_path / "k.key"
    key.write_text("ab" * 32 + "\n")
    first = dermtwin("pair", "--db", db, "--device-id", "00000000000000a1", "--key-file",
                     str(key), "--subject", "s-1")
    assert first.returncode == 0, first.stderr
    clash = dermtwin("pair", "--db", db, "--device-id", "00000000000000a2", "--key-file",
                     str(key), "--subject", "s-1")
    assert clash.returncode == 2 and "Traceback" not in clash.stderr
    assert clash.stderr.strip().count("\n") == 0
    assert "subject s-1 is already paired with device 00000000000000a1" in clash.stderr
    assert "--reuse-subject" in clash.stderr
    moved = dermtwin("pair", "--db", db, "--device-id", "00000000000000a1", "--key-file",
                     str(key), "--subject", "s-2")
    assert moved.returncode == 2 and "--reassign" in moved.stderr
    reused = dermtwin("pair", "--db", db, "--device-id", "00000000000000a2", "--key-file",
                      str(key), "--subject", "s-1", "--reuse-subject")
    assert reused.returncode == 0, reused.stderr
    assert ("replaced: subject s-1 was worn with device 00000000000000a1; that device is "
            "unpaired") in reused.stdout
    listed = dermtwin("devices", "--db", db)
    assert "00000000000000a1" not in listed.stdout and "00000000000000a2" in listed.stdout
