"""The twin engine gives, bit for bit, what the straightforward per-patch engine it replaced
gave (tests/twin_reference.py): the same deltas, snapshots, alerts, revs and saved twins, as
JSON bytes, over randomised multi-patch feeds with live, historical, time-uncertain and
unknown-time batches, backlog-sized batches, model failures (q "bad") and restarts from saved
twins. Real ONNX models."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import twin_reference as ref

from gateway.inference import default_models_dir, load_models
from gateway.model_contracts import ModelUnavailable
from gateway.twin import TwinEngine
from gateway.values import SampleBatch

T0_MS = 1_782_036_000_000 - 9 * 3_600_000     # 2026-06-21 01:00 UTC
MODEL_NAMES = ("temp_anomaly", "uv_dose", "hydration")


@pytest.fixture(scope="module")
def models():
    return load_models(default_models_dir())


def _encode(x) -> str:
    """JSON text in the dicts' own order: the same keys in the same order, too."""
    return json.dumps(x)


class Patch:
    """One device's feed: seq numbers, a clock and slowly wandering readings."""

    def __init__(self, rng: random.Random, device: str, weights=(40, 35, 15, 5, 1)):
        self.rng, self.device, self.weights = rng, device, weights
        self.seq, self.t = 0, T0_MS + rng.randrange(0, 600_000)
        self.temp_c, self.uvi = rng.uniform(31, 35), rng.uniform(0, 6)
        self.pf, self.pct = rng.uniform(11, 13.5), rng.uniform(12, 100)

    def batch(self, n: int, step_ms: int) -> SampleBatch:
        rng = self.rng
        utc, channel, value = [], [], []
        for _ in range(n):
            jump = rng.random()
            self.t += (rng.randrange(700_000, 2_000_000) if jump < 0.01
                       else rng.randrange(10 * 3_600_000, 30 * 3_600_000) if jump < 0.012
                       else rng.randrange(1, step_ms))
            ch = rng.choices((0, 1, 2, 3, 9), self.weights)[0]
            if ch == 0:
                self.temp_c += rng.gauss(0, 0.15) + (3.0 if rng.random() < 0.02 else 0)
                self.temp_c = min(max(self.temp_c, 22.0), 39.5)
                value.append(round(self.temp_c * 128))
            elif ch == 1:
                self.uvi = max(0.0, self.uvi + rng.gauss(0, 0.6)) if rng.random() < 0.9 else 0.0
                value.append(round(self.uvi * 100))
            elif ch == 2:
                self.pf += rng.gauss(0, 0.2)
                off_skin = rng.random() < 0.05
                value.append(round((10.02 if off_skin else self.pf) * 1000))
            elif ch == 3:
                self.pct = min(100.0, max(0.0, self.pct + rng.gauss(-0.8, 1.5)))
                value.append(round(self.pct * 256))
            else:
                value.append(rng.randrange(0, 5000))
            channel.append(ch)
            utc.append(self.t)
        times = np.array(utc, dtype=np.int64)
        if rng.random() < 0.05:                    # before the patch knew the time
            times[: rng.randrange(1, n + 1)] = -1
        self.seq += n
        return SampleBatch(
            device_id=self.device, boot_id=1,
            seq=np.arange(self.seq - n, self.seq, dtype=np.int64),
            tick=np.arange(n, dtype=np.int64), utc_ms=times,
            channel=np.array(channel, dtype=np.uint8), value=np.array(value, dtype=np.int32),
            historical=rng.random() < 0.2, time_uncertain=rng.random() < 0.1)


def _outputs(updates) -> list[str]:
    return [_encode([u.subject, u.rev, u.delta, u.snapshot, u.alerts]) for u in updates]


def _saved(engine) -> dict[str, tuple[int, dict]]:
    """As the store keeps them: JSON text."""
    return {s: (t.rev, json.loads(_encode(t.to_saved()))) for s, t in engine.twins.items()}


MIX = (40, 35, 15, 5, 1)         # temperature, UV, hydration, battery, unknown channel
STEPS_MS = (2_000, 10_000, 60_000)


@pytest.mark.parametrize("seed,devices,location,weights,steps_ms,backlog_p", [
    (1, 9, (45.0, 0.0), MIX, STEPS_MS, 0.1), (2, 9, None, MIX, STEPS_MS, 0.1),
    (3, 40, (-33.9, 151.2), MIX, STEPS_MS, 0.1), (4, 3, (60.0, -20.0), MIX, STEPS_MS, 0.1),
    (5, 12, (45.0, 0.0), (30, 5, 60, 5, 0), (60_000,), 0.0)])    # hydration trends
def test_same_twins_as_the_per_patch_reference(models, seed, devices, location, weights,
                                               steps_ms, backlog_p):
    rng = random.Random(seed)
    patches = [Patch(rng, f"dev-{i}", weights) for i in range(devices)]
    subject_of = {p.device: f"s-{i}" for i, p in enumerate(patches[:-1])}   # one unregistered
    med_sed_of = {f"s-{i}": rng.choice((2.0, 2.5, 3.0, 4.5)) for i in range(0, devices, 2)}
    failing: set[tuple[int, str]] = set()
    step_no = {"n": 0}

    def run_model(name, inputs):
        if (step_no["n"], name) in failing:
            raise ModelUnavailable(name, "a failure the test injects")
        return models[name].run(inputs)

    def engines(sess, saved_new=None, saved_ref=None):
        kwargs = {"med_sed_of": med_sed_of, "location": location}
        return (TwinEngine(sess, subject_of, run_model, saved_new, **kwargs),
                ref.TwinEngine(sess, subject_of, run_model, saved_ref, **kwargs))

    new, old = engines(1)
    cycles = 70
    for cycle in range(cycles):
        if cycle == cycles // 2:                 # a gateway restart from the saved twins
            saved_new, saved_old = _saved(new), _saved(old)
            assert _encode(saved_new) == _encode(saved_old)
            new, old = engines(2, saved_new, saved_old)
        step_no["n"] = cycle
        if rng.random() < 0.15:
            failing.add((cycle, rng.choice(MODEL_NAMES)))
        batches = []
        for patch in rng.sample(patches, rng.randrange(1, devices + 1)):
            for _ in range(rng.choice((1, 1, 1, 2))):
                n = (rng.randrange(50, 700) if rng.random() < backlog_p
                     else rng.choice((1, 2, 3, 5, 8)))
                batches.append(patch.batch(n, rng.choice(steps_ms)))
        if rng.random() < 0.05:
            batches.append(SampleBatch(device_id=patches[0].device, boot_id=1,
                                       seq=np.zeros(0, np.int64), tick=np.zeros(0, np.int64),
                                       utc_ms=np.zeros(0, np.int64),
                                       channel=np.zeros(0, np.uint8),
                                       value=np.zeros(0, np.int32)))
        for b in batches:
            new.ingest(b)
            old.ingest(b)
        now_ms = max(p.t for p in patches)
        assert _outputs(new.step(now_ms)) == _outputs(old.step(now_ms)), f"cycle {cycle}"
        if rng.random() < 0.2:
            subject = rng.choice([*subject_of.values(), "s-never-seen"])
            assert _outputs([new.snapshot(subject, now_ms)]) == \
                _outputs([old.snapshot(subject, now_ms)])
        assert list(new.twins) == list(old.twins)
        for subject, twin in old.twins.items():
            assert new.twins[subject].rev == twin.rev
            assert _encode(new.twins[subject].to_saved()) == _encode(twin.to_saved()), subject
    assert any(cycle < cycles for cycle, _ in failing)


def test_same_twins_for_100_live_patches(models):
    """The bench's case (bench/bench_twin.py): 100 patches, a 3-sample live batch each."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_twin import T0_MS as BENCH_T0_MS
    from bench_twin import live_batches

    def run(name, inputs):
        return models[name].run(inputs)

    subjects = {f"d{i}": f"s{i}" for i in range(100)}
    new = TwinEngine(1, subjects, run, location=(45.0, 0.0))
    old = ref.TwinEngine(1, subjects, run, location=(45.0, 0.0))
    for k in range(70):
        for b in live_batches(k):
            new.ingest(b)
            old.ingest(b)
        now_ms = BENCH_T0_MS + k * 1000
        assert _outputs(new.step(now_ms)) == _outputs(old.step(now_ms)), f"tick {k}"
    for subject, twin in old.twins.items():
        assert _encode(new.twins[subject].to_saved()) == _encode(twin.to_saved())


def test_leaf_rounding_is_pythons_round():
    from gateway.twin_columns import round_leaf_values

    rng = np.random.default_rng(7)
    values = np.concatenate([
        rng.normal(0, 50, 100_000), rng.integers(-99_999, 99_999, 20_000) / 1000 + 0.0005,
        (np.arange(-5000, 5000) + 0.5) / 1000, np.arange(-3000, 3000) * 0.0625,
        [0.0, -0.0, -0.0004, 2.675, 1e15 + 0.3, np.inf, -np.inf]])
    got = round_leaf_values(values)
    want = [round(float(v), 3) for v in values]
    assert [_encode(v) for v in got.tolist()] == [_encode(v) for v in want]


def test_a_backlog_run_learns_as_sample_by_sample():
    """The inlined and along-time forms of the baseline's and forecaster's learning, against
    one `observe` per sample, over days of samples with nights, gaps and stale times."""
    from gateway.temp_baseline import TimeOfDayBaseline
    from gateway.uv_forecast import UvForecaster, clear_sky_many

    rng = random.Random(11)
    t, times = T0_MS, []
    for _ in range(6000):
        t += rng.choice((1_000, 5_000, 5_000, 60_000, 2_000_000)) if rng.random() < 0.99 \
            else -rng.randrange(0, 20_000)                     # a stale time now and then
        times.append(t)
    uvi = [max(0.0, rng.gauss(3, 3)) for _ in times]
    clear = clear_sky_many(45.0, 10.0, np.array(times))
    one, many = UvForecaster(45.0, 10.0), UvForecaster(45.0, 10.0)
    for chunk in range(0, len(times), 1500):
        part = slice(chunk, chunk + 1500)
        for a, b, c in zip(times[part], uvi[part], clear[part], strict=True):
            one.observe(a, b)
            assert one.recent[-1][2] == c or a <= one.last_ms
        many.observe_clear_many(times[part], uvi[part], clear[part])
        assert list(many.recent) == list(one.recent)
        assert (many._measured, many._clear, many.last_ms) == \
            (one._measured, one._clear, one.last_ms)

    temps = [33 + 2 * np.sin(k / 500) + rng.gauss(0, 0.3) + (3 if k % 2000 < 50 else 0)
             for k in range(len(times))]
    timed = sorted({max(x, 0) for x in times})
    one_b, many_b = ref.TimeOfDayBaseline(), TimeOfDayBaseline()
    for a, c in zip(timed, temps, strict=False):
        one_b.observe(a, c)
    many_b.observe_many(timed, temps[:len(timed)])
    assert many_b.to_saved() == one_b.to_saved()
