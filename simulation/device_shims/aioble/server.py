"""aioble.server for the host shim: a GATT server on the patch's Bumble device.

Behaviour kept from MicroPython, because the firmware must cope with it on the
real stack too:
* values live in a local attribute table; a remote write longer than the
  attribute's buffer (20 bytes unless a longer value was written locally or a
  `BufferedCharacteristic` sets `max_len`) is truncated, as in MicroPython;
* `notify()` is synchronous and raises `OSError(ENOMEM)` while too many
  notifications are in flight on the connection (NimBLE's mbuf exhaustion);
* capture writes from all characteristics go through one queue of 10 entries.
"""

from __future__ import annotations

import errno
from collections import deque
from typing import Any

import bluetooth  # type: ignore[import-not-found,unused-ignore]  # simulation/device_shims on sys.path
from bumble import att, core, gatt

from .core import (
    GattError,
    PatchState,
    ThreadSafeFlag,
    ensure_active,
    register_shutdown_handler,
    require_active,
)
from .device import DeviceConnection, DeviceTimeout

_FLAG_READ = 0x0002
_FLAG_WRITE_NO_RESPONSE = 0x0004
_FLAG_WRITE = 0x0008
_FLAG_NOTIFY = 0x0010
_FLAG_INDICATE = 0x0020
_FLAG_WRITE_CAPTURE = 0x10000

_WRITE_CAPTURE_QUEUE_LIMIT = 10
# MicroPython's MP_BLUETOOTH_DEFAULT_ATTR_LEN: buffer size of every attribute value.
DEFAULT_ATTRIBUTE_BUFFER_BYTES = 20


class _CaptureQueue:
    """Per-patch version of aioble's shared capture queue and forwarding task."""

    def __init__(self, patch: PatchState) -> None:
        self.queue: deque[tuple[DeviceConnection | None, bytes, BaseCharacteristic]] = deque(
            (), _WRITE_CAPTURE_QUEUE_LIMIT
        )
        self.write_flag = ThreadSafeFlag()
        self.consumed_flag = ThreadSafeFlag()
        self.task = patch.spawn(self._run())

    async def _run(self) -> None:
        while True:
            if self.queue:
                connection, data, characteristic = self.queue.popleft()
                characteristic._write_data = (connection, data)
                characteristic._write_event.set()
                await self.consumed_flag.wait()
            if not self.queue:
                await self.write_flag.wait()


def to_bumble_uuid(uuid: Any) -> core.UUID:
    """`bluetooth.UUID` (or anything it accepts) -> Bumble UUID."""
    return core.UUID.from_bytes(bytes(bluetooth.UUID(uuid)))


class Service:
    def __init__(self, uuid: Any) -> None:
        self.uuid = uuid
        self.characteristics: list[Characteristic] = []


class BaseCharacteristic:
    flags: int
    uuid: Any
    _initial: Any
    _write_event: ThreadSafeFlag
    _write_data: Any

    def _init_value(self, initial: Any) -> None:
        self._value_handle: int | None = None
        self._initial = initial
        self._value = b""
        self._buffer_bytes = DEFAULT_ATTRIBUTE_BUFFER_BYTES
        self._append = False
        self._patch: PatchState | None = None
        self._attribute: Any = None

    def _register(self, patch: PatchState, attribute: Any) -> None:
        self._patch = patch
        self._attribute = attribute
        self._value_handle = attribute.handle
        patch.registered[attribute.handle] = self
        if self._initial is not None:
            self.write(self._initial)
            self._initial = None

    def _bumble_permissions(self) -> att.Attribute.Permissions:
        permissions = att.Attribute.Permissions(0)
        if self.flags & _FLAG_READ:
            permissions |= att.Attribute.Permissions.READABLE
        if self.flags & (_FLAG_WRITE | _FLAG_WRITE_NO_RESPONSE):
            permissions |= att.Attribute.Permissions.WRITEABLE
        return permissions

    def _bumble_value(self) -> att.AttributeValue:
        return att.AttributeValue(read=self._remote_read, write=self._remote_write)

    def read(self) -> bytes:
        if self._value_handle is None:
            return self._initial or b""
        value = self._value
        if self._append:
            self._value = b""  # MicroPython clears an append buffer when read locally
        return value

    def write(self, data: Any, send_update: bool = False) -> None:
        if self._value_handle is None:
            self._initial = data
            return
        if self._patch is None:   # its stack was stopped or its table registered anew
            raise OSError(errno.EINVAL, f"characteristic {self.uuid} is no longer registered")
        require_active(self._patch)
        value = data.encode() if isinstance(data, str) else bytes(data)
        self._value = value
        # MicroPython grows the attribute buffer to fit a longer local write.
        self._buffer_bytes = max(self._buffer_bytes, len(value))
        if send_update and self._patch is not None:
            patch = self._patch
            if self.flags & _FLAG_NOTIFY:
                patch.spawn(patch.device.notify_subscribers(self._attribute, value))
            if self.flags & _FLAG_INDICATE:
                patch.spawn(patch.device.indicate_subscribers(self._attribute, value))

    async def written(self, timeout_ms: int | None = None) -> Any:
        if not hasattr(self, "_write_event"):
            return None
        with DeviceTimeout(None, timeout_ms):
            await self._write_event.wait()
        data = self._write_data
        self._write_data = None
        if self.flags & _FLAG_WRITE_CAPTURE and self._patch is not None:
            self._patch.capture.consumed_flag.set()
        return data

    def on_read(self, connection: DeviceConnection | None) -> int:
        return 0

    # --- called by Bumble's GATT server ---
    def _connection_for(self, bumble_connection: Any) -> DeviceConnection | None:
        if self._patch is None:
            return None
        return self._patch.connections.get(bumble_connection.handle)

    def _remote_read(self, bumble_connection: Any) -> bytes:
        status = self.on_read(self._connection_for(bumble_connection))
        if status:
            raise att.ATT_Error(status, self._value_handle or 0)
        return self._value

    def _remote_write(self, bumble_connection: Any, value: bytes) -> None:
        data = bytes(value)
        if self._append:
            room = self._buffer_bytes - len(self._value)
            self._value += data[: max(0, room)]
        else:
            self._value = data[: self._buffer_bytes]
        if not hasattr(self, "_write_event"):
            return
        connection = self._connection_for(bumble_connection)
        if self.flags & _FLAG_WRITE_CAPTURE and self._patch is not None:
            capture = self._patch.capture
            capture.queue.append((connection, self.read(), self))
            capture.write_flag.set()
        else:
            self._write_data = connection
            self._write_event.set()


class Characteristic(BaseCharacteristic):
    def __init__(
        self,
        service: Service,
        uuid: Any,
        read: bool = False,
        write: bool = False,
        write_no_response: bool = False,
        notify: bool = False,
        indicate: bool = False,
        initial: Any = None,
        capture: bool = False,
    ) -> None:
        service.characteristics.append(self)
        self.descriptors: list[Descriptor] = []
        flags = 0
        if read:
            flags |= _FLAG_READ
        if write or write_no_response:
            flags |= (_FLAG_WRITE if write else 0) | (
                _FLAG_WRITE_NO_RESPONSE if write_no_response else 0
            )
            if capture:
                flags |= _FLAG_WRITE_CAPTURE
            self._write_event = ThreadSafeFlag()
            self._write_data = None
        if notify:
            flags |= _FLAG_NOTIFY
        if indicate:
            flags |= _FLAG_INDICATE
            self._indicate_connection: DeviceConnection | None = None
        self.uuid = uuid
        self.flags = flags
        self._init_value(initial)

    def _to_bumble(self) -> gatt.Characteristic:
        return gatt.Characteristic(
            to_bumble_uuid(self.uuid),
            gatt.Characteristic.Properties(self.flags & 0xFF),
            self._bumble_permissions(),
            self._bumble_value(),
            [d._to_bumble() for d in self.descriptors],
        )

    def notify(self, connection: DeviceConnection, data: Any = None) -> None:
        if not self.flags & _FLAG_NOTIFY:
            raise ValueError("Not supported")
        require_active(self._require_registered())
        value = self._value if data is None else bytes(data)
        connection._queue_notification(self._attribute, value)

    async def indicate(
        self, connection: DeviceConnection, data: Any = None, timeout_ms: int = 1000
    ) -> None:
        if not self.flags & _FLAG_INDICATE:
            raise ValueError("Not supported")
        if self._indicate_connection is not None:
            raise ValueError("In progress")
        if not connection.is_connected():
            raise ValueError("Not connected")
        patch = self._require_registered()
        require_active(patch)
        value = self._value if data is None else bytes(data)
        self._indicate_connection = connection
        try:
            with connection.timeout(timeout_ms):
                try:
                    await patch.device.indicate_subscriber(
                        connection._bumble, self._attribute, value, force=True
                    )
                except att.ATT_Error as error:
                    raise GattError(error.error_code) from error
        finally:
            self._indicate_connection = None

    def _require_registered(self) -> PatchState:
        if self._patch is None:
            raise ValueError(f"characteristic {self.uuid} is not registered (register_services)")
        return self._patch


class BufferedCharacteristic(Characteristic):
    def __init__(self, *args: Any, max_len: int = 20, append: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_len = max_len
        self._append_mode = append

    def _register(self, patch: PatchState, attribute: Any) -> None:
        super()._register(patch, attribute)
        self._buffer_bytes = self._max_len
        self._append = self._append_mode


class Descriptor(BaseCharacteristic):
    def __init__(
        self,
        characteristic: Characteristic,
        uuid: Any,
        read: bool = False,
        write: bool = False,
        initial: Any = None,
    ) -> None:
        characteristic.descriptors.append(self)
        flags = 0
        if read:
            flags |= _FLAG_READ
        if write:
            flags |= _FLAG_WRITE
            self._write_event = ThreadSafeFlag()
            self._write_data = None
        self.uuid = uuid
        self.flags = flags
        self._init_value(initial)

    def _to_bumble(self) -> gatt.Descriptor:
        return gatt.Descriptor(
            to_bumble_uuid(self.uuid), self._bumble_permissions(), self._bumble_value()
        )


def _remove_services(patch: PatchState) -> None:
    server = patch.device.gatt_server
    if patch.base_attribute_count is None:
        patch.base_attribute_count = len(server.attributes)
        patch.base_service_count = len(server.services)
    else:
        del server.attributes[patch.base_attribute_count :]
        del server.services[patch.base_service_count :]
        server.attributes_by_handle.clear()
    for characteristic in patch.registered.values():
        characteristic._patch = None   # a stale handle: using it raises, as on a board
    patch.registered.clear()


def _server_shutdown(patch: PatchState) -> None:
    """aioble.stop(): the GATT table and the capture queue go with the stack."""
    _remove_services(patch)
    if patch.capture is not None:
        patch.capture.task.cancel()
        patch.capture = None


register_shutdown_handler(_server_shutdown)


def register_services(*services: Service) -> None:
    """Register the services on the current patch's GATT server (replacing earlier ones)."""
    patch = ensure_active()
    server = patch.device.gatt_server
    _remove_services(patch)

    bumble_services = []
    for service in services:
        characteristics = [c._to_bumble() for c in service.characteristics]
        bumble_services.append(gatt.Service(to_bumble_uuid(service.uuid), characteristics))
    server.add_services(bumble_services)

    for service, bumble_service in zip(services, bumble_services, strict=True):
        for characteristic, bumble_char in zip(
            service.characteristics, bumble_service.characteristics, strict=True
        ):
            if characteristic.flags & _FLAG_WRITE_CAPTURE and patch.capture is None:
                patch.capture = _CaptureQueue(patch)
            characteristic._register(patch, bumble_char)
            for descriptor, bumble_descriptor in zip(
                characteristic.descriptors, bumble_char.descriptors, strict=False
            ):
                descriptor._register(patch, bumble_descriptor)
