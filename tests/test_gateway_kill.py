"""The gateway process is SIGKILLed at random points and restarted, while the patches live
on in a simulator process behind an HCI-over-TCP controller: afterwards the store holds every
sample each patch generated exactly once, and no patch holds an acknowledged sample."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway import store as store_mod
from simulation.broker import LocalBroker

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
KILLS = 10


def wait_until(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def gateway_sessions(db: Path) -> int:
    conn = store_mod.connect(db)
    row = conn.execute("SELECT value FROM gateway_meta WHERE name='sess'").fetchone()
    conn.close()
    return 0 if row is None else row[0]


def start_gateway(db: Path, broker: LocalBroker, port: int, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "--db", str(db), "--broker", broker.url,
         "--hci", f"tcp-client:127.0.0.1:{port}", "--gateway-id", "killtest"],
        cwd=REPO, stdout=open(log, "a"), stderr=subprocess.STDOUT)


def test_gateway_killed_ten_times_loses_and_duplicates_nothing(tmp_path):
    rng = random.Random(99)
    broker = LocalBroker()
    broker.start_sync()
    work = tmp_path / "sim"
    db = tmp_path / "gateway.sqlite3"
    sim_log = tmp_path / "sim.log"
    gw_log = tmp_path / "gateway.log"
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "simulate", "--patches", "4", "--workdir",
         str(work), "--fast", "--backlog", "3000", "--pair-db", str(db)],
        cwd=REPO, stdout=open(sim_log, "w"), stderr=subprocess.STDOUT)
    gateway = None
    try:
        port = wait_until(lambda: (read_json(work / "hci.json") or {}).get("port"), 30,
                          "the simulator")
        stored_before_kill = []
        for _ in range(KILLS):
            gateway = start_gateway(db, broker, port, gw_log)
            time.sleep(rng.uniform(1.5, 4.0))
            gateway.send_signal(signal.SIGKILL)
            gateway.wait(10)
            conn = store_mod.connect(db)
            stored_before_kill.append(conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
            conn.close()
        os.kill(sim.pid, signal.SIGUSR1)     # stop sampling: the logs can now drain to empty
        # (a gateway killed before it got going never counted a session: count from here)
        sessions_before = gateway_sessions(db)
        gateway = start_gateway(db, broker, port, gw_log)
        status = wait_until(
            lambda: (s := read_json(work / "patches.json")) and not any(
                p["sampling"] for p in s.values()) and all(
                p["unacked"] == 0 for p in s.values()) and s, 90, "every patch log to drain")
        # The drain may have finished before this gateway was fully up: let it start (its
        # session counter is written at start) before asking it to stop cleanly.
        wait_until(lambda: gateway_sessions(db) == sessions_before + 1, 30,
                   "the last gateway to start")
        time.sleep(1.0)
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(20) == 0, gw_log.read_text()[-3000:]
        gateway = None
    finally:
        if gateway is not None:
            gateway.kill()
        sim.send_signal(signal.SIGTERM)
        sim.wait(20)
        broker.stop_sync()
    assert stored_before_kill[-1] > stored_before_kill[0], stored_before_kill
    store = store_mod.Store(store_mod.connect(db))
    for device_id, patch in status.items():
        assert store.sample_seqs(device_id) == list(range(patch["first_seq"], patch["next_seq"])), \
            device_id
        assert patch["next_seq"] - patch["first_seq"] >= 3000
    store.conn.close()
