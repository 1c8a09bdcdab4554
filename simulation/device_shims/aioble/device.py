"""aioble.device for the host shim: peers, connections, timeouts."""

from __future__ import annotations

import asyncio
import binascii
import errno
from collections import deque
from typing import TYPE_CHECKING, Any

from .core import log_error

if TYPE_CHECKING:
    from .core import PatchState


class DeviceDisconnectedError(Exception):
    pass


async def _terminate(connection: Any) -> None:
    try:
        await connection.disconnect()
    except Exception as error:  # noqa: BLE001 - aioble logs and carries on
        log_error("Disconnect", error)


class DeviceTimeout:
    """`with DeviceTimeout(connection, timeout_ms):` as in aioble.

    Cancels the current task on timeout (-> `asyncio.TimeoutError`) or when
    `connection` disconnects (-> `DeviceDisconnectedError`). Either may be None.
    """

    def __init__(self, connection: DeviceConnection | None, timeout_ms: int | None) -> None:
        self._connection = connection
        self._timeout_ms = timeout_ms
        self._task = asyncio.current_task()
        self._timer: asyncio.TimerHandle | None = None
        self._timed_out = False
        self._disconnected = False
        if connection is not None:
            connection._timeouts.append(self)

    def _on_timeout(self) -> None:
        self._timer = None
        self._timed_out = True
        if self._task is not None:
            self._task.cancel()

    def _on_disconnect(self) -> None:
        self._disconnected = True
        if self._task is not None:
            self._task.cancel()

    def __enter__(self) -> DeviceTimeout:
        if self._timeout_ms:
            self._timer = asyncio.get_running_loop().call_later(
                self._timeout_ms / 1000, self._on_timeout
            )
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        if self._connection is not None and self in self._connection._timeouts:
            self._connection._timeouts.remove(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is None or not (self._timed_out or self._disconnected):
            return
        if exc_type is None:
            # Our cancel was swallowed on the way (Python 3.11 wait_for returns a result
            # that raced with cancel); the operation completed, so just rebalance.
            self._task.uncancel()
            return
        if exc_type is asyncio.CancelledError:
            if self._timed_out:
                self._task.uncancel()
                raise TimeoutError from exc_val
            if self._disconnected:
                self._task.uncancel()
                raise DeviceDisconnectedError from exc_val


class Device:
    """A peer address, as aioble's `Device` (address bytes most significant first)."""

    def __init__(self, addr_type: int, addr: bytes | str) -> None:
        self.addr_type = addr_type
        if isinstance(addr, str):
            addr = binascii.unhexlify(addr.replace(":", ""))
        self.addr = bytes(addr)
        self._connection: DeviceConnection | None = None

    def __eq__(self, rhs: object) -> bool:
        return isinstance(rhs, Device) and self.addr_type == rhs.addr_type and self.addr == rhs.addr

    def __hash__(self) -> int:
        return hash((self.addr_type, self.addr))

    def __str__(self) -> str:
        return "Device({}, {}{})".format(
            "ADDR_PUBLIC" if self.addr_type == 0 else "ADDR_RANDOM",
            self.addr_hex(),
            ", CONNECTED" if self._connection else "",
        )

    def addr_hex(self) -> str:
        return binascii.hexlify(self.addr, ":").decode()

    async def connect(self, timeout_ms: int = 10000) -> DeviceConnection:
        raise NotImplementedError("aioble host shim: the central role is not implemented")


class DeviceConnection:
    """One link to a central, as seen by the patch firmware."""

    def __init__(self, device: Device) -> None:
        self.device = device
        device._connection = self
        self.encrypted = False
        self.authenticated = False
        self.bonded = False
        self.key_size = False
        self.mtu: int | None = None  # None until the peer exchanges MTU, as in aioble
        self._conn_handle: int | None = None
        self._timeouts: list[DeviceTimeout] = []
        self._patch: PatchState | None = None
        self._bumble: Any = None
        self._disconnected_event = asyncio.Event()
        # Notifications accepted by notify() but not yet handed to the controller.
        self._tx_queue: deque[tuple[Any, bytes]] = deque()
        self._tx_in_flight = 0
        self._tx_task: asyncio.Task[None] | None = None

    # --- wiring to Bumble (host shim only) ---
    def _attach(self, patch: PatchState, connection: Any) -> None:
        self._patch = patch
        self._bumble = connection
        self._conn_handle = connection.handle
        connection.on("disconnection", self._on_disconnection)
        connection.on("connection_att_mtu_update", self._on_mtu_update)

    def _on_mtu_update(self) -> None:
        if self._bumble is not None:
            self.mtu = self._bumble.att_mtu

    def _on_disconnection(self, reason: int) -> None:
        if self._conn_handle is None:
            return   # already dropped (aioble.stop() does not wait for the stack's event)
        if self._patch is not None:
            self._patch.connections.pop(self._conn_handle, None)
            if self._patch.incoming is self:
                self._patch.incoming = None
        self._conn_handle = None
        self._bumble = None
        self.device._connection = None
        self._tx_queue.clear()
        self._tx_in_flight = 0
        self._disconnected_event.set()
        for timeout in list(self._timeouts):
            timeout._on_disconnect()

    def _queue_notification(self, attribute: Any, value: bytes) -> None:
        """Accept one notification for sending, or raise ENOMEM like NimBLE when flooded."""
        if self._conn_handle is None or self._patch is None:
            # Upstream calls ble.gatts_notify(connection._conn_handle, ...) with the handle
            # aioble cleared at the disconnect: MicroPython's int conversion of None.
            raise TypeError("can't convert NoneType to int")
        if self._tx_in_flight >= self._patch.notify_in_flight_limit:
            raise OSError(errno.ENOMEM, "ENOMEM")
        self._tx_queue.append((attribute, value))
        self._tx_in_flight += 1
        if self._tx_task is None:
            self._tx_task = self._patch.spawn(self._drain_notifications())

    async def _drain_notifications(self) -> None:
        try:
            while self._tx_queue and self._bumble is not None and self._patch is not None:
                sent = 0
                while self._tx_queue and self._bumble is not None:
                    attribute, value = self._tx_queue.popleft()
                    await self._patch.device.notify_subscriber(
                        self._bumble, attribute, value, force=True
                    )
                    sent += 1
                # Buffers are freed once the controller has taken the batch.
                await asyncio.sleep(0)
                self._tx_in_flight = max(0, self._tx_in_flight - sent)
        finally:
            self._tx_task = None

    # --- aioble API ---
    def is_connected(self) -> bool:
        return self._conn_handle is not None

    def timeout(self, timeout_ms: int | None) -> DeviceTimeout:
        return DeviceTimeout(self, timeout_ms)

    async def disconnect(self, timeout_ms: int = 2000) -> None:
        await self.disconnected(timeout_ms, disconnect=True)

    def _drop_at_shutdown(self) -> None:
        """aioble.stop(): the stack goes off, the link drops (the peer sees it end)."""
        connection = self._bumble
        if connection is not None and self._patch is not None:
            self._patch.spawn(_terminate(connection))
        self._on_disconnection(0x16)   # HCI: connection terminated by local host

    async def disconnected(self, timeout_ms: int | None = None, disconnect: bool = False) -> None:
        if not self.is_connected():
            return
        if disconnect and self._bumble is not None and self._patch is not None:
            self._patch.spawn(_terminate(self._bumble))
        with DeviceTimeout(None, timeout_ms):
            await self._disconnected_event.wait()

    async def exchange_mtu(self, mtu: int | None = None, timeout_ms: int = 1000) -> int | None:
        if not self.is_connected() or self._bumble is None or self._patch is None:
            raise ValueError("Not connected")
        if mtu:
            self._patch.device.gatt_server.max_mtu = mtu
        with self.timeout(timeout_ms):
            await self._bumble.gatt_client.request_mtu(self._patch.device.gatt_server.max_mtu)
        self.mtu = self._bumble.att_mtu
        return self.mtu

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("aioble host shim: pairing (aioble.security) is not implemented")

    async def service(self, uuid: Any, timeout_ms: int = 2000) -> Any:
        raise NotImplementedError("aioble host shim: the GATT client (aioble.client) is not "
                                  "implemented")

    def services(self, uuid: Any = None, timeout_ms: int = 2000) -> Any:
        raise NotImplementedError("aioble host shim: the GATT client (aioble.client) is not "
                                  "implemented")

    async def l2cap_accept(self, psm: int, mtu: int, timeout_ms: int | None = None) -> Any:
        raise NotImplementedError("aioble host shim: L2CAP channels are not implemented")

    async def l2cap_connect(self, psm: int, mtu: int, timeout_ms: int = 1000) -> Any:
        raise NotImplementedError("aioble host shim: L2CAP channels are not implemented")

    async def __aenter__(self) -> DeviceConnection:
        return self

    async def __aexit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        await self.disconnect()

    def __repr__(self) -> str:
        state = "connected" if self.is_connected() else "disconnected"
        return f"<DeviceConnection {self.device.addr_hex()} {state} mtu={self.mtu}>"
