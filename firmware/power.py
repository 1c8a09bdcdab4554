# Battery/power policy: what the patch does as its cell runs down. One asyncio task that looks
# at the battery state of charge (the MAX17048 SOC register in 1/256 %, as the sampler logs
# it) every few seconds; the policy itself, next_state(), is a pure function.
#
#   NORMAL   -> LOW below 15 %, back to NORMAL above 20 %
#   LOW      -> status flag ERR_BATTERY_LOW; nothing else changes
#   CRITICAL below 5 %, back to LOW above 8 % (NORMAL if also above 20 %):
#            status flags ERR_BATTERY_LOW | ERR_BATTERY_CRITICAL; the flash log is flushed
#            (and again whenever a sample was logged since), the sensor channels except the
#            battery gauge pause (their tasks run but take no sample; the samples not taken
#            are reported as a gap when sampling resumes, sampler.py), and the BLE link stays
#            up so the gateway can drain the backlog with the charge left.
# Until the gauge has been read (no SOC yet) the state stays as it is (NORMAL at boot).
# Thresholds are strict: "below 15 %" is SOC < 15 %, "above 20 %" is SOC > 20 %.
from firmware import aio
from firmware import protocol_ids as ids

try:
    from micropython import const
except ImportError:  # CPython (virtual patch, tests)

    def const(x):  # type: ignore[misc]  # same behaviour as micropython.const
        return x


NORMAL = const(0)
LOW = const(1)
CRITICAL = const(2)
STATE_NAMES = ("normal", "low", "critical")

SOC_PER_PERCENT = const(256)     # MAX17048 SOC register LSB: 1/256 %
LOW_BELOW_PCT = const(15)
LOW_CLEAR_ABOVE_PCT = const(20)
CRITICAL_BELOW_PCT = const(5)
CRITICAL_CLEAR_ABOVE_PCT = const(8)
CHECK_MS = 5000                  # how often the task looks at the SOC

_LOW_BELOW = const(LOW_BELOW_PCT * SOC_PER_PERCENT)
_LOW_CLEAR = const(LOW_CLEAR_ABOVE_PCT * SOC_PER_PERCENT)
_CRITICAL_BELOW = const(CRITICAL_BELOW_PCT * SOC_PER_PERCENT)
_CRITICAL_CLEAR = const(CRITICAL_CLEAR_ABOVE_PCT * SOC_PER_PERCENT)
_FLAGS = ids.ERR_BATTERY_LOW | ids.ERR_BATTERY_CRITICAL


def next_state(state, soc):
    """The power state after reading SOC (1/256 %) in state; soc < 0 (unknown) keeps it."""
    if soc < 0:
        return state
    if soc < _CRITICAL_BELOW:
        return CRITICAL
    if state == CRITICAL and soc <= _CRITICAL_CLEAR:
        return CRITICAL
    if soc < _LOW_BELOW:
        return LOW
    if state != NORMAL and soc <= _LOW_CLEAR:
        return LOW
    return NORMAL


def error_flags(state):
    """Status error flags (protocol.md §6) for a power state."""
    if state == CRITICAL:
        return _FLAGS
    if state == LOW:
        return ids.ERR_BATTERY_LOW
    return 0


class PowerManager:
    """Applies next_state() to the sampler (pause, flags) and the log (flush).

    `on_change()` is called after every state change (the patch refreshes its status record).
    """

    def __init__(self, sampler, log, on_change=None):
        self.sampler = sampler
        self.log = log
        self.on_change = on_change
        self.state = NORMAL
        self.transitions = 0
        self._flushed_at = -1   # log.next_seq at the last flush while critical

    def update(self, soc):
        """One step of the policy for SOC (1/256 %, < 0 unknown); returns the state."""
        state = next_state(self.state, soc)
        if state != self.state:
            self.state = state
            self.transitions += 1
            sampler = self.sampler
            sampler.error_flags = (sampler.error_flags & ~_FLAGS) | error_flags(state)
            sampler.paused = state == CRITICAL
            print("power:", STATE_NAMES[state], "at SOC", soc // SOC_PER_PERCENT, "%")
            if state == CRITICAL:
                self._flush()
            if self.on_change is not None:
                self.on_change()
        elif state == CRITICAL and self._flushed_at != self.log.next_seq:
            self._flush()   # a sample (the battery's) was logged since
        return state

    def _flush(self):
        # everything taken goes on flash before a brown-out can take it
        self.log.flush()
        self._flushed_at = self.log.next_seq

    async def run(self):
        while True:
            self.update(self.sampler.battery_soc)
            await aio.sleep_ms(CHECK_MS)
