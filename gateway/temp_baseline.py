"""A personal skin-temperature baseline that knows the time of day (sans-I/O).

Skin temperature swings with the day (0.5-2 degC between people); a baseline that only
follows the recent past lags that swing and lets it through as anomalies, and it learns a
slow fever away within hours. This one keeps, per subject, a mean for each half hour of
the day, learned across days, and learns only from readings near what it expects, so an
episode does not become the new normal:

- `expected(t_ms)`: the profile interpolated between half-hour slots plus a slowly tracked
  level; before a slot has been seen, a plain running mean (the first day's fallback);
- `observe(t_ms, celsius)`: learns from a reading within `LEARN_WITHIN_C` of the expectation;
  further away it is counted as an outlier and not learned, unless readings stay away for
  `RELEARN_AFTER_MS` (the patch moved to another site), after which it learns again.

Times are UTC ms; the 24-hour profile needs no time zone (it learns whatever phase it sees).
The state is plain numbers (`to_saved`/`from_saved`) so it survives gateway restarts.
"""

from __future__ import annotations

import numpy as np

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

    def observe_many(self, times: list[int], values: list[float]) -> None:
        """`observe` of each reading in turn (a backlog's long run): the same arithmetic,
        inlined, with the state in locals."""
        slot_mean, slot_count = self.slot_mean, self.slot_count
        level, fallback = self.level, self.fallback
        since, unseen = self.outlier_since_ms, self._unseen
        for t_ms, celsius in zip(times, values, strict=True):
            day_ms = t_ms % DAY_MS
            position = (day_ms - SLOT_MS / 2) / SLOT_MS
            floor = position // 1
            left = int(floor) % SLOTS_PER_DAY
            right = (left + 1) % SLOTS_PER_DAY
            a, b = slot_mean[left], slot_mean[right]
            profile = b if a is None else a if b is None else a + (b - a) * (position - floor)
            expected = fallback if profile is None else profile + level
            if expected is not None and abs(celsius - expected) > LEARN_WITHIN_C:
                if since is None:
                    since = t_ms
                if t_ms - since < RELEARN_AFTER_MS:
                    continue
            else:
                since = None
            fallback = celsius if fallback is None else (
                fallback + FALLBACK_WEIGHT * (celsius - fallback))
            slot = day_ms // SLOT_MS
            mean = slot_mean[slot]
            count = slot_count[slot] + 1
            slot_count[slot] = count
            if mean is None:
                slot_mean[slot] = celsius - level
                unseen -= 1
            else:
                weight = max(1 / count, SLOT_MIN_WEIGHT)
                slot_mean[slot] = mean + weight * (celsius - level - mean)
            if unseen == 0:
                a, b = slot_mean[left], slot_mean[right]
                profile = (b if a is None else a if b is None
                           else a + (b - a) * (position - floor))
                if profile is not None:
                    level += LEVEL_WEIGHT * (celsius - profile - level)
        self.level, self.fallback = level, fallback
        self.outlier_since_ms, self._unseen = since, unseen

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


class TimeOfDayBaselines:
    """Many subjects' `TimeOfDayBaseline`s as arrays, one row each (the twin engine's
    struct of arrays), so that one reading of each of many subjects is learned in one pass
    of numpy, with the same arithmetic in the same order as `observe` (bit for bit).
    None is NaN (slot means, fallback) or a flag (outlier_since_ms)."""

    def __init__(self) -> None:
        self.slot_mean = np.full((0, SLOTS_PER_DAY), np.nan)
        self.slot_count = np.zeros((0, SLOTS_PER_DAY), dtype=np.int64)
        self.level = np.zeros(0)
        self.fallback = np.zeros(0)
        self.outlier_since_ms = np.zeros(0, dtype=np.int64)
        self.outlier = np.zeros(0, dtype=bool)
        self.unseen = np.zeros(0, dtype=np.int64)

    def grow(self, capacity: int) -> None:
        def wider(a: np.ndarray, fill: object) -> np.ndarray:
            b = np.full((capacity, *a.shape[1:]), fill, dtype=a.dtype)
            b[:len(a)] = a
            return b
        self.slot_mean, self.slot_count = wider(self.slot_mean, np.nan), wider(self.slot_count, 0)
        self.level, self.fallback = wider(self.level, 0.0), wider(self.fallback, np.nan)
        self.outlier_since_ms, self.outlier = wider(self.outlier_since_ms, 0), \
            wider(self.outlier, False)
        self.unseen = wider(self.unseen, SLOTS_PER_DAY)

    def put(self, row: int, baseline: TimeOfDayBaseline) -> None:
        self.slot_mean[row] = [np.nan if m is None else m for m in baseline.slot_mean]
        self.slot_count[row] = baseline.slot_count
        self.level[row] = baseline.level
        self.fallback[row] = np.nan if baseline.fallback is None else baseline.fallback
        self.outlier[row] = baseline.outlier_since_ms is not None
        self.outlier_since_ms[row] = baseline.outlier_since_ms or 0
        self.unseen[row] = baseline._unseen

    def get(self, row: int) -> TimeOfDayBaseline:
        baseline = TimeOfDayBaseline()
        baseline.slot_mean = [None if m != m else m for m in self.slot_mean[row].tolist()]
        baseline.slot_count = self.slot_count[row].tolist()
        baseline.level = float(self.level[row])
        fallback = float(self.fallback[row])
        baseline.fallback = None if fallback != fallback else fallback
        baseline.outlier_since_ms = (int(self.outlier_since_ms[row]) if self.outlier[row]
                                     else None)
        baseline._unseen = int(self.unseen[row])
        return baseline

    def expected(self, rows: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
        """`expected` of each row at its time; NaN for None."""
        profile = self._profile(rows, *_interpolation(t_ms))
        return np.where(np.isnan(profile), self.fallback[rows], profile + self.level[rows])

    def observe(self, rows: np.ndarray, t_ms: np.ndarray, celsius: np.ndarray) -> None:
        """`observe` of one reading for each of these distinct rows."""
        left, right, fraction = _interpolation(t_ms)
        profile = self._profile(rows, left, right, fraction)
        expected = np.where(np.isnan(profile), self.fallback[rows], profile + self.level[rows])
        outside = ~np.isnan(expected) & (np.abs(celsius - expected) > LEARN_WITHIN_C)
        since = np.where(self.outlier[rows], self.outlier_since_ms[rows], t_ms)
        self.outlier[rows] = outside
        self.outlier_since_ms[rows] = np.where(outside, since, 0)
        learn = ~outside | (t_ms - since >= RELEARN_AFTER_MS)
        if not learn.all():
            rows, t_ms, celsius = rows[learn], t_ms[learn], celsius[learn]
            left, right, fraction = left[learn], right[learn], fraction[learn]
        fallback = self.fallback[rows]
        self.fallback[rows] = np.where(np.isnan(fallback), celsius,
                                       fallback + FALLBACK_WEIGHT * (celsius - fallback))
        slot = (t_ms % DAY_MS) // SLOT_MS
        mean = self.slot_mean[rows, slot]
        count = self.slot_count[rows, slot] + 1
        self.slot_count[rows, slot] = count
        level = self.level[rows]
        first = np.isnan(mean)
        weight = np.maximum(1 / count, SLOT_MIN_WEIGHT)
        self.slot_mean[rows, slot] = np.where(first, celsius - level,
                                              mean + weight * (celsius - level - mean))
        self.unseen[rows] -= first
        full = self.unseen[rows] == 0
        if full.any():
            if not full.all():
                rows, celsius, level = rows[full], celsius[full], level[full]
                left, right, fraction = left[full], right[full], fraction[full]
            profile = self._profile(rows, left, right, fraction)
            self.level[rows] = np.where(np.isnan(profile), level,
                                        level + LEVEL_WEIGHT * (celsius - profile - level))

    def _profile(self, rows: np.ndarray, left: np.ndarray, right: np.ndarray,
                 fraction: np.ndarray) -> np.ndarray:
        a, b = self.slot_mean[rows, left], self.slot_mean[rows, right]
        return np.where(np.isnan(a), b, np.where(np.isnan(b), a, a + (b - a) * fraction))


def _interpolation(t_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`TimeOfDayBaseline._profile`'s two slots and the fraction between them."""
    position = ((t_ms % DAY_MS) - SLOT_MS / 2) / SLOT_MS
    floor = np.floor(position)
    left = floor.astype(np.int64) % SLOTS_PER_DAY
    return left, (left + 1) % SLOTS_PER_DAY, position - floor


class BaselineRow:
    """One subject's row of `TimeOfDayBaselines`, with `TimeOfDayBaseline`'s face."""

    __slots__ = ("table", "row")

    def __init__(self, table: TimeOfDayBaselines, row: int) -> None:
        self.table, self.row = table, row

    @property
    def learned(self) -> bool:
        return bool(self.table.unseen[self.row] == 0)

    def expected(self, t_ms: int) -> float | None:
        return self.table.get(self.row).expected(t_ms)

    def observe(self, t_ms: int, celsius: float) -> None:
        baseline = self.table.get(self.row)
        baseline.observe(t_ms, celsius)
        self.table.put(self.row, baseline)

    def to_saved(self) -> dict:
        return self.table.get(self.row).to_saved()


class HydrationExcesses:
    """Many subjects' `HydrationExcess` as arrays, one row each (None is NaN): one reading
    of each of many subjects learned in one numpy pass, bit for bit as `observe`."""

    def __init__(self) -> None:
        self.mean = np.zeros(0)
        self.latest = np.zeros(0)

    def grow(self, capacity: int) -> None:
        for name in ("mean", "latest"):
            wider = np.full(capacity, np.nan)
            old = getattr(self, name)
            wider[:len(old)] = old
            setattr(self, name, wider)

    def put(self, row: int, hydration: HydrationExcess) -> None:
        self.mean[row] = np.nan if hydration.mean is None else hydration.mean
        self.latest[row] = np.nan if hydration.latest is None else hydration.latest

    def observe(self, rows: np.ndarray, au: np.ndarray) -> None:
        self.latest[rows] = au
        on_skin = au >= HydrationExcess.OFF_SKIN_BELOW_AU
        rows, au = rows[on_skin], au[on_skin]
        mean = self.mean[rows]
        high = au - mean > HydrationExcess.EXCESS_FREEZE_AU
        weight = np.where(high, HydrationExcess.SLOW_WEIGHT, HydrationExcess.WEIGHT)
        self.mean[rows] = np.where(np.isnan(mean), au, mean + weight * (au - mean))

    def excess_au(self, rows: np.ndarray) -> np.ndarray:
        excess = self.latest[rows] - self.mean[rows]
        return np.where(np.isnan(excess), 0.0, excess)


class HydrationRow:
    """One subject's row of `HydrationExcesses`, with `HydrationExcess`'s face."""

    __slots__ = ("table", "row")

    def __init__(self, table: HydrationExcesses, row: int) -> None:
        self.table, self.row = table, row

    @property
    def mean(self) -> float | None:
        mean = float(self.table.mean[self.row])
        return None if mean != mean else mean

    @property
    def latest(self) -> float | None:
        latest = float(self.table.latest[self.row])
        return None if latest != latest else latest

    @property
    def excess_au(self) -> float:
        return float(self.table.excess_au(np.array([self.row]))[0])
