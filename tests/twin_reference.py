"""The twin engine as it was before the struct-of-arrays rewrite (gateway/twin.py at
f502534, with gateway/temp_baseline.py and gateway/uv_forecast.py of the same commit): one
straightforward per-patch version, kept as the reference that tests/test_twin_equivalence.py
holds the engine to, bit for bit. Not used by the gateway."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from gateway.model_contracts import ModelUnavailable
from gateway.model_registry import CHANNEL_SCALE, MODELS, deadband
from gateway.mqtt.topics import SCHEMA_VERSION
from gateway.protocol import constants as ids
from gateway.values import SampleBatch

DAY_MS = 86_400_000
SLOTS_PER_DAY = 48                    # half-hour slots
SLOT_MS = DAY_MS // SLOTS_PER_DAY
# Per slot, a sample's weight falls to this floor: ~3 days of 10 s samples (180 per slot
# per day) dominate the profile.
SLOT_MIN_WEIGHT = 1 / 540
# The level follows slow drifts not tied to the time of day with a ~12 h time constant.
LEVEL_WEIGHT = 1 / 4320
# Until a slot has data: a running mean with a ~1 h time constant (temp_anomaly 1.x).
FALLBACK_WEIGHT = 1 / 360
LEARN_WITHIN_C = 0.6                  # design.md §4: a 0.6 degC shift matters
RELEARN_AFTER_MS = 72 * 3_600_000


class TimeOfDayBaseline:
    __slots__ = ("slot_mean", "slot_count", "level", "fallback", "outlier_since_ms",
                 "_unseen")

    def __init__(self) -> None:
        self.slot_mean: list[float | None] = [None] * SLOTS_PER_DAY
        self.slot_count = [0] * SLOTS_PER_DAY
        self.level = 0.0                  # mean residual against the profile
        self.fallback: float | None = None
        self.outlier_since_ms: int | None = None
        self._unseen = SLOTS_PER_DAY

    @property
    def learned(self) -> bool:
        """Every slot has been seen at least once (a full day of wear)."""
        return self._unseen == 0

    def expected(self, t_ms: int) -> float | None:
        profile = self._profile(t_ms)
        if profile is None:
            return self.fallback
        return profile + self.level

    def observe(self, t_ms: int, celsius: float) -> None:
        expected = self.expected(t_ms)
        if expected is not None and abs(celsius - expected) > LEARN_WITHIN_C:
            if self.outlier_since_ms is None:
                self.outlier_since_ms = t_ms
            if t_ms - self.outlier_since_ms < RELEARN_AFTER_MS:
                return
        else:
            self.outlier_since_ms = None
        self.fallback = celsius if self.fallback is None else (
            self.fallback + FALLBACK_WEIGHT * (celsius - self.fallback))
        slot = (t_ms % DAY_MS) // SLOT_MS
        mean = self.slot_mean[slot]
        count = self.slot_count[slot] + 1
        self.slot_count[slot] = count
        if mean is None:
            self.slot_mean[slot] = celsius - self.level
            self._unseen -= 1
        else:
            weight = max(1 / count, SLOT_MIN_WEIGHT)
            self.slot_mean[slot] = mean + weight * (celsius - self.level - mean)
        if self._unseen == 0:
            profile = self._profile(t_ms)
            if profile is not None:
                self.level += LEVEL_WEIGHT * (celsius - profile - self.level)

    def _profile(self, t_ms: int) -> float | None:
        """Linear interpolation between the two nearest slot centres."""
        position = ((t_ms % DAY_MS) - SLOT_MS / 2) / SLOT_MS
        left = int(position // 1) % SLOTS_PER_DAY
        right = (left + 1) % SLOTS_PER_DAY
        a, b = self.slot_mean[left], self.slot_mean[right]
        if a is None and b is None:
            return None
        if a is None or b is None:
            return a if b is None else b
        fraction = position - (position // 1)
        return a + (b - a) * fraction

    def to_saved(self) -> dict:
        return {"slot_mean": list(self.slot_mean), "slot_count": list(self.slot_count),
                "level": self.level, "fallback": self.fallback,
                "outlier_since_ms": self.outlier_since_ms}

    @classmethod
    def from_saved(cls, saved: dict) -> TimeOfDayBaseline:
        baseline = cls()
        slot_mean = saved.get("slot_mean") or []
        if len(slot_mean) == SLOTS_PER_DAY:
            baseline.slot_mean = list(slot_mean)
            baseline.slot_count = [int(c) for c in saved.get("slot_count", [0] * SLOTS_PER_DAY)]
            baseline._unseen = sum(1 for m in baseline.slot_mean if m is None)
        baseline.level = float(saved.get("level", 0.0))
        baseline.fallback = saved.get("fallback")
        baseline.outlier_since_ms = saved.get("outlier_since_ms")
        return baseline


class HydrationExcess:
    """Surface hydration above its own slow mean: sweat, a bath or a fresh moisturiser.

    Skin warms with exercise and in a warm bath while the Corneometer reads wet skin high;
    the temperature model uses this to tell exertion from fever. The slow mean (~6 h) does
    learns from readings more than `EXCESS_FREEZE_AU` above it only slowly (~2.5 days), so
    an episode is not learned away but a lasting change is, and not at all from readings
    under `OFF_SKIN_BELOW_AU` (a loose patch: no skin under the electrode)."""

    __slots__ = ("mean", "latest")
    WEIGHT = 1 / 360                  # per 60 s hydration sample: ~6 h
    SLOW_WEIGHT = 1 / 3600
    EXCESS_FREEZE_AU = 8.0
    OFF_SKIN_BELOW_AU = 5.0

    def __init__(self, mean: float | None = None, latest: float | None = None) -> None:
        self.mean = mean
        self.latest = latest

    def observe(self, au: float) -> None:
        self.latest = au
        if au < self.OFF_SKIN_BELOW_AU:       # an electrode off the skin says nothing of it
            return
        if self.mean is None:
            self.mean = au
        else:
            high = au - self.mean > self.EXCESS_FREEZE_AU
            self.mean += (self.SLOW_WEIGHT if high else self.WEIGHT) * (au - self.mean)

    @property
    def excess_au(self) -> float:
        if self.mean is None or self.latest is None:
            return 0.0
        return self.latest - self.mean


MADRONICH_UVI_SCALE = 12.5
MADRONICH_MU_EXPONENT = 2.42
COOPER_TILT_DEG = 23.45
ERYTHEMAL_W_M2_PER_UVI = 0.025       # WHO 2002
SED_J_M2 = 100.0                     # CIE S 007/E:1998
FACTOR_WINDOW_S = 1800
STEP_S = 300                         # forward integration step
MIN_CLEAR_SKY_UVI = 0.3              # below: too little sun to learn a factor from
_DEG = math.pi / 180


def day_of_year(utc_ms: int) -> int:
    return datetime.fromtimestamp(utc_ms / 1000, UTC).timetuple().tm_yday


def clear_sky_uvi(latitude_deg: float, longitude_deg: float, utc_ms: int) -> float:
    n = day_of_year(utc_ms)
    declination = COOPER_TILT_DEG * _DEG * math.sin(2 * math.pi * (284 + n) / 365)
    solar_hour = ((utc_ms % DAY_MS) / 3_600_000 + longitude_deg / 15) % 24
    hour_angle = (solar_hour - 12) * 15 * _DEG
    latitude = latitude_deg * _DEG
    mu0 = (math.sin(latitude) * math.sin(declination)
           + math.cos(latitude) * math.cos(declination) * math.cos(hour_angle))
    if mu0 <= 0:
        return 0.0
    return MADRONICH_UVI_SCALE * mu0 ** MADRONICH_MU_EXPONENT


class UvForecaster:
    __slots__ = ("latitude_deg", "longitude_deg", "recent", "last_ms", "_measured", "_clear",
                 "_sun_day", "_sun_terms")

    def __init__(self, latitude_deg: float, longitude_deg: float) -> None:
        if not -90 <= latitude_deg <= 90:
            raise ValueError(f"latitude_deg: {latitude_deg} is not within -90..90")
        if not -180 <= longitude_deg <= 180:
            raise ValueError(f"longitude_deg: {longitude_deg} is not within -180..180")
        self.latitude_deg = latitude_deg
        self.longitude_deg = longitude_deg
        self.recent: deque[tuple[int, float, float]] = deque()   # (utc_ms, measured, clear)
        self.last_ms: int | None = None
        # Running sums over `recent` where the sun is high enough: factor() in O(1).
        self._measured = self._clear = 0.0
        self._sun_day = -1
        self._sun_terms = (0.0, 0.0)

    def clear_sky(self, utc_ms: int) -> float:
        """clear_sky_uvi() at this place, with the day's solar terms computed once a day."""
        day = utc_ms // DAY_MS
        if day != self._sun_day:
            n = day_of_year(utc_ms)
            declination = COOPER_TILT_DEG * _DEG * math.sin(2 * math.pi * (284 + n) / 365)
            latitude = self.latitude_deg * _DEG
            self._sun_terms = (math.sin(latitude) * math.sin(declination),
                               math.cos(latitude) * math.cos(declination))
            self._sun_day = day
        solar_hour = ((utc_ms % DAY_MS) / 3_600_000 + self.longitude_deg / 15) % 24
        mu0 = self._sun_terms[0] + self._sun_terms[1] * math.cos((solar_hour - 12) * 15 * _DEG)
        if mu0 <= 0:
            return 0.0
        return MADRONICH_UVI_SCALE * mu0 ** MADRONICH_MU_EXPONENT

    def observe(self, utc_ms: int, uvi: float) -> None:
        if self.last_ms is not None and utc_ms <= self.last_ms:
            return
        self.last_ms = utc_ms
        measured, clear = max(uvi, 0.0), self.clear_sky(utc_ms)
        self.recent.append((utc_ms, measured, clear))
        if clear >= MIN_CLEAR_SKY_UVI:
            self._measured += measured
            self._clear += clear
        while utc_ms - self.recent[0][0] > FACTOR_WINDOW_S * 1000:
            _, m, c = self.recent.popleft()
            if c >= MIN_CLEAR_SKY_UVI:
                self._measured -= m
                self._clear -= c
        if self._clear < MIN_CLEAR_SKY_UVI:      # nothing counted left: clear rounding dust
            self._measured = self._clear = 0.0

    def factor(self) -> float | None:
        """The fraction of clear-sky UV reaching the patch: the larger of the last half
        hour's (exposure-weighted) and the latest sample's, so stepping into the sun
        counts at once and a passing cloud does not hide the afternoon. None while the sun
        is too low to tell."""
        if self._clear <= 0:
            return None
        _, latest_measured, latest_clear = self.recent[-1]
        latest = latest_measured / latest_clear if latest_clear >= MIN_CLEAR_SKY_UVI else 0.0
        return max(self._measured / self._clear, latest)

    def minutes_to_med(self, utc_ms: int, dose_sed: float, med_sed: float) -> float | None:
        """Minutes from `utc_ms` until the dose reaches MED at today's pattern; 0 when it
        has; None when it will not before the sun sets (or nothing to go on yet)."""
        if dose_sed >= med_sed:
            return 0.0
        factor = self.factor()
        if factor is None or factor <= 0:
            return None
        dose = dose_sed
        t = utc_ms
        offset_ms = int(self.longitude_deg / 15 * 3_600_000)       # solar time - UTC
        day_end = ((utc_ms + offset_ms) // DAY_MS + 1) * DAY_MS - offset_ms  # solar midnight
        while t < day_end:
            uvi = factor * self.clear_sky(t)
            rate_sed_per_s = uvi * ERYTHEMAL_W_M2_PER_UVI / SED_J_M2
            step_dose = rate_sed_per_s * STEP_S
            if dose + step_dose >= med_sed:
                return (t - utc_ms) / 60_000 + (med_sed - dose) / rate_sed_per_s / 60
            dose += step_dose
            t += STEP_S * 1000
        return None


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
MAX_UV_GAP_S = 600                   # longer gaps between UV samples count as no exposure
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
    temp_baseline: TimeOfDayBaseline = field(default_factory=TimeOfDayBaseline)
    hydration: HydrationExcess = field(default_factory=HydrationExcess)
    hydration_history: deque = field(default_factory=deque)     # (utc_ms, AU), last hour
    forecaster: UvForecaster | None = None
    loose: bool = False
    drying: bool = False
    drying_since_ms: int | None = None
    uv_forecast_alerted: bool = False
    forecast_at_ms: int | None = None
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
        return {"state": self.state, "temp_baseline": self.temp_baseline.to_saved(),
                "hydration_mean_au": self.hydration.mean,
                "hydration_au": self.hydration.latest,
                "temp_window": list(self.temp_window), "uv_dose_sed": self.uv_dose_sed,
                "uv_dose_day": self.uv_dose_day, "last_uv_t": self.last_uv_t,
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
        for subject, (rev, state) in (saved or {}).items():
            self.twins[subject] = SubjectTwin.from_saved(subject, rev, state)
            self.twins[subject].med_sed = self.med_sed_of.get(subject, 3.0)

    def twin(self, subject: str) -> SubjectTwin:
        twin = self.twins.get(subject)
        if twin is None:
            twin = self.twins[subject] = SubjectTwin(
                subject, med_sed=self.med_sed_of.get(subject, 3.0))
        if twin.forecaster is None and self.location is not None:
            twin.forecaster = UvForecaster(*self.location)
        return twin

    def ingest(self, batch: SampleBatch) -> None:
        """Feed committed samples (any order of devices; each batch in seq order)."""
        subject = self.subject_of.get(batch.device_id)
        if subject is None or len(batch) == 0:
            return
        twin = self.twin(subject)
        # Group by channel in Python: live batches hold a handful of samples, where numpy
        # masks per channel cost more than the samples (bench/bench_twin.py).
        groups: dict[int, tuple[list[int], list[int]]] = {}
        for channel, value, t in zip(batch.channel.tolist(), batch.value.tolist(),
                                     batch.utc_ms.tolist(), strict=True):
            group = groups.get(channel)
            if group is None:
                group = groups[channel] = ([], [])
            group[0].append(value)
            group[1].append(t)
        for channel, (raw, times) in groups.items():
            entry = CHANNEL_SCALE.get(channel)
            if entry is None:
                continue
            scale, prop = entry
            values = [v * scale for v in raw]
            quality = "good" if times[-1] >= 0 and not batch.time_uncertain else "uncertain"
            twin.pending[prop] = _leaf(values[-1], times[-1], quality)
            if channel == ids.Channel.TEMPERATURE:
                for v, t in zip(values, times, strict=True):
                    twin.temp_window.append(v)
                    if t >= 0:
                        twin.temp_baseline.observe(t, v)
                twin.new_temp = True
                twin.last_temp_t = times[-1]
            elif channel == ids.Channel.UV:
                self._accumulate_uv(twin, values, times)
            elif channel == ids.Channel.HYDRATION:
                twin.new_hydration = True

    def _accumulate_uv(self, twin: SubjectTwin, uvi: list[float], times: list[int]) -> None:
        """Erythemal exposure Σ UVI·dt (each sample's UVI held until the next sample)."""
        for value, t in zip(uvi, times, strict=True):
            if t < 0:
                continue
            if twin.forecaster is not None:
                twin.forecaster.observe(t, value)
            day = (t + self.day_offset_ms) // DAY_MS
            if twin.uv_dose_day != day:          # a new day: the daily dose starts again
                twin.uv_dose_day, twin.uv_dose_sed, twin.uv_alerted = day, 0.0, False
                twin.uv_forecast_alerted = False
                twin.last_uv_t = None
            if twin.last_uv_t is not None:
                dt_s = (t - twin.last_uv_t) / 1000
                if 0 < dt_s <= MAX_UV_GAP_S:
                    twin.uv_exposure += twin.uv_last * dt_s
                    twin.uv_exposure_s += dt_s
            twin.last_uv_t, twin.uv_last = t, value

    def step(self, now_ms: int) -> list[TwinUpdate]:
        for name, run in (("temp_anomaly", self._run_temp_anomaly),
                          ("uv_dose", self._run_uv_dose), ("hydration", self._run_hydration)):
            if name in self.models:
                try:
                    run()
                except ModelUnavailable:
                    self._mark_bad(name)
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
    def _mark_bad(self, model: str) -> None:
        for twin in self.twins.values():
            for prop in MODELS[model].properties:
                leaf = twin.pending.get(prop) or twin.state.get(prop)
                if leaf is not None and leaf.get("q") != "bad":
                    twin.pending[prop] = {**leaf, "q": "bad"}

    def _run_temp_anomaly(self) -> None:
        ready = [t for t in self.twins.values() if t.new_temp and t.temp_window]
        if not ready:
            return
        windows = np.empty((len(ready), TEMP_WINDOW_SAMPLES), dtype=np.float32)
        for row, twin in enumerate(ready):
            window = list(twin.temp_window)
            # Until the window fills, pad with its oldest sample; quality says so.
            windows[row] = [window[0]] * (TEMP_WINDOW_SAMPLES - len(window)) + window
        baselines = _column([_expected_temp(t) for t in ready])
        hydration = _column([t.hydration.latest if t.hydration.latest is not None
                             else NEUTRAL_HYDRATION_AU for t in ready])
        excess = _column([t.hydration.excess_au for t in ready])
        out = _rows(self.run_model("temp_anomaly", {
            "temp_window_c": windows, "baseline_c": baselines, "hydration_au": hydration,
            "hydration_excess_au": excess}))
        baseline_values = baselines[:, 0].tolist()
        for row, twin in enumerate(ready):
            # A baseline is "good" once it has seen every half hour of a day.
            quality = ("good" if len(twin.temp_window) == TEMP_WINDOW_SAMPLES
                       and twin.temp_baseline.learned else "uncertain")
            t = twin.last_temp_t
            pending = twin.pending
            pending["temp_baseline_c"] = _leaf(baseline_values[row], t, quality)
            pending["temp_delta_c"] = _leaf(out["delta_c"][row], t, quality)
            pending["temp_anomaly_score"] = _leaf(out["anomaly_score"][row], t, quality)
            pending["inflammation"] = {"v": out["inflammation"][row] > 0.5, "t": t, "q": quality}
            pending["exertion"] = {"v": out["exertion"][row] > 0.5, "t": t, "q": "good"}
            pending["contact"] = {"v": "loose" if out["detached"][row] > 0.5 else "skin",
                                  "t": t, "q": "good"}
            twin.new_temp = False

    def _run_uv_dose(self) -> None:
        ready = [t for t in self.twins.values() if t.uv_exposure_s > 0]
        if not ready:
            return
        out = _rows(self.run_model("uv_dose", {
            "uvi": _column([t.uv_exposure / t.uv_exposure_s for t in ready]),
            "dt_s": _column([t.uv_exposure_s for t in ready]),
            "dose_sed_in": _column([t.uv_dose_sed for t in ready]),
            "med_sed": _column([t.med_sed for t in ready])}))
        for row, twin in enumerate(ready):
            twin.uv_dose_sed = out["dose_sed"][row]
            twin.uv_exposure = twin.uv_exposure_s = 0.0
            t = int(twin.last_uv_t or 0)
            twin.pending["uv_dose_sed"] = _leaf(twin.uv_dose_sed, t, "good")
            twin.pending["uv_med_fraction"] = _leaf(out["med_fraction"][row], t, "good")
            twin.pending["minutes_to_med"] = _leaf(out["minutes_to_med"][row], t, "good")
            if twin.forecaster is not None and (
                    twin.forecast_at_ms is None or t - twin.forecast_at_ms >= FORECAST_EVERY_MS
                    or t < twin.forecast_at_ms):
                # The sun's path changes slowly: integrate forward once a minute of data.
                twin.forecast_at_ms = t
                minutes = twin.forecaster.minutes_to_med(t, twin.uv_dose_sed, twin.med_sed)
                # None: the dose will not reach MED before sunset at today's pattern.
                twin.pending["minutes_to_med_forecast"] = (
                    {"v": None, "t": t, "q": "good"} if minutes is None
                    else _leaf(minutes, t, "good"))

    def _run_hydration(self) -> None:
        ready = [t for t in self.twins.values() if t.new_hydration
                 and "capacitance_pf" in t.pending and "skin_temp_c" in (t.state | t.pending)]
        if not ready:
            return
        skin = [(t.pending.get("skin_temp_c") or t.state["skin_temp_c"])["v"] for t in ready]
        out = _rows(self.run_model("hydration", {
            "capacitance_pf": _column([t.pending["capacitance_pf"]["v"] for t in ready]),
            "skin_temp_c": _column(skin)}))
        for row, twin in enumerate(ready):
            t = twin.pending["capacitance_pf"]["t"]
            au = out["corneometer_au"][row]
            twin.pending["hydration_au"] = _leaf(au, t, "good")
            state = HYDRATION_STATES[int(out["state"][row])]
            twin.pending["hydration_state"] = {"v": state, "t": t, "q": "good"}
            twin.hydration.observe(au)
            trend = _hydration_trend(twin, t, au)
            if trend is not None:
                twin.pending["hydration_trend_au_per_h"] = _leaf(trend, t, "good")
            twin.new_hydration = False

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
            update = TwinUpdate(twin.subject, twin.rev, delta={
                "schema": SCHEMA_VERSION, "sess": self.sess, "rev": twin.rev, "ts": now_ms,
                "set": changed, "unset": []})
            update.alerts = self._alerts(twin, changed, now_ms)
        # The retained twin follows every delta (coalesced: one per step), and is published
        # once at start even without one.
        if twin.state and (changed or not twin.snapshot_published):
            if update is None:
                update = TwinUpdate(twin.subject, twin.rev)
            update.snapshot = self._snapshot_payload(twin, now_ms)
            twin.snapshot_published = True
        return update

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


def _column(values: list[float]) -> np.ndarray:
    """[N, 1] float32 from one value per subject."""
    return np.array(values, dtype=np.float32).reshape(-1, 1)


def _rows(outputs: Mapping[str, np.ndarray]) -> dict[str, list[float]]:
    """Each [N, 1] model output as N Python floats (one conversion per output, not per row)."""
    return {name: value[:, 0].tolist() for name, value in outputs.items()}


def _expected_temp(twin: SubjectTwin) -> float:
    expected = twin.temp_baseline.expected(twin.last_temp_t)
    return twin.temp_window[-1] if expected is None else expected


def _hydration_trend(twin: SubjectTwin, t: int, au: float) -> float | None:
    """Least-squares slope of the last hour's hydration, in AU per hour."""
    history = twin.hydration_history
    history.append((t, au))
    while history and t - history[0][0] > HYDRATION_TREND_WINDOW_MS:
        history.popleft()
    if len(history) < HYDRATION_TREND_MIN_POINTS or \
            history[-1][0] - history[0][0] < HYDRATION_TREND_MIN_SPAN_MS:
        return None
    times = np.array([h[0] for h in history], dtype=np.float64) / 3_600_000
    values = np.array([h[1] for h in history], dtype=np.float64)
    times -= times.mean()
    return float((times * (values - values.mean())).sum() / (times * times).sum())


def _leaf(value: float, t: int, quality: str) -> dict:
    return {"v": round(float(value), ROUND_DIGITS), "t": t, "q": quality}


def _differs(prop: str, old: dict, new: dict) -> bool:
    if old.get("q") != new.get("q"):
        return True
    if not isinstance(new["v"], float) or not isinstance(old["v"], float):
        return old["v"] != new["v"]
    return abs(new["v"] - old["v"]) >= deadband(prop)

