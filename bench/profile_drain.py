"""Where the gateway's CPU goes in a backlog drain: bench_drain's rig (`dermtwin simulate`
+ `dermtwin run` + mosquitto, real processes) with py-spy sampling the gateway from the
moment it connects. Prints each part's share of the busy samples (idle waits left out) and
the hottest lines. Not a figure for results.json: a tool for docs/performance.md's "Drain".

    PYTHONPATH=$PWD python bench/profile_drain.py [SECONDS]
"""

from __future__ import annotations

import collections
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_drain  # noqa: E402
from bench_codec import backlog_samples  # noqa: E402

from simulation.broker import LocalBroker  # noqa: E402

SAMPLE_RATE_HZ = 1000
# A stack whose innermost frame is one of these is a thread waiting, not working.
IDLE_LEAVES = ("select (selectors.py", "Condition.wait", "_worker (concurrent",
               "Client._loop (paho/mqtt/client.py:1667)", "EpollSelector.select", "Event.wait")
# Parts, by the innermost frame (leaf first) that names one; the first part matching wins.
PARTS = (
    ("store: sample insert", ("Store.insert_samples",)),
    ("store: commit", ("_Transaction.__exit__",)),
    ("{subject}/samples messages", ("Ingest.publish_raw", "samples_message")),
    ("twin engine", ("TwinEngine.", "temp_baseline", "uv_forecast", "publish_updates",
                     "onnxruntime")),
    ("outbox + MQTT publisher", ("mqtt-outbox", "MqttPublisher", "paho", "Outbox.")),
    ("frame decode + HMAC", ("decode_frame", "frame_tag", "hmac")),
    ("session (rest)", ("PatchSession.",)),
    ("Bumble host", ("bumble/", "fast_host", "pyee")),
    ("patch link + asyncio", ("PatchLink", "asyncio", "Ingest.run")),
)


def part_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for part, needles in PARTS:
            if any(n in frame for n in needles):
                return part
    return "other"


def shares(raw: Path) -> tuple[collections.Counter, collections.Counter, int]:
    parts: collections.Counter = collections.Counter()
    lines: collections.Counter = collections.Counter()
    busy = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_LEAVES):
            continue
        busy += int(count)
        parts[part_of(frames)] += int(count)
        lines[frames[-1]] += int(count)
    return parts, lines, busy


def main() -> int:
    seconds = sys.argv[1] if len(sys.argv) > 1 else "3"
    with tempfile.TemporaryDirectory() as tmp, LocalBroker() as broker:
        raw = Path(tmp) / "drain.raw"
        original = bench_drain.Rig.start_gateway

        def start_gateway(rig) -> None:
            original(rig)

            def attach() -> None:
                while "connected (MTU" not in (rig.gw_log.read_text()
                                                if rig.gw_log.exists() else ""):
                    time.sleep(0.005)
                subprocess.run(["py-spy", "record", "--nonblocking", "--threads", "-r",
                                str(SAMPLE_RATE_HZ),
                                "-p", str(rig.gateway.pid), "-f", "raw", "-o", str(raw),
                                "-d", seconds], stdout=subprocess.DEVNULL, check=False)

            threading.Thread(target=attach, daemon=True).start()

        bench_drain.Rig.start_gateway = start_gateway
        run = bench_drain.drain_once(len(backlog_samples()), Path(tmp) / "run", broker)
        time.sleep(float(seconds))
        parts, lines, busy = shares(raw)
    print(f"drain: {run['cpu_us_per_sample']:.2f} µs of gateway CPU per sample, "
          f"{run['rate']:.0f} samples/s; {busy} busy samples")
    for part, count in parts.most_common():
        print(f"{count / busy * 100:5.1f} %  {part}")
    print("hottest lines:")
    for line, count in lines.most_common(15):
        print(f"{count / busy * 100:5.1f} %  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
