"""The twin engine: committed samples in, per-subject twin revisions out (sans-I/O).

Each step makes one batched model call per model across every subject with new data, then
turns what moved beyond its deadband into a delta (`rev` + 1) and a full snapshot carrying the
same `rev`: the retained twin is always current (design.md §5), so a subscriber that connects
at any moment starts from the exact current twin (docs/subscribers.md).
Models are reached through `run_model(name, inputs) -> outputs`, so the engine never sees
onnxruntime.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from gateway.mqtt.topics import SCHEMA_VERSION
from gateway.protocol import constants as ids
from gateway.store import SampleBatch

TEMP_WINDOW_SAMPLES = 30
TEMP_RECENT_SAMPLES = 6
BASELINE_EWMA_ALPHA = 1 / 360        # ~1 h of samples at the default 10 s period

# Integer wire units -> SI (docs/protocol.md §4).
TMP117_C_PER_LSB = 0.0078125         # TMP117 datasheet §7.3.3, Table 7-1: 7.8125 m°C per LSB
CHANNEL_SCALE = {
    ids.Channel.TEMPERATURE: (TMP117_C_PER_LSB, "skin_temp_c"),
    ids.Channel.UV: (0.01, "uv_index"),
    ids.Channel.HYDRATION: (0.001, "capacitance_pf"),
    ids.Channel.BATTERY: (1 / 256, "battery_pct"),
}
# Smallest change worth a delta, per property, compared with the value last published (so a
# slow drift is published once it adds up). The twin is state to act on; full resolution
# travels in {subject}/samples. So: the sensor's stated accuracy (TMP117 ±0.1 °C, datasheet
# §7.5; the anomaly score is delta / 0.6 °C, so 0.2 is 0.12 °C), UV index to one decimal,
# the dose in 2 % of a MED (the alert is at 80 %), minutes to MED to 5 min, battery in whole
# percent, hydration in whole units.
DEADBAND = {"skin_temp_c": 0.1, "temp_baseline_c": 0.1, "temp_delta_c": 0.1,
            "temp_anomaly_score": 0.2, "uv_index": 0.1, "capacitance_pf": 0.05,
            "battery_pct": 1.0, "uv_dose_sed": 0.05, "uv_med_fraction": 0.02,
            "minutes_to_med": 5.0, "hydration_au": 1.0}
UV_ALERT_MED_FRACTION = 0.8          # design.md §5: "80 % of MED reached"
ALERT_PROPERTY = {"inflammation": "inflammation", "uv_dose": "uv_med_fraction",
                  "battery_low": "battery_pct"}
# the patch's own LOW state (firmware/power.py): below 15 %, cleared above 20 %
BATTERY_LOW_BELOW_PCT = 15.0
BATTERY_LOW_CLEAR_ABOVE_PCT = 20.0
MAX_UV_GAP_S = 600                   # longer gaps between UV samples count as no exposure
DAY_MS = 86_400_000                  # UV dose is a daily quantity: reset at 00:00 UTC
HYDRATION_STATES = ("very dry", "dry", "normal")
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
    snapshot_published: bool = False   # since this engine started (the birth snapshot)
    pending: dict[str, dict] = field(default_factory=dict)
    new_temp: bool = False
    last_temp_t: int = 0
    inflamed: bool = False
    med_sed: float = 3.0
    uv_dose_sed: float = 0.0
    uv_dose_day: int | None = None
    last_uv_t: int | None = None
    uv_exposure: float = 0.0          # Σ UVI·dt over samples not yet run through uv_dose
    uv_exposure_s: float = 0.0
    uv_last: float = 0.0
    uv_alerted: bool = False
    battery_low: bool = False
    new_hydration: bool = False

    def to_saved(self) -> dict:
        return {"state": self.state, "baseline_c": self.baseline_c,
                "temp_window": list(self.temp_window), "uv_dose_sed": self.uv_dose_sed,
                "uv_dose_day": self.uv_dose_day, "last_uv_t": self.last_uv_t,
                "uv_alerted": self.uv_alerted, "battery_low": self.battery_low}

    @classmethod
    def from_saved(cls, subject: str, rev: int, saved: dict) -> SubjectTwin:
        twin = cls(subject, rev, dict(saved.get("state", {})))
        twin.baseline_c = saved.get("baseline_c")
        twin.temp_window.extend(saved.get("temp_window", []))
        twin.uv_dose_sed = saved.get("uv_dose_sed", 0.0)
        twin.uv_dose_day = saved.get("uv_dose_day")
        twin.last_uv_t = saved.get("last_uv_t")
        twin.uv_alerted = saved.get("uv_alerted", False)
        twin.battery_low = saved.get("battery_low", False)
        return twin


class TwinEngine:
    def __init__(self, sess: int, subject_of: Mapping[str, str], run_model: RunModel,
                 saved: Mapping[str, tuple[int, dict]] | None = None,
                 med_sed_of: Mapping[str, float] | None = None,
                 models: tuple[str, ...] = ("temp_anomaly", "uv_dose", "hydration")):
        self.sess = sess
        self.subject_of = dict(subject_of)
        self.run_model = run_model
        self.models = models
        self.med_sed_of = dict(med_sed_of or {})
        self.twins: dict[str, SubjectTwin] = {}
        for subject, (rev, state) in (saved or {}).items():
            self.twins[subject] = SubjectTwin.from_saved(subject, rev, state)
            self.twins[subject].med_sed = self.med_sed_of.get(subject, 3.0)

    def twin(self, subject: str) -> SubjectTwin:
        if subject not in self.twins:
            self.twins[subject] = SubjectTwin(subject, med_sed=self.med_sed_of.get(subject, 3.0))
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
            elif channel == ids.Channel.UV:
                self._accumulate_uv(twin, values, times)
            elif channel == ids.Channel.HYDRATION:
                twin.new_hydration = True

    @staticmethod
    def _accumulate_uv(twin: SubjectTwin, uvi: np.ndarray, times: np.ndarray) -> None:
        """Erythemal exposure Σ UVI·dt (each sample's UVI held until the next sample)."""
        for value, t in zip(uvi.tolist(), times.tolist(), strict=True):
            if t < 0:
                continue
            day = t // DAY_MS
            if twin.uv_dose_day != day:          # a new day: the daily dose starts again
                twin.uv_dose_day, twin.uv_dose_sed, twin.uv_alerted = day, 0.0, False
                twin.last_uv_t = None
            if twin.last_uv_t is not None:
                dt_s = (t - twin.last_uv_t) / 1000
                if 0 < dt_s <= MAX_UV_GAP_S:
                    twin.uv_exposure += twin.uv_last * dt_s
                    twin.uv_exposure_s += dt_s
            twin.last_uv_t, twin.uv_last = t, value

    def step(self, now_ms: int) -> list[TwinUpdate]:
        if "temp_anomaly" in self.models:
            self._run_temp_anomaly()
        if "uv_dose" in self.models:
            self._run_uv_dose()
        if "hydration" in self.models:
            self._run_hydration()
        updates = []
        for twin in self.twins.values():
            update = self._publishable(twin, now_ms)
            if update is not None:
                updates.append(update)
        return updates

    def snapshot(self, subject: str, now_ms: int) -> TwinUpdate:
        """A full snapshot now (birth, resync): does not change rev."""
        twin = self.twin(subject)
        twin.snapshot_published = True
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

    def _run_uv_dose(self) -> None:
        ready = [t for t in self.twins.values() if t.uv_exposure_s > 0]
        if not ready:
            return
        dt_s = np.array([[t.uv_exposure_s] for t in ready], dtype=np.float32)
        mean_uvi = np.array([[t.uv_exposure / t.uv_exposure_s] for t in ready], dtype=np.float32)
        out = self.run_model("uv_dose", {
            "uvi": mean_uvi, "dt_s": dt_s,
            "dose_sed_in": np.array([[t.uv_dose_sed] for t in ready], dtype=np.float32),
            "med_sed": np.array([[t.med_sed] for t in ready], dtype=np.float32)})
        for row, twin in enumerate(ready):
            twin.uv_dose_sed = float(out["dose_sed"][row, 0])
            twin.uv_exposure = twin.uv_exposure_s = 0.0
            t = int(twin.last_uv_t or 0)
            twin.pending["uv_dose_sed"] = _leaf(twin.uv_dose_sed, t, "good")
            twin.pending["uv_med_fraction"] = _leaf(float(out["med_fraction"][row, 0]), t, "good")
            twin.pending["minutes_to_med"] = _leaf(float(out["minutes_to_med"][row, 0]), t, "good")

    def _run_hydration(self) -> None:
        ready = [t for t in self.twins.values() if t.new_hydration
                 and "capacitance_pf" in t.pending and "skin_temp_c" in (t.state | t.pending)]
        if not ready:
            return
        skin = [(t.pending.get("skin_temp_c") or t.state["skin_temp_c"])["v"] for t in ready]
        out = self.run_model("hydration", {
            "capacitance_pf": np.array([[t.pending["capacitance_pf"]["v"]] for t in ready],
                                       dtype=np.float32),
            "skin_temp_c": np.array([[v] for v in skin], dtype=np.float32)})
        for row, twin in enumerate(ready):
            t = twin.pending["capacitance_pf"]["t"]
            twin.pending["hydration_au"] = _leaf(float(out["corneometer_au"][row, 0]), t, "good")
            state = HYDRATION_STATES[int(out["state"][row, 0])]
            twin.pending["hydration_state"] = {"v": state, "t": t, "q": "good"}
            twin.new_hydration = False

    def _publishable(self, twin: SubjectTwin, now_ms: int) -> TwinUpdate | None:
        fresh, twin.pending = twin.pending, {}
        # Alerts see every new value, also one within the deadband of the published value;
        # the property that raised an alert goes into the delta, so twin and alert agree.
        alerts = self._alerts(twin, fresh, now_ms)
        forced = {ALERT_PROPERTY[a["kind"]] for a in alerts}
        changed = {}
        for prop, leaf in fresh.items():
            old = twin.state.get(prop)
            if prop in forced or old is None or _differs(prop, old, leaf):
                changed[prop] = leaf
        update = None
        if changed:
            twin.state.update(changed)
            twin.rev += 1
            update = TwinUpdate(twin.subject, twin.rev, delta={
                "schema": SCHEMA_VERSION, "sess": self.sess, "rev": twin.rev, "ts": now_ms,
                "set": changed, "unset": []}, alerts=alerts)
        # The retained twin follows every delta (coalesced: one per step), and is published
        # once at start even without one.
        if twin.state and (changed or not twin.snapshot_published):
            if update is None:
                update = TwinUpdate(twin.subject, twin.rev)
            update.snapshot = self._snapshot_payload(twin, now_ms)
            twin.snapshot_published = True
        return update

    def _alerts(self, twin: SubjectTwin, changed: dict, now_ms: int) -> list[dict]:
        def current(prop: str):
            return (changed.get(prop) or twin.state[prop])["v"]

        alerts = []
        leaf = changed.get("inflammation")
        if leaf is not None and leaf["v"] != twin.inflamed:
            twin.inflamed = leaf["v"]
            alerts.append({"schema": SCHEMA_VERSION, "ts": now_ms, "kind": "inflammation",
                           "active": leaf["v"], "delta_c": current("temp_delta_c")})
        fraction = changed.get("uv_med_fraction")
        if fraction is not None and fraction["v"] >= UV_ALERT_MED_FRACTION and not twin.uv_alerted:
            twin.uv_alerted = True
            alerts.append({"schema": SCHEMA_VERSION, "ts": now_ms, "kind": "uv_dose",
                           "active": True, "med_fraction": fraction["v"],
                           "dose_sed": current("uv_dose_sed")})
        battery = changed.get("battery_pct")
        if battery is not None:
            limit = BATTERY_LOW_CLEAR_ABOVE_PCT if twin.battery_low else BATTERY_LOW_BELOW_PCT
            low = battery["v"] <= limit if twin.battery_low else battery["v"] < limit
            if low != twin.battery_low:   # time to swap or charge the patch, or no longer
                twin.battery_low = low
                alerts.append({"schema": SCHEMA_VERSION, "ts": now_ms, "kind": "battery_low",
                               "active": low, "battery_pct": battery["v"]})
        return alerts

    def _snapshot_payload(self, twin: SubjectTwin, now_ms: int) -> dict:
        return {"schema": SCHEMA_VERSION, "sess": self.sess, "rev": twin.rev, "ts": now_ms,
                "state": dict(twin.state)}


def _leaf(value: float, t: int, quality: str) -> dict:
    return {"v": round(float(value), ROUND_DIGITS), "t": t, "q": quality}


def _differs(prop: str, old: dict, new: dict) -> bool:
    if old.get("q") != new.get("q"):
        return True
    if not isinstance(new["v"], float) or not isinstance(old["v"], float):
        return old["v"] != new["v"]
    return abs(new["v"] - old["v"]) >= DEADBAND.get(prop, 0.0)
