"""A simple, seeded skin-temperature model for emulators and simulations.

celsius_at(t_s) is a pure function of (seed, parameters, t_s): the same answer
whatever order or how often it is called, on CPython and MicroPython alike
(32-bit integer hashing, no stateful RNG). A later model adds physiology and
environment; this one gives plausible, bounded, slowly varying values:

    baseline + circadian swing + slow drift + inflammation offset

`t_s` is seconds since local midnight of the simulation's first day.
"""

import math

BASELINE_SKIN_C = 33.5  # typical resting skin temperature at the torso/arm
CIRCADIAN_AMPLITUDE_C = 0.4
CIRCADIAN_PERIOD_S = 86400
CIRCADIAN_PEAK_S = 4 * 3600  # distal skin is warmest during sleep, ~04:00
# The drift stands in for a bounded random walk: hashed values at knots,
# smoothly interpolated, at two time scales. Its magnitude never exceeds the sum.
SLOW_DRIFT_KNOT_S = 1800
SLOW_DRIFT_AMPLITUDE_C = 0.25
FAST_DRIFT_KNOT_S = 120
FAST_DRIFT_AMPLITUDE_C = 0.05
DEFAULT_INFLAMMATION_RISE_S = 3600

_MASK32 = 0xFFFFFFFF


def _hash32(seed, salt, index):
    # A 32-bit integer mixer (xorshift-multiply rounds); identical on every Python.
    x = (seed * 0x9E3779B1 + salt * 0x85EBCA77 + index * 0xC2B2AE3D) & _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    x ^= x >> 16
    return x


def _unit_noise(seed, salt, index):
    """Deterministic value in [-1, 1] for an integer knot index."""
    return _hash32(seed, salt, index) / 2147483647.5 - 1.0


def _smooth_noise(seed, salt, t_s, knot_s):
    """Value noise: hashed knots every knot_s, joined by a smoothstep curve; in [-1, 1]."""
    position = t_s / knot_s
    knot = math.floor(position)
    fraction = position - knot
    knot = int(knot)
    weight = fraction * fraction * (3.0 - 2.0 * fraction)
    left = _unit_noise(seed, salt, knot)
    right = _unit_noise(seed, salt, knot + 1)
    return left + (right - left) * weight


class SkinTemperatureModel:
    def __init__(self, seed=1, baseline_c=BASELINE_SKIN_C):
        self.seed = seed
        self.baseline_c = baseline_c
        self._inflammation_offset_c = 0.0
        self._inflammation_start_s = 0.0
        self._inflammation_rise_s = DEFAULT_INFLAMMATION_RISE_S

    def set_inflammation(self, offset_c, start_s=0.0, rise_s=DEFAULT_INFLAMMATION_RISE_S):
        """From start_s, add offset_c, ramping linearly over rise_s (0 = a step)."""
        self._inflammation_offset_c = offset_c
        self._inflammation_start_s = start_s
        self._inflammation_rise_s = rise_s

    def circadian_c(self, t_s):
        phase = 2.0 * math.pi * (t_s - CIRCADIAN_PEAK_S) / CIRCADIAN_PERIOD_S
        return CIRCADIAN_AMPLITUDE_C * math.cos(phase)

    def drift_c(self, t_s):
        slow = _smooth_noise(self.seed, 1, t_s, SLOW_DRIFT_KNOT_S)
        fast = _smooth_noise(self.seed, 2, t_s, FAST_DRIFT_KNOT_S)
        return SLOW_DRIFT_AMPLITUDE_C * slow + FAST_DRIFT_AMPLITUDE_C * fast

    def inflammation_c(self, t_s):
        since_s = t_s - self._inflammation_start_s
        if self._inflammation_offset_c == 0.0 or since_s < 0:
            return 0.0
        if self._inflammation_rise_s <= 0 or since_s >= self._inflammation_rise_s:
            return self._inflammation_offset_c
        return self._inflammation_offset_c * since_s / self._inflammation_rise_s

    def celsius_at(self, t_s):
        return (
            self.baseline_c + self.circadian_c(t_s) + self.drift_c(t_s) + self.inflammation_c(t_s)
        )
