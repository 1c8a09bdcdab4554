"""CPython stand-in for MicroPython's `machine` module, the parts the firmware uses.

`I2C(...)` binds to the virtual bus installed with `attach_i2c_bus(bus)` (a
host-only helper; on a device the bus is real hardware). The binding happens when
the I2C object is made, so several virtual patches in one process each keep the
bus that was attached when they built their I2C. Sleep modes are no-ops;
`reset()` raises SystemExit as the closest thing to a reboot.
"""

from __future__ import annotations

from typing import Any

# reset_cause() values, as the ESP32 port numbers them.
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

DEFAULT_CPU_FREQ_HZ = 240_000_000
DEFAULT_UNIQUE_ID = bytes.fromhex("d7e1a0000001")

_i2c_buses: dict[int, Any] = {}  # register-level emulator buses (sensor_drivers.emulators)
_state: dict[str, Any] = {
    "unique_id": DEFAULT_UNIQUE_ID,
    "reset_cause": PWRON_RESET,
    "cpu_freq_hz": DEFAULT_CPU_FREQ_HZ,
}


# --- host-only helpers -----------------------------------------------------
def attach_i2c_bus(bus, bus_id: int = 0) -> None:
    """Make `I2C(bus_id, ...)` talk to `bus` (a VirtualI2C or anything machine.I2C-shaped)."""
    _i2c_buses[bus_id] = bus


def detach_i2c_bus(bus_id: int = 0) -> None:
    _i2c_buses.pop(bus_id, None)


def set_unique_id(value: bytes) -> None:
    _state["unique_id"] = bytes(value)


def set_reset_cause(cause: int) -> None:
    _state["reset_cause"] = cause


# --- machine API -----------------------------------------------------------
class I2C:
    def __init__(self, id: int = 0, *, scl=None, sda=None, freq: int = 400_000, timeout=None):
        bus = _i2c_buses.get(id)
        if bus is None:
            raise ValueError(
                f"machine.I2C({id}): no virtual I2C bus attached; "
                f"call machine.attach_i2c_bus(bus, {id}) first"
            )
        self._bus = bus
        self.id = id
        self.scl = scl
        self.sda = sda
        self.freq = freq

    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
        return self._bus.readfrom_mem(addr, memaddr, nbytes, addrsize=addrsize)

    def readfrom_mem_into(self, addr, memaddr, buf, *, addrsize=8):
        return self._bus.readfrom_mem_into(addr, memaddr, buf, addrsize=addrsize)

    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
        return self._bus.writeto_mem(addr, memaddr, buf, addrsize=addrsize)

    def scan(self):
        return self._bus.scan()

    def __getattr__(self, name):
        # readfrom/writeto/... if the bus implements them.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._bus, name)


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 1
    PULL_DOWN = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=-1, pull=-1, *, value=None):
        self.id = id
        self.mode = mode
        self.pull = pull
        self._value = 0 if value is None else int(bool(value))
        self._irq_handler = None

    def init(self, mode=-1, pull=-1, *, value=None):
        self.mode = mode
        self.pull = pull
        if value is not None:
            self._value = int(bool(value))

    def value(self, x=None):
        if x is None:
            return self._value
        self._value = int(bool(x))
        return None

    __call__ = value

    def on(self):
        self._value = 1

    def off(self):
        self._value = 0

    def irq(self, handler=None, trigger=IRQ_FALLING | IRQ_RISING):
        self._irq_handler = handler

    def __repr__(self):
        return f"Pin({self.id})"


class WDT:
    """The watchdog never bites on a host; feed() is accepted and counted."""

    def __init__(self, id: int = 0, timeout: int = 5000):
        self.timeout_ms = timeout
        self.feeds = 0

    def feed(self) -> None:
        self.feeds += 1


def unique_id() -> bytes:
    return _state["unique_id"]


def reset_cause() -> int:
    return _state["reset_cause"]


def freq(hz: int | None = None):
    if hz is None:
        return _state["cpu_freq_hz"]
    _state["cpu_freq_hz"] = hz
    return None


def lightsleep(time_ms: int | None = None) -> None:
    return None


def deepsleep(time_ms: int | None = None) -> None:
    return None


def idle() -> None:
    return None


def reset():
    raise SystemExit("machine.reset()")


def soft_reset():
    raise SystemExit("machine.soft_reset()")
