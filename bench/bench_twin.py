"""Twin engine per tick for 100 patches, each with a live batch (temperature, UV, hydration)
since the last tick: one engine for all (models batched across patches) against one engine
per patch (one model call per patch), measured in this run, interleaved. Both run the same
code on the same samples and give the same twins (tests/test_twin_engine.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from figures import figure, interleaved, print_table, timed  # noqa: E402

from gateway.inference import load_models  # noqa: E402
from gateway.twin import TwinEngine  # noqa: E402
from gateway.values import SampleBatch  # noqa: E402

PATCHES = 100
WARM_TICKS = 40
TICKS = int(os.environ.get("BENCH_TICKS", "60"))
T0_MS = 1_782_036_000_000          # 2026-06-21 10:00 UTC: the sun is up for the forecast


def live_batches(tick: int) -> list[SampleBatch]:
    t = T0_MS + tick * 1000
    return [SampleBatch(
        device_id=f"d{i}", boot_id=1, seq=np.arange(3 * tick, 3 * tick + 3, dtype=np.int64),
        tick=np.zeros(3, dtype=np.int64), utc_ms=np.array([t, t + 1, t + 2], dtype=np.int64),
        channel=np.array([0, 1, 2], dtype=np.uint8),
        value=np.array([33 * 128 + (tick + i) % 7, 500 + (tick + i) % 11,
                        12_500 + (tick * i) % 13], dtype=np.int32)) for i in range(PATCHES)]


def figures() -> dict[str, dict]:
    models = load_models()

    def run(name, inputs):
        return models[name].run(inputs)

    subjects = {f"d{i}": f"s{i}" for i in range(PATCHES)}
    together = TwinEngine(1, subjects, run, location=(45.0, 0.0))
    apart = [TwinEngine(1, {d: s}, run, location=(45.0, 0.0)) for d, s in subjects.items()]
    ticks = {"n": 0}
    batches = [live_batches(k) for k in range(WARM_TICKS + TICKS * 8)]

    def one_engine() -> float:
        k = ticks["n"]
        def tick():
            for b in batches[k]:
                together.ingest(b)
            together.step(T0_MS + k * 1000)
        return timed(tick)

    def per_patch() -> float:
        k = ticks["n"]
        ticks["n"] += 1
        def tick():
            for engine, b in zip(apart, batches[k], strict=True):
                engine.ingest(b)
                engine.step(T0_MS + k * 1000)
        return timed(tick)

    for _ in range(WARM_TICKS):
        one_engine()
        per_patch()
    rounds = TICKS * max(1, int(os.environ.get("BENCH_REPEATS", "3"))) // 3
    t = interleaved(max(rounds, 3), one_engine=one_engine, per_patch=per_patch)
    return {"twin.tick_ms_100_patches": figure(
        t["one_engine"] * 1000, t["per_patch"] * 1000, "ms/tick",
        f"ingest + step for {PATCHES} patches with a 3-sample live batch each (temperature, "
        "UV, hydration; location set, so the UV forecast runs) in one engine, against one "
        "engine per patch; medians of interleaved ticks", better="lower")}


def main() -> int:
    print_table(figures())
    return 0


if __name__ == "__main__":
    sys.exit(main())
