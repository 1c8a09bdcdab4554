# One asyncio task per sensor channel: start a conversion, poll until ready without blocking
# the loop, log the value in its wire unit, tell the listeners. A sensor fault sets that
# channel's error flag and the other channels go on.
#
# Full log (flash_log.FlashLog.is_full(): every segment holds unacknowledged samples): the log
# refuses the sample and counts it in a gap record; the sampler sets ERR_LOG_FULL and samples
# FULL_SLOWDOWN times less often until the gateway acknowledges, reporting the samples it
# skipped on purpose with log.append_gap() so the gateway learns how many are missing where.
#
# Paused (power.py, battery critical): every channel but the battery gauge goes on running
# its task but takes no sample; each period it counts the sample not taken and its tick, and
# the next sample it logs after the pause is preceded by log.append_gap(channel, tick of the
# first sample not taken, tick of the last, count). Each battery sample taken during the pause
# is preceded by the counts so far, so they are on flash if the cell gives out.
from firmware import aio
from firmware import protocol_ids as ids
from firmware.flash_log import VALUE_MAX, VALUE_MIN

POLL_MS = 10
CONVERSION_TIMEOUT_MS = 2000
FAULT_RETRY_MS = 5000
UV_FAST_ABOVE_X100 = 50   # design.md §1: sample UV every second while UVI > 0.5
FULL_SLOWDOWN = 6         # while the log is full: one sample per 6 periods (5 skipped)

# channel -> (period config key, error flag)
CHANNELS = {
    ids.CH_TEMPERATURE: (ids.CFG_TEMP_PERIOD_S, ids.ERR_TEMP_SENSOR),
    ids.CH_UV: (ids.CFG_UV_PERIOD_S, ids.ERR_UV_SENSOR),
    ids.CH_HYDRATION: (ids.CFG_HYDRATION_PERIOD_S, ids.ERR_HYDRATION_SENSOR),
    ids.CH_BATTERY: (ids.CFG_BATTERY_PERIOD_S, ids.ERR_BATTERY_GAUGE),
}


class Sampler:
    def __init__(self, log, clock, config, on_sample):
        self.log = log
        self.clock = clock
        self.config = config
        self.on_sample = on_sample
        self.error_flags = 0
        self.last_uv_x100 = 0
        # per channel: samples skipped on purpose since the last one taken, and its tick
        self._skipped = [0, 0, 0, 0]
        self._last_tick = [0, 0, 0, 0]
        # paused (battery critical): per channel at 3 * channel, samples not taken, the tick
        # of the first and of the last
        self.paused = False
        self._not_taken = [0] * 12
        self.battery_soc = -1   # last logged SOC (1/256 %); -1 until the gauge is read

    @property
    def dropped_total(self):
        """Samples the full log refused since boot (each is counted in a gap record)."""
        return self.log.dropped_total

    def record(self, channel, value):
        # Once per sample: kept within the 11-word call state MicroPython holds on the C stack
        # (a bigger one, or a try block, is heap-allocated on every call), hence no try here
        # and the rare gap bookkeeping in its own function.
        tick = self.clock.now()
        if (self._skipped[channel] or self._not_taken[3 * channel]
                or (self.paused and channel == ids.CH_BATTERY)):
            self._report_gaps(channel, tick)
        self._last_tick[channel] = tick
        if value < VALUE_MIN[channel] or value > VALUE_MAX[channel]:
            self.error_flags |= CHANNELS[channel][1]   # a reading out of range: a sensor fault
            return
        seq = self.log.append(channel, tick, value)
        if channel == ids.CH_BATTERY:
            self.battery_soc = value
        if seq < 0:  # LOG_FULL: the log counted it in its open gap
            self.error_flags |= ids.ERR_LOG_FULL
        else:
            self.error_flags &= ~ids.ERR_LOG_FULL
        self.on_sample(channel, value)  # live values (ESS, battery) stay current either way

    def _report_gaps(self, channel, tick):
        # Samples not taken on purpose go into a gap just before the next sample logged.
        log = self.log
        skipped = self._skipped[channel]
        if skipped:
            log.append_gap(channel, self._last_tick[channel], tick, skipped)
            self._skipped[channel] = 0
        # While paused, each battery sample carries every paused channel's count so far, so a
        # brown-out during the pause cannot take the counts with it.
        not_taken = self._not_taken
        ch = 0 if self.paused and channel == ids.CH_BATTERY else channel
        while ch <= channel:
            i = 3 * ch
            if not_taken[i]:   # the same place: merges with a log-full gap of this sample
                log.append_gap(ch, not_taken[i + 1], not_taken[i + 2], not_taken[i])
                not_taken[i] = 0
            ch += 1

    def period_ms(self, channel):
        if channel == ids.CH_UV and self.last_uv_x100 > UV_FAST_ABOVE_X100:
            return self.config.get(ids.CFG_UV_FAST_PERIOD_S) * 1000
        return self.config.get(CHANNELS[channel][0]) * 1000

    def skip_paused(self, channel):
        """Count one sample of channel not taken on purpose (paused); returns the period to
        wait, in ms: the channel's base period (no UV fast rate: UV is not being read)."""
        not_taken = self._not_taken
        i = 3 * channel
        tick = self.clock.now()
        if not not_taken[i]:
            not_taken[i + 1] = tick
        not_taken[i + 2] = tick
        not_taken[i] += 1
        return self.config.get(CHANNELS[channel][0]) * 1000

    async def run_channel(self, channel, sensor):
        error_flag = CHANNELS[channel][1]
        while True:
            if self.paused and channel != ids.CH_BATTERY:
                await aio.sleep_ms(self.skip_paused(channel))
                continue
            try:
                sensor.start()
                waited_ms = 0
                while not sensor.ready():
                    await aio.sleep_ms(POLL_MS)
                    waited_ms += POLL_MS
                    if waited_ms > CONVERSION_TIMEOUT_MS:
                        raise OSError(110)
                value = sensor.read_raw()
            except OSError:
                self.error_flags |= error_flag
                await aio.sleep_ms(FAULT_RETRY_MS)
                continue
            self.error_flags &= ~error_flag
            if channel == ids.CH_UV:
                self.last_uv_x100 = value
            self.record(channel, value)
            period_ms = self.period_ms(channel)
            if self.log.is_full():
                period_ms *= FULL_SLOWDOWN
                self._skipped[channel] = FULL_SLOWDOWN - 1
            await aio.sleep_ms(period_ms - waited_ms if period_ms > waited_ms else 0)
