"""Register-level emulator of the Lite-On LTR-390UV-01 (datasheet DS86-2015-0004).

The register map is written out here from the datasheet, independently of the
driver, so a wrong constant in one is caught by tests against the other.

Modelled: MAIN_CTRL (enable, ALS/UVS mode, software reset), MEAS_RATE
(resolution and repeat period), GAIN, PART_ID, MAIN_STATUS (power-on and data
status, cleared on read), ALS_DATA and UVS_DATA (20 bit, LSB first, full-scale
clamp), INT_CFG, INT_PST and the threshold registers (stored only), continuous
measurement while enabled, timed by the bus clock. Not modelled: the interrupt
pin and threshold comparison, the data-register lock during a read, wake-up
time from standby.

Sources are callables sampled when a measurement completes: `uv_index_source()`
returns the UV index at the sensor (behind the window) and `lux_source()` the
illuminance in lux.
"""

from sensor_drivers.emulators.i2c_bus import const
from sensor_drivers.emulators.registers8 import RegisterChip8

# Register addresses and reset values ("Register Set" table).
REG_MAIN_CTRL = const(0x00)
REG_MEAS_RATE = const(0x04)
REG_GAIN = const(0x05)
REG_PART_ID = const(0x06)
REG_MAIN_STATUS = const(0x07)
REG_ALS_DATA_0 = const(0x0D)  # 0x0D..0x0F
REG_UVS_DATA_0 = const(0x10)  # 0x10..0x12
REG_INT_CFG = const(0x19)
REG_INT_PST = const(0x1A)
REG_THRES_UP_0 = const(0x21)  # 0x21..0x23
REG_THRES_LOW_0 = const(0x24)  # 0x24..0x26

RESET_MAIN_CTRL = const(0x00)
RESET_MEAS_RATE = const(0x22)  # 18 bit, 100 ms
RESET_GAIN = const(0x01)  # gain 3
PART_ID = const(0xB2)
RESET_INT_CFG = const(0x10)
RESET_INT_PST = const(0x00)
RESET_THRES_UP = (0xFF, 0xFF, 0x0F)
RESET_THRES_LOW = (0x00, 0x00, 0x00)

MAIN_CTRL_SW_RESET = const(0x10)
MAIN_CTRL_UVS_MODE = const(0x08)
MAIN_CTRL_ENABLE = const(0x02)
MAIN_CTRL_WRITABLE = const(0x0A)  # bits 3 and 1; bit 4 acts and reads 0
STATUS_POWER_ON = const(0x20)
STATUS_DATA = const(0x08)
MEAS_RATE_WRITABLE = const(0x77)
GAIN_WRITABLE = const(0x07)

# MEAS_RATE bits 6:4 -> ADC bits and integration time in microseconds; codes 6, 7
# are reserved (treated as the reset value's 18 bit here).
RESOLUTION_BITS = (20, 19, 18, 17, 16, 13, 18, 18)
INTEGRATION_US = (400000, 200000, 100000, 50000, 25000, 12500, 100000, 100000)
# MEAS_RATE bits 2:0 -> repeat period in microseconds.
MEAS_PERIOD_US = (25000, 50000, 100000, 200000, 500000, 1000000, 2000000, 2000000)
# GAIN bits 2:0 -> gain; codes 5..7 are reserved (treated as 18 here).
GAINS = (1, 3, 6, 9, 18, 18, 18, 18)

# UVS sensitivity: 2300 counts/UVI at gain 18, 20 bit; linear in gain and 2^res.
UVS_COUNTS_PER_UVI_REF = 2300.0
# ALS: lux = 0.6 x ALS_DATA / (gain x integration/100 ms) x Wfac ("Lux formula").
ALS_LUX_PER_COUNT_REF = 0.6


class LTR390Emulator(RegisterChip8):
    chip_name = "LTR390"

    """`uv_index_source()` returns the UV index; `lux_source()` (optional) lux.
    Pass `clock_ms` only to use the chip without a VirtualI2C.
    """

    def __init__(
        self, uv_index_source, address=0x53, part_id=PART_ID, lux_source=None, clock_ms=None
    ):
        self.address = address
        self.part_id = part_id
        self._uv_index_source = uv_index_source
        self._lux_source = lux_source
        self._clock_ms = clock_ms
        self.measurements = 0
        self._reset_registers(0)

    # --- reset -----------------------------------------------------------
    def _reset_registers(self, now_ms):
        self._ctrl = RESET_MAIN_CTRL
        self._meas_rate = RESET_MEAS_RATE
        self._gain = RESET_GAIN
        self._status = STATUS_POWER_ON
        self._int_cfg = RESET_INT_CFG
        self._int_pst = RESET_INT_PST
        self._thres = list(RESET_THRES_UP) + list(RESET_THRES_LOW)
        self._als = 0
        self._uvs = 0
        self._start_us = int(now_ms * 1000)
        self._done = 0

    # --- field helpers -----------------------------------------------------
    def resolution_bits(self):
        return RESOLUTION_BITS[(self._meas_rate >> 4) & 7]

    def integration_us(self):
        return INTEGRATION_US[(self._meas_rate >> 4) & 7]

    def gain(self):
        return GAINS[self._gain & 7]

    def _period_us(self):
        return max(MEAS_PERIOD_US[self._meas_rate & 7], self.integration_us())

    def counts_per_uvi(self):
        return UVS_COUNTS_PER_UVI_REF * self.gain() / 18 * (1 << self.resolution_bits()) / (1 << 20)

    # --- time ----------------------------------------------------------------
    def _advance(self, now_ms):
        now_ms = self._now(now_ms)
        if not self._ctrl & MAIN_CTRL_ENABLE:
            return now_ms
        elapsed_us = int(now_ms * 1000) - self._start_us
        integration_us = self.integration_us()
        if elapsed_us >= integration_us:
            done = (elapsed_us - integration_us) // self._period_us() + 1
            if done > self._done:
                self._done = done
                self._complete_measurement()
        return now_ms

    def _quantise(self, value):
        full_scale = (1 << self.resolution_bits()) - 1
        if not value > 0:  # also NaN
            return 0
        counts = int(value + 0.5)
        return full_scale if counts > full_scale else counts

    def _complete_measurement(self):
        if self._ctrl & MAIN_CTRL_UVS_MODE:
            self._uvs = self._quantise(float(self._uv_index_source()) * self.counts_per_uvi())
        else:
            lux = float(self._lux_source()) if self._lux_source is not None else 0.0
            factor = self.gain() * (self.integration_us() / 100000) / ALS_LUX_PER_COUNT_REF
            self._als = self._quantise(lux * factor)
        self.measurements += 1
        self._status |= STATUS_DATA

    # --- registers -------------------------------------------------------------
    def read_register(self, register, now_ms):
        self._advance(now_ms)
        if register == REG_MAIN_CTRL:
            return self._ctrl
        if register == REG_MEAS_RATE:
            return self._meas_rate
        if register == REG_GAIN:
            return self._gain
        if register == REG_PART_ID:
            return self.part_id
        if register == REG_MAIN_STATUS:
            value = self._status
            self._status = 0  # power-on, interrupt and data status clear on read
            return value
        if REG_ALS_DATA_0 <= register <= REG_ALS_DATA_0 + 2:
            return (self._als >> (8 * (register - REG_ALS_DATA_0))) & 0xFF
        if REG_UVS_DATA_0 <= register <= REG_UVS_DATA_0 + 2:
            return (self._uvs >> (8 * (register - REG_UVS_DATA_0))) & 0xFF
        if register == REG_INT_CFG:
            return self._int_cfg
        if register == REG_INT_PST:
            return self._int_pst
        if REG_THRES_UP_0 <= register <= REG_THRES_LOW_0 + 2:
            return self._thres[register - REG_THRES_UP_0]
        raise self._unknown(register)

    def write_register(self, register, value, now_ms):
        now_ms = self._advance(now_ms)
        value &= 0xFF
        if register == REG_MAIN_CTRL:
            if value & MAIN_CTRL_SW_RESET:
                self._reset_registers(now_ms)
                return
            new_ctrl = value & MAIN_CTRL_WRITABLE
            if new_ctrl != self._ctrl:
                # Enabling, or switching mode while enabled, starts a new measurement train.
                self._start_us = int(now_ms * 1000)
                self._done = 0
            self._ctrl = new_ctrl
        elif register == REG_MEAS_RATE:
            self._meas_rate = value & MEAS_RATE_WRITABLE
        elif register == REG_GAIN:
            self._gain = value & GAIN_WRITABLE
        elif register == REG_INT_CFG:
            self._int_cfg = value
        elif register == REG_INT_PST:
            self._int_pst = value
        elif REG_THRES_UP_0 <= register <= REG_THRES_LOW_0 + 2:
            self._thres[register - REG_THRES_UP_0] = value
        elif register in (REG_PART_ID, REG_MAIN_STATUS) or (
            REG_ALS_DATA_0 <= register <= REG_UVS_DATA_0 + 2
        ):
            raise self._read_only(register)
        else:
            raise self._unknown(register)
