"""MQTT bytes per sample: what the gateway publishes (topic + payload, every topic) for one
subject's day at the design's default rates (design.md §1: skin temperature every 10 s, UV
every 5 s or 1 s while UVI > 0.5, hydration every 60 s, battery every 5 min; frames flushed
every 60 s), through the real ingest path (store, twin engine with the ONNX models, outbox),
against one JSON message per reading for the same samples, measured in the same run.

Two deliveries of the same samples, each in both samples formats (`run --samples-format`:
JSON, and zlib-compressed with MQTT 5 Content Type application/zlib, gateway/payload_encoding.py):
- live: one batch per 60 s flush, one ingest cycle each (what a connected patch streams);
- backlog: the same day drained after an outage, batches of 90 samples (a frame), 50 per
  ingest cycle, flagged historical.

The twin and delta messages are also measured as schema 2 wrote them (`{"v", "t", "q"}`
leaves, full UTC times, 3 decimals: the engine's own documents, JSON-encoded), same updates.

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
from gateway.ingest import Ingest, encode  # noqa: E402
from gateway.mqtt import topics  # noqa: E402
from gateway.outbox import Outbox  # noqa: E402
from gateway.payload_encoding import FORMATS, JSON  # noqa: E402
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
                tmp: Path, samples_format: str) -> dict[str, list[int]]:
    """Every outbox row the real ingest path writes: sizes (topic + payload) by topic leaf;
    `twin@2`, `delta@2`: the same twin updates as schema 2 encoded them."""
    tmp.mkdir()
    conn = store_mod.connect(tmp / "gateway.sqlite3")
    store = store_mod.Store(conn)
    outbox = Outbox(conn)
    models = load_models(default_models_dir())
    engine = TwinEngine(1, {DEVICE: SUBJECT}, lambda n, i: models[n].run(i))
    ingest = Ingest(store, outbox, engine, lambda *levels: "/".join((ROOT, *levels)),
                    lambda: None, samples_format=samples_format)
    sizes: dict[str, list[int]] = defaultdict(list)
    publish_updates = ingest.publish_updates

    def publish_and_measure_schema_2(updates):
        for update in updates:
            for leaf, doc in (("twin", update.snapshot), ("delta", update.delta)):
                if doc is not None:
                    topic = f"{ROOT}/{update.subject}/{leaf}"
                    sizes[leaf + "@2"].append(len(topic.encode()) + len(encode(doc)))
        publish_updates(updates)

    ingest.publish_updates = publish_and_measure_schema_2

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
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for samples_format in FORMATS:
            runs[samples_format] = {
                "live": run_gateway(live_cycles, live_now, Path(tmp) / f"live-{samples_format}",
                                    samples_format),
                "backlog": run_gateway(backlog_cycles, backlog_now,
                                       Path(tmp) / f"backlog-{samples_format}", samples_format)}
    naive = naive_message_bytes(seq, utc, channel, value)
    return {"samples": n, "hours": HOURS, "runs": runs, "naive": naive,
            "live_flushes": len(live_cycles)}


def _all_topics(sizes: dict[str, list[int]]) -> list[int]:
    """What goes on the wire (the schema 2 twin and delta are a comparison only)."""
    return [s for leaf, v in sizes.items() if "@" not in leaf for s in v]


def figures(result: dict | None = None) -> dict[str, dict]:
    r = result or measure()
    n = r["samples"]
    naive_bps = sum(r["naive"]) / n
    how = (f"{r['hours']:g} h of one subject at design.md §1 default rates ({n} samples), "
           "real ingest path (store, twin engine + ONNX models, outbox), topic + payload "
           "bytes; baseline: one JSON message per reading, same samples, same run")

    def figure(value: float, baseline: float, unit: str, detail: str) -> dict:
        return bench_figure(value, baseline, unit, f"{how}; {detail}", better="lower")

    out = {}
    for samples_format in FORMATS:
        live, backlog = (r["runs"][samples_format][d] for d in ("live", "backlog"))
        name = "" if samples_format == JSON else f"_{samples_format}"
        form = ("JSON" if samples_format == JSON else
                "samples zlib-compressed when smaller (Content Type application/zlib)")
        out |= {
            f"mqtt.samples_backlog{name}_bytes_per_sample": figure(
                sum(backlog["samples"]) / n, naive_bps, "B/sample",
                f"samples topic, {form}, backlog drained in batches of 90, 50 per cycle"),
            f"mqtt.samples_live{name}_bytes_per_sample": figure(
                sum(live["samples"]) / n, naive_bps, "B/sample",
                f"samples topic, {form}, one batch per {FLUSH_S} s flush"),
            f"mqtt.all_topics_live{name}_bytes_per_sample": figure(
                sum(_all_topics(live)) / n, naive_bps, "B/sample",
                f"samples ({form}) + delta + retained twin + alerts while streaming live"),
        }
    live = r["runs"][JSON]["live"]
    backlog = r["runs"][JSON]["backlog"]
    out |= {
        "mqtt.twin_delta_live_bytes_per_sample": figure(
            (sum(live["twin"]) + sum(live["delta"])) / n,
            (sum(live["twin@2"]) + sum(live["delta@2"])) / n, "B/sample",
            f"{how}; retained twin + delta while streaming live, baseline: the same updates "
            "as schema 2 encoded them ({v, t, q} leaves, UTC times, 3 decimals)"),
        "mqtt.live_messages_per_sample": figure(
            len(_all_topics(live)) / n, 1.0, "messages/sample",
            "all topics while streaming live"),
        "mqtt.backlog_messages_per_sample": figure(
            len(_all_topics(backlog)) / n, 1.0, "messages/sample",
            "all topics while draining a backlog"),
    }
    return out


def main() -> int:
    r = measure()
    n = r["samples"]
    print(f"{r['hours']:g} h of one subject: {n} samples, {r['live_flushes']} live flushes")
    print(f"{'format':<7} {'delivery':<9} {'topic':<9} {'messages':>9} {'bytes':>9} "
          f"{'B/sample':>9} {'msg/sample':>10}")
    for samples_format in FORMATS:
        for name in ("live", "backlog"):
            sizes_by_leaf = r["runs"][samples_format][name]
            rows = sorted(sizes_by_leaf.items()) + [("all", _all_topics(sizes_by_leaf))]
            for leaf, sizes in rows:
                if samples_format != JSON and leaf != "samples" and leaf != "all":
                    continue   # the same as JSON: only samples change form
                print(f"{samples_format:<7} {name:<9} {leaf:<9} {len(sizes):>9} "
                      f"{sum(sizes):>9} {sum(sizes) / n:>9.2f} {len(sizes) / n:>10.4f}")
    print(f"{'naive':<7} {'both':<9} {'samples':<9} {len(r['naive']):>9} "
          f"{sum(r['naive']):>9} {sum(r['naive']) / n:>9.2f} {len(r['naive']) / n:>10.4f}")
    print("(twin@2, delta@2: the same updates as schema 2 encoded them; not published)")
    for name, f in figures(r).items():
        print(f"{name}: {f['value']:.2f} {f['unit']} vs {f['baseline']:.2f} -> "
              f"ratio {f['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
