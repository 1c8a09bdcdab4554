"""When will today's UV dose reach the wearer's MED? (sans-I/O)

The sun's path is known: the clear-sky UV index at the gateway's latitude and longitude
follows from the solar elevation (Madronich 2007, as in the environment model). What is not
known is how much of it reaches the patch: clouds, shade, indoors. The forecast takes that
fraction from what the patch measured (the larger of the last `FACTOR_WINDOW_S`,
exposure-weighted, and the latest sample: a burn warning errs early) and assumes the wearer keeps the current
pattern: it integrates factor x clear-sky UVI forward from now until the dose reaches MED
or the sun sets.

    forecast = UvForecaster(latitude_deg, longitude_deg)
    forecast.observe(utc_ms, uvi)               # every UV sample
    forecast.minutes_to_med(utc_ms, dose_sed, med_sed)   # None: not today

Local solar time is UTC + longitude / 15 h (no equation of time: under 17 minutes off).
"""

from __future__ import annotations

import math
from collections import deque
from datetime import UTC, datetime

import numpy as np

MADRONICH_UVI_SCALE = 12.5
MADRONICH_MU_EXPONENT = 2.42
COOPER_TILT_DEG = 23.45
ERYTHEMAL_W_M2_PER_UVI = 0.025       # WHO 2002
SED_J_M2 = 100.0                     # CIE S 007/E:1998
FACTOR_WINDOW_S = 1800
STEP_S = 300                         # forward integration step
MIN_CLEAR_SKY_UVI = 0.3              # below: too little sun to learn a factor from
ALONG_TIME_MIN_SAMPLES = 64          # shorter runs: a loop is faster than numpy
DAY_MS = 86_400_000
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


def clear_sky_many(latitude_deg: float, longitude_deg: float,
                   utc_ms: np.ndarray) -> list[float]:
    """`UvForecaster.clear_sky` of each time, bit for bit: the arithmetic in numpy, cosine
    and power through `math` (numpy's own may differ from it in the last bit)."""
    day = utc_ms // DAY_MS
    latitude = latitude_deg * _DEG
    first_day, last_day = int(day.min()), int(day.max())
    terms = {}
    days = range(first_day, last_day + 1) if last_day - first_day < 3 else np.unique(day).tolist()
    for d in days:
        n = day_of_year(d * DAY_MS)
        declination = COOPER_TILT_DEG * _DEG * math.sin(2 * math.pi * (284 + n) / 365)
        terms[d] = (math.sin(latitude) * math.sin(declination),
                    math.cos(latitude) * math.cos(declination))
    a: float | np.ndarray
    b: float | np.ndarray
    if first_day == last_day:
        a, b = terms[first_day]
    else:
        a = np.array([terms[d][0] for d in day.tolist()])
        b = np.array([terms[d][1] for d in day.tolist()])
    solar_hour = ((utc_ms % DAY_MS) / 3_600_000 + longitude_deg / 15) % 24
    cosine = np.array(list(map(math.cos, ((solar_hour - 12) * 15 * _DEG).tolist())))
    mu0 = a + b * cosine
    return [MADRONICH_UVI_SCALE * m ** MADRONICH_MU_EXPONENT if m > 0 else 0.0
            for m in mu0.tolist()]


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
        self.observe_clear(utc_ms, uvi, self.clear_sky(utc_ms))

    def observe_clear(self, utc_ms: int, uvi: float, clear: float) -> None:
        """`observe` with this place's clear-sky UVI at `utc_ms` already worked out (the twin
        engine does that for a whole batch with `clear_sky_many`)."""
        if self.last_ms is not None and utc_ms <= self.last_ms:
            return
        self.last_ms = utc_ms
        measured = max(uvi, 0.0)
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

    def observe_clear_many(self, times: list[int], uvis: list[float],
                           clears: list[float]) -> None:
        """`observe_clear` of each sample in turn (a backlog's long run), bit for bit: long
        runs along time with numpy (`_observe_along_time`), short ones in a loop."""
        if len(times) < ALONG_TIME_MIN_SAMPLES or not self._observe_along_time(
                np.array(times, dtype=np.int64), np.array(uvis, dtype=np.float64),
                np.array(clears, dtype=np.float64)):
            self._observe_loop(times, uvis, clears)

    def _observe_along_time(self, t: np.ndarray, uvi: np.ndarray, clear: np.ndarray) -> bool:
        """The window after these samples, and its sums from the same additions and
        subtractions in the same order, found without a loop: each entry leaves the window
        at the first sample more than FACTOR_WINDOW_S after it; the sums restart from zero
        after the last sample that left no counted entry in the window (`observe` clears
        them there: what is left is rounding dust, far below MIN_CLEAR_SKY_UVI), and from
        there they are one np.add.accumulate over the ordered operations. False (nothing
        changed) if a sum would be cleared as dust with counted entries left: the loop
        then does it."""
        before = np.maximum.accumulate(np.concatenate(
            ([-1 if self.last_ms is None else self.last_ms], t)))[:-1]
        fresh = t > before
        if not fresh.all():
            t, uvi, clear = t[fresh], uvi[fresh], clear[fresh]
        n = len(t)
        if not n:
            return True
        measured = np.where(uvi < 0.0, 0.0, uvi)              # max(uvi, 0.0)
        k = len(self.recent)
        if k:
            old_t, old_measured, old_clear = (np.array(column) for column in
                                              zip(*self.recent, strict=True))
            entry_t = np.concatenate((old_t.astype(np.int64), t))
            entry_measured = np.concatenate((old_measured.astype(np.float64), measured))
            entry_clear = np.concatenate((old_clear.astype(np.float64), clear))
        else:
            entry_t, entry_measured, entry_clear = t, measured, clear
        added_at = np.concatenate((np.full(k, -1), np.arange(n)))
        left_at = np.searchsorted(t, entry_t + FACTOR_WINDOW_S * 1000, side="right")
        counted = entry_clear >= MIN_CLEAR_SKY_UVI
        adds = np.bincount(added_at[k:][counted[k:]], minlength=n)
        leaves = np.bincount(left_at[counted & (left_at < n)], minlength=n + 1)[:n]
        in_window = int(counted[:k].sum()) + np.cumsum(adds - leaves)
        empty = (in_window == 0).nonzero()[0]
        cleared_at = int(empty[-1]) if len(empty) else -1
        measured_sum = 0.0 if cleared_at >= 0 else self._measured
        clear_sum = 0.0 if cleared_at >= 0 else self._clear
        # Operations after the last clearing, in order: by sample, its own addition first,
        # then what leaves the window, oldest first.
        add_ops = (counted & (added_at > cleared_at)).nonzero()[0]
        leave_ops = (counted & (left_at > cleared_at) & (left_at < n)).nonzero()[0]
        step = np.concatenate((added_at[add_ops], left_at[leave_ops]))
        kind = np.concatenate((np.zeros(len(add_ops), np.int8), np.ones(len(leave_ops), np.int8)))
        entry = np.concatenate((add_ops, leave_ops))
        order = np.lexsort((entry, kind, step))
        step, entry, sign = step[order], entry[order], 1.0 - 2.0 * kind[order]
        running_clear = np.add.accumulate(np.concatenate(([clear_sum], sign * entry_clear[entry])))
        running_measured = np.add.accumulate(np.concatenate(
            ([measured_sum], sign * entry_measured[entry])))
        ends = np.searchsorted(step, np.arange(cleared_at + 1, n), side="right")
        if (running_clear[ends] < MIN_CLEAR_SKY_UVI).any():
            return False
        stays = left_at >= n
        self.recent = deque(zip(entry_t[stays].tolist(), entry_measured[stays].tolist(),
                                entry_clear[stays].tolist(), strict=True))
        self.last_ms = int(t[-1])
        self._measured, self._clear = float(running_measured[-1]), float(running_clear[-1])
        return True

    def _observe_loop(self, times: list[int], uvis: list[float], clears: list[float]) -> None:
        recent = self.recent
        last_ms, measured_sum, clear_sum = self.last_ms, self._measured, self._clear
        window_ms = FACTOR_WINDOW_S * 1000
        for utc_ms, uvi, clear in zip(times, uvis, clears, strict=True):
            if last_ms is not None and utc_ms <= last_ms:
                continue
            last_ms = utc_ms
            measured = max(uvi, 0.0)
            recent.append((utc_ms, measured, clear))
            if clear >= MIN_CLEAR_SKY_UVI:
                measured_sum += measured
                clear_sum += clear
            while utc_ms - recent[0][0] > window_ms:
                _, m, c = recent.popleft()
                if c >= MIN_CLEAR_SKY_UVI:
                    measured_sum -= m
                    clear_sum -= c
            if clear_sum < MIN_CLEAR_SKY_UVI:
                measured_sum = clear_sum = 0.0
        self.last_ms, self._measured, self._clear = last_ms, measured_sum, clear_sum

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
        return self.minutes_to_med_at(self.factor(), utc_ms, dose_sed, med_sed)

    def minutes_to_med_at(self, factor: float | None, utc_ms: int, dose_sed: float,
                          med_sed: float) -> float | None:
        """`minutes_to_med` with a factor from elsewhere (`UvForecasts.factor`)."""
        if dose_sed >= med_sed:
            return 0.0
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


class UvForecasts:
    """Many subjects' forecaster windows as arrays, one row each (the twin engine's struct
    of arrays): each row's last `FACTOR_WINDOW_S` of (time, measured, clear-sky) in a ring,
    and the running sums `UvForecaster` keeps, updated with the same operations in the same
    order (bit for bit), one sample of many subjects per numpy pass."""

    def __init__(self) -> None:
        self.width = 0
        self.last_ms = np.zeros(0, dtype=np.int64)
        self.has_last = np.zeros(0, dtype=bool)
        self.measured_sum = np.zeros(0)
        self.clear_sum = np.zeros(0)
        self.head = np.zeros(0, dtype=np.int64)      # the oldest entry's column
        self.size = np.zeros(0, dtype=np.int64)
        self.ring_t = np.zeros((0, 0), dtype=np.int64)
        self.ring_measured = np.zeros((0, 0))
        self.ring_clear = np.zeros((0, 0))
        self._widen(64)

    def grow(self, capacity: int) -> None:
        for name in ("last_ms", "has_last", "measured_sum", "clear_sum", "head", "size",
                     "ring_t", "ring_measured", "ring_clear"):
            old = getattr(self, name)
            wider = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            wider[:len(old)] = old
            setattr(self, name, wider)

    def _widen(self, width: int) -> None:
        """Room for `width` entries per row (the oldest moved to column 0)."""
        rows = len(self.size)
        order = (self.head[:, None] + np.arange(self.width)) % max(self.width, 1)
        for name in ("ring_t", "ring_measured", "ring_clear"):
            old = getattr(self, name)
            wider = np.zeros((rows, width), dtype=old.dtype)
            if self.width:
                wider[:, :self.width] = np.take_along_axis(old, order, axis=1)
            setattr(self, name, wider)
        self.head[:] = 0
        self.width = width

    def observe(self, rows: np.ndarray, utc_ms: np.ndarray, uvi: np.ndarray,
                clear: np.ndarray) -> None:
        """`UvForecaster.observe_clear` of one sample for each of these distinct rows."""
        fresh = ~self.has_last[rows] | (utc_ms > self.last_ms[rows])
        if not fresh.all():
            rows, utc_ms, uvi, clear = rows[fresh], utc_ms[fresh], uvi[fresh], clear[fresh]
        self.last_ms[rows], self.has_last[rows] = utc_ms, True
        measured = np.where(uvi < 0.0, 0.0, uvi)          # max(uvi, 0.0)
        if (self.size[rows] >= self.width).any():
            self._widen(2 * self.width)
        at = (self.head[rows] + self.size[rows]) % self.width
        self.ring_t[rows, at], self.ring_measured[rows, at] = utc_ms, measured
        self.ring_clear[rows, at] = clear
        self.size[rows] += 1
        counted = clear >= MIN_CLEAR_SKY_UVI
        if counted.any():
            summed = rows[counted]
            self.measured_sum[summed] += measured[counted]
            self.clear_sum[summed] += clear[counted]
        popping, now = rows, utc_ms
        while True:
            head = self.head[popping]
            old = now - self.ring_t[popping, head] > FACTOR_WINDOW_S * 1000
            if not old.any():
                break
            popping, now, head = popping[old], now[old], head[old]
            clear_old = self.ring_clear[popping, head]
            counted = clear_old >= MIN_CLEAR_SKY_UVI
            if counted.any():
                summed, counted_head = popping[counted], head[counted]
                self.measured_sum[summed] -= self.ring_measured[summed, counted_head]
                self.clear_sum[summed] -= clear_old[counted]
            self.head[popping] = (head + 1) % self.width
            self.size[popping] -= 1
        dust = self.clear_sum[rows] < MIN_CLEAR_SKY_UVI   # nothing counted left: clear it
        if dust.any():
            self.measured_sum[rows[dust]] = self.clear_sum[rows[dust]] = 0.0

    def get(self, row: int, latitude_deg: float, longitude_deg: float) -> UvForecaster:
        """The row as a `UvForecaster` (a backlog's long run goes through it)."""
        forecaster = UvForecaster(latitude_deg, longitude_deg)
        columns = (int(self.head[row]) + np.arange(int(self.size[row]))) % self.width
        forecaster.recent.extend(zip(self.ring_t[row, columns].tolist(),
                                     self.ring_measured[row, columns].tolist(),
                                     self.ring_clear[row, columns].tolist(), strict=True))
        forecaster.last_ms = int(self.last_ms[row]) if self.has_last[row] else None
        forecaster._measured = float(self.measured_sum[row])
        forecaster._clear = float(self.clear_sum[row])
        return forecaster

    def put(self, row: int, forecaster: UvForecaster) -> None:
        if len(forecaster.recent) > self.width:
            width = self.width
            while width < len(forecaster.recent):
                width *= 2
            self._widen(width)
        n = len(forecaster.recent)
        if n:
            t, measured, clear = zip(*forecaster.recent, strict=True)
            self.ring_t[row, :n], self.ring_measured[row, :n] = t, measured
            self.ring_clear[row, :n] = clear
        self.head[row], self.size[row] = 0, n
        self.has_last[row] = forecaster.last_ms is not None
        self.last_ms[row] = forecaster.last_ms or 0
        self.measured_sum[row], self.clear_sum[row] = forecaster._measured, forecaster._clear

    def factor(self, row: int) -> float | None:
        """`UvForecaster.factor` of the row."""
        clear_sum = float(self.clear_sum[row])
        if clear_sum <= 0:
            return None
        latest_at = (int(self.head[row]) + int(self.size[row]) - 1) % self.width
        latest_measured = float(self.ring_measured[row, latest_at])
        latest_clear = float(self.ring_clear[row, latest_at])
        latest = latest_measured / latest_clear if latest_clear >= MIN_CLEAR_SKY_UVI else 0.0
        return max(float(self.measured_sum[row]) / clear_sum, latest)
