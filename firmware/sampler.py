# One asyncio task per sensor channel: start a conversion, poll until ready without blocking
# the loop, log the raw value, tell the listeners. A sensor fault sets an error flag and the
# other channels go on.
from firmware import aio
from firmware import protocol_ids as ids

POLL_MS = 10
FAULT_RETRY_MS = 5000


class Sampler:
    def __init__(self, log, clock, config, boot_state, on_sample):
        self.log = log
        self.clock = clock
        self.config = config
        self.boot_state = boot_state
        self.on_sample = on_sample
        self.error_flags = 0
        self.dropped_log_full = 0

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

    async def run_skin_temperature(self, sensor):
        while True:
            period_ms = self.config.get(ids.CFG_TEMP_PERIOD_S) * 1000
            try:
                sensor.start_oneshot()
                waited_ms = 0
                while not sensor.ready():
                    await aio.sleep_ms(POLL_MS)
                    waited_ms += POLL_MS
                    if waited_ms > 2000:
                        raise OSError(110)
                raw = sensor.read_raw()
            except OSError:
                self.error_flags |= ids.ERR_TEMP_SENSOR
                await aio.sleep_ms(FAULT_RETRY_MS)
                continue
            self.error_flags &= ~ids.ERR_TEMP_SENSOR
            self.record(ids.CH_TEMPERATURE, raw)
            await aio.sleep_ms(period_ms - waited_ms if period_ms > waited_ms else 0)
