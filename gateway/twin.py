"""The twin engine: committed samples in, per-subject twin revisions out (sans-I/O).

Each step makes one batched model call per model across every subject with new data, then
turns what changed into a delta (`rev` + 1) and, when due, a full snapshot (design.md §5).
Models are reached through `run_model(name, inputs) -> outputs`, so the engine never sees
onnxruntime.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from gateway.protocol import constants as ids
from gateway.store import SampleBatch

TEMP_WINDOW_SAMPLES = 30
TEMP_RECENT_SAMPLES = 6
BASELINE_EWMA_ALPHA = 1 / 360        # ~1 h of samples at the default 10 s period
SNAPSHOT_EVERY_MS = 60_000
SNAPSHOT_EVERY_DELTAS = 50
SCHEMA_VERSION = 1

# Integer wire units -> SI (docs/protocol.md §4).
TMP117_C_PER_LSB = 0.0078125         # TMP117 datasheet §7.3.3, Table 7-1: 7.8125 m°C per LSB
CHANNEL_SCALE = {
    ids.Channel.TEMPERATURE: (TMP117_C_PER_LSB, "skin_temp_c"),
    ids.Channel.UV: (0.01, "uv_index"),
    ids.Channel.HYDRATION: (0.001, "capacitance_pf"),
    ids.Channel.BATTERY: (1 / 256, "battery_pct"),
}
# Smallest change worth a delta, per property (skin_temp_c: below one TMP117 LSB).
DEADBAND = {"skin_temp_c": 0.005, "temp_baseline_c": 0.01, "temp_delta_c": 0.01,
            "temp_anomaly_score": 0.02, "uv_index": 0.01, "capacitance_pf": 0.01,
            "battery_pct": 0.5}
ROUND_DIGITS = 3

RunModel = Callable[[str, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


@dataclass
class TwinUpdate:
    subject: str
    rev: int
    delta: dict | None = None
    snapshot: dict | None = None
    alerts: list[dict] = field(default_factory=list)


@dataclass
class SubjectTwin:
    subject: str
    rev: int = 0
    state: dict[str, dict] = field(default_factory=dict)
    temp_window: deque = field(default_factory=lambda: deque(maxlen=TEMP_WINDOW_SAMPLES))
    baseline_c: float | None = None
    last_snapshot_ms: int | None = None
    deltas_since_snapshot: int = 0
    pending: dict[str, dict] = field(default_factory=dict)
    new_temp: bool = False
    last_temp_t: int = 0
    inflamed: bool = False

    def to_saved(self) -> dict:
        return {"state": self.state, "baseline_c": self.baseline_c,
                "temp_window": list(self.temp_window)}

    @classmethod
    def from_saved(cls, subject: str, rev: int, saved: dict) -> SubjectTwin:
        twin = cls(subject, rev, dict(saved.get("state", {})))
        twin.baseline_c = saved.get("baseline_c")
        twin.temp_window.extend(saved.get("temp_window", []))
        return twin


class TwinEngine:
    def __init__(self, sess: int, subject_of: Mapping[str, str], run_model: RunModel,
                 saved: Mapping[str, tuple[int, dict]] | None = None):
        self.sess = sess
        self.subject_of = dict(subject_of)
        self.run_model = run_model
        self.twins: dict[str, SubjectTwin] = {}
        for subject, (rev, state) in (saved or {}).items():
            self.twins[subject] = SubjectTwin.from_saved(subject, rev, state)

    def twin(self, subject: str) -> SubjectTwin:
        if subject not in self.twins:
            self.twins[subject] = SubjectTwin(subject)
        return self.twins[subject]

    def ingest(self, batch: SampleBatch) -> None:
        """Feed committed samples (any order of devices; each batch in seq order)."""
        subject = self.subject_of.get(batch.device_id)
        if subject is None or len(batch) == 0:
            return
        twin = self.twin(subject)
        utc = batch.utc_ms
        for channel, (scale, prop) in CHANNEL_SCALE.items():
            mask = batch.channel == channel
            if not mask.any():
                continue
            values = batch.value[mask].astype(np.float64) * scale
            times = utc[mask]
            quality = "good" if times[-1] >= 0 else "uncertain"
            twin.pending[prop] = _leaf(values[-1], int(times[-1]), quality)
            if channel == ids.Channel.TEMPERATURE:
                for v in values.tolist():
                    twin.temp_window.append(v)
                    twin.baseline_c = v if twin.baseline_c is None else (
                        twin.baseline_c + BASELINE_EWMA_ALPHA * (v - twin.baseline_c))
                twin.new_temp = True
                twin.last_temp_t = int(times[-1])

    def step(self, now_ms: int) -> list[TwinUpdate]:
        self._run_temp_anomaly()
        updates = []
        for twin in self.twins.values():
            update = self._publishable(twin, now_ms)
            if update is not None:
                updates.append(update)
        return updates

    def snapshot(self, subject: str, now_ms: int) -> TwinUpdate:
        """A full snapshot now (birth, resync): does not change rev."""
        twin = self.twin(subject)
        twin.last_snapshot_ms = now_ms
        twin.deltas_since_snapshot = 0
        return TwinUpdate(subject, twin.rev, snapshot=self._snapshot_payload(twin, now_ms))

    # -- internals ---------------------------------------------------------------
    def _run_temp_anomaly(self) -> None:
        ready = [t for t in self.twins.values() if t.new_temp and t.temp_window]
        if not ready:
            return
        windows = np.empty((len(ready), TEMP_WINDOW_SAMPLES), dtype=np.float32)
        for row, twin in enumerate(ready):
            window = list(twin.temp_window)
            # Until the window fills, pad with its oldest sample; quality says so.
            windows[row] = [window[0]] * (TEMP_WINDOW_SAMPLES - len(window)) + window
        baselines = np.array([[t.baseline_c] for t in ready], dtype=np.float32)
        out = self.run_model("temp_anomaly", {"temp_window_c": windows, "baseline_c": baselines})
        for row, twin in enumerate(ready):
            quality = "good" if len(twin.temp_window) == TEMP_WINDOW_SAMPLES else "uncertain"
            t = twin.last_temp_t
            twin.pending["temp_baseline_c"] = _leaf(float(baselines[row, 0]), t, quality)
            twin.pending["temp_delta_c"] = _leaf(float(out["delta_c"][row, 0]), t, quality)
            twin.pending["temp_anomaly_score"] = _leaf(
                float(out["anomaly_score"][row, 0]), t, quality)
            twin.pending["inflammation"] = {
                "v": bool(out["inflammation"][row, 0] > 0.5), "t": t, "q": quality}
            twin.new_temp = False

    def _publishable(self, twin: SubjectTwin, now_ms: int) -> TwinUpdate | None:
        changed = {}
        for prop, leaf in twin.pending.items():
            old = twin.state.get(prop)
            if old is None or _differs(prop, old, leaf):
                changed[prop] = leaf
        twin.pending.clear()
        update = None
        if changed:
            twin.state.update(changed)
            twin.rev += 1
            twin.deltas_since_snapshot += 1
            update = TwinUpdate(twin.subject, twin.rev, delta={
                "schema": SCHEMA_VERSION, "sess": self.sess, "rev": twin.rev, "ts": now_ms,
                "set": changed, "unset": []})
            update.alerts = self._alerts(twin, changed, now_ms)
        due = (twin.last_snapshot_ms is None
               or now_ms - twin.last_snapshot_ms >= SNAPSHOT_EVERY_MS
               or twin.deltas_since_snapshot >= SNAPSHOT_EVERY_DELTAS)
        if due and twin.state:
            if update is None:
                update = TwinUpdate(twin.subject, twin.rev)
            update.snapshot = self._snapshot_payload(twin, now_ms)
            twin.last_snapshot_ms = now_ms
            twin.deltas_since_snapshot = 0
        return update

    def _alerts(self, twin: SubjectTwin, changed: dict, now_ms: int) -> list[dict]:
        leaf = changed.get("inflammation")
        if leaf is None or leaf["v"] == twin.inflamed:
            return []
        twin.inflamed = leaf["v"]
        return [{"schema": SCHEMA_VERSION, "ts": now_ms, "kind": "inflammation",
                 "active": leaf["v"], "delta_c": twin.state["temp_delta_c"]["v"]}]

    def _snapshot_payload(self, twin: SubjectTwin, now_ms: int) -> dict:
        return {"schema": SCHEMA_VERSION, "sess": self.sess, "rev": twin.rev, "ts": now_ms,
                "state": dict(twin.state)}


def _leaf(value: float, t: int, quality: str) -> dict:
    return {"v": round(float(value), ROUND_DIGITS), "t": t, "q": quality}


def _differs(prop: str, old: dict, new: dict) -> bool:
    if old.get("q") != new.get("q"):
        return True
    if isinstance(new["v"], bool) or isinstance(old["v"], bool):
        return old["v"] != new["v"]
    return abs(new["v"] - old["v"]) >= DEADBAND.get(prop, 0.0)
