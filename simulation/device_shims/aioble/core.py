"""Shared state of the aioble shim: which Bumble device the current patch runs on.

Several virtual patches share this one module, so nothing here is global per
process: each Bumble `Device` gets a `PatchState`, and a `ContextVar` says which
device the running code belongs to. `bind_device()` sets it; asyncio tasks created
afterwards inherit it, so a patch's whole firmware sees its own device.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import weakref
from typing import TYPE_CHECKING, Any

import mp_asyncio  # type: ignore[import-not-found,unused-ignore]  # device_shims on sys.path

# core and device import each other, as in upstream aioble (core.py's connection handler
# and device.py's use of the shared state): the import back to .device stays deferred
# (inside functions / TYPE_CHECKING), the one import cycle tests/test_layering.py allows.
if TYPE_CHECKING:
    from bumble.device import Device as BumbleDevice

    from .device import DeviceConnection

# NimBLE on ESP32 returns BLE_HS_ENOMEM once its mbuf pool is exhausted; the number of
# notifications in flight before that is the pool's block count: NimBLE's default
# MSYS_1_BLOCK_COUNT is 12 blocks of 292 bytes, one full 244-byte frame each (nimconfig.h /
# esp_nimble_cfg.h of NimBLE-Arduino; ESP-IDF's Kconfig has the same default). The Pico W's
# BTstack keeps 3 (MAX_NR_CONTROLLER_ACL_BUFFERS in pico-examples' btstack_config.h: more
# overruns the CYW43 shared bus); bind_device(notify_in_flight_limit=3) emulates it.
DEFAULT_NOTIFY_IN_FLIGHT_LIMIT = 12
PICO_W_NOTIFY_IN_FLIGHT_LIMIT = 3
# MicroPython's NimBLE port prefers an ATT MTU of 256 (extmod/nimble syscfg).
DEFAULT_PREFERRED_ATT_MTU = 256

log_level = 1


def log_error(*args: Any) -> None:
    if log_level > 0:
        print("[aioble] E:", *args)


def log_warn(*args: Any) -> None:
    if log_level > 1:
        print("[aioble] W:", *args)


def log_info(*args: Any) -> None:
    if log_level > 2:
        print("[aioble] I:", *args)


class GattError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self._status = status


# MicroPython's asyncio.ThreadSafeFlag; `import mp_asyncio` also gives CPython's asyncio the
# `sleep_ms` and `ThreadSafeFlag` that MicroPython programs call (mp_asyncio.install()).
mp_asyncio.install()
ThreadSafeFlag = mp_asyncio.ThreadSafeFlag

# What aioble's modules do when the stack stops (upstream: register_irq_handler's shutdown
# handlers), here per patch: each takes the patch's state.
_shutdown_handlers: list[Any] = []


def register_shutdown_handler(handler: Any) -> None:
    _shutdown_handlers.append(handler)


class PatchState:
    """Everything aioble keeps per BLE stack, for one virtual patch's Bumble device."""

    def __init__(self, device: BumbleDevice) -> None:
        self.device = device
        self.notify_in_flight_limit = DEFAULT_NOTIFY_IN_FLIGHT_LIMIT
        self.connections: dict[int, DeviceConnection] = {}
        self.registered: dict[int, Any] = {}  # value handle -> aioble characteristic
        self.incoming: DeviceConnection | None = None
        self.connect_flag: Any = None   # a ThreadSafeFlag once advertising
        self.advertising = False
        self.capture: Any = None  # server._CaptureQueue, created on first capture char
        self.base_attribute_count: int | None = None
        self.base_service_count = 0
        self.background_tasks: set[asyncio.Task[Any]] = set()
        self.active = True
        # BLE.config() values with no Bumble counterpart: kept and answered, as the stack does
        self.settings: dict[str, Any] = dict(_CONFIG_DEFAULTS)
        device.gatt_server.max_mtu = DEFAULT_PREFERRED_ATT_MTU
        device.on("connection", self._on_connection)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.background_tasks.add(task)
        task.add_done_callback(self.background_tasks.discard)
        return task

    def _on_connection(self, connection: Any) -> None:
        from bumble import hci

        from .device import Device, DeviceConnection

        if connection.role != hci.Role.PERIPHERAL:
            return
        address = connection.peer_address
        device = Device(0 if address.is_public else 1, bytes(reversed(bytes(address))))
        conn = DeviceConnection(device)
        conn._attach(self, connection)
        self.connections[connection.handle] = conn
        self.advertising = False
        self.incoming = conn
        if self.connect_flag is not None:
            self.connect_flag.set()


_current_device: contextvars.ContextVar[BumbleDevice | None] = contextvars.ContextVar(
    "aioble_current_device", default=None
)
_states: weakref.WeakKeyDictionary[Any, PatchState] = weakref.WeakKeyDictionary()


def state_for(device: BumbleDevice) -> PatchState:
    state = _states.get(device)
    if state is None:
        state = PatchState(device)
        _states[device] = state
    return state


def bind_device(device: BumbleDevice, *, notify_in_flight_limit: int | None = None) -> PatchState:
    """Host-only: run aioble in the current context (and tasks it creates) on `device`."""
    state = state_for(device)
    if notify_in_flight_limit is not None:
        if notify_in_flight_limit < 1:
            raise ValueError("notify_in_flight_limit must be at least 1")
        state.notify_in_flight_limit = notify_in_flight_limit
    _current_device.set(device)
    return state


def current_patch() -> PatchState:
    device = _current_device.get()
    if device is None:
        raise RuntimeError(
            "aioble (host shim): no Bumble device bound in this context; "
            "call aioble.bind_device(device) before using aioble"
        )
    return state_for(device)


async def keep_cancellation(awaitable: Any) -> Any:
    """Await a Bumble operation without losing a cancellation of the calling task.

    On Python 3.11, `asyncio.wait_for` (used inside Bumble's HCI command path) returns
    the result instead of raising when a cancel races with completion; the task then
    runs on although it was cancelled. Re-raise in that case.
    """
    task = asyncio.current_task()
    cancels_before = task.cancelling() if task is not None else 0
    result = await awaitable
    if task is not None and task.cancelling() > cancels_before:
        raise asyncio.CancelledError
    return result


def ensure_active() -> PatchState:
    """The stack is switched on when used (upstream: ble.active(True)), also after stop()."""
    patch = current_patch()
    patch.active = True
    return patch


def require_active(patch: PatchState | None) -> None:
    # MicroPython raises OSError(EPERM) for GATT calls while the stack is off.
    if patch is not None and not patch.active:
        raise OSError(errno.EPERM, "BLE is not active (aioble.stop())")


# BLE.config() names (MicroPython docs, bluetooth.BLE.config), their values until set.
_CONFIG_DEFAULTS: dict[str, Any] = {
    "addr_mode": 1,     # random static address (Bumble's virtual devices use one)
    "rxbuf": 512,
    "bond": False,
    "mitm": False,
    "io": 3,            # _IO_CAPABILITY_NO_INPUT_OUTPUT
    "le_secure": False,
}


def config(*args: Any, **kwargs: Any) -> Any:
    """`aioble.config()` = `BLE.config()`: query one name, or set names by keyword.

    Every name MicroPython's BLE.config knows is accepted. 'mac', 'mtu' and 'gap_name' act on
    the Bumble device; 'addr_mode', 'rxbuf', 'bond', 'mitm', 'io' and 'le_secure' are kept
    and answered back (the shim has no pairing or address modes). Anything else raises
    ValueError('unknown config param'), as MicroPython does.
    """
    patch = ensure_active()
    device = patch.device
    if args:
        if len(args) != 1 or kwargs:
            raise TypeError("must query one param")
        name = args[0]
        if name == "mac":
            address = device.random_address
            return (0 if address.is_public else 1, bytes(reversed(bytes(address))))
        if name == "mtu":
            return device.gatt_server.max_mtu
        if name == "gap_name":
            return device.name.encode()
        if name in patch.settings:
            return patch.settings[name]
        raise ValueError("unknown config param")
    for name, value in kwargs.items():
        if name == "mtu":
            if not 23 <= int(value) <= 517:
                raise ValueError(f"config: mtu must be 23..517, got {value}")
            device.gatt_server.max_mtu = int(value)
        elif name == "gap_name":
            device.name = value.decode() if isinstance(value, bytes | bytearray) else str(value)
        elif name in patch.settings:
            patch.settings[name] = value
        else:
            raise ValueError("unknown config param")
    return None


def stop() -> None:
    """Switch the stack off (upstream: ble.active(False), then every module's shutdown
    handler): advertising stops, every link drops, the registered services and the capture
    queue go. The next aioble call that needs the stack switches it on again; services must
    be registered again, as on a board."""
    patch = current_patch()
    patch.active = False
    if patch.advertising:
        patch.advertising = False
        patch.spawn(patch.device.stop_advertising())
    for connection in list(patch.connections.values()):
        connection._drop_at_shutdown()
    for handler in _shutdown_handlers:
        handler(patch)
