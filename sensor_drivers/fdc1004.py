"""TI FDC1004 capacitance-to-digital converter (skin hydration electrode): single
measurements, non-blocking, allocation-free, with CAPDAC auto-ranging.

Datasheet: TI SNOSCY5C (FDC1004, rev. C, October 2024). Section numbers below
refer to it (rev. B numbered the same sections 8.x).

Usage (the caller schedules; the driver never sleeps):

    sensor = FDC1004(i2c)             # checks manufacturer and device id
    wait_ms = sensor.start()          # one measurement takes wait_ms
    ...
    if sensor.ready():                # DONE_1; it clears when the result is read
        femtofarads = sensor.read_raw()   # wire unit of channel 2, CAPDAC included

Conversion (§6.6.1.1, §6.3.2): the result is a 24-bit two's complement number,
MEASx_MSB[15:0] = bits 23..8 and MEASx_LSB[15:8] = bits 7..0, and

    C = result / 2^19 pF + CAPDAC x 3.125 pF

so one LSB of the MSB register alone is 2^-11 pF = 488.28 aF (not the 457 aF
design.md §1 quoted, which comes from a vendor example sketch, not the
datasheet), and one LSB of the full 24-bit result is 2^-19 pF = 1.907 aF. The
input range around the CAPDAC offset is +-15 pF (§5.5); CAPDAC spans 0..31 x
3.125 pF = 0..96.875 pF (§6.3.2), so the driver measures 0..~111 pF in total.

Auto-ranging: a reading within +-15 pF of the CAPDAC offset is valid; if it is
more than 10 pF away, CAPDAC is re-centred for the next measurement. A reading
at or beyond +-15 pF is out of range: the driver steps CAPDAC 9 codes (28.125
pF, less than the 30 pF window, so it cannot jump over the value) towards it
and raises SensorError; the next measurement is then closer or in range.
"""

from sensor_drivers.register_io import Register16Device

try:
    from micropython import const
except ImportError:

    def const(value):  # type: ignore[misc]  # same behaviour as micropython.const
        return value


CHIP_NAME = "FDC1004"
DEFAULT_ADDRESS = const(0x50)  # fixed 7-bit address (§6.5.1)

# Register map (§6.6.1): 16-bit registers, MSB first.
REG_MEAS1_MSB = const(0x00)  # MEASx_MSB = 0x00, 0x02, 0x04, 0x06
REG_MEAS1_LSB = const(0x01)  # MEASx_LSB = 0x01, 0x03, 0x05, 0x07
REG_CONF_MEAS1 = const(0x08)  # CONF_MEAS1..4 = 0x08..0x0B, reset 0x1C00
REG_FDC_CONF = const(0x0C)  # reset 0x0000
REG_MANUFACTURER_ID = const(0xFE)  # 0x5449 ("TI") (§6.6.1.6)
REG_DEVICE_ID = const(0xFF)  # 0x1004 (§6.6.1.7)

MANUFACTURER_ID_EXPECTED = const(0x5449)
DEVICE_ID_EXPECTED = const(0x1004)

# CONF_MEASx fields (§6.6.1.2): CHA[15:13], CHB[12:10], CAPDAC[9:5].
CONF_CHA_SHIFT = const(13)
CONF_CHB_SHIFT = const(10)
CONF_CHB_CAPDAC = const(0b100)  # negative input connected to the CAPDAC
CONF_CAPDAC_SHIFT = const(5)
CAPDAC_MAX = const(31)
CAPDAC_FEMTOFARADS = const(3125)  # 3.125 pF per CAPDAC code (§6.3.2)

# FDC_CONF fields (§6.6.1.3): RST[15], RATE[11:10], REPEAT[8], MEAS_1..4[7:4], DONE_1..4[3:0].
FDC_CONF_RST = const(1 << 15)
FDC_CONF_RATE_SHIFT = const(10)
FDC_CONF_MEAS1 = const(1 << 7)
FDC_CONF_DONE1 = const(1 << 3)
# RATE code -> samples/s (00 is reserved); one measurement takes 1/rate.
RATE_CODE_BY_SPS = {100: 0b01, 200: 0b10, 400: 0b11}
MEASUREMENT_MS_BY_SPS = {100: 10, 200: 5, 400: 3}  # 2.5 ms rounded up

# Result scaling (§6.6.1.1): 2^19 LSB per pF. Input range +-15 pF (§5.5).
RESULT_LSB_PER_PF = const(1 << 19)
RANGE_LIMIT_RESULT = const(15 << 19)  # |result| at or above this: out of range
RECENTRE_RESULT = const(10 << 19)  # |result| above this: re-centre CAPDAC next time
CAPDAC_STEP_WHEN_OUT_OF_RANGE = const(9)  # 28.125 pF < the 30 pF window

# 1 pF = 1000 fF = 2^19 LSB: fF = result x 1000 / 2^19 = result x 125 / 2^16.
# |result| < 2^23 keeps result x 125 below 2^30: a MicroPython small int.
_FF_NUMERATOR = const(125)
_FF_SHIFT = const(16)
_FF_HALF = const(1 << 15)

# The hydration electrode reads 10..16 pF for Corneometer 0..120 AU with the
# reference calibration (models_onnx/build_models.py): CAPDAC 4 (12.5 pF) centres it.
DEFAULT_CAPDAC = const(4)

_ACTION_READ_MFR = "reading MANUFACTURER_ID (0xFE)"
_ACTION_READ_DEV = "reading DEVICE_ID (0xFF)"
_ACTION_WRITE_CONF_MEAS = "writing CONF_MEAS1 (0x08)"
_ACTION_WRITE_FDC_CONF = "writing FDC_CONF (0x0C)"
_ACTION_READ_FDC_CONF = "reading FDC_CONF (0x0C)"
_ACTION_READ_MSB = "reading MEAS1_MSB (0x00)"
_ACTION_READ_LSB = "reading MEAS1_LSB (0x01)"


def result_to_femtofarads(result, capdac):
    """Signed 24-bit result + CAPDAC code -> total fF, rounded half up (integer only)."""
    return ((result * _FF_NUMERATOR + _FF_HALF) >> _FF_SHIFT) + capdac * CAPDAC_FEMTOFARADS


def result_to_picofarads(result, capdac):
    return result / RESULT_LSB_PER_PF + capdac * 3.125


def registers_to_result(msb, lsb):
    """MEASx_MSB, MEASx_LSB register values -> signed 24-bit result (§6.6.1.1)."""
    result = (msb << 8) | (lsb >> 8)
    if result & 0x800000:
        result -= 0x1000000
    return result


class FDC1004(Register16Device):
    """Driver for one FDC1004 measuring CIN`channel` single-ended against the CAPDAC.

    Uses measurement slot 1 (CONF_MEAS1/MEAS1). `capdac` is the starting CAPDAC
    code; with `auto_range` the driver moves it to keep readings in range.
    """

    CHIP_NAME = CHIP_NAME

    def __init__(
        self,
        i2c,
        address=DEFAULT_ADDRESS,
        channel=1,
        capdac=DEFAULT_CAPDAC,
        rate_sps=100,
        auto_range=True,
    ):
        if channel not in (1, 2, 3, 4):
            raise ValueError(f"FDC1004 channel must be 1..4 (CIN1..CIN4), got {channel!r}")
        if not 0 <= capdac <= CAPDAC_MAX:
            raise ValueError(f"FDC1004 capdac must be 0..{CAPDAC_MAX}, got {capdac!r}")
        if rate_sps not in RATE_CODE_BY_SPS:
            raise ValueError(f"FDC1004 rate_sps must be 100, 200 or 400, got {rate_sps!r}")
        super().__init__(i2c, address)
        self.channel = channel
        self.capdac = capdac
        self.auto_range = auto_range
        self.conversion_time_ms = MEASUREMENT_MS_BY_SPS[rate_sps]
        self._trigger = (RATE_CODE_BY_SPS[rate_sps] << FDC_CONF_RATE_SHIFT) | FDC_CONF_MEAS1
        self._measured_capdac = capdac
        self._check_id(
            REG_MANUFACTURER_ID, _ACTION_READ_MFR, "manufacturer id", MANUFACTURER_ID_EXPECTED
        )
        self._check_id(REG_DEVICE_ID, _ACTION_READ_DEV, "device id", DEVICE_ID_EXPECTED)

    # --- start / ready / read -----------------------------------------------
    def start(self):
        """Configure MEAS1 with the current CAPDAC and trigger one measurement (§6.5.3).

        Returns the ms until its result is ready.
        """
        capdac = self.capdac
        config = (
            ((self.channel - 1) << CONF_CHA_SHIFT)
            | (CONF_CHB_CAPDAC << CONF_CHB_SHIFT)
            | (capdac << CONF_CAPDAC_SHIFT)
        )
        self._write_register(REG_CONF_MEAS1, config, _ACTION_WRITE_CONF_MEAS)
        self._write_register(REG_FDC_CONF, self._trigger, _ACTION_WRITE_FDC_CONF)
        self._measured_capdac = capdac
        return self.conversion_time_ms

    start_oneshot = start  # the name the firmware sampler uses for every chip

    def ready(self):
        """True once measurement 1 is done (DONE_1, §6.5.3.3); reading MEAS1 clears it."""
        return bool(self._read_register(REG_FDC_CONF, _ACTION_READ_FDC_CONF) & FDC_CONF_DONE1)

    def read_result(self):
        """The signed 24-bit MEAS1 result (2^-19 pF per LSB), relative to the CAPDAC."""
        msb = self._read_register(REG_MEAS1_MSB, _ACTION_READ_MSB)
        lsb = self._read_register(REG_MEAS1_LSB, _ACTION_READ_LSB)
        return registers_to_result(msb, lsb)

    def _out_of_range(self, result, capdac):
        if result > 0:
            moved = min(capdac + CAPDAC_STEP_WHEN_OUT_OF_RANGE, CAPDAC_MAX)
            side = "above"
        else:
            moved = max(capdac - CAPDAC_STEP_WHEN_OUT_OF_RANGE, 0)
            side = "below"
        if self.auto_range and moved != capdac:
            self.capdac = moved
            hint = f"; CAPDAC moved to {moved} for the next measurement"
        else:
            hint = ": beyond the measurable range"
        return self._error(
            f"capacitance out of range, {side} +-15 pF around CAPDAC {capdac} "
            f"({capdac * 3.125} pF){hint}"
        )

    def read_raw(self):
        """Total capacitance in fF (wire unit of channel 2), CAPDAC offset included."""
        result = self.read_result()
        capdac = self._measured_capdac
        if result >= RANGE_LIMIT_RESULT or result <= -RANGE_LIMIT_RESULT:
            raise self._out_of_range(result, capdac)
        femtofarads = result_to_femtofarads(result, capdac)
        if femtofarads < 0:
            raise self._error(f"capacitance {femtofarads} fF is negative: out of range")
        if self.auto_range and (result > RECENTRE_RESULT or result < -RECENTRE_RESULT):
            code = (femtofarads + CAPDAC_FEMTOFARADS // 2) // CAPDAC_FEMTOFARADS
            self.capdac = code if code <= CAPDAC_MAX else CAPDAC_MAX
        return femtofarads

    read_femtofarads = read_raw

    def read_picofarads(self):
        # Returns a float, which MicroPython allocates; use read_raw() in hot paths.
        return self.read_raw() / 1000
