"""The real processes a bench drives: mosquitto, `dermtwin simulate` (virtual patches behind
an HCI-over-TCP controller) and `dermtwin run` (the gateway), each its own OS process, so the
gateway's CPU time can be read from /proc without the patches' share in it."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


def wait_until(predicate, timeout_s: float, what: str, poll_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def stored(db: Path) -> int:
    """Samples in the gateway's store (a reader beside the gateway's writer: WAL)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_times(path: Path, needle: str | re.Pattern) -> list[float]:
    """Wall-clock times (time.time() scale) of the gateway log lines containing needle."""
    times = []
    for line in path.read_text(errors="replace").splitlines():
        m = LOG_TIME.match(line)
        if m and (needle in line if isinstance(needle, str) else needle.search(line)):
            times.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return times


class Rig:
    """mosquitto + `dermtwin simulate` + `dermtwin run` in a work directory."""

    def __init__(self, work: Path, broker, patches: int, sim_args: tuple[str, ...] = (),
                 run_args: tuple[str, ...] = ()):
        self.work, self.broker = work, broker
        work.mkdir(parents=True, exist_ok=True)
        self.db = work / "gateway.sqlite3"
        self.sim_log, self.gw_log = work / "sim.log", work / "gateway.log"
        self.patches, self.sim_args, self.run_args = patches, sim_args, run_args
        self.sim: subprocess.Popen | None = None
        self.gateway: subprocess.Popen | None = None

    def start_simulator(self, timeout_s: float = 120) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.sim = subprocess.Popen(
            cli("simulate", "--patches", str(self.patches), "--workdir", str(self.work / "sim"),
                "--pair-db", str(self.db), *self.sim_args),
            cwd=REPO, env=env, stdout=open(self.sim_log, "w"), stderr=subprocess.STDOUT)
        self.hci_port = wait_until(
            lambda: self._alive(self.sim) and (read_json(self.work / "sim" / "hci.json")
                                               or {}).get("port"), timeout_s, "the simulator")

    def start_gateway(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.gateway = subprocess.Popen(
            cli("-v", "run", "--db", str(self.db), "--broker", self.broker.url,
                "--hci", f"tcp-client:127.0.0.1:{self.hci_port}", "--gateway-id", "bench",
                *self.run_args),
            cwd=REPO, env=env, stdout=open(self.gw_log, "w"), stderr=subprocess.STDOUT)

    def patch_status(self) -> dict:
        return read_json(self.work / "sim" / "patches.json") or {}

    def _alive(self, proc: subprocess.Popen) -> bool:
        if proc.poll() is not None:
            log = self.sim_log if proc is self.sim else self.gw_log
            raise RuntimeError(f"process exited ({proc.returncode}): "
                               f"{log.read_text(errors='replace')[-2000:]}")
        return True

    def check_alive(self) -> bool:
        for proc in (self.sim, self.gateway):
            if proc is not None:
                self._alive(proc)
        return True

    def close(self) -> None:
        for proc in (self.gateway, self.sim):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
