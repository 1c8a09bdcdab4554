"""The operator's commands against the simulator: `scan` over HCI-over-TCP (as a Bumble
dongle would be driven), `status` from the health file a running gateway writes,
`--version`, and every CLI error path we can provoke here printing one line, no traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def dermtwin(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def wait_for_file(path: Path, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            time.sleep(0.2)
    raise AssertionError(f"{path} did not appear within {timeout_s} s")


@pytest.fixture(scope="module")
def simulator(tmp_path_factory):
    work = tmp_path_factory.mktemp("sim")
    db = work / "gateway.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "simulate", "--patches", "2", "--workdir",
         str(work), "--backlog", "120", "--pair-db", str(db)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        port = wait_for_file(work / "hci.json", 60)["port"]
        yield work, db, port
    finally:
        proc.terminate()
        proc.wait(20)


def test_version():
    done = dermtwin("--version")
    assert done.returncode == 0 and done.stdout.startswith("dermtwin ")
    assert done.stdout.split()[1][0].isdigit()


def test_scan_lists_the_virtual_patches_from_their_advertisements(simulator):
    work, db, port = simulator
    registry = json.loads((work / "registry.json").read_text())
    done = dermtwin("scan", "--hci", f"tcp-client:127.0.0.1:{port}", "--duration", "3",
                    "--db", str(db), "--json")
    assert done.returncode == 0, done.stderr
    seen = {s["name"]: s for s in json.loads(done.stdout)}
    for entry in registry:
        name = "DT-" + entry["device_id"][-4:].upper()
        assert name in seen, (name, seen)
        s = seen[name]
        assert s["subject"] == entry["subject"] and s["paired"]
        # not measured yet (255 on the air) is shown as unknown, never as 255 %
        assert (s["battery_pct"] is None or 0 < s["battery_pct"] <= 100)
        assert s["provisioned"] is True
        assert s["backlog"] >= 120                       # preloaded, nobody drained it
        assert isinstance(s["rssi"], int) and s["firmware"].count(".") == 2
    table = dermtwin("scan", "--hci", f"tcp-client:127.0.0.1:{port}", "--duration", "1.5",
                     "--db", str(db))
    assert table.returncode == 0, table.stderr
    assert all(len(line) <= 80 for line in table.stdout.splitlines())
    assert registry[0]["subject"] in table.stdout
    unpaired = dermtwin("scan", "--hci", f"tcp-client:127.0.0.1:{port}", "--duration", "1.5",
                        "--db", str(work / "empty.sqlite3"), "--json")
    assert {s["paired"] for s in json.loads(unpaired.stdout)} == {False}


def test_status_reads_the_health_file_of_a_running_gateway(simulator, tmp_path):
    from simulation.broker import LocalBroker

    work, db, port = simulator
    broker = LocalBroker(data_dir=tmp_path / "mosquitto")
    broker.start_sync()
    # systemd's side of sd_notify: a datagram socket named in NOTIFY_SOCKET
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(30)
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "--db", str(db), "--broker", broker.url,
         "--hci", f"tcp-client:127.0.0.1:{port}", "--gateway-id", "statustest"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    try:
        assert notify.recv(100) == b"READY=1"
        assert notify.recv(100) == b"WATCHDOG=1"
        health_path = db.with_suffix(".health.json")
        deadline = time.monotonic() + 60
        health = {}
        while time.monotonic() < deadline:
            health = wait_for_file(health_path, 60)
            if health["broker"]["connected"] and all(
                    p["last_sample_ms"] for p in health["patches"]):
                break
            time.sleep(1)
        done = dermtwin("status", "--db", str(db))
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert "connected" in out and "outbox" in out and "GiB free" in out and "no alarms" in out
        for entry in json.loads((work / "registry.json").read_text()):
            assert entry["subject"] in out
        assert all(len(line) <= 80 for line in out.splitlines())
        raw = json.loads(dermtwin("status", "--db", str(db), "--json").stdout)
        assert raw["pid"] == gateway.pid and len(raw["patches"]) == 2
        assert "password" not in json.dumps(raw)
    finally:
        gateway.terminate()
        assert gateway.wait(30) == 0
        broker.stop_sync()
        notify.close()
    stale = json.loads(health_path.read_text())
    stale["written_ms"] -= 3_600_000
    health_path.write_text(json.dumps(stale))
    old = dermtwin("status", "--db", str(db))
    assert old.returncode == 1 and "not running or is stuck" in old.stderr
    assert "STALE: values from then" in old.stdout


ERROR_PATHS = [
    # (argv, what the one line must say)
    (["run", "--db", "{tmp}/db", "--broker", "mqtt://127.0.0.1:1"], "BlueZ"),
    (["run", "--db", "{tmp}/db", "--broker", "mqtt://127.0.0.1:1", "--hci", "usb:0"],
     "USB Bluetooth dongle"),
    (["run", "--db", "{tmp}/db", "--broker", "mqtt://127.0.0.1:1", "--hci",
      "tcp-client:127.0.0.1:1"], "start the simulator"),
    (["run", "--db", "{tmp}/db", "--broker", "mqtt://127.0.0.1:1", "--hci",
      "serial:/dev/dermtwin-none"], "dialout"),
    (["scan", "--duration", "1"], "BlueZ"),
    (["scan", "--hci", "usb:0"], "USB Bluetooth dongle"),
    (["status", "--db", "{tmp}/db"], "no health file"),
    (["flash", "--port", "/dev/dermtwin-none", "--build-dir", "{tmp}/none"], "make firmware"),
    (["flash", "--port", "/dev/dermtwin-none", "--source"], "cannot open serial port"),
    (["provision", "--port", "/dev/dermtwin-none"], "cannot open serial port"),
    (["devices", "--db", "{tmp}/notadb"], "not a usable dermtwin database"),
    (["devices", "--db", "{tmp}/nodir/sub/db"], None),
    (["unpair", "--db", "{tmp}/db", "--device-id", "0123456789abcdef"], "not paired"),
    (["pair", "--db", "{tmp}/db", "--device-id", "0123456789abcdef", "--key-file",
      "{tmp}/none", "--subject", "s-1"], "--key-file"),
    (["run", "--db", "{tmp}/db", "--broker", "http://x"], "scheme must be mqtt"),
    (["run", "--db", "{tmp}/db", "--broker", "mqtt://x", "--password-env", "DT_NONE"],
     "DT_NONE"),
    (["run", "--db", "{tmp}/db"], "no broker: give --broker URL"),
    (["run", "--db", "{tmp}/db", "--broker", "mqtts://x", "--ca-file", "{tmp}/none.pem"],
     "no such file"),
    (["--config", "{tmp}/none.toml", "devices"], "no such file (given with --config)"),
    (["simulate", "--backlog", "-1", "--workdir", "{tmp}/sim"], "must not be negative"),
    (["pair", "--db", "{tmp}/db", "--device-id", "0123456789abcdef", "--key-file",
      "{tmp}/short.key", "--subject", "s-1"], "32 bytes"),
    (["pair", "--db", "{tmp}/db", "--device-id", "0123456789abcdef", "--key-file",
      "{tmp}/good.key", "--subject", "Jane Doe"], "pseudonymous"),
    (["provision", "--port", "/dev/dermtwin-none", "--key-file", "{tmp}/short.key"],
     "key must be"),
    (["provision", "--port", "/dev/dermtwin-none", "--device-id", "xyz"], "device_id"),
]


@pytest.mark.parametrize("argv, fragment", ERROR_PATHS, ids=lambda v: " ".join(v)[:40]
                         if isinstance(v, list) else None)
def test_error_paths_print_one_line_and_no_traceback(tmp_path, argv, fragment):
    (tmp_path / "notadb").write_bytes(b"this is not sqlite" * 100)
    (tmp_path / "short.key").write_text("abcd\n")
    (tmp_path / "good.key").write_text("ab" * 32 + "\n")
    done = dermtwin(*[a.replace("{tmp}", str(tmp_path)) for a in argv], timeout=60)
    out = done.stdout + done.stderr
    assert "Traceback" not in out, out
    if fragment is None:
        return
    assert done.returncode != 0, out
    assert fragment in done.stderr, done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
