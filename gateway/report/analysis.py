"""What the report shows, computed from a subject's history (sans-I/O: values in, values out).

- daily UV dose: erythemal exposure Σ UVI·dt per UTC day in SED (1 UVI = 0.025 W/m²
  erythemally weighted, 1 SED = 100 J/m²: design.md §4, the uv_dose model's constants),
  against the subject's MED for its Fitzpatrick skin type;
- hydration in Corneometer-equivalent units through the twin's own hydration model
  (`run_model`, as the twin engine reaches its models), with the skin temperature nearest
  in time;
- skin temperature against the personal time-of-day baseline (gateway/temp_baseline.py)
  learned over the range, and the readings that depart from it: by more than 0.6 °C (a
  shift that matters) and by more than 2.2 °C (the clinical inflammation cue);
- battery; stretches without any data, and the samples the patch reported lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from gateway.report.archive import BUCKET_MS
from gateway.report.history import History, Series
from gateway.temp_baseline import LEARN_WITHIN_C, TimeOfDayBaseline

RunModel = Callable[[str, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]

DAY_MS = 86_400_000
ERYTHEMAL_W_M2_PER_UVI = 0.025      # WHO Global Solar UV Index (2002): UVI = 40 m²/W × E_er
J_M2_PER_SED = 100.0                # CIE S 007/E:1998
ANOMALY_C = LEARN_WITHIN_C          # design.md §4: a shift of ~0.6 °C matters
INFLAMMATION_C = 2.2                # design.md §4: > 2.2 °C, the clinical inflammation cue
HYDRATION_DRY_AU = 45.0             # < 45 dry, < 30 very dry (design.md §4)
HYDRATION_VERY_DRY_AU = 30.0
NO_DATA_GAP_MS = 20 * 60_000        # longer than an archive bucket: a real stretch without data


@dataclass(frozen=True)
class DailyDose:
    day_ms: int                     # the day's start: UTC midnight, or local solar midnight
    dose_sed: float
    med_fraction: float | None      # None: the subject's skin type is not known
    hours_measured: float           # clock hours with at least one UV reading


@dataclass(frozen=True)
class TemperatureView:
    series: Series
    baseline_c: np.ndarray          # expected before each reading (nan until known)
    anomaly: np.ndarray             # bool: |reading - baseline| > ANOMALY_C
    inflammation: np.ndarray        # bool: reading - baseline > INFLAMMATION_C


@dataclass(frozen=True)
class HydrationView:
    series: Series                  # value/lo/hi in AU
    by_model: bool                  # False: no skin temperature, so capacitance (pF) shown


@dataclass(frozen=True)
class ReportData:
    history: History
    daily_uv: list[DailyDose]
    temperature: TemperatureView
    hydration: HydrationView
    battery: Series
    no_data: list[tuple[int, int]]  # [from, to) stretches without any reading
    day_offset_ms: int = 0          # local solar time - UTC of the UV days (0: UTC days)


def analyse(history: History, run_model: RunModel | None,
            location: tuple[float, float] | None = None) -> ReportData:
    """`location`: the gateway's (latitude, longitude); with it, as in the twin, a day of UV
    dose starts at local solar midnight instead of 00:00 UTC."""
    series = history.series
    return ReportData(
        history, daily_uv_dose(series["uv_index"], history.med_sed, history.from_ms,
                               history.to_ms, day_offset_ms(location)),
        temperature_view(series["skin_temp_c"]),
        hydration_view(series["capacitance_pf"], series["skin_temp_c"], run_model),
        series["battery_pct"], no_data_stretches(history), day_offset_ms(location))


def day_offset_ms(location: tuple[float, float] | None) -> int:
    """Local solar time minus UTC at the location's longitude (the twin's day boundary)."""
    return int(location[1] / 15 * 3_600_000) if location else 0


def daily_uv_dose(uv: Series, med_sed: float | None, from_ms: int, to_ms: int,
                  offset_ms: int = 0) -> list[DailyDose]:
    """Per day (UTC, or local solar days `offset_ms` ahead of UTC) overlapping the range."""
    days = []
    first_day = (from_ms + offset_ms) // DAY_MS * DAY_MS - offset_ms
    for day in range(first_day, to_ms, DAY_MS):
        mask = (uv.t_ms >= day) & (uv.t_ms < day + DAY_MS)
        dose = float(uv.integral[mask].sum()) * ERYTHEMAL_W_M2_PER_UVI / J_M2_PER_SED
        hours = float(len(np.unique(uv.t_ms[mask] // 3_600_000)))
        days.append(DailyDose(day, dose, None if med_sed is None else dose / med_sed, hours))
    return days


def temperature_view(temp: Series) -> TemperatureView:
    baseline = TimeOfDayBaseline()
    expected = np.full(len(temp), np.nan)
    for i, (t, v) in enumerate(zip(temp.t_ms.tolist(), temp.value.tolist(), strict=True)):
        e = baseline.expected(t)
        if e is not None:
            expected[i] = e
        baseline.observe(t, v)
    with np.errstate(invalid="ignore"):
        delta = temp.value - expected
        anomaly = np.abs(delta) > ANOMALY_C
        inflammation = delta > INFLAMMATION_C
    return TemperatureView(temp, expected, anomaly, inflammation)


def hydration_view(capacitance: Series, temp: Series, run_model: RunModel | None
                   ) -> HydrationView:
    if len(capacitance) == 0 or len(temp) == 0 or run_model is None:
        return HydrationView(capacitance, False)
    skin = np.interp(capacitance.t_ms, temp.t_ms, temp.value).astype(np.float32)
    rows = len(capacitance)
    pf = np.concatenate([capacitance.value, capacitance.lo, capacitance.hi]).astype(np.float32)
    out = run_model("hydration", {"capacitance_pf": pf.reshape(-1, 1),
                                  "skin_temp_c": np.tile(skin, 3).reshape(-1, 1)})
    au = np.asarray(out["corneometer_au"], dtype=float).reshape(-1)
    value, lo, hi = au[:rows], au[rows:2 * rows], au[2 * rows:]
    series = Series(capacitance.t_ms, value, np.minimum(lo, hi), np.maximum(lo, hi),
                    capacitance.n, capacitance.integral, capacitance.archived)
    return HydrationView(series, True)


def coverage(series: Series) -> list[tuple[int, int]]:
    """[from, to) stretches with readings: readings less than NO_DATA_GAP_MS apart join;
    an archived bucket covers its 15 minutes."""
    stretches: list[tuple[int, int]] = []
    for t, archived in zip(series.t_ms.tolist(), series.archived.tolist(), strict=True):
        end = t + (BUCKET_MS if archived else 1000)
        if stretches and t - stretches[-1][1] <= NO_DATA_GAP_MS:
            stretches[-1] = (stretches[-1][0], max(end, stretches[-1][1]))
        else:
            stretches.append((t, end))
    return stretches


def no_data_stretches(history: History) -> list[tuple[int, int]]:
    # an archived bucket stands for its whole 15 minutes: its start and its end count
    times = np.sort(np.concatenate(
        [s.t_ms for s in history.series.values()]
        + [np.minimum(s.t_ms[s.archived] + BUCKET_MS, history.to_ms)
           for s in history.series.values()] + [np.zeros(0, np.int64)]))
    edges = np.concatenate([[history.from_ms], times, [history.to_ms]]).astype(np.int64)
    stretches = []
    for start, end in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        if end - start > NO_DATA_GAP_MS:
            stretches.append((int(start), int(end)))
    return stretches
