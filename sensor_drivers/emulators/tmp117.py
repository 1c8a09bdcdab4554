"""Register-level emulator of the TI TMP117 (datasheet SNOSD82D; sections cited below).

The register map is written out here from the datasheet, independently of the
driver, so a wrong constant in one is caught by tests against the other.

Modelled: Temp_Result, Configuration (MOD, CONV, AVG, Data_Ready, alert-mode
HIGH/LOW flags, Soft_Reset), limit and offset registers, Device_ID; continuous
and one-shot conversions timed by the bus clock. Not modelled: EEPROM
programming/persistence, therm mode, the ALERT pin.

The temperature source (a callable returning °C) is sampled when a completed
conversion is first observed on the bus, i.e. at bus time.
"""

from sensor_drivers.emulators.i2c_bus import RegisterChip16, const

# Register addresses and reset values (§7.6 register map).
REG_TEMP_RESULT = const(0x00)
REG_CONFIGURATION = const(0x01)
REG_THIGH_LIMIT = const(0x02)
REG_TLOW_LIMIT = const(0x03)
REG_EEPROM_UL = const(0x04)
REG_EEPROM1 = const(0x05)
REG_EEPROM2 = const(0x06)
REG_TEMP_OFFSET = const(0x07)
REG_EEPROM3 = const(0x08)
REG_DEVICE_ID = const(0x0F)

RESET_TEMP_RESULT = const(0x8000)  # reads -256 °C until the first conversion
RESET_CONFIGURATION = const(0x0220)  # CC mode, CONV=100 (1 s), AVG=01 (8 averages)
RESET_THIGH_LIMIT = const(0x6000)  # 192 °C
RESET_TLOW_LIMIT = const(0x8000)  # -256 °C
DEVICE_ID = const(0x0117)

# Configuration register bits (§7.6, Configuration register).
CONFIG_HIGH_ALERT = const(1 << 15)
CONFIG_LOW_ALERT = const(1 << 14)
CONFIG_DATA_READY = const(1 << 13)
CONFIG_WRITABLE_MASK = const(0x0FFC)  # MOD, CONV, AVG, T/nA, POL, DR/Alert (bits 11:2)
CONFIG_SOFT_RESET = const(1 << 1)  # self-clearing, reads 0
MOD_SHIFT = const(10)
MOD_MASK = const(0b11)
MOD_SHUTDOWN = const(0b01)
MOD_ONESHOT = const(0b11)  # 00 and 10 are both continuous conversion (§7.4.1)
CONV_SHIFT = const(7)
CONV_MASK = const(0b111)
AVG_SHIFT = const(5)
AVG_MASK = const(0b11)

# Active conversion time per AVG[1:0] (1, 8, 32, 64 averages) (§7.3.2, §7.4.3).
ACTIVE_CONVERSION_US_BY_AVG = (15500, 125000, 500000, 1000000)
# CC-mode conversion cycle per CONV[2:0] (§7.4.1). The datasheet table's cycle is
# max(this, active conversion time): averaging can only lengthen a cycle.
CC_CYCLE_US_BY_CONV = (15500, 125000, 250000, 500000, 1000000, 4000000, 8000000, 16000000)

# Specified operating range (§6.3); a source outside it is clamped.
MIN_OPERATING_C = -55.0
MAX_OPERATING_C = 150.0
LSB_PER_CELSIUS = 128  # 1 LSB = 7.8125 m°C (§7.3.3)


def _to_signed16(value):
    return value - 0x10000 if value & 0x8000 else value


class TMP117Emulator(RegisterChip16):
    chip_name = "TMP117"

    """`temperature_source()` returns °C. Time normally comes from the bus the chip is
    attached to; pass `clock_ms` only to use the chip without a VirtualI2C (give it
    the bus's clock otherwise, or the two disagree).
    """

    def __init__(self, temperature_source, address=0x48, device_id=DEVICE_ID, clock_ms=None):
        self.address = address
        self._clock_ms = clock_ms
        self.device_id = device_id
        self._temperature_source = temperature_source
        self.conversions = 0
        self._eeprom = {REG_EEPROM_UL: 0, REG_EEPROM1: 0, REG_EEPROM2: 0, REG_EEPROM3: 0}
        self._reset_registers(0)

    # --- reset -----------------------------------------------------------
    def _reset_registers(self, now_ms):
        self._config = RESET_CONFIGURATION & CONFIG_WRITABLE_MASK
        self._flags = 0
        self._result = RESET_TEMP_RESULT
        self._thigh = RESET_THIGH_LIMIT
        self._tlow = RESET_TLOW_LIMIT
        self._offset = 0
        self._start_mode(now_ms)

    def _start_mode(self, now_ms):
        self._mode_start_us = int(now_ms * 1000)
        self._cycles_done = 0
        mod = self._mod()
        if mod == MOD_ONESHOT:
            self._oneshot_done_us = self._mode_start_us + self._active_us()
        else:
            self._oneshot_done_us = None

    # --- field helpers ---------------------------------------------------
    def _mod(self):
        return (self._config >> MOD_SHIFT) & MOD_MASK

    def _active_us(self):
        return ACTIVE_CONVERSION_US_BY_AVG[(self._config >> AVG_SHIFT) & AVG_MASK]

    def _cycle_us(self):
        conv_cycle = CC_CYCLE_US_BY_CONV[(self._config >> CONV_SHIFT) & CONV_MASK]
        return max(conv_cycle, self._active_us())

    def conversion_time_ms(self):
        """How long the current AVG setting makes one conversion take, in ms."""
        return self._active_us() / 1000

    # --- time ------------------------------------------------------------
    def _advance(self, now_ms):
        """Complete whatever conversions have finished by now; returns the time used."""
        now_ms = self._now(now_ms)
        now_us = int(now_ms * 1000)
        mod = self._mod()
        if mod == MOD_ONESHOT:
            if self._oneshot_done_us is not None and now_us >= self._oneshot_done_us:
                self._oneshot_done_us = None
                self._complete_conversion()
                # After a one-shot the device sits in shutdown (§7.4.3).
                self._config = (self._config & ~(MOD_MASK << MOD_SHIFT)) | (
                    MOD_SHUTDOWN << MOD_SHIFT
                )
        elif mod != MOD_SHUTDOWN:
            elapsed_us = now_us - self._mode_start_us
            active_us = self._active_us()
            if elapsed_us >= active_us:
                cycles = (elapsed_us - active_us) // self._cycle_us() + 1
                if cycles > self._cycles_done:
                    self._cycles_done = cycles
                    self._complete_conversion()
        return now_ms

    def _complete_conversion(self):
        celsius = float(self._temperature_source())
        celsius = min(max(celsius, MIN_OPERATING_C), MAX_OPERATING_C)
        raw = int(round(celsius * LSB_PER_CELSIUS)) + _to_signed16(self._offset)
        raw = min(max(raw, -0x8000), 0x7FFF)
        self._result = raw & 0xFFFF
        self.conversions += 1
        self._flags |= CONFIG_DATA_READY
        # Alert mode (T/nA = 0): flags latch until Configuration is read (§7.4.4.1).
        if raw > _to_signed16(self._thigh):
            self._flags |= CONFIG_HIGH_ALERT
        if raw < _to_signed16(self._tlow):
            self._flags |= CONFIG_LOW_ALERT

    # --- registers -------------------------------------------------------
    def read_register(self, register, now_ms):
        now_ms = self._advance(now_ms)
        if register == REG_TEMP_RESULT:
            self._flags &= ~CONFIG_DATA_READY
            return self._result
        if register == REG_CONFIGURATION:
            value = self._flags | self._config
            self._flags = 0  # Data_Ready and alert flags clear on read (§7.4.3, §7.4.4.1)
            return value
        if register == REG_THIGH_LIMIT:
            return self._thigh
        if register == REG_TLOW_LIMIT:
            return self._tlow
        if register == REG_TEMP_OFFSET:
            return self._offset
        if register == REG_DEVICE_ID:
            return self.device_id
        if register in self._eeprom:
            return self._eeprom[register]
        raise self._unknown(register)

    def write_register(self, register, value, now_ms):
        now_ms = self._advance(now_ms)
        value &= 0xFFFF
        if register == REG_CONFIGURATION:
            if value & CONFIG_SOFT_RESET:
                self._reset_registers(now_ms)
                return
            self._config = value & CONFIG_WRITABLE_MASK
            self._start_mode(now_ms)
        elif register == REG_THIGH_LIMIT:
            self._thigh = value
        elif register == REG_TLOW_LIMIT:
            self._tlow = value
        elif register == REG_TEMP_OFFSET:
            self._offset = value
        elif register in self._eeprom:
            self._eeprom[register] = value
        elif register in (REG_TEMP_RESULT, REG_DEVICE_ID):
            raise self._read_only(register)
        else:
            raise self._unknown(register)
