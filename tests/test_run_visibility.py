"""`dermtwin run` at default verbosity says what happens, one line per state change: the
broker lost (with the retry), the broker back, patches connected; `-q` keeps only warnings;
`--log-json` writes one JSON object per line. Real processes: simulate + run + mosquitto."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulation.broker import LocalBroker

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def wait_until(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for "
                                 f"{what() if callable(what) else what}")
        time.sleep(0.1)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_run_shows_broker_loss_retry_and_recovery_by_default(tmp_path):
    broker = LocalBroker()
    broker.start_sync()
    work, db = tmp_path / "sim", tmp_path / "gateway.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "simulate", "--patches", "1", "--workdir",
         str(work), "--fast", "--pair-db", str(db)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log_path = tmp_path / "run.log"
    run = None
    try:
        port = wait_until(lambda: (read_json(work / "hci.json") or {}).get("port"), 30,
                          "the simulator")
        with open(log_path, "w") as log:
            run = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "--db", str(db), "--broker",
                 broker.url, "--hci", f"tcp-client:127.0.0.1:{port}", "--gateway-id", "vis"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

        def lines():
            return log_path.read_text().splitlines()

        def seen(text):
            return [line for line in lines() if text in line]

        wait_until(lambda: seen(": connected"), 60, lambda: f"a patch connected line: {lines()}")
        broker.stop_sync()
        lost = wait_until(lambda: seen("connection lost"), 20,
                          lambda: f"the broker loss: {lines()}")
        assert "retrying" in lost[0] and broker.url in lost[0]
        time.sleep(3)
        broker.start_sync()
        back = wait_until(lambda: seen("connected again after"), 60,
                          lambda: f"the broker recovery: {lines()}")
        assert broker.url in back[0]
        assert len(seen("connection lost")) == 1, "one line per state change"
        assert not seen("Traceback")
    finally:
        for process in (run, sim):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        broker.stop_sync()
    assert run.returncode == 0, lines()


def test_quiet_and_json_logging(tmp_path):
    import logging

    from gateway.log_setup import JsonFormatter, configure
    configure(quiet=True, state_changes=True)
    assert not logging.getLogger("gateway.service").isEnabledFor(logging.INFO)
    configure(state_changes=True)
    assert logging.getLogger("gateway.service").isEnabledFor(logging.INFO)
    assert not logging.getLogger("bleak").isEnabledFor(logging.INFO)
    configure(state_changes=False)
    assert not logging.getLogger("gateway.service").isEnabledFor(logging.INFO)
    record = logging.LogRecord("gateway.service", logging.WARNING, __file__, 1,
                               "broker %s: connection lost", ("mqtt://x",), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "broker mqtt://x: connection lost" and entry["level"] == "WARNING"
    assert entry["logger"] == "gateway.service" and entry["ts"].endswith("Z")
    logging.getLogger().handlers.clear()
    logging.getLogger("gateway").setLevel(logging.NOTSET)
