"""Register-level emulator of the MAX17048 fuel gauge (Maxim/Analog Devices MAX17048/MAX17049
data sheet, "Register Summary" and register tables).

The register map is written out here from the datasheet, independently of the
driver, so a wrong constant in one is caught by tests against the other.

Modelled: VCELL (78.125 uV/LSB) and SOC (1/256 %/LSB), quantised and clamped
to 0..0xFFFF, updated by ADC conversions every 250 ms (active) or 45 s
(hibernate, HIBRT = 0xFFFF) and not at all in sleep (CONFIG.SLEEP with
MODE.EnSleep); MODE (Quick-Start, EnSleep, HibStat), VERSION, HIBRT, CONFIG,
VALRT, CRATE (0.208 %/h per LSB, from the last two SOC updates), VRESET/ID,
STATUS (RI set at power-on, flags cleared by writing 0), CMD 0x5400 power-on
reset. VCELL and SOC read 0 until the first conversion after power-on.

Not modelled: ModelGauge itself (SOC comes from the source, i.e. the battery
model stands in for the algorithm), automatic hibernate entry/exit by the HIBRT
thresholds (only the forced settings 0x0000/0xFFFF change the period), alerts
and the ALRT pin, the TABLE registers (0x40..0x7F) and their unlock.

Taken from vendor drivers rather than the datasheet: the part does not ACK
the CMD write that resets it (the emulator raises OSError(ENODEV) after
resetting); the first conversion 250 ms after power-on.
"""

import errno

from sensor_drivers.emulators.i2c_bus import RegisterChip16, const

# Register addresses and reset values (Register Summary).
REG_VCELL = const(0x02)
REG_SOC = const(0x04)
REG_MODE = const(0x06)
REG_VERSION = const(0x08)
REG_HIBRT = const(0x0A)
REG_CONFIG = const(0x0C)
REG_VALRT = const(0x14)
REG_CRATE = const(0x16)
REG_VRESET_ID = const(0x18)
REG_STATUS = const(0x1A)
REG_CMD = const(0xFE)

VERSION = const(0x0012)
RESET_HIBRT = const(0x8030)
RESET_CONFIG = const(0x971C)
RESET_VALRT = const(0x00FF)
RESET_VRESET = const(0x96)  # VRESET 3.0 V (bits 7:1 x 40 mV), comparator enabled
RESET_STATUS = const(0x0100)  # RI: the part has just been reset and is unconfigured
CMD_POR = const(0x5400)

MODE_QUICK_START = const(0x4000)
MODE_EN_SLEEP = const(0x2000)
MODE_HIB_STAT = const(0x1000)
CONFIG_SLEEP = const(0x0080)
STATUS_WRITABLE = const(0x7F00)  # EnVr, SC, HD, VR, VL, VH, RI
HIBRT_ALWAYS = const(0xFFFF)

VOLTS_PER_LSB = 78.125e-6
SOC_LSB_PER_PERCENT = 256.0
CRATE_PERCENT_PER_HOUR_PER_LSB = 0.208
ACTIVE_PERIOD_US = const(250000)
HIBERNATE_PERIOD_US = const(45000000)


def _quantise16(value):
    if value != value:  # NaN: the register saturates
        return 0xFFFF
    if value <= 0:
        return 0
    code = int(value + 0.5)
    return 0xFFFF if code > 0xFFFF else code


class MAX17048Emulator(RegisterChip16):
    chip_name = "MAX17048"

    """`volts_source()` returns the cell voltage in V, `soc_source()` the state of
    charge in %. Pass `clock_ms` only to use the chip without a VirtualI2C.
    """

    def __init__(
        self, volts_source, soc_source, address=0x36, version=VERSION, chip_id=0x00, clock_ms=None
    ):
        self.address = address
        self.version = version
        self.chip_id = chip_id & 0xFF
        self._volts_source = volts_source
        self._soc_source = soc_source
        self._clock_ms = clock_ms
        self.conversions = 0
        self.resets = 0
        self._reset_registers(0)

    # --- reset -----------------------------------------------------------
    def _reset_registers(self, now_ms):
        self._vcell = 0
        self._soc = 0
        self._mode = 0
        self._hibrt = RESET_HIBRT
        self._config = RESET_CONFIG
        self._valrt = RESET_VALRT
        self._crate = 0
        self._vreset = RESET_VRESET
        self._status = RESET_STATUS
        self._last_soc_pct = None
        self._last_conversion_us = None
        self._next_conversion_us = int(now_ms * 1000) + ACTIVE_PERIOD_US

    # --- state -----------------------------------------------------------
    def hibernating(self):
        return self._hibrt == HIBRT_ALWAYS

    def sleeping(self):
        return bool(self._mode & MODE_EN_SLEEP) and bool(self._config & CONFIG_SLEEP)

    def conversion_period_us(self):
        return HIBERNATE_PERIOD_US if self.hibernating() else ACTIVE_PERIOD_US

    # --- time ------------------------------------------------------------
    def _advance(self, now_ms):
        now_ms = self._now(now_ms)
        now_us = int(now_ms * 1000)
        if self.sleeping():
            self._next_conversion_us = max(self._next_conversion_us, now_us)
            return now_ms
        if now_us >= self._next_conversion_us:
            period = self.conversion_period_us()
            steps = (now_us - self._next_conversion_us) // period + 1
            at_us = self._next_conversion_us + (steps - 1) * period
            self._next_conversion_us = at_us + period
            self._convert(at_us)  # only the latest conversion can be observed
        return now_ms

    def _convert(self, at_us):
        volts = float(self._volts_source())
        soc_pct = float(self._soc_source())
        self._vcell = _quantise16(volts / VOLTS_PER_LSB)
        self._soc = _quantise16(soc_pct * SOC_LSB_PER_PERCENT)
        last_us, last_pct = self._last_conversion_us, self._last_soc_pct
        if last_us is not None and last_pct is not None and at_us > last_us:
            hours = (at_us - last_us) / 3.6e9
            rate = (soc_pct - last_pct) / hours / CRATE_PERCENT_PER_HOUR_PER_LSB
            if rate == rate:
                rate = int(rate)
                self._crate = max(-0x8000, min(0x7FFF, rate)) & 0xFFFF
        self._last_soc_pct = soc_pct
        self._last_conversion_us = at_us
        self.conversions += 1

    # --- registers -------------------------------------------------------
    def read_register(self, register, now_ms):
        self._advance(now_ms)
        if register == REG_VCELL:
            return self._vcell
        if register == REG_SOC:
            return self._soc
        if register == REG_MODE:
            return (self._mode & MODE_EN_SLEEP) | (MODE_HIB_STAT if self.hibernating() else 0)
        if register == REG_VERSION:
            return self.version
        if register == REG_HIBRT:
            return self._hibrt
        if register == REG_CONFIG:
            return self._config
        if register == REG_VALRT:
            return self._valrt
        if register == REG_CRATE:
            return self._crate
        if register == REG_VRESET_ID:
            return (self._vreset << 8) | self.chip_id
        if register == REG_STATUS:
            return self._status
        if register == REG_CMD:
            return 0xFFFF
        raise self._unknown(register)

    def write_register(self, register, value, now_ms):
        now_ms = self._advance(now_ms)
        value &= 0xFFFF
        if register == REG_MODE:
            self._mode = value & MODE_EN_SLEEP
            if value & MODE_QUICK_START:
                # Restart the estimate: convert at once from the present voltage.
                self._next_conversion_us = int(now_ms * 1000)
                self._last_conversion_us = None
                self._advance(now_ms)
        elif register == REG_HIBRT:
            self._hibrt = value
        elif register == REG_CONFIG:
            self._config = value
        elif register == REG_VALRT:
            self._valrt = value
        elif register == REG_VRESET_ID:
            self._vreset = value >> 8  # the ID byte is read-only
        elif register == REG_STATUS:
            self._status = value & STATUS_WRITABLE
        elif register == REG_CMD:
            if value == CMD_POR:
                self.resets += 1
                self._reset_registers(now_ms)
                raise OSError(errno.ENODEV)  # reset before the ACK
        elif register in (REG_VCELL, REG_SOC, REG_VERSION, REG_CRATE):
            raise self._read_only(register)
        else:
            raise self._unknown(register)
