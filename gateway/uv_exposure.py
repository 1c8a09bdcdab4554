"""Every subject's daily UV exposure as arrays, one row per subject (sans-I/O).

Between two runs of the uv_dose model the twin sums the erythemal exposure Σ UVI·dt, each
sample's UVI held until the next sample; gaps longer than `MAX_UV_GAP_S` count as no
exposure, and a new day (local solar midnight; UTC without a location) starts the daily
dose again. `take` learns one batch of samples for many subjects: the k-th sample of every
subject in one numpy pass while many subjects have one, the rest (a backlog's long run) one
by one, with the same arithmetic in the same order either way (bit for bit).

A row's saved form is `dose_sed`, `day` and `last_t` (`UvExposureRow`).
"""

from __future__ import annotations

import numpy as np

MAX_UV_GAP_S = 600                   # longer gaps between UV samples count as no exposure
DAY_MS = 86_400_000
# Below this many subjects with a sample to learn, one by one is faster than numpy.
LOCKSTEP_MIN_SUBJECTS = 6


class UvExposures:
    def __init__(self, day_offset_ms: int) -> None:
        self.day_offset_ms = day_offset_ms
        self.dose_sed = np.zeros(0)
        self.med_sed = np.zeros(0)
        self.day = np.zeros(0, dtype=np.int64)
        self.has_day = np.zeros(0, dtype=bool)
        self.last_t = np.zeros(0, dtype=np.int64)
        self.has_last = np.zeros(0, dtype=bool)
        self.last_uvi = np.zeros(0)
        self.exposure = np.zeros(0)          # Σ UVI·dt over samples not yet run through uv_dose
        self.exposure_s = np.zeros(0)

    def grow(self, capacity: int) -> None:
        for name, value in vars(self).items():
            if isinstance(value, np.ndarray):
                wider = np.zeros(capacity, dtype=value.dtype)
                wider[:len(value)] = value
                setattr(self, name, wider)

    def load(self, row: int, dose_sed: float, med_sed: float, day: int | None,
             last_t: int | None) -> None:
        self.dose_sed[row], self.med_sed[row] = dose_sed, med_sed
        self.has_day[row], self.day[row] = day is not None, day or 0
        self.has_last[row], self.last_t[row] = last_t is not None, last_t or 0

    def take(self, rows: np.ndarray, begin: np.ndarray, end: np.ndarray, uvi: np.ndarray,
             times: np.ndarray) -> list[int]:
        """Runs of samples (one run per distinct row, `begin`/`end` into `uvi`/`times`, in
        sample order); samples without a time are skipped. Returns the rows whose day
        started again (the caller resets what else is daily)."""
        timed = times >= 0
        if not timed.all():
            before = np.concatenate(([0], np.cumsum(timed)))
            begin, end = before[begin], before[end]
            uvi, times = uvi[timed], times[timed]
        counts = end - begin
        new_day: list[int] = []
        k = 0
        while True:
            active = (counts > k).nonzero()[0]
            if len(active) < LOCKSTEP_MIN_SUBJECTS:
                break
            at = begin[active] + k
            new_day += self._take_one_each(rows[active], uvi[at], times[at])
            k += 1
        for row, a, b in zip(rows[active].tolist(), (begin[active] + k).tolist(),
                             end[active].tolist(), strict=True):
            if self._take_run(row, uvi[a:b], times[a:b]):
                new_day.append(row)
        return new_day

    def _take_one_each(self, rows: np.ndarray, uvi: np.ndarray, t: np.ndarray) -> list[int]:
        day = (t + self.day_offset_ms) // DAY_MS
        new_day = ~self.has_day[rows] | (self.day[rows] != day)
        has_last = self.has_last[rows] & ~new_day
        if new_day.any():
            reset = rows[new_day]
            self.day[reset], self.has_day[reset] = day[new_day], True
            self.dose_sed[reset] = 0.0
        dt_s = (t - self.last_t[rows]) / 1000
        held = has_last & (dt_s > 0) & (dt_s <= MAX_UV_GAP_S)
        if held.any():
            summed, dt_s = rows[held], dt_s[held]
            self.exposure[summed] += self.last_uvi[summed] * dt_s
            self.exposure_s[summed] += dt_s
        self.last_t[rows], self.has_last[rows], self.last_uvi[rows] = t, True, uvi
        return rows[new_day].tolist()

    def _take_run(self, row: int, uvi: np.ndarray, t: np.ndarray) -> bool:
        """One row's run along time: the sums with np.add.accumulate, which adds in order
        as the one-each pass does (an unheld sample adds 0.0, which changes no sum)."""
        day = (t + self.day_offset_ms) // DAY_MS
        new_day = np.empty(len(t), dtype=bool)
        new_day[0] = not self.has_day[row] or self.day[row] != day[0]
        new_day[1:] = day[1:] != day[:-1]
        held = ~new_day
        held[0] = held[0] and bool(self.has_last[row])
        before_t = np.concatenate(([self.last_t[row]], t[:-1]))
        before_uvi = np.concatenate(([self.last_uvi[row]], uvi[:-1]))
        dt_s = (t - before_t) / 1000
        held &= (dt_s > 0) & (dt_s <= MAX_UV_GAP_S)
        self.exposure[row] = np.add.accumulate(np.concatenate(
            ([self.exposure[row]], np.where(held, before_uvi * dt_s, 0.0))))[-1]
        self.exposure_s[row] = np.add.accumulate(np.concatenate(
            ([self.exposure_s[row]], np.where(held, dt_s, 0.0))))[-1]
        if new_day.any():
            self.dose_sed[row] = 0.0
        self.day[row], self.has_day[row] = day[-1], True
        self.last_t[row], self.has_last[row], self.last_uvi[row] = t[-1], True, uvi[-1]
        return bool(new_day.any())


class UvExposureRow:
    """One subject's row, as its saved twin shows it."""

    __slots__ = ("table", "row")

    def __init__(self, table: UvExposures, row: int) -> None:
        self.table, self.row = table, row

    @property
    def dose_sed(self) -> float:
        return float(self.table.dose_sed[self.row])

    @property
    def day(self) -> int | None:
        return int(self.table.day[self.row]) if self.table.has_day[self.row] else None

    @property
    def last_t(self) -> int | None:
        return int(self.table.last_t[self.row]) if self.table.has_last[self.row] else None


class UvExposure:
    """A row's saved form outside an engine (SubjectTwin.from_saved)."""

    __slots__ = ("dose_sed", "day", "last_t")

    def __init__(self, dose_sed: float = 0.0, day: int | None = None,
                 last_t: int | None = None) -> None:
        self.dose_sed, self.day, self.last_t = dose_sed, day, last_t
