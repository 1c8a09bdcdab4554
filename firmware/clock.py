# The patch's tick clock: 100 ms units since boot, extended past time.ticks_ms() wrap-around.
# Ticks stay small ints (< 2**30 for 3.4 years), so reading the clock allocates nothing.
try:
    from time import ticks_diff, ticks_ms
except ImportError:  # CPython (virtual patch)
    import time as _time

    def ticks_ms():  # type: ignore[misc]
        return int(_time.monotonic() * 1000)  # type: ignore[attr-defined]

    def ticks_diff(a, b):  # type: ignore[misc,no-redef]
        return a - b

try:
    from micropython import const
except ImportError:
    def const(x):  # type: ignore[misc]  # same behaviour as micropython.const
        return x

MS_PER_TICK = const(100)


class TickClock:
    def __init__(self):
        self._last_ms = ticks_ms()
        self._tick = 0
        self._rem_ms = 0

    def now(self):
        now_ms = ticks_ms()
        elapsed = ticks_diff(now_ms, self._last_ms) + self._rem_ms
        self._last_ms = now_ms
        whole = elapsed // MS_PER_TICK
        self._rem_ms = elapsed - whole * MS_PER_TICK
        self._tick += whole
        return self._tick
