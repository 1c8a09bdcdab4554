"""Analog Devices (Maxim) MAX17048 1-cell fuel gauge: battery voltage and state of charge,
allocation-free reads.

Datasheet: Maxim (Analog Devices) MAX17048/MAX17049 data sheet; register names
below are its "Register Summary" and per-register tables.

The gauge converts on its own (ModelGauge: every 250 ms when active, every 45 s
in hibernate), so there is nothing to trigger: `start()` returns 0 and `ready()`
says whether a first conversion has happened since power-on (VCELL reads 0
until then). The same start/ready/read pattern as the other drivers lets the
firmware's sampler treat every chip alike.

    gauge = MAX17048(i2c)          # checks VERSION, clears the reset indicator,
                                   # forces hibernate (3 uA typ instead of 23 uA)
    gauge.start(); gauge.ready()
    soc_raw = gauge.read_raw()     # SOC in 1/256 % (wire unit of channel 3)
    microvolts = gauge.read_microvolts()
"""

from sensor_drivers.errors import SensorError
from sensor_drivers.register_io import Register16Device

try:
    from micropython import const
except ImportError:

    def const(value):  # type: ignore[misc]  # same behaviour as micropython.const
        return value


CHIP_NAME = "MAX17048"
DEFAULT_ADDRESS = const(0x36)  # 7-bit address (0x6C/0x6D as 8-bit write/read)

# Register map ("Register Summary"): 16-bit registers, MSB first.
REG_VCELL = const(0x02)  # 78.125 uV/cell per LSB
REG_SOC = const(0x04)  # 1/256 % per LSB
REG_MODE = const(0x06)  # Quick-Start[14], EnSleep[13], HibStat[12]
REG_VERSION = const(0x08)  # 0x001_ (last nibble: production version)
REG_HIBRT = const(0x0A)  # reset 0x8030; 0xFFFF = always hibernate, 0x0000 = never
REG_CONFIG = const(0x0C)  # reset 0x971C: RCOMP 0x97, ALRT clear, ATHD 4 %
REG_STATUS = const(0x1A)  # RI[8] reset indicator, alert flags [13:9]
REG_CMD = const(0xFE)  # write 0x5400: power-on reset

VERSION_MASK = const(0xFFF0)
VERSION_EXPECTED = const(0x0010)
STATUS_RI = const(1 << 8)
HIBRT_ALWAYS_HIBERNATE = const(0xFFFF)
MODE_QUICK_START = const(0x4000)
CMD_POWER_ON_RESET = const(0x5400)

# VCELL: 78.125 uV/LSB = 625/8 uV. SOC: 1/256 % per LSB.
VOLTS_PER_LSB = 78.125e-6
_UV_NUMERATOR = const(625)
_UV_DENOMINATOR = const(8)
SOC_LSB_PER_PERCENT = const(256)
FULL_SCALE = const(0xFFFF)  # a register stuck at full scale is out of range

_ACTION_READ_VERSION = "reading VERSION (0x08)"
_ACTION_READ_STATUS = "reading STATUS (0x1A)"
_ACTION_WRITE_STATUS = "writing STATUS (0x1A)"
_ACTION_WRITE_HIBRT = "writing HIBRT (0x0A)"
_ACTION_WRITE_MODE = "writing MODE (0x06)"
_ACTION_WRITE_CMD = "writing CMD (0xFE)"
_ACTION_READ_VCELL = "reading VCELL (0x02)"
_ACTION_READ_SOC = "reading SOC (0x04)"

# errno values of a NACK on the ports we target (see sensor_drivers.errors).
_NACK_ERRNOS = (5, 19)  # EIO, ENODEV


def vcell_to_microvolts(raw):
    """VCELL register -> uV, rounded half up (integer only: no heap use)."""
    return (raw * _UV_NUMERATOR + _UV_DENOMINATOR // 2) // _UV_DENOMINATOR


def soc_to_percent(raw):
    return raw / SOC_LSB_PER_PERCENT


class MAX17048(Register16Device):
    """Driver for one MAX17048 on a machine.I2C-shaped bus.

    `hibernate` (default True) forces hibernate mode (HIBRT = 0xFFFF): one ADC
    conversion every 45 s is plenty for a battery sampled every 5 minutes.
    """

    CHIP_NAME = CHIP_NAME

    def __init__(self, i2c, address=DEFAULT_ADDRESS, hibernate=True):
        super().__init__(i2c, address)
        self.hibernate = hibernate
        self._check_version()
        self.configure()

    def _check_version(self):
        version = self._read_register(REG_VERSION, _ACTION_READ_VERSION)
        if version & VERSION_MASK != VERSION_EXPECTED:
            raise self._error(f"version 0x{version:04X}, expected 0x001X")
        self.version = version

    def configure(self):
        """Clear the reset indicator (STATUS.RI) and set the hibernate policy."""
        status = self._read_register(REG_STATUS, _ACTION_READ_STATUS)
        if status & STATUS_RI:
            self._write_register(REG_STATUS, status & ~STATUS_RI, _ACTION_WRITE_STATUS)
        if self.hibernate:
            self._write_register(REG_HIBRT, HIBRT_ALWAYS_HIBERNATE, _ACTION_WRITE_HIBRT)

    def reset(self):
        """Power-on reset through CMD, then configure again.

        The part resets while the write is still on the bus and does not ACK it
        (vendor drivers treat that NACK as success); any other bus error is raised.
        """
        try:
            self._write_register(REG_CMD, CMD_POWER_ON_RESET, _ACTION_WRITE_CMD)
        except SensorError as error:
            if error.bus_errno not in _NACK_ERRNOS:
                raise
        self.configure()

    def quick_start(self):
        """Restart the SOC estimate from the present cell voltage (MODE.Quick-Start)."""
        self._write_register(REG_MODE, MODE_QUICK_START, _ACTION_WRITE_MODE)

    # --- start / ready / read -----------------------------------------------
    def start(self):
        """Nothing to trigger: the gauge converts on its own. Returns 0 ms."""
        return 0

    start_oneshot = start  # the name the firmware sampler uses for every chip

    def ready(self):
        """True once the gauge has made its first conversion since power-on."""
        return self._read_register(REG_VCELL, _ACTION_READ_VCELL) != 0

    def read_soc_raw(self):
        raw = self._read_register(REG_SOC, _ACTION_READ_SOC)
        if raw == FULL_SCALE:
            raise self._error("SOC reads full scale 0xFFFF: out of range")
        return raw

    read_raw = read_soc_raw  # SOC in 1/256 % is the wire unit of channel 3

    def read_vcell_raw(self):
        raw = self._read_register(REG_VCELL, _ACTION_READ_VCELL)
        if raw == FULL_SCALE:
            raise self._error("VCELL reads full scale 0xFFFF (5.12 V): out of range")
        return raw

    def read_microvolts(self):
        return vcell_to_microvolts(self.read_vcell_raw())

    def read_percent(self):
        # Returns a float, which MicroPython allocates; use read_raw() in hot paths.
        return self.read_soc_raw() / SOC_LSB_PER_PERCENT

    def read_volts(self):
        # Returns a float, which MicroPython allocates; use read_microvolts() in hot paths.
        return self.read_vcell_raw() * VOLTS_PER_LSB
