"""Twin inference per tick for 100 patches: one batched call per model (what the twin engine
does) against one call per patch per model, and against the bare onnxruntime `run()` floor
(the same batched arrays, no contract checks), all measured in this run, interleaved.

Inputs are the contract's plausible self-test rows repeated to 100 patches; each model
runs once per tick, as when every patch delivered new data since the last tick.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from figures import figure, interleaved, print_table, timed  # noqa: E402

from gateway.inference import load_models  # noqa: E402
from gateway.model_contracts import SELF_TEST_INPUTS  # noqa: E402

PATCHES = 100
TICKS = int(os.environ.get("BENCH_TICKS", "200"))


def figures() -> dict[str, dict]:
    models = load_models()
    batches = {
        name: {k: np.repeat(np.asarray(SELF_TEST_INPUTS[k], np.float32), PATCHES // 2, axis=0)
               for k in model.contract.inputs}
        for name, model in models.items()}
    rows = {name: [{k: v[i:i + 1] for k, v in batch.items()} for i in range(PATCHES)]
            for name, batch in batches.items()}
    sessions = {name: (m._session, list(m.contract.outputs)) for name, m in models.items()}

    def batched() -> float:
        return timed(lambda: [models[n].run(b) for _ in range(TICKS)
                              for n, b in batches.items()]) / TICKS

    def per_patch() -> float:
        ticks = max(TICKS // 10, 2)
        return timed(lambda: [models[n].run(r) for _ in range(ticks) for n in models
                              for r in rows[n]]) / ticks

    def floor() -> float:
        return timed(lambda: [sessions[n][0].run(sessions[n][1], b) for _ in range(TICKS)
                              for n, b in batches.items()]) / TICKS

    rounds = max(1, int(os.environ.get("BENCH_REPEATS", "3")))
    t = interleaved(rounds, batched=batched, per_patch=per_patch, floor=floor)
    how = (f"{len(models)} models per tick for {PATCHES} patches ({', '.join(models)}); "
           f"median of {rounds} interleaved rounds")
    return {
        "inference.batched_tick_ms": figure(
            t["batched"] * 1000, t["per_patch"] * 1000, "ms/tick",
            how + "; baseline: one LoadedModel.run per patch per model", better="lower"),
        "inference.batched_vs_floor": figure(
            t["batched"] * 1000, t["floor"] * 1000, "ms/tick",
            how + "; baseline: bare InferenceSession.run on the same batched float32 arrays "
            "(the floor: contract checks and casts are the difference)", better="lower"),
    }


def main() -> int:
    print_table(figures())
    return 0


if __name__ == "__main__":
    sys.exit(main())
