"""A bleak backend that runs over a Bumble host stack.

The gateway speaks only bleak's public API. With this backend the radio underneath
is a Bumble `Device`: a virtual controller on a `VirtualRadio` link (tests, demo)
or a real HCI controller (USB dongle, UART, `tcp-client:` to a radio process).

Choosing the adapter, in order of precedence:

* `BleakClient(..., backend=BumbleClientBackend, bumble={"adapter": adapter})`:
  mirrors bleak 3's per-platform argument dicts (`bluez={...}`); no warnings.
* `adapter=adapter`: bleak 3.1 passes it through to the backend unchanged but
  emits a DeprecationWarning (it is meant for BlueZ adapter names).
* `set_default_adapter(adapter)`: module-level default for code that builds
  scanners/clients without passing an adapter.

Disconnection: `disconnected_callback` fires on every disconnection, whether the
peripheral, the link or `disconnect()` ended it (as bleak's BlueZ backend does).
"""

from __future__ import annotations

import asyncio
import logging
import uuid as uuid_lib
from collections.abc import Callable, Iterable
from typing import Any

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError, BleakGATTProtocolError
from bumble import att, core, hci
from bumble.core import AdvertisingData
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.gatt import Characteristic as BumbleCharacteristic

from gateway.ble.fast_host import NotificationFastPathHost

logger = logging.getLogger(__name__)

REQUESTED_ATT_MTU = 247  # fits one 251-byte LE data PDU (Data Length Extension) with L2CAP header
DEFAULT_CONNECT_TIMEOUT_S = 10.0
_TX_POWER_NOT_AVAILABLE = Advertisement.TX_POWER_NOT_AVAILABLE

_PROPERTY_NAMES: tuple[tuple[int, str], ...] = (
    (BumbleCharacteristic.Properties.BROADCAST, "broadcast"),
    (BumbleCharacteristic.Properties.READ, "read"),
    (BumbleCharacteristic.Properties.WRITE_WITHOUT_RESPONSE, "write-without-response"),
    (BumbleCharacteristic.Properties.WRITE, "write"),
    (BumbleCharacteristic.Properties.NOTIFY, "notify"),
    (BumbleCharacteristic.Properties.INDICATE, "indicate"),
    (BumbleCharacteristic.Properties.AUTHENTICATED_SIGNED_WRITES, "authenticated-signed-writes"),
    (BumbleCharacteristic.Properties.EXTENDED_PROPERTIES, "extended-properties"),
)

_SERVICE_UUID_LIST_TYPES = (
    AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.COMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.INCOMPLETE_LIST_OF_32_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
    AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
)
_SERVICE_DATA_TYPES = (
    AdvertisingData.SERVICE_DATA_16_BIT_UUID,
    AdvertisingData.SERVICE_DATA_32_BIT_UUID,
    AdvertisingData.SERVICE_DATA_128_BIT_UUID,
)

AdvertisementListener = Callable[[Advertisement], None]


# --- pure conversions ------------------------------------------------------------
def bumble_uuid_to_str(uuid: core.UUID) -> str:
    """Bumble UUID -> bleak's form: full 128-bit, lowercase, dashed."""
    return str(uuid_lib.UUID(bytes=bytes(reversed(uuid.to_bytes(force_128=True)))))


def address_text(address: hci.Address) -> str:
    """Bumble address -> 'AA:BB:CC:DD:EE:FF' (no '/P' type suffix)."""
    return address.to_string(with_type_qualifier=False)


def property_names(properties: int) -> list[str]:
    return [name for bit, name in _PROPERTY_NAMES if properties & bit]


def advertisement_data_from_bumble(advertisement: Advertisement) -> AdvertisementData:
    """Bumble advertisement (advertising data + scan response) -> bleak AdvertisementData."""
    data = advertisement.data
    raw_names = data.get_all(AdvertisingData.COMPLETE_LOCAL_NAME, raw=True) or data.get_all(
        AdvertisingData.SHORTENED_LOCAL_NAME, raw=True
    )
    local_name = bytes(raw_names[0]).decode("utf-8", errors="replace") if raw_names else None

    service_uuids: list[str] = []
    for ad_type in _SERVICE_UUID_LIST_TYPES:
        for raw in data.get_all(ad_type, raw=True):
            size = {2: 2, 3: 2, 4: 4, 5: 4, 6: 16, 7: 16}[int(ad_type)]
            for offset in range(0, len(raw) - size + 1, size):
                text = bumble_uuid_to_str(core.UUID.from_bytes(bytes(raw[offset : offset + size])))
                if text not in service_uuids:
                    service_uuids.append(text)

    manufacturer_data: dict[int, bytes] = {}
    for raw in data.get_all(AdvertisingData.MANUFACTURER_SPECIFIC_DATA, raw=True):
        if len(raw) >= 2:
            manufacturer_data[int.from_bytes(raw[:2], "little")] = bytes(raw[2:])

    service_data: dict[str, bytes] = {}
    for ad_type, size in zip(_SERVICE_DATA_TYPES, (2, 4, 16), strict=True):
        for raw in data.get_all(ad_type, raw=True):
            if len(raw) >= size:
                key = bumble_uuid_to_str(core.UUID.from_bytes(bytes(raw[:size])))
                service_data[key] = bytes(raw[size:])

    tx_power: int | None = None
    tx_levels = data.get_all(AdvertisingData.TX_POWER_LEVEL, raw=True)
    if tx_levels:
        tx_power = int.from_bytes(tx_levels[0][:1], "little", signed=True)
    elif advertisement.tx_power != _TX_POWER_NOT_AVAILABLE:
        tx_power = advertisement.tx_power

    return AdvertisementData(
        local_name=local_name,
        manufacturer_data=manufacturer_data,
        service_data=service_data,
        service_uuids=service_uuids,
        tx_power=tx_power,
        rssi=advertisement.rssi,
        platform_data=(advertisement,),
    )


# --- the adapter ----------------------------------------------------------------------
class BumbleAdapter:
    """One Bumble `Device` acting as a BLE central, shared by scanners and clients.

    Scanning is reference-counted so several scanners can share the adapter;
    connection attempts are serialised (Bumble allows one pending LE connection).
    """

    def __init__(self, device: Device, transport: Any = None) -> None:
        self.device = device
        self._transport = transport
        self._listeners: dict[object, AdvertisementListener] = {}
        self._scan_users = 0
        self._scan_lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        self._address_types: dict[str, hci.Address] = {}
        self._closed = False
        device.on(Device.EVENT_ADVERTISEMENT, self._on_advertisement)

    @classmethod
    def from_device(cls, device: Device) -> BumbleAdapter:
        """Wrap an already powered-on Bumble device (e.g. from `VirtualRadio`)."""
        return cls(device)

    @classmethod
    async def open(
        cls,
        transport_spec: str,
        name: str = "dermtwin-gw",
        address: str = "F0:F1:F2:F3:F4:F5",
    ) -> BumbleAdapter:
        """Open a real HCI transport (`usb:0`, `serial:/dev/ttyUSB0`, `tcp-client:HOST:PORT`)."""
        from bumble.transport import open_transport

        try:
            transport = await open_transport(transport_spec)
        except Exception as error:
            raise BleakError(f"cannot open HCI transport {transport_spec!r}: {error}") from error
        host = NotificationFastPathHost(controller_source=transport.source,
                                        controller_sink=transport.sink)
        device = Device(name=name, address=hci.Address(address), host=host)
        try:
            await device.power_on()
        except Exception as error:
            await transport.close()
            raise BleakError(
                f"HCI controller on {transport_spec!r} did not power on: {error}"
            ) from error
        return cls(device, transport)

    @property
    def address(self) -> str:
        return address_text(self.device.random_address)

    @property
    def fast_host(self) -> NotificationFastPathHost | None:
        """The host's notification short-cut, when the device was built with it."""
        host = self.device.host
        return host if isinstance(host, NotificationFastPathHost) else None

    # --- scanning ---
    def add_advertisement_listener(self, listener: AdvertisementListener) -> Callable[[], None]:
        token = object()
        self._listeners[token] = listener

        def remove() -> None:
            self._listeners.pop(token, None)

        return remove

    async def acquire_scan(self) -> None:
        async with self._scan_lock:
            self._scan_users += 1
            if self._scan_users == 1 and not self.device.scanning:
                await self.device.start_scanning(active=True, filter_duplicates=False)

    async def release_scan(self) -> None:
        async with self._scan_lock:
            if self._scan_users == 0:
                return
            self._scan_users -= 1
            if self._scan_users == 0 and self.device.scanning:
                await self.device.stop_scanning()

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        self._address_types[address_text(advertisement.address)] = advertisement.address
        for listener in list(self._listeners.values()):
            try:
                listener(advertisement)
            except Exception:  # a broken listener must not starve the others
                logger.exception("advertisement listener failed")

    # --- connections ---
    def resolve_address(self, address: str | hci.Address) -> hci.Address:
        """Text address -> Bumble address with the type last seen while scanning."""
        if isinstance(address, hci.Address):
            return address
        key = address.split("/")[0].upper()
        return self._address_types.get(key) or hci.Address(address)

    async def connect(self, address: str | hci.Address, timeout_s: float) -> Connection:
        peer = self.resolve_address(address)
        async with self._connect_lock:
            try:
                return await self.device.connect(peer, timeout=timeout_s)
            except (TimeoutError, core.TimeoutError) as error:
                raise TimeoutError(
                    f"BLE connect to {address_text(peer)} timed out after {timeout_s:g} s"
                ) from error
            except core.ConnectionError as error:
                raise BleakError(f"BLE connect to {address_text(peer)} failed: {error}") from error
            except hci.HCI_Error as error:
                raise BleakError(
                    f"BLE connect to {address_text(peer)} refused by controller: {error}"
                ) from error

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._listeners.clear()
        if self.device.scanning:
            try:
                await self.device.stop_scanning()
            except Exception:  # noqa: BLE001 - best effort at shutdown
                logger.debug("stop_scanning at close failed", exc_info=True)
        for connection in list(self.device.connections.values()):
            try:
                await connection.disconnect()
            except Exception:  # noqa: BLE001
                logger.debug("disconnect at close failed", exc_info=True)
        if self._transport is not None:
            await self._transport.close()
            self._transport = None


_default_adapter: BumbleAdapter | None = None


def set_default_adapter(adapter: BumbleAdapter | None) -> None:
    """Adapter used by backends constructed without an explicit adapter."""
    global _default_adapter
    _default_adapter = adapter


def get_default_adapter() -> BumbleAdapter | None:
    return _default_adapter


def _adapter_from_kwargs(kwargs: dict[str, Any], who: str) -> BumbleAdapter:
    bumble_args = kwargs.get("bumble") or {}
    for candidate in (bumble_args.get("adapter"), kwargs.get("adapter"), _default_adapter):
        if isinstance(candidate, BumbleAdapter):
            return candidate
        if candidate is not None and not isinstance(candidate, str):
            raise BleakError(
                f"{who}: adapter must be a BumbleAdapter, got {type(candidate).__name__}"
            )
    raise BleakError(
        f"{who}: no Bumble adapter; pass bumble={{'adapter': adapter}} (or adapter=adapter) "
        "or call gateway.ble.bumble_backend.set_default_adapter()"
    )


# --- scanner -------------------------------------------------------------------------
class BumbleScannerBackend(BaseBleakScanner):
    """bleak scanner backend; every advertisement reaches the detection callbacks.

    Scanning is always active (scan requests are sent) so scan-response data such
    as the local name is reported; `scanning_mode` is accepted for API compatibility.
    """

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: str = "active",
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self._adapter = _adapter_from_kwargs(kwargs, "BumbleScannerBackend")
        self._remove_listener: Callable[[], None] | None = None

    async def start(self) -> None:
        if self._remove_listener is not None:
            return
        self.seen_devices = {}
        self._remove_listener = self._adapter.add_advertisement_listener(self._on_advertisement)
        try:
            await self._adapter.acquire_scan()
        except Exception:
            self._remove_listener()
            self._remove_listener = None
            raise

    async def stop(self) -> None:
        if self._remove_listener is None:
            return
        self._remove_listener()
        self._remove_listener = None
        await self._adapter.release_scan()

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        adv = advertisement_data_from_bumble(advertisement)
        if not self.is_allowed_uuid(adv.service_uuids):
            return
        address = address_text(advertisement.address)
        device = self.create_or_update_device(
            address, address, adv.local_name, advertisement.address, adv
        )
        self.call_detection_callbacks(device, adv)


# --- client -------------------------------------------------------------------------------
class BumbleClientBackend(BaseBleakClient):
    """bleak client backend: one Bumble LE connection to a GATT server."""

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None = None,
        timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        services: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout
        )
        self._adapter = _adapter_from_kwargs(kwargs, "BumbleClientBackend")
        self._peer_address: str | hci.Address = self.address
        self._name: str | None = None
        if isinstance(address_or_ble_device, BLEDevice):
            self._name = address_or_ble_device.name
            if isinstance(address_or_ble_device.details, hci.Address):
                self._peer_address = address_or_ble_device.details
        self._service_filter = set(services) if services else None
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._subscribers: dict[int, Callable[[bytes], None]] = {}
        self._fast_listeners: dict[int, Callable[[], None]] = {}   # handle → remove
        self._setup_done = False  # the callback is for links that connect() handed over

    # --- connectivity ---
    @property
    def name(self) -> str:
        return self._name or self.address

    @property
    def mtu_size(self) -> int:
        if self._connection is None:
            return att.ATT_DEFAULT_MTU
        return self._connection.att_mtu

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    async def connect(self, pair: bool = False, **kwargs: Any) -> None:
        if pair:
            logger.warning("Bumble backend: pairing before connect is not supported; ignored")
        if self._connection is not None:
            return
        timeout_s = float(kwargs.get("timeout", self._timeout))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        # Bumble cancels the pending LE connection itself on its own timeout.
        connection = await self._adapter.connect(self._peer_address, timeout_s)
        self._connection = connection
        self._setup_done = False
        connection.on(Connection.EVENT_DISCONNECTION, self._on_disconnection)
        try:
            async with asyncio.timeout_at(deadline):
                self._peer = Peer(connection)
                await self._peer.request_mtu(REQUESTED_ATT_MTU)
                self.services = await self._discover()
            self._setup_done = True
        except BaseException as error:
            await self._abandon(connection)
            if isinstance(error, att.ATT_Error):
                raise BleakGATTProtocolError(error.error_code) from error
            if isinstance(error, TimeoutError):
                raise TimeoutError(
                    f"BLE connect to {self.address}: MTU exchange and service discovery "
                    f"did not finish within {timeout_s:g} s"
                ) from error
            raise

    async def _abandon(self, connection: Connection) -> None:
        try:
            if self._connection is connection:
                await connection.disconnect()
        except Exception:  # noqa: BLE001 - already failing; keep the first error
            logger.debug("disconnect after failed connect setup failed", exc_info=True)

    def _on_disconnection(self, reason: int) -> None:
        logger.debug("Bumble backend: %s disconnected, reason 0x%02X", self.address, reason)
        if self._connection is not None and self._adapter.fast_host is not None:
            self._adapter.fast_host.forget_connection(self._connection.handle)
        self._connection = None
        self._peer = None
        self._subscribers.clear()
        self._fast_listeners.clear()
        was_set_up, self._setup_done = self._setup_done, False
        if was_set_up and self._disconnected_callback is not None:
            self._disconnected_callback()

    async def disconnect(self) -> None:
        connection = self._connection
        if connection is None:
            return
        try:
            await connection.disconnect()
        except hci.HCI_Error as error:
            if self._connection is not None:
                raise BleakError(f"disconnect from {self.address} failed: {error}") from error

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("Bumble backend: pairing is not implemented")

    async def unpair(self) -> None:
        raise NotImplementedError("Bumble backend: unpairing is not implemented")

    # --- discovery ---
    async def _discover(self) -> BleakGATTServiceCollection:
        assert self._peer is not None
        connection = self._peer.connection
        collection = BleakGATTServiceCollection()
        for service_proxy in await self._peer.discover_services():
            service_uuid = bumble_uuid_to_str(service_proxy.uuid)
            if self._service_filter is not None and service_uuid not in self._service_filter:
                continue
            service = BleakGATTService(service_proxy, service_proxy.handle, service_uuid)
            collection.add_service(service)
            for char_proxy in await service_proxy.discover_characteristics():
                characteristic = BleakGATTCharacteristic(
                    char_proxy,
                    char_proxy.handle,
                    bumble_uuid_to_str(char_proxy.uuid),
                    property_names(int(char_proxy.properties)),  # type: ignore[arg-type]
                    lambda: connection.att_mtu - 3,
                    service,
                )
                collection.add_characteristic(characteristic)
                for desc_proxy in await char_proxy.discover_descriptors():
                    collection.add_descriptor(
                        BleakGATTDescriptor(
                            desc_proxy,
                            desc_proxy.handle,
                            bumble_uuid_to_str(desc_proxy.type),
                            characteristic,
                        )
                    )
        return collection

    # --- I/O ---
    def _require_peer(self) -> Peer:
        if self._peer is None:
            raise BleakError(f"not connected to {self.address}")
        return self._peer

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        return await self._read(characteristic.handle, f"characteristic {characteristic.uuid}")

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        return await self._read(descriptor.handle, f"descriptor {descriptor.uuid}")

    async def _read(self, handle: int, what: str) -> bytearray:
        peer = self._require_peer()
        try:
            return bytearray(await peer.gatt_client.read_value(handle))
        except att.ATT_Error as error:
            raise BleakGATTProtocolError(error.error_code) from error
        except TimeoutError as error:
            raise TimeoutError(f"read of {what} on {self.address} timed out") from error

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: Any, response: bool
    ) -> None:
        await self._write(characteristic.handle, bytes(data), response)

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        await self._write(descriptor.handle, bytes(data), True)

    async def _write(self, handle: int, data: bytes, response: bool) -> None:
        peer = self._require_peer()
        try:
            await peer.gatt_client.write_value(handle, data, with_response=response)
        except att.ATT_Error as error:
            raise BleakGATTProtocolError(error.error_code) from error

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        """Subscribe to notifications, or indications if the characteristic only indicates."""
        peer = self._require_peer()
        char_proxy = characteristic.obj
        if not int(char_proxy.properties) & (
            BumbleCharacteristic.Properties.NOTIFY | BumbleCharacteristic.Properties.INDICATE
        ):
            raise BleakError(
                f"characteristic {characteristic.uuid} on {self.address} supports neither notify nor indicate"
            )

        def on_value(value: bytes) -> None:
            callback(bytearray(value))

        previous = self._subscribers.pop(characteristic.handle, None)
        self._forget_fast_listener(characteristic.handle)
        if previous is not None:
            await peer.gatt_client.unsubscribe(char_proxy, previous)
        self._subscribers[characteristic.handle] = on_value
        # Notifications skip Bumble's GATT client when the host can short-cut them
        # (gateway/ble/fast_host.py); indications keep its path (they are confirmed there).
        fast_host = self._adapter.fast_host
        if fast_host is not None:
            self._fast_listeners[characteristic.handle] = fast_host.add_notification_listener(
                peer.connection.handle, characteristic.handle, on_value)
        try:
            await peer.gatt_client.subscribe(char_proxy, on_value, prefer_notify=True)
        except att.ATT_Error as error:
            self._subscribers.pop(characteristic.handle, None)
            self._forget_fast_listener(characteristic.handle)
            raise BleakGATTProtocolError(error.error_code) from error

    def _forget_fast_listener(self, handle: int) -> None:
        remove = self._fast_listeners.pop(handle, None)
        if remove is not None:
            remove()

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        peer = self._require_peer()
        subscriber = self._subscribers.pop(characteristic.handle, None)
        self._forget_fast_listener(characteristic.handle)
        if subscriber is None:
            return
        try:
            await peer.gatt_client.unsubscribe(characteristic.obj, subscriber)
        except att.ATT_Error as error:
            raise BleakGATTProtocolError(error.error_code) from error


__all__ = [
    "REQUESTED_ATT_MTU",
    "BumbleAdapter",
    "BumbleClientBackend",
    "BumbleScannerBackend",
    "advertisement_data_from_bumble",
    "bumble_uuid_to_str",
    "get_default_adapter",
    "set_default_adapter",
]
