"""Lite-On LTR-390UV-01 UV index sensor (UVS mode): one measurement, non-blocking, allocation-free.

Datasheet: Lite-On DS86-2015-0004 ("LTR-390UV-01 Optical Sensor Product Data
Sheet"); section names below refer to it. The chip has no one-shot mode: when
enabled it measures continuously at MEAS_RATE. The driver enables it for one
integration, then puts it back in standby once the result is read.

Usage (the caller schedules; the driver never sleeps):

    sensor = LTR390(i2c)              # checks PART_ID, configures UVS mode, standby
    wait_ms = sensor.start()          # one integration takes wait_ms
    ...                               # come back later
    if sensor.ready():                # reading MAIN_STATUS clears the data-status bit
        uvi_x100 = sensor.read_raw()  # UVI x 100 (wire unit of channel 1); back to standby

UVI conversion (datasheet "UVI formula", and the sensitivity row of the
characteristics table): UVI = counts / sensitivity x Wfac, with sensitivity
2300 counts/UVI at gain 18x and 20-bit resolution (400 ms). Sensitivity scales
linearly with gain and with the integration time, i.e. with 2^res for 16..20
bits (400/200/100/50/25 ms):

    sensitivity = 2300 x (gain / 18) x (2^res / 2^20)     [counts/UVI]

13-bit resolution (12.5 ms) is refused: there 2^res/2^20 = 1/128 but the
integration time ratio is 1/32, and the datasheet does not say which holds.

Choice for skin use outdoors: gain 18x, 18-bit (100 ms). Sensitivity is then
575 counts/UVI, i.e. 0.0017 UVI per count (finer than the 0.01 UVI wire unit),
and full scale (2^18 - 1 counts) is UVI 455, far above the UVI 12-20 of a
midsummer noon, so the ADC cannot saturate in sunlight. 100 ms keeps the
active time (and current) short; 20-bit would only add resolution we do not
transmit, at 4x the integration time.
"""

from sensor_drivers.register_io import Register8Device

try:
    from micropython import const
except ImportError:

    def const(value):  # type: ignore[misc]  # same behaviour as micropython.const
        return value


CHIP_NAME = "LTR390"
DEFAULT_ADDRESS = const(0x53)  # fixed 7-bit slave address (I2C section)

# Register map ("Register Set" table): 8-bit registers; multi-byte data LSB first.
REG_MAIN_CTRL = const(0x00)  # reset 0x00 (standby, ALS mode)
REG_MEAS_RATE = const(0x04)  # ALS_UVS_MEAS_RATE, reset 0x22 (18-bit, 100 ms)
REG_GAIN = const(0x05)  # ALS_UVS_GAIN, reset 0x01 (gain 3)
REG_PART_ID = const(0x06)  # reset 0xB2
REG_MAIN_STATUS = const(0x07)  # reset 0x20 (power-on status set)
REG_UVS_DATA_0 = const(0x10)  # UVS_DATA_0..2 = 0x10..0x12, 20 bits, LSB first

# PART_ID: bits 7:4 part number 0xB, bits 3:0 revision 0x2 (PART_ID register).
PART_ID_EXPECTED = const(0xB2)
PART_NUMBER_SHIFT = const(4)
PART_NUMBER = const(0xB)
PART_NUMBER_MASK = const(0xF0)

# MAIN_CTRL bits (MAIN_CTRL register).
MAIN_CTRL_SW_RESET = const(1 << 4)
MAIN_CTRL_UVS_MODE = const(1 << 3)  # 0 = ALS, 1 = UVS
MAIN_CTRL_ENABLE = const(1 << 1)  # 0 = standby, 1 = active

# MAIN_STATUS bits (MAIN_STATUS register); all clear when the register is read.
STATUS_POWER_ON = const(1 << 5)
STATUS_INTERRUPT = const(1 << 4)
STATUS_DATA = const(1 << 3)  # 1 = new data not yet read

# ALS_UVS_MEAS_RATE: resolution bits 6:4, measurement rate bits 2:0.
RESOLUTION_SHIFT = const(4)
# Resolution code -> bits and integration time in ms (code 5 = 13 bit, 12.5 ms).
RESOLUTION_BITS_BY_CODE = (20, 19, 18, 17, 16, 13)
INTEGRATION_MS_BY_CODE = (400, 200, 100, 50, 25, 12.5)
# Measurement-rate code -> repeat period in ms (codes 6 and 7 are both 2000 ms).
MEAS_RATE_MS_BY_CODE = (25, 50, 100, 200, 500, 1000, 2000, 2000)

# ALS_UVS_GAIN bits 2:0: code -> gain.
GAIN_BY_CODE = (1, 3, 6, 9, 18)

# UVS sensitivity (characteristics table): 2300 counts per UVI at gain 18, 20 bit.
REFERENCE_COUNTS_PER_UVI = const(2300)
REFERENCE_GAIN = const(18)
REFERENCE_RESOLUTION_BITS = const(20)

DEFAULT_GAIN = const(18)
DEFAULT_RESOLUTION_BITS = const(18)

_ACTION_READ_ID = "reading PART_ID (0x06)"
_ACTION_READ_STATUS = "reading MAIN_STATUS (0x07)"
_ACTION_READ_DATA = "reading UVS_DATA (0x10)"
_ACTION_WRITE_CTRL = "writing MAIN_CTRL (0x00)"
_ACTION_WRITE_RATE = "writing MEAS_RATE (0x04)"
_ACTION_WRITE_GAIN = "writing GAIN (0x05)"


def _gcd(a, b):
    while b:
        a, b = b, a % b
    return a


def counts_per_uvi(gain=DEFAULT_GAIN, resolution_bits=DEFAULT_RESOLUTION_BITS):
    """UVS sensitivity in counts per UVI (float) for a gain and resolution."""
    return (
        REFERENCE_COUNTS_PER_UVI
        * gain
        / REFERENCE_GAIN
        * (1 << resolution_bits)
        / (1 << REFERENCE_RESOLUTION_BITS)
    )


def uvi_x100_ratio(gain, resolution_bits, window_transmission_percent=100):
    """(numerator, denominator) with UVI x 100 = counts x numerator / denominator.

    UVI = counts / (2300 x gain/18 x 2^res/2^20) x Wfac, Wfac = 100 / transmission %.
    """
    numerator = REFERENCE_GAIN * (1 << (REFERENCE_RESOLUTION_BITS - resolution_bits)) * 100 * 100
    denominator = REFERENCE_COUNTS_PER_UVI * gain * window_transmission_percent
    divisor = _gcd(numerator, denominator)
    return numerator // divisor, denominator // divisor


def counts_to_uvi_x100(counts, numerator, denominator):
    """Counts -> UVI x 100, rounded half up (integer only: no heap use)."""
    return (counts * numerator + denominator // 2) // denominator


def counts_to_uvi(counts, gain=DEFAULT_GAIN, resolution_bits=DEFAULT_RESOLUTION_BITS):
    return counts / counts_per_uvi(gain, resolution_bits)


class LTR390(Register8Device):
    """Driver for one LTR-390UV-01 in UVS mode on a machine.I2C-shaped bus.

    `gain` is one of 1, 3, 6, 9, 18; `resolution_bits` one of 16..20.
    `window_transmission_percent` (1..100) is the UV transmission of the patch
    window in front of the sensor; the datasheet's Wfac is 100 / that.
    """

    CHIP_NAME = CHIP_NAME

    def __init__(
        self,
        i2c,
        address=DEFAULT_ADDRESS,
        gain=DEFAULT_GAIN,
        resolution_bits=DEFAULT_RESOLUTION_BITS,
        window_transmission_percent=100,
    ):
        if gain not in GAIN_BY_CODE:
            raise ValueError(f"LTR390 gain must be one of {GAIN_BY_CODE}, got {gain!r}")
        if resolution_bits not in (16, 17, 18, 19, 20):
            raise ValueError(f"LTR390 resolution_bits must be 16..20, got {resolution_bits!r}")
        if not 1 <= window_transmission_percent <= 100:
            raise ValueError("LTR390 window_transmission_percent must be 1..100")
        super().__init__(i2c, address)
        self.gain = gain
        self.resolution_bits = resolution_bits
        self._gain_code = GAIN_BY_CODE.index(gain)
        self._resolution_code = RESOLUTION_BITS_BY_CODE.index(resolution_bits)
        integration_ms = INTEGRATION_MS_BY_CODE[self._resolution_code]
        self.conversion_time_ms = int(integration_ms)
        rate_code = 0
        while MEAS_RATE_MS_BY_CODE[rate_code] < integration_ms:
            rate_code += 1  # a period shorter than the integration is not meaningful
        self._meas_rate = (self._resolution_code << RESOLUTION_SHIFT) | rate_code
        self.full_scale_counts = (1 << resolution_bits) - 1
        self._ratio_numerator, self._ratio_denominator = uvi_x100_ratio(
            gain, resolution_bits, window_transmission_percent
        )
        self._data = bytearray(3)
        # Only the part number (bits 7:4) must match; any revision is accepted.
        self._check_id(REG_PART_ID, _ACTION_READ_ID, "part id", PART_ID_EXPECTED, PART_NUMBER_MASK)
        self.configure()

    def configure(self):
        """Standby in UVS mode with our gain and resolution (also after a chip reset)."""
        self._write_register(REG_MAIN_CTRL, MAIN_CTRL_UVS_MODE, _ACTION_WRITE_CTRL)
        self._write_register(REG_MEAS_RATE, self._meas_rate, _ACTION_WRITE_RATE)
        self._write_register(REG_GAIN, self._gain_code, _ACTION_WRITE_GAIN)
        self._read_register(REG_MAIN_STATUS, _ACTION_READ_STATUS)  # clear power-on status

    # --- start / ready / read -----------------------------------------------
    def start(self):
        """Enable the UVS for one integration; returns the ms until its result is ready."""
        self._write_register(
            REG_MAIN_CTRL, MAIN_CTRL_UVS_MODE | MAIN_CTRL_ENABLE, _ACTION_WRITE_CTRL
        )
        return self.conversion_time_ms

    start_oneshot = start  # the name the firmware sampler uses for every chip

    def ready(self):
        """True once a new UVS result exists; reading MAIN_STATUS clears the flag."""
        status = self._read_register(REG_MAIN_STATUS, _ACTION_READ_STATUS)
        return bool(status & STATUS_DATA)

    def read_counts(self):
        """The 20-bit UVS count; puts the chip back in standby. Full scale is an error."""
        data = self._data
        self._read_into(REG_UVS_DATA_0, data, _ACTION_READ_DATA)
        counts = data[0] | (data[1] << 8) | ((data[2] & 0x0F) << 16)
        self._write_register(REG_MAIN_CTRL, MAIN_CTRL_UVS_MODE, _ACTION_WRITE_CTRL)
        if counts >= self.full_scale_counts:
            raise self._error(
                f"UVS count {counts} is full scale at {self.resolution_bits}-bit, "
                f"gain {self.gain}: UV out of range"
            )
        return counts

    def read_raw(self):
        """The latest UV index x 100 (wire unit of channel 1), rounded half up."""
        return counts_to_uvi_x100(
            self.read_counts(), self._ratio_numerator, self._ratio_denominator
        )

    def read_uvi(self):
        # Returns a float, which MicroPython allocates; use read_raw() in hot paths.
        return self.read_counts() * self._ratio_numerator / self._ratio_denominator / 100
