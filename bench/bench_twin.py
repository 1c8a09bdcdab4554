"""Twin engine against the per-patch engine it replaced (tests/twin_reference.py), on the same
samples in the same run, interleaved; tests/test_twin_equivalence.py holds them to the same
twins, bit for bit.

- `twin.tick_ms_100_patches`: one tick of 100 patches, each with a live batch (temperature,
  UV, hydration) since the last tick: ingest + step.
- `twin.drain_us_per_sample`: a patch's 7-day backlog at the default rates (temperature
  10 s, UV 5 s, hydration 60 s, battery 300 s: 193,536 samples) in the gateway's drain
  batches (gateway/ingest.py DRAIN_BATCH_SAMPLES), ingest + step per batch.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import twin_reference  # noqa: E402
from figures import figure, interleaved, print_table  # noqa: E402

from gateway.inference import load_models  # noqa: E402
from gateway.ingest import DRAIN_BATCH_SAMPLES  # noqa: E402
from gateway.twin import TwinEngine  # noqa: E402
from gateway.values import SampleBatch  # noqa: E402

PATCHES = 100
WARM_TICKS = 40
TICKS = int(os.environ.get("BENCH_TICKS", "60"))
T0_MS = 1_782_036_000_000          # 2026-06-21 10:00 UTC: the sun is up for the forecast
BACKLOG_DAYS = 7
PERIODS_S = {0: 10, 1: 5, 2: 60, 3: 300}     # firmware/sampling_config.py defaults


def live_batches(tick: int) -> list[SampleBatch]:
    t = T0_MS + tick * 1000
    return [SampleBatch(
        device_id=f"d{i}", boot_id=1, seq=np.arange(3 * tick, 3 * tick + 3, dtype=np.int64),
        tick=np.zeros(3, dtype=np.int64), utc_ms=np.array([t, t + 1, t + 2], dtype=np.int64),
        channel=np.array([0, 1, 2], dtype=np.uint8),
        value=np.array([33 * 128 + (tick + i) % 7, 500 + (tick + i) % 11,
                        12_500 + (tick * i) % 13], dtype=np.int32)) for i in range(PATCHES)]


def backlog_batches(days: int = BACKLOG_DAYS) -> list[SampleBatch]:
    """A patch's log of `days` at the default rates, in seq order, cut into drain batches:
    a daily skin-temperature swing, midday sun, hydration drifting, the battery falling."""
    start_ms = T0_MS - 10 * 3_600_000 - days * 86_400_000
    rows = []
    for channel, period_s in PERIODS_S.items():
        t_s = np.arange(0, days * 86_400, period_s, dtype=np.int64)
        hour = (t_s % 86_400) / 3600
        if channel == 0:
            value = np.round((33 + 0.8 * np.cos(2 * np.pi * (hour - 4) / 24)) * 128)
        elif channel == 1:
            value = np.round(np.maximum(0, 8 * np.sin(np.pi * (hour - 6) / 12)) * 100)
        elif channel == 2:
            value = np.round((12 + 0.5 * np.sin(t_s / 5000)) * 1000)
        else:
            value = np.round(np.maximum(5, 100 - t_s / 8000) * 256)
        rows.append(np.stack([start_ms + t_s * 1000 + channel,
                              np.full(len(t_s), channel), value.astype(np.int64)], axis=1))
    table = np.concatenate(rows)
    table = table[np.argsort(table[:, 0], kind="stable")]
    batches = []
    for first in range(0, len(table), DRAIN_BATCH_SAMPLES):
        part = table[first:first + DRAIN_BATCH_SAMPLES]
        batches.append(SampleBatch(
            device_id="d0", boot_id=1, seq=np.arange(first, first + len(part), dtype=np.int64),
            tick=np.zeros(len(part), dtype=np.int64), utc_ms=part[:, 0].copy(),
            channel=part[:, 1].astype(np.uint8), value=part[:, 2].astype(np.int32),
            historical=True))
    return batches


def cpu_timed(fn) -> float:
    """CPU seconds of this process for fn() (the machine is shared: wall time would count
    other processes' turns on the cores)."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def figures() -> dict[str, dict]:
    models = load_models()

    def run(name, inputs):
        return models[name].run(inputs)

    subjects = {f"d{i}": f"s{i}" for i in range(PATCHES)}
    repeats = max(1, int(os.environ.get("BENCH_REPEATS", "3")))
    engines = {"engine": TwinEngine(1, subjects, run, location=(45.0, 0.0)),
               "reference": twin_reference.TwinEngine(1, subjects, run, location=(45.0, 0.0))}
    rounds = max(3, TICKS * repeats // 3)
    batches = [live_batches(k) for k in range(WARM_TICKS + rounds)]
    ticks = {name: 0 for name in engines}

    def tick(name: str) -> float:
        engine, k = engines[name], ticks[name]
        ticks[name] += 1

        def one_tick():
            for b in batches[k]:
                engine.ingest(b)
            engine.step(T0_MS + k * 1000)
        return cpu_timed(one_tick)

    for _ in range(WARM_TICKS):
        tick("engine")
        tick("reference")
    t = interleaved(rounds, engine=lambda: tick("engine"), reference=lambda: tick("reference"))

    backlog = backlog_batches(BACKLOG_DAYS if repeats > 1 else 1)
    samples = sum(len(b) for b in backlog)

    def drain(make) -> float:
        engine = make(1, {"d0": "s0"}, run, location=(45.0, 0.0))

        def all_batches():
            for b in backlog:
                engine.ingest(b)
                engine.step(int(b.utc_ms[-1]))
        return cpu_timed(all_batches) / samples

    d = interleaved(max(3, repeats), engine=lambda: drain(TwinEngine),
                    reference=lambda: drain(twin_reference.TwinEngine))
    return {
        "twin.tick_ms_100_patches": figure(
            t["engine"] * 1000, t["reference"] * 1000, "ms/tick",
            f"ingest + step for {PATCHES} patches with a 3-sample live batch each (temperature, "
            "UV, hydration; location set, so the UV forecast runs), against the per-patch "
            "engine it replaced (tests/twin_reference.py); CPU time, medians of interleaved ticks",
            better="lower"),
        "twin.drain_us_per_sample": figure(
            d["engine"] * 1e6, d["reference"] * 1e6, "µs/sample",
            f"a patch's {math.ceil(samples / 27_648)}-day backlog at the default rates "
            f"({samples} samples) through ingest + step in {DRAIN_BATCH_SAMPLES}-sample "
            "batches, against the per-patch engine it replaced; CPU time, medians of "
            "interleaved drains", better="lower")}


def main() -> int:
    print_table(figures())
    return 0


if __name__ == "__main__":
    sys.exit(main())
