"""A 7-day backlog drained over the virtual link, by the real processes.

`dermtwin simulate --patches 1 --backlog N` (the firmware on CPython, over Bumble's virtual
controllers, behind an HCI-over-TCP controller) and `dermtwin run` (the gateway, its own
process) + mosquitto. The bench watches from outside: the gateway's log ("connected",
"draining a backlog"), its store (samples committed, read beside it in WAL mode) and its CPU
time (/proc/PID/stat).

Figures, each against a baseline from this run:
- drain rate against the 1M and the 2M PHY air limits for the same frames (air_limits(),
  with the bytes per sample measured here by encoding the default-rate backlog);
- gateway CPU per sample drained against the floor of any gateway: decoding and
  authenticating the same number of samples (decode_frame over the backlog's frames);
- drain start: connection → first sample committed, against connection → the session's
  handshake done (status read, REPLAY asked: the protocol's round trips).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_codec import KEY, backlog_samples, frames_for  # noqa: E402
from figures import figure, print_table  # noqa: E402
from gateway_procs import Rig, cpu_s, log_times, stored, wait_until  # noqa: E402

from gateway.protocol.frames import decode_frame  # noqa: E402
from simulation.broker import LocalBroker  # noqa: E402

# Air time of one notification carrying a full frame with LE Data Length Extension: a
# 251-byte LL payload (4 L2CAP + 3 ATT + 244 frame), sent back to back within connection
# events, each answered by an empty PDU (Core spec Vol 6, Part B, 2.1 packet format; 2.4
# T_IFS = 150 µs). 1M PHY: 1 µs per bit, 1-byte preamble; 2M PHY: 0.5 µs, 2-byte preamble.
LL_HEADER_BYTES = 2 + 4 + 3          # PDU header, access address, CRC
T_IFS_US = 150
FRAME_BYTES = 244
LL_PAYLOAD_BYTES = FRAME_BYTES + 4 + 3


DRAIN_DONE = re.compile(r"backlog (\d+)/\1 samples")


def frame_air_us(phy_mbps: int) -> float:
    preamble = phy_mbps                   # bytes
    us_per_byte = 8 / phy_mbps
    data = (preamble + LL_HEADER_BYTES + LL_PAYLOAD_BYTES) * us_per_byte
    empty = (preamble + LL_HEADER_BYTES) * us_per_byte
    return data + T_IFS_US + empty + T_IFS_US


def air_limit_samples_s(phy_mbps: int, bytes_per_sample: float) -> float:
    """Upper bound: every connection event full of back-to-back full frames."""
    return FRAME_BYTES / frame_air_us(phy_mbps) * 1e6 / bytes_per_sample


def decode_cpu_us_per_sample(frames: list[bytes], samples: int) -> float:
    start = time.process_time()
    for f in frames:
        decode_frame(f, KEY)
    return (time.process_time() - start) / samples * 1e6


def drain_once(backlog: int, work: Path, broker: LocalBroker) -> dict[str, float]:
    rig = Rig(work, broker, 1, sim_args=("--backlog", str(backlog)))
    try:
        rig.start_simulator()
        status = wait_until(lambda: rig.patch_status(), 30, "the patch status")
        total = sum(p["unacked"] for p in status.values())
        rig.start_gateway()
        pid = rig.gateway.pid
        first = wait_until(lambda: rig.check_alive() and stored(rig.db) > 0, 60,
                           "the first sample committed", poll_s=0.005)
        t_first, cpu_first, n_first = time.time(), cpu_s(pid), stored(rig.db)
        assert first
        # The end, from outside without loading the store: the patch's log is empty (the
        # simulator's status, every 0.25 s); the gateway logs the moment to the ms.
        cpu_at: list[tuple[float, float]] = []

        def drained() -> bool:
            rig.check_alive()
            cpu_at.append((time.time(), cpu_s(pid)))
            return all(p["unacked"] == 0 for p in rig.patch_status().values())

        wait_until(drained, 120, "the backlog to drain", poll_s=0.02)
        finished = log_times(rig.gw_log, DRAIN_DONE)
        t_last = finished[-1] if finished else cpu_at[-1][0]
        cpu_last = next((c for t, c in cpu_at if t >= t_last), cpu_at[-1][1])
        connected = log_times(rig.gw_log, ": connected")
        handshake = log_times(rig.gw_log, "draining a backlog")
        if not connected or not handshake:
            raise RuntimeError("the gateway log lacks the connected / draining lines: "
                               + rig.gw_log.read_text()[-2000:])
        drained = total - n_first
        return {"samples": total, "seconds": t_last - t_first,
                "rate": drained / (t_last - t_first),
                "cpu_us_per_sample": (cpu_last - cpu_first) / drained * 1e6,
                "start_ms": (t_first - connected[0]) * 1000,
                "handshake_ms": max(1.0, (handshake[0] - connected[0]) * 1000)}
    finally:
        rig.close()


def figures() -> dict[str, dict]:
    repeats = max(1, int(os.environ.get("BENCH_REPEATS", "2")))
    samples = backlog_samples()
    backlog = len(samples) if repeats > 1 else 20_000
    frames = frames_for(samples)
    bytes_per_sample = sum(map(len, frames)) / len(samples)
    runs = []
    floors = []
    with tempfile.TemporaryDirectory() as tmp, LocalBroker() as broker:
        for r in range(repeats):
            floors.append(decode_cpu_us_per_sample(frames, len(samples)))
            runs.append(drain_once(backlog, Path(tmp) / f"run{r}", broker))
    med = {k: sorted(run[k] for run in runs)[len(runs) // 2] for k in runs[0]}
    floor = sorted(floors)[len(floors) // 2]
    limit_1m = air_limit_samples_s(1, bytes_per_sample)
    limit_2m = air_limit_samples_s(2, bytes_per_sample)
    days = backlog / len(samples) * 7
    setup = (f"a {days:.1f}-day backlog ({backlog} samples) drained by `dermtwin run` from "
             "one patch of `dermtwin simulate` over the virtual link (HCI over TCP), "
             f"first to last sample committed; median of {repeats} runs")
    air = (f"; air limit: full {FRAME_BYTES}-byte frames back to back with DLE at "
           f"{bytes_per_sample:.2f} B/sample (the default-rate backlog's frames)")
    return {
        "drain.rate_vs_1M_phy": figure(
            med["rate"], limit_1m, "samples/s", setup + air + " on the 1M PHY"),
        "drain.rate_vs_2M_phy": figure(
            med["rate"], limit_2m, "samples/s", setup + air + " on the 2M PHY"),
        "drain.seconds_7day_vs_1M_phy": figure(
            med["seconds"] * len(samples) / backlog, len(samples) / limit_1m, "s",
            "drain time of a 7-day backlog (scaled from the run's rate when shorter) against "
            "the 1M PHY air time of its frames; " + setup, better="lower"),
        "drain.gateway_cpu_per_sample": figure(
            med["cpu_us_per_sample"], floor, "µs/sample",
            "CPU time of the `dermtwin run` process (/proc/PID/stat) per sample drained, "
            "against decode_frame + HMAC of the same backlog in this process (the floor of "
            "any gateway); " + setup, better="lower"),
        "drain.start_after_connect": figure(
            med["start_ms"], med["handshake_ms"], "ms",
            "connection (gateway log) → first sample committed (store), against connection "
            "→ handshake done (status read, REPLAY asked); " + setup, better="lower"),
    }


def main() -> int:
    print_table(figures())
    return 0


if __name__ == "__main__":
    sys.exit(main())
