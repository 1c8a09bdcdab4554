"""The one error sensor drivers raise: it names the chip, its address and what went wrong."""

import errno

# What an I2C OSError means on the MicroPython ports we target: ESP32 raises
# ENODEV on a NACK, rp2 raises EIO; a held bus ends in ETIMEDOUT.
_BUS_ERROR_NAMES = {
    errno.ENODEV: "no ACK",
    errno.EIO: "no ACK",
    errno.ETIMEDOUT: "bus timeout",
}


class SensorError(OSError):
    """A sensor chip is missing, unreachable or not the chip we expect.

    str(error) reads e.g. "TMP117 at 0x48: no ACK (OSError 19) reading Device_ID (0x0F)".
    It is an OSError so code that already treats I2C failures as OSError keeps working;
    `bus_errno` is the underlying I2C errno, or None when the chip answered wrongly.
    """

    def __init__(self, chip, address, detail, bus_errno=None):
        super().__init__(f"{chip} at 0x{address:02X}: {detail}")
        self.chip = chip
        self.address = address
        self.bus_errno = bus_errno


def bus_error(chip, address, os_error, action):
    """Turn an OSError from machine.I2C into a SensorError naming the chip.

    `action` says what the driver was doing, e.g. "reading Device_ID (0x0F)".
    """
    code = os_error.args[0] if os_error.args else None
    name = _BUS_ERROR_NAMES.get(code, "I2C error") if isinstance(code, int) else "I2C error"
    return SensorError(chip, address, f"{name} (OSError {code}) {action}", code)
