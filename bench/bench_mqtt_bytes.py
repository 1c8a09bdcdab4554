"""MQTT bytes per sample: what the gateway publishes (topic + payload, every topic) for one
subject's day at the design's default rates (design.md §1: skin temperature every 10 s, UV
every 5 s or 1 s while UVI > 0.5, hydration every 60 s, battery every 5 min; frames flushed
every 60 s), through the real ingest path (store, twin engine with the ONNX models, outbox),
against one JSON message per reading for the same samples, measured in the same run.

Two deliveries of the same samples:
- live: one batch per 60 s flush, one ingest cycle each (what a connected patch streams);
- backlog: the same day drained after an outage, batches of 90 samples (a frame), 50 per
  ingest cycle, flagged historical.

Prints bytes and messages per sample per topic and the ratios. Not a test. `figures()`
returns the same numbers for a results collector.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway import store as store_mod  # noqa: E402
from gateway.inference import default_models_dir, load_models  # noqa: E402
from gateway.ingest import Ingest  # noqa: E402
from gateway.mqtt import topics  # noqa: E402
from gateway.outbox import Outbox  # noqa: E402
from gateway.samples_message import PROPERTIES, SCALES  # noqa: E402
from gateway.twin import TwinEngine  # noqa: E402
from gateway.values import SampleBatch  # noqa: E402
from sensor_drivers.environment_model import PatchEnvironment  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import figure as bench_figure  # noqa: E402

DEVICE = "00112233445566ff"
SUBJECT = "s-3f2a9c0d1e"                  # the demo's pseudonymous ids have this shape
ROOT = topics.root("gw1")
DAY0_UTC_MS = 1_782_000_000_000 - 1_782_000_000_000 % 86_400_000   # a midnight, UTC
HOURS = float(os.environ.get("BENCH_MQTT_HOURS", "6" if os.environ.get("BENCH_REPEATS") == "1"
                             else "24"))
START_HOUR = 12.0 - HOURS / 2            # centred on noon: the UV hours are in any run
FLUSH_S = 60
FRAME_SAMPLES = 90
FRAMES_PER_CYCLE = 50
UV_FAST_ABOVE = 0.5


def day_of_samples() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """seq, utc_ms, channel, integer wire value, in seq order: an office day with a walk
    outside at lunch and on the way home."""
    env = PatchEnvironment(seed=3, latitude_deg=45.0, day_of_year=172,
                           default_location="indoor")
    env.set_location("outdoor", 7.5 * 3600, 8.0 * 3600)
    env.set_location("outdoor", 12.0 * 3600, 13.0 * 3600)
    env.set_location("outdoor", 17.5 * 3600, 18.0 * 3600)
    utc, channel, value = [], [], []
    start_s = int(START_HOUR * 3600)
    for t in range(start_s, start_s + int(HOURS * 3600)):
        uvi = env.uv_index_at(t)
        due = [(0, t % 10 == 0, env.skin_temp_c_at),
               (1, t % 5 == 0 or uvi > UV_FAST_ABOVE, lambda _t, u=uvi: u),
               (2, t % 60 == 0, env.capacitance_pf_at),
               (3, t % 300 == 0, env.battery_soc_pct_at)]
        for ch, is_due, read in due:
            if is_due:
                utc.append(DAY0_UTC_MS + t * 1000)
                channel.append(ch)
                value.append(int(round(read(t) / SCALES[ch])))
    n = len(utc)
    return (np.arange(1000, 1000 + n, dtype=np.int64), np.array(utc, dtype=np.int64),
            np.array(channel, dtype=np.uint8), np.array(value, dtype=np.int32))


def naive_message_bytes(seq, utc, channel, value) -> list[int]:
    """The baseline: one JSON message per reading, on the same topic, with the same facts."""
    topic = topics.SAMPLES.path(ROOT, SUBJECT)
    sizes = []
    for s, u, c, v in zip(seq.tolist(), utc.tolist(), channel.tolist(), value.tolist(),
                          strict=True):
        payload = json.dumps({"schema": topics.SCHEMA_VERSION, "boot": 7, "seq": s, "t": u,
                              "property": PROPERTIES[c], "v": round(v * SCALES[c], 6)},
                             separators=(",", ":"))
        sizes.append(len(topic.encode()) + len(payload.encode()))
    return sizes


def run_gateway(batches_per_cycle: list[list[SampleBatch]], cycle_ms: list[int],
                tmp: Path) -> dict[str, list[int]]:
    """Every outbox row the real ingest path writes: sizes (topic + payload) by topic leaf."""
    conn = store_mod.connect(tmp / "gateway.sqlite3")
    store = store_mod.Store(conn)
    outbox = Outbox(conn)
    models = load_models(default_models_dir())
    engine = TwinEngine(1, {DEVICE: SUBJECT}, lambda n, i: models[n].run(i))
    ingest = Ingest(store, outbox, engine, lambda *levels: "/".join((ROOT, *levels)),
                    lambda: None)
    sizes: dict[str, list[int]] = defaultdict(list)

    class Link:
        def on_committed(self, seq):
            pass

        def on_commit_failed(self, reason):
            raise RuntimeError(reason)

    link = Link()
    for batches, now in zip(batches_per_cycle, cycle_ms, strict=True):
        for batch in batches:
            ingest.submit(link, batch)
        ingest.cycle(now)
        rows = outbox.pending(10_000)
        for row in rows:
            sizes[row.topic.rsplit("/", 1)[-1]].append(len(row.topic.encode()) + len(row.payload))
        outbox.delete(r.id for r in rows)
        conn.commit()
    conn.close()
    return sizes


def _batch(seq, utc, channel, value, a, b, historical) -> SampleBatch:
    return SampleBatch(DEVICE, 7, seq[a:b], (utc[a:b] - DAY0_UTC_MS) // 100, utc[a:b],
                       channel[a:b], value[a:b], historical=historical)


def measure() -> dict:
    seq, utc, channel, value = day_of_samples()
    n = len(seq)
    # live: one batch per flush interval
    flush_of = (utc - utc[0]) // (FLUSH_S * 1000)
    cuts = [0, *np.flatnonzero(np.diff(flush_of)) + 1, n]
    live_cycles = [[_batch(seq, utc, channel, value, a, b, False)]
                   for a, b in zip(cuts, cuts[1:], strict=False)]
    live_now = [int(utc[b - 1]) + 50 for b in cuts[1:]]
    # backlog: frames of 90 samples, 50 frames per cycle
    frames = [_batch(seq, utc, channel, value, a, min(a + FRAME_SAMPLES, n), True)
              for a in range(0, n, FRAME_SAMPLES)]
    backlog_cycles = [frames[i:i + FRAMES_PER_CYCLE] for i in range(0, len(frames),
                                                                     FRAMES_PER_CYCLE)]
    backlog_now = [int(utc[-1]) + 60_000] * len(backlog_cycles)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "live").mkdir()
        (Path(tmp) / "backlog").mkdir()
        live = run_gateway(live_cycles, live_now, Path(tmp) / "live")
        backlog = run_gateway(backlog_cycles, backlog_now, Path(tmp) / "backlog")
    naive = naive_message_bytes(seq, utc, channel, value)
    return {"samples": n, "hours": HOURS, "live": live, "backlog": backlog, "naive": naive,
            "live_flushes": len(live_cycles)}


def figures(result: dict | None = None) -> dict[str, dict]:
    r = result or measure()
    n = r["samples"]
    naive_bps = sum(r["naive"]) / n
    how = (f"{r['hours']:g} h of one subject at design.md §1 default rates ({n} samples), "
           "real ingest path (store, twin engine + ONNX models, outbox), topic + payload "
           "bytes; baseline: one JSON message per reading, same samples, same run")

    def figure(value: float, baseline: float, unit: str, detail: str) -> dict:
        return bench_figure(value, baseline, unit, f"{how}; {detail}", better="lower")

    live, backlog = r["live"], r["backlog"]
    all_live = sum(sum(v) for v in live.values())
    return {
        "mqtt_samples_backlog_bytes_per_sample": figure(
            sum(backlog["samples"]) / n, naive_bps, "B/sample",
            "samples topic, backlog drained in batches of 90, 50 per cycle"),
        "mqtt_samples_live_bytes_per_sample": figure(
            sum(live["samples"]) / n, naive_bps, "B/sample",
            f"samples topic, one batch per {FLUSH_S} s flush"),
        "mqtt_all_topics_live_bytes_per_sample": figure(
            all_live / n, naive_bps, "B/sample",
            "samples + delta + retained twin + alerts while streaming live"),
        "mqtt_live_messages_per_sample": figure(
            sum(len(v) for v in live.values()) / n, 1.0, "messages/sample",
            "all topics while streaming live"),
        "mqtt_backlog_messages_per_sample": figure(
            sum(len(v) for v in backlog.values()) / n, 1.0, "messages/sample",
            "all topics while draining a backlog"),
    }


def main() -> int:
    r = measure()
    n = r["samples"]
    print(f"{r['hours']:g} h of one subject: {n} samples, {r['live_flushes']} live flushes")
    print(f"{'delivery':<9} {'topic':<9} {'messages':>9} {'bytes':>9} {'B/sample':>9}")
    for name in ("live", "backlog"):
        for leaf, sizes in sorted(r[name].items()):
            print(f"{name:<9} {leaf:<9} {len(sizes):>9} {sum(sizes):>9} "
                  f"{sum(sizes) / n:>9.2f}")
    print(f"{'naive':<9} {'samples':<9} {len(r['naive']):>9} {sum(r['naive']):>9} "
          f"{sum(r['naive']) / n:>9.2f}")
    for name, f in figures(r).items():
        print(f"{name}: {f['value']:.2f} {f['unit']} vs {f['baseline']:.2f} -> "
              f"ratio {f['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
