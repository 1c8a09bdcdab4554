"""Register-level emulator of the TI FDC1004 (datasheet SNOSCY5C; sections cited below).

The register map is written out here from the datasheet, independently of the
driver, so a wrong constant in one is caught by tests against the other.

Modelled: MEAS1..4 results (24-bit two's complement, 2^19 LSB/pF, clamped to
full scale as the part saturates), CONF_MEAS1..4 (CHA, CHB incl. CAPDAC and
disabled, CAPDAC code), FDC_CONF (RST, RATE, REPEAT, MEAS_x, DONE_x),
offset and gain calibration per input, manufacturer and device id; single and
repeated measurements, performed one after another at 1/rate each, timed by the
bus clock. DONE_x clears once measurement x has been read (MEASx_LSB, the second
half of the read, §6.5.3.4) or a new measurement is triggered. Not modelled:
the shield drivers, noise, settling after a CAPDAC change.

`capacitance_source()` returns the CIN1 capacitance in pF (to ground);
`other_inputs` optionally gives sources for CIN2..CIN4 (default 0 pF).
"""

from sensor_drivers.emulators.i2c_bus import RegisterChip16, const

# Register addresses and reset values (§6.6.1 register map).
REG_MEAS_MSB_FIRST = const(0x00)  # 0x00..0x07: MEAS1_MSB, MEAS1_LSB, ..., MEAS4_LSB
REG_MEAS_LSB_LAST = const(0x07)
REG_CONF_MEAS_FIRST = const(0x08)  # 0x08..0x0B
REG_FDC_CONF = const(0x0C)
REG_OFFSET_CAL_FIRST = const(0x0D)  # 0x0D..0x10, CIN1..CIN4
REG_GAIN_CAL_FIRST = const(0x11)  # 0x11..0x14, CIN1..CIN4
REG_MANUFACTURER_ID = const(0xFE)
REG_DEVICE_ID = const(0xFF)

RESET_CONF_MEAS = const(0x1C00)  # CHA = CIN1, CHB = disabled, CAPDAC 0
RESET_FDC_CONF = const(0x0000)
RESET_OFFSET_CAL = const(0x0000)
RESET_GAIN_CAL = const(0x4000)  # gain 1.0
MANUFACTURER_ID = const(0x5449)
DEVICE_ID = const(0x1004)

# CONF_MEASx (§6.6.1.2).
CHB_CAPDAC = const(0b100)
CHB_DISABLED = const(0b111)
CONF_MEAS_WRITABLE = const(0xFFE0)  # bits 4:0 reserved
CAPDAC_PF = 3.125  # §6.3.2

# FDC_CONF (§6.6.1.3).
FDC_RST = const(0x8000)
FDC_RATE_SHIFT = const(10)
FDC_REPEAT = const(0x0100)
FDC_MEAS_SHIFT = const(4)  # MEAS_1 is bit 7 ... MEAS_4 bit 4
FDC_WRITABLE = const(0x0DF0)  # RATE, REPEAT, MEAS_x
# RATE -> one measurement's duration in microseconds (00 reserved: never completes).
MEASUREMENT_US_BY_RATE = (None, 10000, 5000, 2500)

# Result: 24 bit two's complement, 2^19 LSB per pF (§6.6.1.1).
RESULT_LSB_PER_PF = 524288.0
RESULT_MAX = const(0x7FFFFF)
RESULT_MIN = const(-0x800000)
# Offset calibration: 5 integer + 11 fractional bits, two's complement (§6.6.1.4).
OFFSET_CAL_LSB_PER_PF = 2048.0
# Gain calibration: gain = GAIN_CAL / 2^14, 0..4 (§6.6.1.5).
GAIN_CAL_ONE = 16384.0


def _signed16(value):
    return value - 0x10000 if value & 0x8000 else value


class FDC1004Emulator(RegisterChip16):
    chip_name = "FDC1004"

    def __init__(
        self,
        capacitance_source,
        address=0x50,
        manufacturer_id=MANUFACTURER_ID,
        device_id=DEVICE_ID,
        other_inputs=None,
        clock_ms=None,
    ):
        self.address = address
        self.manufacturer_id = manufacturer_id
        self.device_id = device_id
        zero = lambda: 0.0  # noqa: E731
        inputs = [capacitance_source]
        inputs.extend(other_inputs if other_inputs is not None else (zero, zero, zero))
        if len(inputs) != 4:
            raise ValueError("FDC1004 emulator: other_inputs must give CIN2..CIN4")
        self._inputs = inputs
        self._clock_ms = clock_ms
        self.measurements = 0
        self._reset_registers(0)

    # --- reset -----------------------------------------------------------
    def _reset_registers(self, now_ms):
        self._results = [0, 0, 0, 0]
        self._conf_meas = [RESET_CONF_MEAS] * 4
        self._fdc_conf = RESET_FDC_CONF
        self._done = 0  # DONE_x bits, bit (3 - index)
        self._offset_cal = [RESET_OFFSET_CAL] * 4
        self._gain_cal = [RESET_GAIN_CAL] * 4
        self._trigger_us = int(now_ms * 1000)
        self._completed = 0  # measurements completed since the trigger

    # --- measurements ------------------------------------------------------
    def _enabled(self):
        return [index for index in range(4) if self._fdc_conf & (0x80 >> index)]

    def capacitance_pf(self, index):
        """What measurement `index` (0..3) converts, after CAPDAC and calibration, in pF."""
        config = self._conf_meas[index]
        cha = (config >> 13) & 0b111
        chb = (config >> 10) & 0b111
        capdac = (config >> 5) & 0b11111
        if cha > 3:
            return 0.0  # reserved CHA codes: nothing connected
        value = float(self._inputs[cha]())
        if chb == CHB_CAPDAC:
            value -= capdac * CAPDAC_PF
        elif chb <= 3:
            value -= float(self._inputs[chb]())  # differential CINa - CINb
        value = value * (self._gain_cal[cha] / GAIN_CAL_ONE)
        return value + _signed16(self._offset_cal[cha]) / OFFSET_CAL_LSB_PER_PF

    def _complete(self, index):
        value = self.capacitance_pf(index) * RESULT_LSB_PER_PF
        if value != value:  # NaN: the converter saturates
            code = RESULT_MAX
        elif value >= RESULT_MAX:
            code = RESULT_MAX
        elif value <= RESULT_MIN:
            code = RESULT_MIN
        else:
            code = int(value + 0.5) if value >= 0 else -int(-value + 0.5)
        self._results[index] = code & 0xFFFFFF
        self._done |= 0x08 >> index
        self.measurements += 1

    def _advance(self, now_ms):
        now_ms = self._now(now_ms)
        enabled = self._enabled()
        step_us = MEASUREMENT_US_BY_RATE[(self._fdc_conf >> FDC_RATE_SHIFT) & 0b11]
        if not enabled or step_us is None:
            return now_ms
        due = (int(now_ms * 1000) - self._trigger_us) // step_us
        if not self._fdc_conf & FDC_REPEAT and due > len(enabled):
            due = len(enabled)  # a single trigger measures each enabled slot once
        if due > self._completed:
            # Only the latest result of each slot can be observed.
            first = max(self._completed, due - len(enabled))
            for sequence in range(first, due):
                self._complete(enabled[sequence % len(enabled)])
            self._completed = due
        return now_ms

    # --- registers -------------------------------------------------------
    def read_register(self, register, now_ms):
        self._advance(now_ms)
        if REG_MEAS_MSB_FIRST <= register <= REG_MEAS_LSB_LAST:
            index = register >> 1
            result = self._results[index]
            if register & 1:
                self._done &= ~(0x08 >> index)  # the read of measurement x is complete
                return (result & 0xFF) << 8  # bits 7:0 of the result; low byte reserved 0
            return result >> 8
        if REG_CONF_MEAS_FIRST <= register <= REG_CONF_MEAS_FIRST + 3:
            return self._conf_meas[register - REG_CONF_MEAS_FIRST]
        if register == REG_FDC_CONF:
            return self._fdc_conf | self._done
        if REG_OFFSET_CAL_FIRST <= register <= REG_OFFSET_CAL_FIRST + 3:
            return self._offset_cal[register - REG_OFFSET_CAL_FIRST]
        if REG_GAIN_CAL_FIRST <= register <= REG_GAIN_CAL_FIRST + 3:
            return self._gain_cal[register - REG_GAIN_CAL_FIRST]
        if register == REG_MANUFACTURER_ID:
            return self.manufacturer_id
        if register == REG_DEVICE_ID:
            return self.device_id
        raise self._unknown(register)

    def write_register(self, register, value, now_ms):
        now_ms = self._advance(now_ms)
        value &= 0xFFFF
        if REG_CONF_MEAS_FIRST <= register <= REG_CONF_MEAS_FIRST + 3:
            self._conf_meas[register - REG_CONF_MEAS_FIRST] = value & CONF_MEAS_WRITABLE
        elif register == REG_FDC_CONF:
            if value & FDC_RST:
                self._reset_registers(now_ms)
                return
            self._fdc_conf = value & FDC_WRITABLE
            triggered = (value >> FDC_MEAS_SHIFT) & 0x0F  # MEAS_1 -> bit 3 ... MEAS_4 -> bit 0
            self._done &= ~triggered
            self._trigger_us = int(now_ms * 1000)
            self._completed = 0
        elif REG_OFFSET_CAL_FIRST <= register <= REG_OFFSET_CAL_FIRST + 3:
            self._offset_cal[register - REG_OFFSET_CAL_FIRST] = value
        elif REG_GAIN_CAL_FIRST <= register <= REG_GAIN_CAL_FIRST + 3:
            self._gain_cal[register - REG_GAIN_CAL_FIRST] = value
        elif register <= REG_MEAS_LSB_LAST or register in (REG_MANUFACTURER_ID, REG_DEVICE_ID):
            raise self._read_only(register)
        else:
            raise self._unknown(register)
