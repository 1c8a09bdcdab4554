"""Register access for the sensor drivers: one place for how a register is read and written.

A driver subclasses Register16Device (TMP117, FDC1004, MAX17048: 16-bit
registers, MSB first) or Register8Device (LTR390: 8-bit registers), sets
CHIP_NAME, and calls ``self._read_register(REG, action)`` /
``self._write_register(REG, value, action)``. Registers are read into a buffer
allocated once at construction, so reads allocate nothing. Any OSError from the
bus becomes a SensorError naming the chip, its address and the action, e.g.
"TMP117 at 0x48: no ACK (OSError 19) reading Device_ID (0x0F)".

The helpers are kept small: MicroPython heap-allocates the call state of a
bigger function on every call (see firmware/frame_encoder.py, add()).

Runs on CPython and MicroPython.
"""

from sensor_drivers.errors import SensorError, bus_error


class RegisterDevice:
    """One chip on a machine.I2C-shaped bus; REGISTER_BYTES wide registers."""

    CHIP_NAME = "chip"
    REGISTER_BYTES = 2

    def __init__(self, i2c, address):
        self._i2c = i2c
        self.address = address
        self._buffer = bytearray(self.REGISTER_BYTES)

    def _error(self, detail):
        """A SensorError naming this chip, for a chip that answered wrongly."""
        return SensorError(self.CHIP_NAME, self.address, detail)

    def _check_id(self, register, action, what, expected, mask=0xFFFF):
        """Read an identification register; SensorError unless (found & mask) is expected's."""
        found = self._read_register(register, action)
        if found & mask != expected & mask:
            digits = 2 * self.REGISTER_BYTES
            raise self._error(f"{what} 0x{found:0{digits}X}, expected 0x{expected:0{digits}X}")
        return found

    def _read_register(self, register, action):
        raise NotImplementedError  # one register's value: Register16Device, Register8Device

    def _write_register(self, register, value, action):
        raise NotImplementedError

    def _read_into(self, register, buffer, action):
        """Fill `buffer` from `register` on (auto-incrementing for multi-register reads)."""
        try:
            self._i2c.readfrom_mem_into(self.address, register, buffer)
        except OSError as error:
            raise bus_error(self.CHIP_NAME, self.address, error, action) from error

    def _write_from(self, register, buffer, action):
        try:
            self._i2c.writeto_mem(self.address, register, buffer)
        except OSError as error:
            raise bus_error(self.CHIP_NAME, self.address, error, action) from error


class Register16Device(RegisterDevice):
    """16-bit registers, MSB first."""

    REGISTER_BYTES = 2

    def _read_register(self, register, action):
        buffer = self._buffer
        self._read_into(register, buffer, action)
        return (buffer[0] << 8) | buffer[1]

    def _write_register(self, register, value, action):
        buffer = self._buffer
        buffer[0] = (value >> 8) & 0xFF
        buffer[1] = value & 0xFF
        self._write_from(register, buffer, action)


class Register8Device(RegisterDevice):
    """8-bit registers."""

    REGISTER_BYTES = 1

    def _read_register(self, register, action):
        buffer = self._buffer
        self._read_into(register, buffer, action)
        return buffer[0]

    def _write_register(self, register, value, action):
        buffer = self._buffer
        buffer[0] = value
        self._write_from(register, buffer, action)
