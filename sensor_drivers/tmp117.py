"""TI TMP117 skin-temperature sensor: one-shot, non-blocking, allocation-free reads.

Datasheet: TI SNOSD82D (TMP117, rev. D, September 2022). Section numbers below
refer to it.

Usage (the caller schedules; the driver never sleeps):

    sensor = TMP117(i2c)                  # checks Device_ID
    wait_ms = sensor.start_oneshot()      # conversion takes wait_ms
    ...                                   # come back later
    if sensor.ready():                    # reading Configuration clears Data_Ready
        centi_c = raw_to_centi_celsius(sensor.read_raw())
"""

from sensor_drivers.register_io import Register16Device

try:
    from micropython import const
except ImportError:

    def const(value):  # type: ignore[misc]  # same behaviour as micropython.const
        return value


CHIP_NAME = "TMP117"
DEFAULT_ADDRESS = const(0x48)  # ADD0 tied to GND (§7.5.3.1.2)

# Register map (§7.6): 16-bit registers, MSB first.
REG_TEMP_RESULT = const(0x00)  # int16, 7.8125 m°C/LSB (§7.3.3)
REG_CONFIGURATION = const(0x01)  # reset 0x0220
REG_DEVICE_ID = const(0x0F)  # reset 0x0117

# Device_ID: DID[11:0] = 0x117 identifies the part, REV[15:12] its revision (§7.6).
DEVICE_ID_EXPECTED = const(0x0117)
DEVICE_ID_DID_MASK = const(0x0FFF)

# Configuration register fields (§7.6, Configuration register).
CONFIG_DATA_READY_BIT = const(13)  # set at the end of a conversion
CONFIG_MOD_SHIFT = const(10)  # MOD[1:0], bits 11:10
CONFIG_MOD_ONESHOT = const(0b11)  # one-shot conversion, then shutdown (§7.4.3)
CONFIG_AVG_SHIFT = const(5)  # AVG[1:0], bits 6:5

# AVG[1:0] code -> number of averaged conversions (§7.3.2).
AVERAGES_BY_CODE = (1, 8, 32, 64)
# One-shot duration is the active conversion time only, set by AVG (§7.4.3; the
# CONV=000 row of the conversion-cycle table in §7.4.1): 15.5 ms, 125 ms, 500 ms,
# 1 s. 15.5 ms is rounded up to whole ms.
ONESHOT_CONVERSION_MS_BY_CODE = (16, 125, 500, 1000)

# Temp_Result reads -256 °C until the first conversion after reset (§7.6).
RAW_BEFORE_FIRST_CONVERSION = const(-32768)

# 1 LSB = 7.8125 m°C = 125/16 m°C = 25/32 c°C (§7.3.3, Table 7-1).
CELSIUS_PER_LSB = 0.0078125
_MILLI_NUMERATOR = const(125)
_MILLI_DENOMINATOR = const(16)
_CENTI_NUMERATOR = const(25)
_CENTI_DENOMINATOR = const(32)

_ACTION_READ_ID = "reading Device_ID (0x0F)"
_ACTION_READ_TEMP = "reading Temp_Result (0x00)"
_ACTION_READ_CONFIG = "reading Configuration (0x01)"
_ACTION_WRITE_CONFIG = "writing Configuration (0x01)"


def _divide_rounding_half_away(numerator, denominator):
    # Integer-only rounding keeps the conversions float-free (no heap use).
    if numerator >= 0:
        return (numerator + denominator // 2) // denominator
    return -((-numerator + denominator // 2) // denominator)


def raw_to_milli_celsius(raw):
    """Signed Temp_Result LSBs -> m°C, rounded to nearest (half away from zero)."""
    return _divide_rounding_half_away(raw * _MILLI_NUMERATOR, _MILLI_DENOMINATOR)


def raw_to_centi_celsius(raw):
    """Signed Temp_Result LSBs -> 0.01 °C (the BLE Temperature 0x2A6E unit)."""
    return _divide_rounding_half_away(raw * _CENTI_NUMERATOR, _CENTI_DENOMINATOR)


def raw_to_celsius(raw):
    return raw * CELSIUS_PER_LSB


class TMP117(Register16Device):
    """Driver for one TMP117 on a machine.I2C-shaped bus.

    `averages` (1, 8, 32 or 64) sets how many conversions a one-shot averages;
    more averaging means less noise and a longer conversion.
    """

    CHIP_NAME = CHIP_NAME

    def __init__(self, i2c, address=DEFAULT_ADDRESS, averages=8):
        if averages not in AVERAGES_BY_CODE:
            raise ValueError(f"TMP117 averages must be one of {AVERAGES_BY_CODE}, got {averages!r}")
        super().__init__(i2c, address)
        self._avg_code = AVERAGES_BY_CODE.index(averages)
        self.conversion_time_ms = ONESHOT_CONVERSION_MS_BY_CODE[self._avg_code]
        self._oneshot_config = (CONFIG_MOD_ONESHOT << CONFIG_MOD_SHIFT) | (
            self._avg_code << CONFIG_AVG_SHIFT
        )
        self._check_id(
            REG_DEVICE_ID, _ACTION_READ_ID, "device id", DEVICE_ID_EXPECTED, DEVICE_ID_DID_MASK
        )

    def start(self):
        """Start one conversion (the start/ready/read_raw pattern every driver shares)."""
        return self.start_oneshot()

    def start_oneshot(self):
        """Start one conversion; returns the ms until its result is ready."""
        self._write_register(REG_CONFIGURATION, self._oneshot_config, _ACTION_WRITE_CONFIG)
        return self.conversion_time_ms

    def ready(self):
        """True once a conversion has finished since the last Configuration read.

        Reading Configuration (this call) or Temp_Result clears Data_Ready (§7.4.3),
        so a True answer is given once per conversion.
        """
        config = self._read_register(REG_CONFIGURATION, _ACTION_READ_CONFIG)
        return bool(config & (1 << CONFIG_DATA_READY_BIT))

    def read_raw(self):
        """The latest result in signed LSBs (7.8125 m°C each)."""
        raw = self._read_register(REG_TEMP_RESULT, _ACTION_READ_TEMP)
        if raw & 0x8000:
            raw -= 0x10000
        return raw

    def read_centi_celsius(self):
        return raw_to_centi_celsius(self.read_raw())

    def read_celsius(self):
        # Returns a float, which MicroPython allocates; use read_raw() in hot paths.
        return self.read_raw() * CELSIUS_PER_LSB
