"""Twin engine: committed samples in, deltas with rev + 1 and snapshots out, with the real
temp_anomaly ONNX model."""

import numpy as np
import pytest

from gateway.inference import default_models_dir, load_models
from gateway.twin import TwinEngine, _concatenate
from gateway.values import SampleBatch

LSB_PER_C = 128  # TMP117: 7.8125 m°C per LSB


@pytest.fixture(scope="module")
def run_model():
    models = load_models(default_models_dir(), names=["temp_anomaly"])
    return lambda name, inputs: models[name].run(inputs)


def temp_batch(device, first_seq, temps_c, t0_ms=1_700_000_000_000, step_ms=10_000):
    n = len(temps_c)
    return SampleBatch(
        device_id=device, boot_id=1, seq=np.arange(first_seq, first_seq + n, dtype=np.int64),
        tick=np.arange(n, dtype=np.int64) * 100,
        utc_ms=t0_ms + np.arange(n, dtype=np.int64) * step_ms,
        channel=np.zeros(n, dtype=np.uint8),
        value=np.round(np.asarray(temps_c) * LSB_PER_C).astype(np.int32))


def test_first_step_gives_rev_1_delta_and_snapshot(run_model):
    engine = TwinEngine(1, {"dev-a": "s-a"}, run_model)
    engine.ingest(temp_batch("dev-a", 0, [33.0] * 5))
    [update] = engine.step(now_ms=1_000)
    assert update.subject == "s-a" and update.rev == 1
    assert update.delta["rev"] == 1 and update.delta["sess"] == 1
    leaf = update.delta["set"]["skin_temp_c"]
    assert leaf["v"] == pytest.approx(33.0, abs=0.01)
    assert leaf["q"] == "good"
    assert update.delta["set"]["temp_anomaly_score"]["q"] == "uncertain"  # window not full
    assert update.snapshot["rev"] == 1 and "skin_temp_c" in update.snapshot["state"]


def test_revs_increase_by_one_and_quiet_steps_publish_nothing(run_model):
    engine = TwinEngine(7, {"dev-a": "s-a"}, run_model)
    revs = []
    seq = 0
    for i in range(5):
        engine.ingest(temp_batch("dev-a", seq, [33.0 + 0.2 * i]))
        seq += 1
        for update in engine.step(now_ms=1_000 + i):
            if update.delta:
                revs.append(update.delta["rev"])
        assert engine.step(now_ms=1_000 + i) == []  # nothing new, no snapshot due
    assert revs == [1, 2, 3, 4, 5]


def test_change_below_deadband_is_not_a_delta(run_model):
    engine = TwinEngine(1, {"dev-a": "s-a"}, run_model)
    engine.ingest(temp_batch("dev-a", 0, [33.0] * 30))
    engine.step(now_ms=0)
    engine.ingest(temp_batch("dev-a", 30, [33.0]))  # same value again
    updates = engine.step(now_ms=1)
    assert all("skin_temp_c" not in (u.delta or {}).get("set", {}) for u in updates)


def test_inflammation_raises_one_alert(run_model):
    engine = TwinEngine(1, {"dev-a": "s-a"}, run_model)
    engine.ingest(temp_batch("dev-a", 0, [33.0] * 30))
    engine.step(now_ms=0)
    engine.ingest(temp_batch("dev-a", 30, [36.0] * 6))
    [update] = engine.step(now_ms=1)
    assert update.delta["set"]["inflammation"]["v"] is True
    assert update.delta["set"]["temp_delta_c"]["v"] > 2.2
    assert [a["kind"] for a in update.alerts] == ["inflammation"]
    engine.ingest(temp_batch("dev-a", 36, [36.0]))
    assert all(not u.alerts for u in engine.step(now_ms=2))


def battery_batch(device, first_seq, percents, t0_ms=1_700_000_000_000):
    n = len(percents)
    return SampleBatch(
        device_id=device, boot_id=1, seq=np.arange(first_seq, first_seq + n, dtype=np.int64),
        tick=np.arange(n, dtype=np.int64) * 3000,
        utc_ms=t0_ms + np.arange(n, dtype=np.int64) * 300_000,
        channel=np.full(n, 3, dtype=np.uint8),
        value=np.round(np.asarray(percents) * 256).astype(np.int32))


def test_battery_low_alert_with_the_patch_hysteresis(run_model):
    engine = TwinEngine(1, {"dev-a": "s-a"}, run_model)
    alerts = []
    seq = 0
    for pct in (40, 16, 14.9, 10, 18, 20, 20.5, 30, 14):
        engine.ingest(battery_batch("dev-a", seq, [pct]))
        seq += 1
        alerts += [(a["active"], a["battery_pct"]) for u in engine.step(now_ms=seq)
                   for a in u.alerts if a["kind"] == "battery_low"]
    assert [(active, round(pct, 1)) for active, pct in alerts] == [
        (True, 14.9), (False, 20.5), (True, 14.0)]
    # the state survives a gateway restart: no second "low" for the same episode
    saved = {"s-a": (engine.twins["s-a"].rev, engine.twins["s-a"].to_saved())}
    restarted = TwinEngine(2, {"dev-a": "s-a"}, run_model, saved)
    restarted.ingest(battery_batch("dev-a", seq, [12]))
    assert not [a for u in restarted.step(now_ms=100) for a in u.alerts]


def test_every_delta_comes_with_a_snapshot_of_the_same_rev(run_model):
    engine = TwinEngine(1, {"dev-a": "s-a"}, run_model)
    seq, deltas = 0, 0
    state: dict = {}
    for i, temp in enumerate([33.0, 33.05, 33.5, 33.5, 34.1, 34.15, 33.0]):
        engine.ingest(temp_batch("dev-a", seq, [temp]))
        seq += 1
        for update in engine.step(now_ms=i):
            if update.delta is None:
                assert update.snapshot is None   # quiet step after the first: nothing
                continue
            deltas += 1
            state.update(update.delta["set"])
            assert update.snapshot["rev"] == update.delta["rev"] == update.rev
            assert update.snapshot["state"] == state   # deltas applied == the snapshot
    assert 3 <= deltas < 7   # 33.05 and 34.15 are within skin_temp_c's deadband
    assert engine.step(now_ms=100) == []


def test_a_restarted_engine_publishes_its_snapshot_once_without_a_delta(run_model):
    engine = TwinEngine(1, {"dev-a": "s-a"}, run_model)
    engine.ingest(temp_batch("dev-a", 0, [33.0]))
    engine.step(now_ms=0)
    saved = {"s-a": (engine.twins["s-a"].rev, engine.twins["s-a"].to_saved())}
    restarted = TwinEngine(2, {"dev-a": "s-a"}, run_model, saved)
    [update] = restarted.step(now_ms=5)
    assert update.delta is None and update.snapshot["rev"] == 1 and update.snapshot["sess"] == 2
    assert restarted.step(now_ms=6) == []


def test_rev_continues_after_restart(run_model):
    engine = TwinEngine(1, {"dev-a": "s-a"}, run_model)
    engine.ingest(temp_batch("dev-a", 0, [33.0, 33.5]))
    engine.step(now_ms=0)
    saved = {"s-a": (engine.twins["s-a"].rev, engine.twins["s-a"].to_saved())}
    restarted = TwinEngine(2, {"dev-a": "s-a"}, run_model, saved)
    restarted.ingest(temp_batch("dev-a", 2, [34.5]))
    [update] = restarted.step(now_ms=10)
    assert update.delta["rev"] == 2 and update.delta["sess"] == 2


def test_one_model_call_per_step_across_subjects(run_model):
    calls = []

    def counting(name, inputs):
        calls.append(inputs["temp_window_c"].shape[0])
        return run_model(name, inputs)

    subjects = {f"dev-{i}": f"s-{i}" for i in range(4)}
    engine = TwinEngine(1, subjects, counting)
    for device in subjects:
        engine.ingest(temp_batch(device, 0, [33.0, 33.1]))
    assert len(engine.step(now_ms=0)) == 4
    assert calls == [4]


def test_unknown_device_is_ignored(run_model):
    engine = TwinEngine(1, {"dev-a": "s-a"}, run_model)
    engine.ingest(temp_batch("dev-x", 0, [33.0]))
    assert engine.step(now_ms=0) == []


def test_batched_across_patches_equals_one_engine_per_patch():
    """Batching subjects into one model call changes no bit of any twin."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_twin import T0_MS, live_batches

    models = load_models(default_models_dir())

    def run(name, inputs):
        return models[name].run(inputs)

    subjects = {f"d{i}": f"s{i}" for i in range(100)}
    together = TwinEngine(1, subjects, run, location=(45.0, 0.0))
    apart = {d: TwinEngine(1, {d: s}, run, location=(45.0, 0.0)) for d, s in subjects.items()}
    for k in range(90):
        batches = live_batches(k)
        for b in batches:
            together.ingest(b)
            apart[b.device_id].ingest(b)
        mine = {u.subject: (u.delta, u.alerts) for u in together.step(T0_MS + k * 1000)}
        theirs = {}
        for engine in apart.values():
            theirs |= {u.subject: (u.delta, u.alerts) for u in engine.step(T0_MS + k * 1000)}
        assert mine == theirs
    assert together.twins["s7"].state == apart["d7"].twins["s7"].state


@pytest.mark.parametrize("arrays", [
    [np.arange(3, dtype=np.int32), np.arange(5, 7, dtype=np.int32)],          # joined buffers
    [np.arange(6, dtype=np.int64)[::2], np.arange(2, dtype=np.int64)],        # one strided
    [np.arange(3, dtype=np.int32), np.arange(2, dtype=np.float32)],           # two dtypes
    [np.arange(3, dtype=">i4"), np.arange(2, dtype="<i4")],                   # two byte orders
    [np.zeros(0, dtype=np.uint8), np.array([7], dtype=np.uint8)],
])
def test_concatenate_is_np_concatenate(arrays):
    got, want = _concatenate(arrays), np.concatenate(arrays)
    assert got.dtype == want.dtype
    assert got.tolist() == want.tolist()
