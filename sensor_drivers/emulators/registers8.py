"""Base for emulated chips with 8-bit registers and address auto-increment (LTR390).

A multi-byte transfer reads or writes consecutive registers starting at the
addressed one, as I2C register chips with an auto-incrementing address pointer
do (the LTR390's 20-bit data registers are read as one 3-byte burst). Subclasses
set `chip_name` and `address` and implement read_register(register, now_ms) ->
int (0..255) and write_register(register, value, now_ms); an empty transfer is
a driver bug: ValueError.

Runs on CPython and MicroPython.
"""

from sensor_drivers.emulators.i2c_bus import EmulatedChip


class RegisterChip8(EmulatedChip):
    def _check_length(self, register, buf, verb):
        if len(buf) == 0:
            raise self._error(f"{verb} 0 bytes at register 0x{register:02X}")

    def read_into(self, register, buf, now_ms):
        self._check_length(register, buf, "read of")
        for index in range(len(buf)):
            buf[index] = self.read_register((register + index) & 0xFF, now_ms) & 0xFF

    def write_from(self, register, buf, now_ms):
        self._check_length(register, buf, "write of")
        for index in range(len(buf)):
            self.write_register((register + index) & 0xFF, buf[index], now_ms)

    def read_register(self, register, now_ms):
        raise NotImplementedError

    def write_register(self, register, value, now_ms):
        raise NotImplementedError
