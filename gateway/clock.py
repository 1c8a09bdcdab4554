"""The gateway's clocks.

`now_ms()`: the wall clock, UTC in integer milliseconds, for timestamps in messages.
`monotonic_ms()`: for every timeout and interval; a wall-clock step cannot move it.
`SteadyClock`: UTC as the monotonic clock plus an offset. The offset follows the wall clock's
slow corrections (NTP slewing) at every `check()`, but a jump of more than
`STEP_TOLERANCE_MS` between two checks is a *step*: it is adopted at that one moment, counted
in `epoch` and returned, so whoever stamped times against the old offset (the patch sessions'
SET_TIME anchors) knows those times are now uncertain and re-anchors.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

STEP_TOLERANCE_MS = 1_000   # NTP slews at most 0.5 ms/s; a second between checks is a step


def _wall_ns() -> int:
    return time.time_ns() + _injected_offset_ns()


def _injected_offset_ns() -> int:
    """Fault injection for the chaos harness (tools/chaos.py): the wall clock as seen by this
    process is offset by the integer milliseconds in the file DERMTWIN_CLOCK_SKEW_FILE."""
    path = os.environ.get("DERMTWIN_CLOCK_SKEW_FILE")
    if not path:
        return 0
    try:
        with open(path) as f:
            return int(f.read().strip() or 0) * 1_000_000
    except (OSError, ValueError):
        return 0


def now_ms() -> int:
    return _wall_ns() // 1_000_000


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


@dataclass(frozen=True)
class ClockStep:
    step_ms: int        # wall clock minus what the monotonic clock expected
    at_utc_ms: int      # the wall clock just after the step
    epoch: int          # the clock's epoch after it


class SteadyClock:
    def __init__(self, wall_ns: Callable[[], int] = _wall_ns,
                 mono_ns: Callable[[], int] = time.monotonic_ns,
                 tolerance_ms: int = STEP_TOLERANCE_MS):
        self._wall_ns = wall_ns
        self._mono_ns = mono_ns
        self.tolerance_ms = tolerance_ms
        self.offset_ms = wall_ns() // 1_000_000 - mono_ns() // 1_000_000
        self.epoch = 0
        self.steps: list[ClockStep] = []

    def monotonic_ms(self) -> int:
        return self._mono_ns() // 1_000_000

    def utc_ms(self, monotonic_ms: int | None = None) -> int:
        return (self.monotonic_ms() if monotonic_ms is None else monotonic_ms) + self.offset_ms

    def check(self) -> ClockStep | None:
        wall = self._wall_ns() // 1_000_000
        drift = wall - (self.monotonic_ms() + self.offset_ms)
        self.offset_ms += drift
        if abs(drift) <= self.tolerance_ms:
            return None
        self.epoch += 1
        step = ClockStep(drift, wall, self.epoch)
        self.steps.append(step)
        return step


CLOCK = SteadyClock()
