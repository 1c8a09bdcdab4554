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
#
# Every name here is a qstr in RAM on a patch (tests/test_firmware_heap.py): the constants are
# underscored const()s, which mpy-cross folds away, and the states are the status flags they
# raise (a state needs no name of its own).
from firmware import aio

try:
    from micropython import const
except ImportError:  # CPython (virtual patch, tests)

    def const(x):  # type: ignore[misc]  # same behaviour as micropython.const
        return x


# states: the status error flags each one sets (protocol.md §6)
_NORMAL = const(0)
_LOW = const(0x0080)        # ids.ERR_BATTERY_LOW
_CRITICAL = const(0x0180)   # ids.ERR_BATTERY_LOW | ids.ERR_BATTERY_CRITICAL

_SOC_PER_PERCENT = const(256)  # MAX17048 SOC register LSB: 1/256 %
_LOW_BELOW_PCT = const(15)
_LOW_CLEAR_ABOVE_PCT = const(20)
_CRITICAL_BELOW_PCT = const(5)
_CRITICAL_CLEAR_ABOVE_PCT = const(8)
_LOW_BELOW = const(_LOW_BELOW_PCT * _SOC_PER_PERCENT)
_LOW_CLEAR = const(_LOW_CLEAR_ABOVE_PCT * _SOC_PER_PERCENT)
_CRITICAL_BELOW = const(_CRITICAL_BELOW_PCT * _SOC_PER_PERCENT)
_CRITICAL_CLEAR = const(_CRITICAL_CLEAR_ABOVE_PCT * _SOC_PER_PERCENT)

CHECK_MS = 5000   # how often the task looks at the SOC


def next_state(state, soc):
    """The power state after reading SOC (1/256 %) in state; soc < 0 (unknown) keeps it."""
    if soc < 0:
        return state
    if soc < _CRITICAL_BELOW:
        return _CRITICAL
    if state == _CRITICAL and soc <= _CRITICAL_CLEAR:
        return _CRITICAL
    if soc < _LOW_BELOW:
        return _LOW
    if state != _NORMAL and soc <= _LOW_CLEAR:
        return _LOW
    return _NORMAL


class PowerManager:
    """Applies next_state() to the link's sampler (pause, flags) and log (flush); a change
    refreshes the link's status record at once."""

    def __init__(self, link):
        self.link = link
        self.state = _NORMAL
        self._flushed_at = -1   # log.next_seq at the last flush while critical

    def update(self, soc):
        """One step of the policy for SOC (1/256 %, < 0 unknown); returns the state."""
        link = self.link
        state = next_state(self.state, soc)
        changed = state != self.state
        if changed:
            self.state = state
            sampler = link.sampler
            sampler.error_flags = (sampler.error_flags & ~_CRITICAL) | state
            sampler.paused = state == _CRITICAL
            print("power", state, soc)   # the state is its flags
            if state == _CRITICAL:
                self._flushed_at = -1
        if state == _CRITICAL and self._flushed_at != link.log.next_seq:
            # everything taken goes on flash before a brown-out can take it (again after each
            # sample logged while critical: the battery gauge's)
            link.log.flush()
            self._flushed_at = link.log.next_seq
        if changed:
            link._refresh_status()   # the status record shows the flags at once
        return state

    async def run(self):
        sampler = self.link.sampler
        while True:
            self.update(sampler.battery_soc)
            await aio.sleep_ms(CHECK_MS)
