"""A fleet: 50 virtual patches at 10x the default rates sharing 20 connection slots.

Processes: the simulator (run_simulator, what `dermtwin simulate` runs, here with the 10x
sampling config), `dermtwin run --max-connections 20` and mosquitto. The patches sample for
SAMPLING_S, then stop (SIGUSR1) and the gateway drains every log to empty. Figures:
- the gateway's CPU share (its /proc CPU time over the sampling phase's wall time) against
  the simulator's (50 patches' firmware on CPython + the virtual controllers) in the same
  phase;
- samples stored against samples the patches logged (every seq of every patch, checked).

10x the default rates: skin temperature 1 s, UV 1 s (0.5 s would be 10x; periods are whole
seconds), hydration 6 s, battery 30 s, frames flushed every 6 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from figures import figure, print_table  # noqa: E402
from gateway_procs import REPO, Rig, cpu_s, log_times, read_json, wait_until  # noqa: E402

from gateway import store as store_mod  # noqa: E402
from simulation.broker import LocalBroker  # noqa: E402

TEN_X_CONFIG = {1: 1, 2: 1, 3: 1, 4: 6, 5: 30, 6: 6}   # firmware/protocol_ids.py CFG_* keys


class FleetRig(Rig):
    """The simulator started through run_simulator with the 10x config (the CLI's
    `simulate --fast` only knows 1 s temperature / 1 s flush)."""

    def start_simulator(self, timeout_s: float = 180) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        code = ("import asyncio, json, sys; from pathlib import Path;"
                "from simulation.simulator import run_simulator;"
                "cfg = {int(k): v for k, v in json.loads(sys.argv[3]).items()};"
                "asyncio.run(run_simulator(int(sys.argv[1]), Path(sys.argv[2]),"
                " patch_config=cfg, pair_db=Path(sys.argv[4])))")
        self.sim = subprocess.Popen(
            [sys.executable, "-c", code, str(self.patches), str(self.work / "sim"),
             json.dumps(TEN_X_CONFIG), str(self.db)],
            cwd=REPO, env=env, stdout=open(self.sim_log, "w"), stderr=subprocess.STDOUT)
        self.hci_port = wait_until(
            lambda: self._alive(self.sim) and (read_json(self.work / "sim" / "hci.json")
                                               or {}).get("port"), timeout_s, "the simulator")


def run_fleet(work: Path, broker, patches: int, slots: int, sampling_s: float,
              drain_timeout_s: float) -> dict[str, float]:
    rig = FleetRig(work, broker, patches, run_args=("--max-connections", str(slots)))
    try:
        rig.start_simulator()
        rig.start_gateway()
        gw_pid, sim_pid = rig.gateway.pid, rig.sim.pid
        # The window opens once the gateway serves patches (its start-up is not the fleet's)
        wait_until(lambda: rig.check_alive() and log_times(rig.gw_log, ": connected"), 60,
                   "the gateway to connect a patch", poll_s=0.1)
        t0, gw0, sim0 = time.monotonic(), cpu_s(gw_pid), cpu_s(sim_pid)
        while time.monotonic() - t0 < sampling_s:
            rig.check_alive()
            time.sleep(0.5)
        wall = time.monotonic() - t0
        gw_share = (cpu_s(gw_pid) - gw0) / wall
        sim_share = (cpu_s(sim_pid) - sim0) / wall
        os.kill(sim_pid, signal.SIGUSR1)   # stop sampling; the logs drain to empty
        status = wait_until(
            lambda: rig.check_alive() and (s := rig.patch_status()) and not any(
                p["sampling"] for p in s.values()) and all(
                p["unacked"] == 0 for p in s.values()) and s,
            drain_timeout_s, "every patch log to drain", poll_s=0.2)
        rig.gateway.send_signal(signal.SIGTERM)
        rig.gateway.wait(30)
        store = store_mod.Store(store_mod.connect(rig.db))
        logged = stored = 0
        try:
            for device_id, patch in status.items():
                expected = list(range(patch["first_seq"], patch["next_seq"]))
                seqs = store.sample_seqs(device_id)
                logged += len(expected)
                stored += len(set(seqs) & set(expected))
        finally:
            store.conn.close()
        return {"gateway_share": gw_share, "simulator_share": sim_share,
                "logged": logged, "stored": stored, "wall_s": wall}
    finally:
        rig.close()


def figures() -> dict[str, dict]:
    full = os.environ.get("BENCH_REPEATS") != "1" or os.environ.get("BENCH_FLEET_FULL")
    # The smoke run (BENCH_REPEATS=1 without BENCH_FLEET_FULL) is a small fleet.
    patches, slots, sampling_s = (50, 20, 40.0) if full else (3, 3, 5.0)
    with tempfile.TemporaryDirectory() as tmp, LocalBroker() as broker:
        r = run_fleet(Path(tmp), broker, patches, slots, sampling_s, 240.0)
    setup = (f"{patches} patches at 10x the default rates over {slots} connection slots "
             f"(slot sharing), {r['wall_s']:.0f} s of sampling then a drain to empty; "
             "processes: the simulator, `dermtwin run`, mosquitto")
    return {
        "fleet.gateway_cpu_share": figure(
            r["gateway_share"] * 100, r["simulator_share"] * 100, "% of a core",
            "CPU time of `dermtwin run` (/proc) over the sampling phase's wall time, against "
            "the simulator process's (the patches' side) in the same phase; " + setup,
            better="lower"),
        "fleet.samples_stored": figure(
            r["stored"], r["logged"], "samples",
            "samples stored (each seq checked) against samples the patches logged; " + setup),
    }


def main() -> int:
    print_table(figures())
    return 0


if __name__ == "__main__":
    sys.exit(main())
