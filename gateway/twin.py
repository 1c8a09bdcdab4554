"""The twin engine: committed samples in, per-subject twin revisions out (sans-I/O).

Each step makes one batched model call per model across every subject with new data, then
turns what moved beyond its deadband into a delta (`rev` + 1) and a full snapshot carrying the
same `rev`: the retained twin is always current (design.md §5), so a subscriber that connects
at any moment starts from the exact current twin (docs/subscribers.md).
Models are reached through `run_model(name, inputs) -> outputs`, so the engine never sees
onnxruntime. A `run_model` that raises `ModelUnavailable` (gateway/model_set.py) leaves that
model's properties in place marked `q: "bad"` and its inputs pending for the next step; the
rest of the step (every other model, the raw channels) goes on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from gateway.model_contracts import ModelUnavailable
from gateway.model_registry import CHANNEL_SCALE, MODELS
from gateway.mqtt.topics import SCHEMA_VERSION
from gateway.temp_baseline import (
    BaselineRow,
    HydrationExcess,
    HydrationExcesses,
    HydrationRow,
    TimeOfDayBaseline,
    TimeOfDayBaselines,
)
from gateway.twin_columns import BOOL, NONE, PROP_INDEX, TEXT, PropertyColumns
from gateway.uv_exposure import MAX_UV_GAP_S as MAX_UV_GAP_S  # gateway/report/archive.py
from gateway.uv_exposure import UvExposure, UvExposureRow, UvExposures
from gateway.uv_forecast import UvForecaster, UvForecasts, clear_sky_array
from gateway.values import SampleBatch

TEMP_WINDOW_SAMPLES = 30
TEMP_RECENT_SAMPLES = 6
# Until a first hydration reading: a normal, dry-free skin for temp_anomaly's gates.
NEUTRAL_HYDRATION_AU = 50.0
UV_FORECAST_ALERT_MIN = 30.0         # warn when the forecast says MED within 30 minutes
FORECAST_EVERY_MS = 60_000
HYDRATION_TREND_WINDOW_MS = 3_600_000
HYDRATION_TREND_MIN_SPAN_MS = 1_800_000
HYDRATION_TREND_MIN_POINTS = 10
DRYING_TREND_AU_PER_H = -5.0         # drying alert: falling this fast ...
DRYING_BELOW_OWN_AU = -5.0           # ... and this far below the subject's own ~6 h mean
DRYING_CLEAR_TREND_AU_PER_H = -2.0
DRYING_CLEAR_BELOW_OWN_AU = -2.0
DRYING_PERSISTS_MS = 15 * 60_000
OFF_SKIN_BELOW_AU = 5.0              # no skin reads this dry: the electrode has lost it

UV_ALERT_MED_FRACTION = 0.8          # design.md §5: "80 % of MED reached"
# the patch's own LOW state (firmware/power.py): below 15 %, cleared above 20 %
BATTERY_LOW_BELOW_PCT = 15.0
BATTERY_LOW_CLEAR_ABOVE_PCT = 20.0
# Below this many subjects with a reading to learn, one by one is faster than numpy.
LOCKSTEP_MIN_SUBJECTS = 6
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
    # In an engine, these four are views of its rows (struct of arrays).
    temp_window: deque | WindowRow = field(
        default_factory=lambda: deque(maxlen=TEMP_WINDOW_SAMPLES))
    # in an engine, a row of its TimeOfDayBaselines
    temp_baseline: TimeOfDayBaseline | BaselineRow = field(default_factory=TimeOfDayBaseline)
    hydration: HydrationExcess | HydrationRow = field(default_factory=HydrationExcess)
    uv: UvExposure | UvExposureRow = field(default_factory=UvExposure)
    loose: bool = False
    drying: bool = False
    drying_since_ms: int | None = None
    uv_forecast_alerted: bool = False
    snapshot_published: bool = False   # since this engine started (the birth snapshot)
    inflamed: bool = False
    med_sed: float = 3.0
    uv_alerted: bool = False
    battery_low: bool = False
    slot: int = -1                    # this twin's column in its engine's arrays

    def to_saved(self) -> dict:
        return {"state": self.state, "temp_baseline": self.temp_baseline.to_saved(),
                "hydration_mean_au": self.hydration.mean,
                "hydration_au": self.hydration.latest,
                "temp_window": list(self.temp_window), "uv_dose_sed": self.uv.dose_sed,
                "uv_dose_day": self.uv.day, "last_uv_t": self.uv.last_t,
                "uv_alerted": self.uv_alerted, "battery_low": self.battery_low,
                "loose": self.loose, "drying": self.drying,
                "uv_forecast_alerted": self.uv_forecast_alerted}

    @classmethod
    def from_saved(cls, subject: str, rev: int, saved: dict) -> SubjectTwin:
        twin = cls(subject, rev, dict(saved.get("state", {})))
        twin.temp_baseline = TimeOfDayBaseline.from_saved(saved.get("temp_baseline") or {})
        if twin.temp_baseline.fallback is None and saved.get("baseline_c") is not None:
            twin.temp_baseline.fallback = saved["baseline_c"]       # saved by twin 1.x
        twin.hydration = HydrationExcess(saved.get("hydration_mean_au"), saved.get("hydration_au"))
        twin.loose = saved.get("loose", False)
        twin.drying = saved.get("drying", False)
        twin.uv_forecast_alerted = saved.get("uv_forecast_alerted", False)
        twin.temp_window = deque(saved.get("temp_window", []), maxlen=TEMP_WINDOW_SAMPLES)
        twin.uv = UvExposure(saved.get("uv_dose_sed", 0.0), saved.get("uv_dose_day"),
                             saved.get("last_uv_t"))
        twin.uv_alerted = saved.get("uv_alerted", False)
        twin.battery_low = saved.get("battery_low", False)
        return twin


# channel number -> property column and scale (NaN: not a twin channel), for numpy indexing
_CHANNEL_PROP = np.full(256, -1, dtype=np.int64)
_CHANNEL_SCALE = np.full(256, np.nan, dtype=np.float64)
for _channel, (_scale, _prop) in CHANNEL_SCALE.items():
    _CHANNEL_PROP[_channel], _CHANNEL_SCALE[_channel] = PROP_INDEX[_prop], _scale
_P = PROP_INDEX
_GOOD, _UNCERTAIN = 0, 1                 # PropertyColumns' quality codes


class WindowRow:
    """One subject's temperature window in its engine, as `list()` and `len()` see it."""

    __slots__ = ("engine", "row")

    def __init__(self, engine: TwinEngine, row: int) -> None:
        self.engine, self.row = engine, row

    def __len__(self) -> int:
        return int(self.engine._window_len[self.row])

    def __iter__(self) -> Iterator[float]:
        return iter(self.engine._window[self.row, TEMP_WINDOW_SAMPLES - len(self):].tolist())


class TwinEngine:
    def __init__(self, sess: int, subject_of: Mapping[str, str], run_model: RunModel,
                 saved: Mapping[str, tuple[int, dict]] | None = None,
                 med_sed_of: Mapping[str, float] | None = None,
                 models: tuple[str, ...] = ("temp_anomaly", "uv_dose", "hydration"),
                 location: tuple[float, float] | None = None):
        """`location`: the gateway's (latitude, longitude) in degrees; with it the twin
        forecasts the UV dose (gateway/uv_forecast.py) and days start at local solar
        midnight instead of 00:00 UTC."""
        self.sess = sess
        self.location = location
        # UV doses are daily: a day starts at local solar midnight (UTC without a location).
        self.day_offset_ms = int(location[1] / 15 * 3_600_000) if location else 0
        self.subject_of = dict(subject_of)
        self.run_model = run_model
        self.models = models
        self.med_sed_of = dict(med_sed_of or {})
        self.twins: dict[str, SubjectTwin] = {}
        # Struct of arrays: per-subject values the step reads for all subjects at once,
        # indexed by SubjectTwin.slot (slots in the order twins were made).
        self._by_slot: list[SubjectTwin] = []
        self._states: list[dict] = []
        self.columns = PropertyColumns()
        self._capacity = 0
        self._window = np.zeros((0, TEMP_WINDOW_SAMPLES))   # padded with its oldest sample
        self._window_len = np.zeros(0, dtype=np.int64)
        self._new_temp = np.zeros(0, dtype=bool)
        self._new_hydration = np.zeros(0, dtype=bool)
        self._last_temp_t = np.zeros(0, dtype=np.int64)
        self._baselines = TimeOfDayBaselines()
        self._hydration = HydrationExcesses()
        self._hydration_history = HydrationHistories()
        self._uv = UvExposures(self.day_offset_ms)
        self._forecasts = UvForecasts()
        self._sun = UvForecaster(*location) if location else None
        self._forecast_at = np.zeros(0, dtype=np.int64)
        self._forecast_has = np.zeros(0, dtype=bool)
        self._inputs = {name: ModelInputs(MODELS[name].contract.inputs)
                        for name in ("temp_anomaly", "uv_dose", "hydration")}
        # text codes are the columns' for good once given
        self._hydration_state_codes = np.array(
            [self.columns.text_code(s) for s in HYDRATION_STATES])
        self._queued: list[SampleBatch] = []
        self._queued_slots: list[int] = []
        self._queued_lengths: list[int] = []
        self._queued_uncertain = False
        self._slot_of_device: dict[str, int] = {}
        # twins whose birth snapshot is still due (it waits until they hold a state)
        self._unpublished: list[SubjectTwin] = []
        for subject, (rev, state) in (saved or {}).items():
            twin = SubjectTwin.from_saved(subject, rev, state)
            twin.med_sed = self.med_sed_of.get(subject, 3.0)
            self._add(twin)

    def _add(self, twin: SubjectTwin) -> None:
        slot = twin.slot = len(self._by_slot)
        self.twins[twin.subject] = twin
        self._by_slot.append(twin)
        self._states.append(twin.state)
        self._unpublished.append(twin)
        if slot >= self._capacity:
            self._grow(max(16, 2 * self._capacity))
        self.columns.grow(self._capacity)
        self.columns.load(slot, twin.state)
        window = list(twin.temp_window)[-TEMP_WINDOW_SAMPLES:]
        if window:
            self._window[slot] = [window[0]] * (TEMP_WINDOW_SAMPLES - len(window)) + window
        self._window_len[slot] = len(window)
        twin.temp_window = WindowRow(self, slot)
        if isinstance(twin.temp_baseline, TimeOfDayBaseline):
            self._baselines.put(slot, twin.temp_baseline)
        twin.temp_baseline = BaselineRow(self._baselines, slot)
        if isinstance(twin.hydration, HydrationExcess):
            self._hydration.put(slot, twin.hydration)
        twin.hydration = HydrationRow(self._hydration, slot)
        if isinstance(twin.uv, UvExposure):
            self._uv.load(slot, twin.uv.dose_sed, twin.med_sed, twin.uv.day, twin.uv.last_t)
        twin.uv = UvExposureRow(self._uv, slot)

    def _grow(self, capacity: int) -> None:
        def wider(a: np.ndarray) -> np.ndarray:
            b = np.zeros((capacity, *a.shape[1:]), dtype=a.dtype)
            b[:len(a)] = a
            return b
        self._window, self._window_len = wider(self._window), wider(self._window_len)
        self._new_temp, self._new_hydration = wider(self._new_temp), wider(self._new_hydration)
        self._last_temp_t = wider(self._last_temp_t)
        self._baselines.grow(capacity)
        self._hydration.grow(capacity)
        self._hydration_history.grow(capacity)
        self._uv.grow(capacity)
        self._forecasts.grow(capacity)
        for inputs in self._inputs.values():
            inputs.grow(capacity)
        self._forecast_at, self._forecast_has = wider(self._forecast_at), \
            wider(self._forecast_has)
        self._capacity = capacity

    def twin(self, subject: str) -> SubjectTwin:
        twin = self.twins.get(subject)
        if twin is None:
            twin = SubjectTwin(subject, med_sed=self.med_sed_of.get(subject, 3.0))
            self._add(twin)
        return twin

    def ingest(self, batch: SampleBatch) -> None:
        """Feed committed samples (any order of devices; each batch in seq order). They are
        taken in at the next step, all subjects' together."""
        length = len(batch.seq)
        if not length:
            return
        slot = self._slot_of_device.get(batch.device_id)
        if slot is None:
            subject = self.subject_of.get(batch.device_id)
            if subject is None:
                return
            slot = self._slot_of_device[batch.device_id] = self.twin(subject).slot
        self._queued.append(batch)
        self._queued_slots.append(slot)
        self._queued_lengths.append(length)
        if batch.time_uncertain:
            self._queued_uncertain = True

    def step(self, now_ms: int) -> list[TwinUpdate]:
        self._take_queued()
        for name, run in (("temp_anomaly", self._run_temp_anomaly),
                          ("uv_dose", self._run_uv_dose), ("hydration", self._run_hydration)):
            if name in self.models:
                try:
                    run()
                except ModelUnavailable:
                    self.columns.mark_bad([_P[p] for p in MODELS[name].properties],
                                          len(self._by_slot))
        return self._publish(now_ms)

    def snapshot(self, subject: str, now_ms: int) -> TwinUpdate:
        """A full snapshot now (birth, resync): does not change rev."""
        twin = self.twin(subject)
        twin.snapshot_published = True
        return TwinUpdate(subject, twin.rev, snapshot=self._snapshot_payload(twin, now_ms))

    # -- internals ---------------------------------------------------------------
    def _take_queued(self) -> None:
        """Every queued sample in one pass: the raw channels' leaves and the flags with numpy
        across subjects, the per-sample state (window, baseline, UV exposure) per subject."""
        queued, self._queued = self._queued, []
        queued_slots, self._queued_slots = self._queued_slots, []
        lengths, self._queued_lengths = self._queued_lengths, []
        any_uncertain, self._queued_uncertain = self._queued_uncertain, False
        if not queued:
            return
        if len(queued) == 1:
            batch = queued[0]
            channel, value, utc = batch.channel, batch.value, batch.utc_ms
            slots = np.full(len(channel), queued_slots[0], dtype=np.int64)
            uncertain = np.full(len(channel), True) if batch.time_uncertain else None
        else:
            channel = _concatenate([b.channel for b in queued])
            value = _concatenate([b.value for b in queued])
            utc = _concatenate([b.utc_ms for b in queued])
            slots = np.array(queued_slots, dtype=np.int64).repeat(lengths)
            uncertain = (np.array([b.time_uncertain for b in queued]).repeat(lengths)
                         if any_uncertain else None)
        prop = _CHANNEL_PROP[channel]
        if np.count_nonzero(prop < 0):
            known = prop >= 0
            channel, value, utc = channel[known], value[known], utc[known]
            slots, prop = slots[known], prop[known]
            uncertain = None if uncertain is None else uncertain[known]
            if not len(channel):
                return
        values = value * _CHANNEL_SCALE[channel]
        n = len(channel)
        key = prop * self._capacity + slots
        if np.bincount(key).max() == 1:
            self._take_single_samples(prop, slots, values, utc, uncertain)
            return
        # Runs of one property (channel) of one subject, in sample order; each run's last
        # sample is its pending leaf.
        order = key.argsort(kind="stable")
        sorted_key = key[order]
        ends = (sorted_key[1:] != sorted_key[:-1]).nonzero()[0] + 1
        starts = np.concatenate(([0], ends))
        ends = np.concatenate((ends, [n]))
        last = order[ends - 1]
        run_prop, run_slot, run_t = prop[last], slots[last], utc[last]
        good = run_t >= 0 if uncertain is None else (run_t >= 0) & ~uncertain[last]
        quality = np.where(good, _GOOD, _UNCERTAIN)
        self.columns.set_floats(run_prop, run_slot, values[last], run_t, quality,
                                rounded_now=True,   # the hydration model reads them
                                first=order[starts])
        for wanted, handle in ((_P["skin_temp_c"], self._take_temperature),
                               (_P["uv_index"], self._take_uv)):
            runs = (run_prop == wanted).nonzero()[0]
            if len(runs):
                first, stop = int(starts[runs[0]]), int(ends[runs[-1]])
                picked = order[first:stop]
                handle(run_slot[runs], starts[runs] - first, ends[runs] - first,
                       values[picked], utc[picked])
        self._new_hydration[run_slot[run_prop == _P["capacitance_pf"]]] = True

    def _take_single_samples(self, prop: np.ndarray, slots: np.ndarray, values: np.ndarray,
                             utc: np.ndarray, uncertain: np.ndarray | None) -> None:
        """`_take_queued` when no subject has two samples of one property (a live step):
        every sample is a run of its own, so no sort to find the runs."""
        n = len(prop)
        good = utc >= 0 if uncertain is None else (utc >= 0) & ~uncertain
        self.columns.set_floats(prop, slots, values, utc, np.where(good, _GOOD, _UNCERTAIN),
                                rounded_now=True,   # the hydration model reads them
                                first=np.arange(n))
        for wanted, handle in ((_P["skin_temp_c"], self._take_temperature),
                               (_P["uv_index"], self._take_uv)):
            picked = (prop == wanted).nonzero()[0]
            if len(picked):
                begin = np.arange(len(picked))
                handle(slots[picked], begin, begin + 1, values[picked], utc[picked])
        self._new_hydration[slots[prop == _P["capacitance_pf"]]] = True

    def _take_temperature(self, run_slots: np.ndarray, begin: np.ndarray, end: np.ndarray,
                          values: np.ndarray, times: np.ndarray) -> None:
        """Temperature runs (one per subject): window, time-of-day baseline, flags."""
        self._last_temp_t[run_slots] = times[end - 1]
        self._observe_baselines(run_slots, begin, end, values, times)
        self._new_temp[run_slots] = True
        # The windows (padded with their oldest sample), all at once: position j of the
        # new window is element max(L + m - 30 + j, 0) of (old window ++ new samples).
        old_len = self._window_len[run_slots]
        # live: one sample each (runs are never empty), each into a full window
        if len(values) == len(run_slots) and not np.count_nonzero(old_len < TEMP_WINDOW_SAMPLES):
            window = self._window[run_slots]
            window[:, :-1] = window[:, 1:]
            window[:, -1] = values
            self._window[run_slots] = window
            return
        added = end - begin
        total = old_len + added
        j = np.arange(TEMP_WINDOW_SAMPLES)
        index = np.maximum(total[:, None] - TEMP_WINDOW_SAMPLES + j, 0)
        from_old = index < old_len[:, None]
        old_col = np.minimum(np.maximum(TEMP_WINDOW_SAMPLES - old_len[:, None] + index, 0),
                             TEMP_WINDOW_SAMPLES - 1)
        new_pos = np.minimum(np.maximum(begin[:, None] + index - old_len[:, None], 0),
                             len(values) - 1)
        self._window[run_slots] = np.where(
            from_old, self._window[run_slots[:, None], old_col], values[new_pos])
        self._window_len[run_slots] = np.minimum(total, TEMP_WINDOW_SAMPLES)

    def _observe_baselines(self, run_slots: np.ndarray, begin: np.ndarray, end: np.ndarray,
                           values: np.ndarray, times: np.ndarray) -> None:
        """Each run's timed readings into its subject's baseline, in order: the k-th reading
        of every subject in one numpy pass while many subjects have one, the rest (a
        backlog's long run) one by one."""
        timed = times >= 0
        if np.count_nonzero(timed) < len(times):
            before = np.concatenate(([0], np.cumsum(timed)))
            begin, end = before[begin], before[end]
            values, times = values[timed], times[timed]
        elif len(times) == len(run_slots) >= LOCKSTEP_MIN_SUBJECTS:
            self._baselines.observe(run_slots, times, values)   # one reading each (live)
            return
        counts = end - begin
        k = 0
        while True:
            active = (counts > k).nonzero()[0]
            if len(active) < LOCKSTEP_MIN_SUBJECTS:
                break
            at = begin[active] + k
            self._baselines.observe(run_slots[active], times[at], values[at])
            k += 1
        if len(active):
            value_list, time_list = values.tolist(), times.tolist()
            for slot, a, b in zip(run_slots[active].tolist(), (begin[active] + k).tolist(),
                                  end[active].tolist(), strict=True):
                baseline = self._baselines.get(slot)
                baseline.observe_many(time_list[a:b], value_list[a:b])
                self._baselines.put(slot, baseline)

    def _take_uv(self, run_slots: np.ndarray, begin: np.ndarray, end: np.ndarray,
                 values: np.ndarray, times: np.ndarray) -> None:
        """UV runs (one per subject): the daily exposure (gateway/uv_exposure.py) and the
        forecaster's window, with clear-sky UVIs for every sample in one call."""
        for slot in self._uv.take(run_slots, begin, end, values, times):
            twin = self._by_slot[slot]     # a new day: its alerts may come again
            twin.uv_alerted = twin.uv_forecast_alerted = False
        if self.location is None:
            return
        timed = times >= 0
        all_timed = np.count_nonzero(timed) == len(times)
        if not all_timed:
            before = np.concatenate(([0], np.cumsum(timed)))
            begin, end = before[begin], before[end]
            values, times = values[timed], times[timed]
            if not len(times):
                return
        clear = clear_sky_array(*self.location, times)
        forecasts = self._forecasts
        if all_timed and len(times) == len(run_slots) >= LOCKSTEP_MIN_SUBJECTS:
            forecasts.observe(run_slots, times, values, clear)   # one sample each (live)
            return
        counts = end - begin
        k = 0
        while True:
            active = (counts > k).nonzero()[0]
            if len(active) < LOCKSTEP_MIN_SUBJECTS:
                break
            at = begin[active] + k
            forecasts.observe(run_slots[active], times[at], values[at], clear[at])
            k += 1
        if len(active):
            value_list, time_list, clear_list = values.tolist(), times.tolist(), clear.tolist()
            for slot, a, b in zip(run_slots[active].tolist(), (begin[active] + k).tolist(),
                                  end[active].tolist(), strict=True):
                forecaster = forecasts.get(slot, *self.location)
                forecaster.observe_clear_many(time_list[a:b], value_list[a:b], clear_list[a:b])
                forecasts.put(slot, forecaster)

    def _run_temp_anomaly(self) -> None:
        n = len(self._by_slot)
        slots = (self._new_temp[:n] & (self._window_len[:n] > 0)).nonzero()[0]
        if not len(slots):
            return
        cells = _cells(slots, n)
        last_t = self._last_temp_t[cells]           # read only (a view when a slice)
        expected = self._baselines.expected(slots, last_t)
        latest = self._window[:, -1][cells]
        feed = self._inputs["temp_anomaly"].rows(len(slots))
        feed["temp_window_c"][:] = self._window[cells]       # float32 as astype rounds
        baselines = feed["baseline_c"]
        baselines[:, 0] = np.where(np.isnan(expected), latest, expected)
        latest = self._hydration.latest[cells]
        feed["hydration_au"][:, 0] = np.where(np.isnan(latest), NEUTRAL_HYDRATION_AU, latest)
        feed["hydration_excess_au"][:, 0] = self._hydration.excess_au(slots)
        out = self.run_model("temp_anomaly", feed)
        # A baseline is "good" once it has seen every half hour of a day.
        learned = self._baselines.unseen[slots] == 0
        quality = np.where((self._window_len[slots] == TEMP_WINDOW_SAMPLES) & learned,
                           _GOOD, _UNCERTAIN)
        t = last_t
        columns = self.columns
        columns.set_floats(_P["temp_baseline_c"], cells, baselines[:, 0], t, quality)
        columns.set_floats(_P["temp_delta_c"], cells, out["delta_c"][:, 0], t, quality)
        columns.set_floats(_P["temp_anomaly_score"], cells, out["anomaly_score"][:, 0], t,
                           quality)
        columns.set_coded(_P["inflammation"], cells, BOOL, out["inflammation"][:, 0] > 0.5,
                          t, quality)
        columns.set_coded(_P["exertion"], cells, BOOL, out["exertion"][:, 0] > 0.5, t, _GOOD)
        loose, skin = columns.text_code("loose"), columns.text_code("skin")
        columns.set_coded(_P["contact"], cells, TEXT,
                          np.where(out["detached"][:, 0] > 0.5, loose, skin), t, _GOOD)
        self._new_temp[cells] = False

    def _run_uv_dose(self) -> None:
        uv = self._uv
        n = len(self._by_slot)
        slots = (uv.exposure_s[:n] > 0).nonzero()[0]
        if not len(slots):
            return
        cells = _cells(slots, n)
        exposure_s = uv.exposure_s[cells]
        feed = self._inputs["uv_dose"].rows(len(slots))
        feed["uvi"][:, 0] = uv.exposure[cells] / exposure_s
        feed["dt_s"][:, 0] = exposure_s
        feed["dose_sed_in"][:, 0] = uv.dose_sed[cells]
        feed["med_sed"][:, 0] = uv.med_sed[cells]
        out = self.run_model("uv_dose", feed)
        t = np.where(uv.has_last[slots], uv.last_t[slots], 0)
        dose = out["dose_sed"][:, 0]
        uv.dose_sed[cells] = dose
        uv.exposure[cells] = uv.exposure_s[cells] = 0.0
        columns = self.columns
        columns.set_floats(_P["uv_dose_sed"], cells, dose, t, _GOOD)
        columns.set_floats(_P["uv_med_fraction"], cells, out["med_fraction"][:, 0], t, _GOOD)
        columns.set_floats(_P["minutes_to_med"], cells, out["minutes_to_med"][:, 0], t, _GOOD)
        if self.location is None:
            return
        # The sun's path changes slowly: integrate forward once a minute of data.
        at = self._forecast_at[slots]
        due = (~self._forecast_has[slots] | (t - at >= FORECAST_EVERY_MS) | (t < at))
        if not np.count_nonzero(due):
            return
        slots, t = slots[due], t[due]
        forecast = _P["minutes_to_med_forecast"]
        self._forecast_at[slots], self._forecast_has[slots] = t, True
        sun = self._sun
        assert sun is not None
        for slot, t_ms, dose_sed in zip(slots.tolist(), t.tolist(), uv.dose_sed[slots].tolist(),
                                        strict=True):
            minutes = sun.minutes_to_med_at(self._forecasts.factor(slot), t_ms, dose_sed,
                                            self._by_slot[slot].med_sed)
            # None: the dose will not reach MED before sunset at today's pattern.
            columns.set_one(forecast, slot, None if minutes is None else _round(minutes),
                            t_ms, "good")

    def _run_hydration(self) -> None:
        n = len(self._by_slot)
        columns = self.columns
        cap, skin = _P["capacitance_pf"], _P["skin_temp_c"]
        skin_pending = columns.pend_kind[skin, :n] != NONE
        slots = (self._new_hydration[:n] & (columns.pend_kind[cap, :n] != NONE)
                 & (skin_pending | (columns.state_kind[skin, :n] != NONE))).nonzero()[0]
        if not len(slots):
            return
        cells = _cells(slots, n)
        feed = self._inputs["hydration"].rows(len(slots))
        feed["skin_temp_c"][:, 0] = np.where(skin_pending[cells], columns.pend_v[skin][cells],
                                             columns.state_v[skin][cells])
        feed["capacitance_pf"][:, 0] = columns.pend_v[cap][cells]
        out = self.run_model("hydration", feed)
        t = columns.pend_t[cap][slots]
        au = out["corneometer_au"][:, 0]
        columns.set_floats(_P["hydration_au"], cells, au, t, _GOOD)
        states = self._hydration_state_codes
        columns.set_coded(_P["hydration_state"], cells, TEXT,
                          states[out["state"][:, 0].astype(np.int64)], t, _GOOD)
        self._hydration.observe(slots, au.astype(np.float64))
        trend_prop = _P["hydration_trend_au_per_h"]
        for slot, trend in self._hydration_history.trends(slots, t, au.astype(np.float64)):
            columns.set_one(trend_prop, slot, _round(trend), int(columns.pend_t[cap, slot]),
                            "good")
        self._new_hydration[cells] = False

    def _publish(self, now_ms: int) -> list[TwinUpdate]:
        changed_by_slot = dict(self.columns.take_changed(len(self._by_slot), self._states))
        if self._unpublished:
            for twin in self._unpublished:
                changed_by_slot.setdefault(twin.slot, {})
        updates = []
        for slot in sorted(changed_by_slot):
            twin = self._by_slot[slot]
            changed = changed_by_slot[slot]
            update = None
            if changed:
                twin.state.update(changed)
                twin.rev += 1
                update = TwinUpdate(twin.subject, twin.rev, delta={
                    "schema": SCHEMA_VERSION, "sess": self.sess, "rev": twin.rev, "ts": now_ms,
                    "set": changed, "unset": []})
                update.alerts = self._alerts(twin, changed, now_ms)
            # The retained twin follows every delta (coalesced: one per step), and is
            # published once at start even without one.
            if twin.state and (changed or not twin.snapshot_published):
                if update is None:
                    update = TwinUpdate(twin.subject, twin.rev)
                update.snapshot = self._snapshot_payload(twin, now_ms)
                twin.snapshot_published = True
            if update is not None:
                updates.append(update)
        if self._unpublished:
            self._unpublished = [t for t in self._unpublished if not t.snapshot_published]
        return updates

    def _alerts(self, twin: SubjectTwin, changed: dict, now_ms: int) -> list[dict]:
        alerts = []
        leaf = changed.get("inflammation")
        if leaf is not None and leaf["v"] != twin.inflamed:
            twin.inflamed = leaf["v"]
            alerts.append({"schema": SCHEMA_VERSION, "ts": now_ms, "kind": "inflammation",
                           "active": leaf["v"], "delta_c": twin.state["temp_delta_c"]["v"]})
        fraction = changed.get("uv_med_fraction")
        if fraction is not None and fraction["v"] >= UV_ALERT_MED_FRACTION and not twin.uv_alerted:
            twin.uv_alerted = True
            alerts.append({"schema": SCHEMA_VERSION, "ts": now_ms, "kind": "uv_dose",
                           "active": True, "med_fraction": fraction["v"],
                           "dose_sed": twin.state["uv_dose_sed"]["v"]})
        contact = changed.get("contact")
        if contact is not None and (contact["v"] == "loose") != twin.loose:
            twin.loose = contact["v"] == "loose"
            alerts.append({"schema": SCHEMA_VERSION, "ts": now_ms, "kind": "patch_loose",
                           "active": twin.loose})
        forecast = changed.get("minutes_to_med_forecast")
        if (forecast is not None and forecast["v"] is not None and not twin.uv_forecast_alerted
                and not twin.uv_alerted and forecast["v"] <= UV_FORECAST_ALERT_MIN):
            twin.uv_forecast_alerted = True
            alerts.append({"schema": SCHEMA_VERSION, "ts": now_ms, "kind": "uv_forecast",
                           "active": True, "minutes_to_med": forecast["v"],
                           "med_fraction": twin.state.get("uv_med_fraction", {}).get("v", 0.0)})
        trend = changed.get("hydration_trend_au_per_h")
        if trend is not None and "hydration_au" in twin.state:
            au = twin.state["hydration_au"]["v"]
            # Falling and below the subject's own level: a bath or sweat drying off comes
            # back to that level, and a loose patch is not skin at all.
            below = twin.hydration.excess_au
            if twin.loose or au < OFF_SKIN_BELOW_AU:
                drying = False
            elif twin.drying:
                drying = (trend["v"] <= DRYING_CLEAR_TREND_AU_PER_H
                          and below <= DRYING_CLEAR_BELOW_OWN_AU)
            else:
                falling = trend["v"] <= DRYING_TREND_AU_PER_H and below <= DRYING_BELOW_OWN_AU
                if not falling:
                    twin.drying_since_ms = None
                elif twin.drying_since_ms is None:
                    twin.drying_since_ms = trend["t"]
                # Skin dries over hours; a fall that lasts minutes is a patch coming off.
                drying = falling and trend["t"] - twin.drying_since_ms >= DRYING_PERSISTS_MS
            if drying != twin.drying:
                twin.drying = drying
                alerts.append({"schema": SCHEMA_VERSION, "ts": now_ms, "kind": "drying",
                               "active": drying, "hydration_au": au,
                               "trend_au_per_h": trend["v"]})
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


def _cells(slots: np.ndarray, n: int) -> np.ndarray | slice:
    """Ascending distinct `slots` below n for writing into per-slot arrays: all n of them
    (a busy step) as a slice, which numpy writes several times faster than an index."""
    return slice(0, n) if len(slots) == n else slots


def _concatenate(arrays: list[np.ndarray]) -> np.ndarray:
    """np.concatenate, faster for many small arrays of one dtype (a live cycle's batches):
    their buffers joined as they are (a strided one is refused: then np.concatenate)."""
    dtype = arrays[0].dtype
    if [a.dtype for a in arrays].count(dtype) == len(arrays):
        try:
            return np.frombuffer(b"".join(arrays), dtype=dtype)  # type: ignore[arg-type]
        except (TypeError, BufferError):
            pass
    return np.concatenate(arrays)


class ModelInputs:
    """One model's float32 inputs for every subject, built in place each step: a column
    [capacity] per [N, 1] input and a [capacity, width] block per wider one. The feed handed
    to the model is [N, width] C-contiguous views of their first N rows (float32 as the
    contract wants, so the model runs them as they are), kept while N stays the same."""

    def __init__(self, widths: Mapping[str, int]) -> None:
        self.widths = dict(widths)
        self.blocks = {name: np.zeros((0, width), dtype=np.float32)
                       for name, width in self.widths.items()}
        self._feed: dict[str, np.ndarray] = {}
        self._rows = -1

    def grow(self, capacity: int) -> None:
        self.blocks = {name: np.zeros((capacity, width), dtype=np.float32)
                       for name, width in self.widths.items()}
        self._rows = -1

    def rows(self, n: int) -> dict[str, np.ndarray]:
        """The first n rows of every input, to be filled and then run."""
        if n != self._rows:
            self._feed = {name: block[:n] for name, block in self.blocks.items()}
            self._rows = n
        return self._feed


def _column(values: list[float]) -> np.ndarray:
    """[N, 1] float32 from one value per subject."""
    return np.array(values, dtype=np.float32).reshape(-1, 1)


class HydrationHistories:
    """Every subject's last hour of (utc_ms, AU) in a ring, one row each: a reading of each
    of many subjects appended, and the hour's older ones dropped, in one numpy pass."""

    def __init__(self) -> None:
        self.width = 16
        self.head = np.zeros(0, dtype=np.int64)       # the oldest entry's column
        self.size = np.zeros(0, dtype=np.int64)
        self.ring_t = np.zeros((0, self.width), dtype=np.int64)
        self.ring_au = np.zeros((0, self.width))

    def grow(self, capacity: int) -> None:
        for name in ("head", "size", "ring_t", "ring_au"):
            old = getattr(self, name)
            wider = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            wider[:len(old)] = old
            setattr(self, name, wider)

    def _widen(self) -> None:
        order = (self.head[:, None] + np.arange(self.width)) % self.width
        self.ring_t = np.concatenate(
            (np.take_along_axis(self.ring_t, order, axis=1), np.zeros_like(self.ring_t)), axis=1)
        self.ring_au = np.concatenate(
            (np.take_along_axis(self.ring_au, order, axis=1), np.zeros_like(self.ring_au)),
            axis=1)
        self.head[:] = 0
        self.width *= 2

    def trends(self, rows: np.ndarray, t: np.ndarray, au: np.ndarray) -> list[tuple[int, float]]:
        """Append one reading to each of these distinct rows; (row, least-squares slope of
        its last hour in AU per hour) where the hour holds enough to tell."""
        size = self.size[rows]
        if np.count_nonzero(size >= self.width):
            self._widen()
        # The rings by flat cell index (always made C-contiguous: these are views).
        width, head = self.width, self.head[rows]
        ring_t = self.ring_t.reshape(-1)
        base = rows * width
        cells = base + (head + size) % width
        ring_t[cells], self.ring_au.reshape(-1)[cells] = t, au
        size += 1
        old = t - ring_t[base + head] > HYDRATION_TREND_WINDOW_MS
        popping = None                     # positions in rows still dropping their oldest
        while np.count_nonzero(old):
            popping = old.nonzero()[0] if popping is None else popping[old]
            head[popping] = (head[popping] + 1) % width
            size[popping] -= 1
            old = (t[popping] - ring_t[base[popping] + head[popping]]
                   > HYDRATION_TREND_WINDOW_MS)
        self.head[rows], self.size[rows] = head, size
        ready = (size >= HYDRATION_TREND_MIN_POINTS) & \
            (t - ring_t[base + head] >= HYDRATION_TREND_MIN_SPAN_MS)
        out = []
        for row in rows[ready].tolist():
            columns = (self.head[row] + np.arange(self.size[row])) % self.width
            times = self.ring_t[row, columns].astype(np.float64) / 3_600_000
            values = self.ring_au[row, columns]
            times -= times.mean()
            out.append((row, float((times * (values - values.mean())).sum()
                                   / (times * times).sum())))
        return out


def _round(value: float) -> float:
    return round(float(value), ROUND_DIGITS)
