"""Latency while streaming live: frame received → `{subject}/samples` at a real subscriber.

In one process: PATCHES emulated patches sample every SAMPLE_PERIOD_S and flush a live
frame every FLUSH_S (random phases); each frame is handed to the gateway's real path
(PatchSession decode → Ingest cycle: SQLite commit, twin step, outbox → MqttPublisher) and
a plain paho subscriber on a real mosquitto takes each sample's arrival time. Timestamps
are all `time.perf_counter()` in this process.

Two ingest schedules run in alternating rounds on the same store, publisher and broker:
- `event`: gateway/ingest.py as shipped (a cycle starts as soon as a live batch arrives);
- `fixed gather`: the schedule before it (every cycle first slept 100 ms to gather batches).

Figures: gateway-side p50/p99 (frame received → subscriber) and end to end p99 (sample
taken on the patch → subscriber, which includes waiting for the patch's flush).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from figures import figure, print_table  # noqa: E402

from gateway import samples_message  # noqa: E402
from gateway import store as store_mod  # noqa: E402
from gateway.clock import now_ms  # noqa: E402
from gateway.inference import default_models_dir, load_models  # noqa: E402
from gateway.ingest import Ingest  # noqa: E402
from gateway.mqtt.config import MqttConfig  # noqa: E402
from gateway.mqtt.publisher import MqttPublisher  # noqa: E402
from gateway.outbox import Outbox  # noqa: E402
from gateway.protocol.frames import encode_frame  # noqa: E402
from gateway.session import Commit, PatchSession, State  # noqa: E402
from gateway.twin import TwinEngine  # noqa: E402
from simulation.broker import LocalBroker  # noqa: E402

KEY = bytes(range(32))
PATCHES = 20
SAMPLE_PERIOD_S = 0.25     # UV while bright is 1 s; faster here to get more samples per round
FLUSH_S = 1.0              # `dermtwin simulate --fast`'s flush interval (default config: 60 s)
OLD_GATHER_S = 0.1         # the fixed gather sleep before every cycle, before this change
UV_CHANNEL = 1


class _Link:
    def on_committed(self, seq: int) -> None:
        pass

    def on_commit_failed(self, reason: str) -> None:
        raise RuntimeError(reason)


async def fixed_gather_run(ingest: Ingest) -> None:
    """The ingest schedule before event-driven cycles: the baseline."""
    while True:
        try:
            await asyncio.wait_for(ingest._wake.wait(), 1.0)
        except TimeoutError:
            pass
        ingest._wake.clear()
        await asyncio.sleep(OLD_GATHER_S)
        ingest.cycle(now_ms())


class Subscriber:
    """A plain paho subscriber: arrival time of every (device subject, seq)."""

    def __init__(self, port: int, topic_filter: str):
        self.arrived: dict[tuple[str, int], float] = {}
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-sub",
                                  protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic_filter, qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        now = time.perf_counter()
        subject = message.topic.split("/")[-2]
        payload = json.loads(message.payload)
        with self.lock:
            for sample in samples_message.decode(payload):
                self.arrived[(subject, sample.seq)] = now

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Patch:
    def __init__(self, index: int):
        self.device_id = f"{index:016x}"
        self.subject = f"s-lat{index:03d}"
        self.session = PatchSession(self.device_id, KEY, -1)
        self.session.state = State.STREAMING
        self.session.boot_id = 1
        self.session.anchors[1] = (0, float(now_ms()))
        self.seq = 0
        self.epoch = time.perf_counter()


async def run_patch(patch: Patch, ingest: Ingest, link: _Link, until: float,
                    taken: dict, received: dict) -> None:
    rng = random.Random(patch.device_id)
    now = time.perf_counter()
    next_sample = now + rng.uniform(0, SAMPLE_PERIOD_S)
    next_flush = now + rng.uniform(0, FLUSH_S)
    pending: list[tuple[int, int, int]] = []
    first_seq = patch.seq
    while next_flush < until:
        at = min(next_sample, next_flush)
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        if next_sample <= next_flush:
            tick = int((next_sample - patch.epoch) * 10)
            pending.append((UV_CHANNEL, tick, 100 + len(pending)))
            taken[(patch.subject, patch.seq + len(pending) - 1)] = next_sample
            next_sample += SAMPLE_PERIOD_S
            continue
        next_flush += FLUSH_S
        if not pending:
            continue
        frame = encode_frame(KEY, 1, first_seq, pending[0][1], pending)
        arrived = time.perf_counter()   # the frame is at the gateway
        for action in patch.session.notification(frame, now_ms()):
            if isinstance(action, Commit):
                ingest.submit(link, action.batch)
        for k in range(len(pending)):
            received[(patch.subject, first_seq + k)] = arrived
        patch.seq = first_seq = first_seq + len(pending)
        pending = []


async def one_round(schedule, ingest, patches, subscriber, round_s: float):
    taken: dict = {}
    received: dict = {}
    task = asyncio.create_task(schedule(ingest))
    link = _Link()
    until = time.perf_counter() + round_s
    await asyncio.gather(*(run_patch(p, ingest, link, until, taken, received)
                           for p in patches))
    deadline = time.perf_counter() + 10
    while time.perf_counter() < deadline:
        with subscriber.lock:
            if all(k in subscriber.arrived for k in received):
                break
        await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    ingest.cycle(now_ms())
    with subscriber.lock:
        missing = [k for k in received if k not in subscriber.arrived]
        if missing:
            raise RuntimeError(f"{len(missing)} samples never reached the subscriber")
        gateway = [subscriber.arrived[k] - received[k] for k in received]
        end_to_end = [subscriber.arrived[k] - taken[k] for k in received]
    return gateway, end_to_end


async def measure(rounds: int, round_s: float) -> dict[str, dict[str, list[float]]]:
    results = {name: {"gateway": [], "end_to_end": []} for name in ("event", "fixed")}
    with tempfile.TemporaryDirectory() as tmp, LocalBroker() as broker:
        db = Path(tmp) / "gateway.sqlite3"
        conn = store_mod.connect(db)
        store = store_mod.Store(conn)
        patches = [Patch(i) for i in range(PATCHES)]
        models = load_models(default_models_dir())
        engine = TwinEngine(1, {p.device_id: p.subject for p in patches},
                            lambda n, i: models[n].run(i))
        config = MqttConfig(host=broker.host, port=broker.port, gateway_id="bench")
        publisher = MqttPublisher(config, db, will_topic=config.state_topic,
                                  will_payload=b"{}", birth_payload_fn=lambda: b"{}")
        ingest = Ingest(store, Outbox(conn), engine, config.topic, publisher.kick)
        subscriber = Subscriber(broker.port, config.topic_root + "/+/samples")
        await publisher.start()
        if not publisher.wait_connected(10):
            raise RuntimeError("the publisher did not connect to mosquitto")
        try:
            for _ in range(rounds):
                for name, schedule in (("fixed", fixed_gather_run), ("event", Ingest.run)):
                    gateway, e2e = await one_round(schedule, ingest, patches, subscriber,
                                                   round_s)
                    results[name]["gateway"] += gateway
                    results[name]["end_to_end"] += e2e
        finally:
            await publisher.stop()
            subscriber.close()
            conn.close()
    return results


def ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000, q))


def figures() -> dict[str, dict]:
    repeats = max(1, int(os.environ.get("BENCH_REPEATS", "4")))
    round_s = 5.0 if repeats > 1 else 2.0
    r = asyncio.run(measure(repeats, round_s))
    ev, fx = r["event"], r["fixed"]
    setup = (f"{PATCHES} patches streaming live (a sample every {SAMPLE_PERIOD_S} s, a frame "
             f"every {FLUSH_S} s, random phases) through PatchSession → Ingest → outbox → "
             "MqttPublisher → mosquitto → a paho subscriber; "
             f"{len(ev['gateway'])} samples per schedule over {repeats} interleaved rounds of "
             f"{round_s:.0f} s; baseline: the old schedule (a fixed {OLD_GATHER_S * 1000:.0f} ms "
             "gather sleep before each ingest cycle)")
    return {
        "latency.gateway_p50": figure(ms(ev["gateway"], 50), ms(fx["gateway"], 50), "ms",
                                      "frame received → subscriber, median; " + setup,
                                      better="lower"),
        "latency.gateway_p99": figure(ms(ev["gateway"], 99), ms(fx["gateway"], 99), "ms",
                                      "frame received → subscriber, 99th percentile; " + setup,
                                      better="lower"),
        "latency.end_to_end_p99_flush_1s": figure(
            ms(ev["end_to_end"], 99), ms(fx["end_to_end"], 99), "ms",
            f"sample taken → subscriber, 99th percentile, with the patch's {FLUSH_S:.0f} s "
            "flush interval (the flush wait dominates: at the default 60 s flush it is up to "
            "60 s); " + setup, better="lower"),
    }


def main() -> int:
    print_table(figures())
    return 0


if __name__ == "__main__":
    sys.exit(main())
