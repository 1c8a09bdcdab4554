# One asyncio task per sensor channel: start a conversion, poll until ready without blocking
# the loop, log the value in its wire unit, tell the listeners. A sensor fault sets that
# channel's error flag and the other channels go on.
from firmware import aio
from firmware import protocol_ids as ids

POLL_MS = 10
CONVERSION_TIMEOUT_MS = 2000
FAULT_RETRY_MS = 5000
UV_FAST_ABOVE_X100 = 50   # design.md §1: sample UV every second while UVI > 0.5

# channel -> (period config key, error flag)
CHANNELS = {
    ids.CH_TEMPERATURE: (ids.CFG_TEMP_PERIOD_S, ids.ERR_TEMP_SENSOR),
    ids.CH_UV: (ids.CFG_UV_PERIOD_S, ids.ERR_UV_SENSOR),
    ids.CH_HYDRATION: (ids.CFG_HYDRATION_PERIOD_S, ids.ERR_HYDRATION_SENSOR),
    ids.CH_BATTERY: (ids.CFG_BATTERY_PERIOD_S, ids.ERR_BATTERY_GAUGE),
}


class Sampler:
    def __init__(self, log, clock, config, boot_state, on_sample):
        self.log = log
        self.clock = clock
        self.config = config
        self.boot_state = boot_state
        self.on_sample = on_sample
        self.error_flags = 0
        self.dropped_log_full = 0
        self.last_uv_x100 = 0

    def record(self, channel, value):
        seq = self.log.append(channel, self.clock.now(), value)
        if seq < 0:
            # Issue 4 turns this into an explicit gap record in the flash log.
            self.dropped_log_full += 1
            self.error_flags |= ids.ERR_LOG_FULL
            return
        self.error_flags &= ~ids.ERR_LOG_FULL
        self.boot_state.reserve(self.log.next_seq)
        self.on_sample(channel, value)

    def period_ms(self, channel):
        if channel == ids.CH_UV and self.last_uv_x100 > UV_FAST_ABOVE_X100:
            return self.config.get(ids.CFG_UV_FAST_PERIOD_S) * 1000
        return self.config.get(CHANNELS[channel][0]) * 1000

    async def run_channel(self, channel, sensor):
        error_flag = CHANNELS[channel][1]
        while True:
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
            await aio.sleep_ms(period_ms - waited_ms if period_ms > waited_ms else 0)
