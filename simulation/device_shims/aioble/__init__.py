"""MicroPython's aioble, re-implemented over Bumble so patch firmware runs on CPython.

Put `simulation/device_shims` first on `sys.path`; then `import aioble` and `import bluetooth`
resolve here. Each virtual patch has its own Bumble device: call
`aioble.bind_device(device)` in the patch's task before its firmware starts (tasks it
creates inherit the binding). Only the peripheral/server side is implemented: `scan`
(central), the GATT client, pairing and L2CAP raise NotImplementedError; docs/firmware.md
has the table of what follows upstream and what does not.
"""

from .core import (
    DEFAULT_NOTIFY_IN_FLIGHT_LIMIT,
    GattError,
    bind_device,
    config,
    current_patch,
    log_error,
    log_info,
    log_warn,
    stop,
)
from .device import Device, DeviceConnection, DeviceDisconnectedError, DeviceTimeout
from .peripheral import advertise
from .server import (
    BufferedCharacteristic,
    Characteristic,
    Descriptor,
    Service,
    register_services,
)


def scan(*args, **kwargs):  # type: ignore[no-untyped-def]
    raise NotImplementedError("aioble host shim: scanning (aioble.central) is not implemented")


ADDR_PUBLIC = 0
ADDR_RANDOM = 1

__all__ = [
    "ADDR_PUBLIC",
    "ADDR_RANDOM",
    "DEFAULT_NOTIFY_IN_FLIGHT_LIMIT",
    "BufferedCharacteristic",
    "Characteristic",
    "Descriptor",
    "Device",
    "DeviceConnection",
    "DeviceDisconnectedError",
    "DeviceTimeout",
    "GattError",
    "Service",
    "advertise",
    "bind_device",
    "config",
    "current_patch",
    "log_error",
    "log_info",
    "log_warn",
    "register_services",
    "scan",
    "stop",
]
