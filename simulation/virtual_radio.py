"""A software radio: Bumble virtual controllers sharing one in-process link.

Every virtual patch and every gateway adapter gets its own Bumble `Controller` on
one `LocalLink`, so advertising, connections and GATT traffic flow exactly as they
would over the air, minus the air. `serve_hci()` exposes one more controller over
an HCI transport (e.g. `tcp-server:127.0.0.1:PORT`) so a gateway in another
process can attach to the same link as it would to a USB/UART dongle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from typing import TYPE_CHECKING, Any

from bumble import hci, ll
from bumble.controller import Controller
from bumble.device import Device, DeviceConfiguration
from bumble.host import Host
from bumble.link import LocalLink

if TYPE_CHECKING:
    from gateway.ble.bumble_backend import BumbleAdapter

logger = logging.getLogger(__name__)

# Reason code the controller reports when a link is lost without a goodbye
# (Core spec Vol 1, Part F, 2.9: Connection Timeout).
LINK_LOST_REASON = hci.HCI_CONNECTION_TIMEOUT_ERROR

_ACTIVE_SCANNING = 1  # scan type value in LE Set (Extended) Scan Parameters


@dataclasses.dataclass
class _AdvertisingWithScanResponse(ll.AdvExtInd):
    """An advertising PDU that also carries what the advertiser answers to SCAN_REQ.

    Bumble's virtual controller does not model scan requests; it echoes the
    advertising data as the scan response. Carrying the real scan response with
    the PDU lets the receiving controller report it to an active scanner.
    """

    scan_response_data: bytes = b""
    connectable: bool = True
    scannable: bool = True
    legacy: bool = True


class VirtualController(Controller):
    """Bumble's virtual `Controller` with two gaps filled.

    * Scan responses: active scanners get the advertiser's real scan response data.
    * LE Create Connection Cancel: ends the pending connection with the LE Connection
      Complete event the spec requires, so a connect attempt can time out cleanly.
    """

    def on_hci_reset_command(self, command: Any) -> Any:
        # Core spec Vol 4, Part E, 7.3.2: Reset ends every connection. A host that died
        # left its links up; its successor's Reset must drop them so the patches see the
        # disconnection and advertise again.
        for connection in list(self.le_connections.values()):
            if self.link:
                connection.send_ll_control_pdu(
                    ll.TerminateInd(hci.HCI_REMOTE_USER_TERMINATED_CONNECTION_ERROR))
            del self.le_connections[connection.peer_address]
        return super().on_hci_reset_command(command)

    # LE Data Length Extension (Core 4.2+): one 251-byte LL payload carries a full
    # ATT_MTU 247 notification, as on the ESP32, Pico W and Pi controllers.
    le_acl_data_packet_length: int = 251
    _le_scan_active: bool = True

    # --- initiator side ------------------------------------------------------
    def on_hci_le_create_connection_cancel_command(self, command: Any) -> Any:
        pending = self.pending_le_connection
        if pending is None:
            return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.COMMAND_DISALLOWED_ERROR)
        self.pending_le_connection = None
        failure = hci.HCI_LE_Connection_Complete_Event(
            status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR,
            connection_handle=0,
            role=hci.Role.CENTRAL,
            peer_address_type=pending.peer_address_type,
            peer_address=pending.peer_address,
            connection_interval=0,
            peripheral_latency=0,
            supervision_timeout=0,
            central_clock_accuracy=0,
        )
        # Vol 4, Part E, 7.8.13: Command Complete first, then the connection complete event.
        asyncio.get_running_loop().call_soon(self.send_hci_packet, failure)
        return hci.HCI_StatusReturnParameters(hci.HCI_ErrorCode.SUCCESS)

    # --- advertiser side -------------------------------------------------
    def send_advertising_pdu(self, packet: ll.AdvertisingPdu) -> None:
        if isinstance(packet, ll.AdvExtInd) and not isinstance(
            packet, _AdvertisingWithScanResponse
        ):
            wrapped = self._with_scan_response(packet)
            if wrapped is not None:
                packet = wrapped
        super().send_advertising_pdu(packet)

    def _with_scan_response(self, packet: ll.AdvExtInd) -> _AdvertisingWithScanResponse | None:
        for adv_set in self.advertising_sets.values():
            if not adv_set.enabled or adv_set.address != packet.advertiser_address:
                continue
            if adv_set.parameters is None:
                return None
            props = int(adv_set.parameters.advertising_event_properties)
            flags = hci.HCI_LE_Set_Extended_Advertising_Parameters_Command.AdvertisingProperties
            return _AdvertisingWithScanResponse(
                advertiser_address=packet.advertiser_address,
                data=packet.data,
                target_address=packet.target_address,
                adi=packet.adi,
                sid=packet.sid,
                tx_power=packet.tx_power,
                periodic_advertising_data=packet.periodic_advertising_data,
                scan_response_data=bytes(adv_set.scan_response_data),
                connectable=bool(props & flags.CONNECTABLE_ADVERTISING),
                scannable=bool(props & flags.SCANNABLE_ADVERTISING),
                legacy=bool(props & flags.USE_LEGACY_ADVERTISING_PDUS),
            )
        return None

    # --- scanner side -----------------------------------------------------
    def on_hci_le_set_extended_scan_parameters_command(self, command: Any) -> Any:
        self._le_scan_active = (
            bool(command.scan_types) and command.scan_types[0] == _ACTIVE_SCANNING
        )
        return super().on_hci_le_set_extended_scan_parameters_command(command)

    def on_hci_le_set_scan_parameters_command(self, command: Any) -> Any:
        self._le_scan_active = command.le_scan_type == _ACTIVE_SCANNING
        return super().on_hci_le_set_scan_parameters_command(command)

    def on_advertising_pdu(self, pdu: ll.AdvInd | ll.AdvExtInd) -> None:
        if not isinstance(pdu, _AdvertisingWithScanResponse) or not self.le_scan_enable:
            super().on_advertising_pdu(pdu)
            return
        if self.le_features & hci.LeFeatureMask.LE_EXTENDED_ADVERTISING:
            self._report_extended(pdu)
        else:
            self._report_legacy(pdu)
        # Let the base class handle periodic sync and pending connections only.
        self.le_scan_enable = False
        try:
            super().on_advertising_pdu(pdu)
        finally:
            self.le_scan_enable = True

    def _report_extended(self, pdu: _AdvertisingWithScanResponse) -> None:
        report_cls = hci.HCI_LE_Extended_Advertising_Report_Event
        event_type = 0
        if pdu.connectable:
            event_type |= report_cls.EventType.CONNECTABLE_ADVERTISING
        if pdu.scannable:
            event_type |= report_cls.EventType.SCANNABLE_ADVERTISING
        if pdu.legacy:
            event_type |= report_cls.EventType.LEGACY_ADVERTISING_PDU_USED

        def report(kind: int, data: bytes) -> Any:
            return report_cls.Report(
                event_type=kind,
                address_type=pdu.advertiser_address.address_type,
                address=pdu.advertiser_address,
                primary_phy=hci.Phy.LE_1M,
                secondary_phy=0 if pdu.legacy else hci.Phy.LE_1M,
                advertising_sid=0xFF if pdu.legacy else pdu.sid,
                tx_power=report_cls.TX_POWER_INFORMATION_NOT_AVAILABLE,
                rssi=-50,
                periodic_advertising_interval=0,
                direct_address_type=0,
                direct_address=hci.Address.ANY,
                data=data,
            )

        self.send_hci_packet(report_cls([report(event_type, pdu.data)]))
        if pdu.scannable and self._le_scan_active:
            scan_rsp_type = event_type | report_cls.EventType.SCAN_RESPONSE
            self.send_hci_packet(report_cls([report(scan_rsp_type, pdu.scan_response_data)]))

    def _report_legacy(self, pdu: _AdvertisingWithScanResponse) -> None:
        report_cls = hci.HCI_LE_Advertising_Report_Event
        if pdu.connectable:
            adv_type = report_cls.EventType.ADV_IND
        elif pdu.scannable:
            adv_type = report_cls.EventType.ADV_SCAN_IND
        else:
            adv_type = report_cls.EventType.ADV_NONCONN_IND

        def report(kind: int, data: bytes) -> Any:
            return report_cls.Report(
                event_type=kind,
                address_type=pdu.advertiser_address.address_type,
                address=pdu.advertiser_address,
                data=data,
                rssi=-50,
            )

        self.send_hci_packet(report_cls([report(adv_type, pdu.data)]))
        if pdu.scannable and self._le_scan_active:
            self.send_hci_packet(
                report_cls([report(report_cls.EventType.SCAN_RSP, pdu.scan_response_data)])
            )


class _HostSink:
    """Controller → host bytes go to whichever TCP client is attached now."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def on_packet(self, packet: bytes) -> None:
        if self.transport is not None:
            self.transport.write(packet)


class HciTcpServer:
    """One virtual controller offered to a host process over TCP, like a UART dongle.

    Each client gets a fresh HCI packet parser, so a host killed in the middle of a packet
    cannot garble the next one's stream, and a client that goes away is treated like a
    host that died: the next host's HCI Reset drops the links it left behind.
    """

    def __init__(self, controller: VirtualController) -> None:
        self.controller = controller
        self.sink = _HostSink()
        controller.host = self.sink
        self.server: asyncio.base_events.Server | None = None
        self.clients = 0

    async def start(self, host: str, port: int) -> int:
        from bumble.transport.common import StreamPacketSource

        server_self = self

        class Protocol(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport
                self.source = StreamPacketSource()
                self.source.set_packet_sink(server_self.controller)
                server_self.sink.transport = transport  # type: ignore[assignment]
                server_self.clients += 1

            def data_received(self, data: bytes) -> None:
                self.source.data_received(data)

            def connection_lost(self, exc: Exception | None) -> None:
                if server_self.sink.transport is self.transport:
                    server_self.sink.transport = None

        self.server = await asyncio.get_running_loop().create_server(Protocol, host, port)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class VirtualRadio:
    """One shared in-process BLE link plus the virtual devices attached to it."""

    def __init__(self, seed: int | None = None) -> None:
        self.link = LocalLink()
        self._random = random.Random(seed)
        self._devices: list[Device] = []
        self._controllers: list[Controller] = []
        self._transports: list[Any] = []
        self._hci_servers: list[HciTcpServer] = []
        self._adapters: list[BumbleAdapter] = []
        self._used_addresses: set[str] = set()

    @property
    def devices(self) -> list[Device]:
        return list(self._devices)

    def _new_static_address(self) -> str:
        while True:
            octets = [self._random.randrange(256) for _ in range(6)]
            octets[0] |= 0xC0  # random static address: two top bits set (Vol 6, Part B, 1.3.2.1)
            text = ":".join(f"{o:02X}" for o in octets)
            if text not in self._used_addresses:
                return text

    async def new_device(self, name: str, address: str | None = None,
                         host_class: type[Host] = Host) -> Device:
        """A powered-on Bumble `Device` on its own virtual controller on this link."""
        address = (address or self._new_static_address()).upper()
        if address in self._used_addresses:
            raise ValueError(f"virtual radio: address {address} is already in use on this link")
        self._used_addresses.add(address)
        controller = VirtualController(f"ctrl-{name}", link=self.link)
        config = DeviceConfiguration()
        config.load_from_dict({"name": name, "address": address})
        device = Device(config=config, host=host_class(controller_source=controller, controller_sink=controller))
        await device.power_on()
        self._controllers.append(controller)
        self._devices.append(device)
        return device

    async def new_adapter(
        self, name: str = "dermtwin-gw", address: str | None = None
    ) -> BumbleAdapter:
        """A central-side adapter (for the bleak Bumble backend) on this link."""
        from gateway.ble.bumble_backend import BumbleAdapter
        from gateway.ble.fast_host import NotificationFastPathHost

        device = await self.new_device(name, address, host_class=NotificationFastPathHost)
        adapter = BumbleAdapter.from_device(device)
        self._adapters.append(adapter)
        return adapter

    async def serve_hci(self, transport_spec: str, name: str = "ctrl-hci") -> Controller:
        """Attach one more controller whose host side is an HCI transport.

        A gateway then opens `BumbleAdapter.open("tcp-client:...")` against it.
        """
        from bumble.transport import open_transport

        transport = await open_transport(transport_spec)
        controller = VirtualController(
            name, host_source=transport.source, host_sink=transport.sink, link=self.link
        )
        self._transports.append(transport)
        self._controllers.append(controller)
        return controller

    async def serve_hci_tcp(self, port: int = 0, host: str = "127.0.0.1",
                            name: str = "ctrl-hci") -> int:
        """Offer one more controller to a host in another process over TCP (one host at a
        time; a new one may attach after the previous one died). Returns the port."""
        controller = VirtualController(name, link=self.link)
        server = HciTcpServer(controller)
        bound = await server.start(host, port)
        self._controllers.append(controller)
        self._hci_servers.append(server)
        return bound

    async def drop_link(self, address: str, reason: int = LINK_LOST_REASON) -> int:
        """Drop every connection of the device with `address`, or to a peer with it.

        Models a link lost from the radio side: the connection is terminated from
        the virtual device that owns it (the patch), so both hosts see a
        disconnection with `reason`. Returns how many links were dropped.
        """
        wanted = _address_key(address)
        dropped = 0
        for device in self._devices:
            own = _address_key(str(device.random_address)) == wanted
            for connection in list(device.connections.values()):
                if own or _address_key(str(connection.peer_address)) == wanted:
                    if _is_local_initiator(device, connection):
                        continue  # the peer device in this radio drops it
                    await connection.disconnect(reason)
                    dropped += 1
        if dropped == 0:
            # Links to a device outside this radio's list (e.g. over HCI): drop from any side.
            for device in self._devices:
                for connection in list(device.connections.values()):
                    if _address_key(str(connection.peer_address)) == wanted:
                        await connection.disconnect(reason)
                        dropped += 1
        return dropped

    async def close(self) -> None:
        for server in self._hci_servers:
            await server.close()
        for adapter in self._adapters:
            await adapter.close()
        for device in self._devices:
            for connection in list(device.connections.values()):
                try:
                    await connection.disconnect()
                except Exception:  # noqa: BLE001 - best effort while tearing down
                    logger.debug("virtual radio: disconnect at close failed", exc_info=True)
            try:
                await device.host.flush()
            except Exception:  # noqa: BLE001
                pass
        for transport in self._transports:
            await transport.close()
        self._adapters.clear()
        self._devices.clear()
        self._transports.clear()


def _address_key(address: str) -> str:
    """Address text without Bumble's type suffix, upper case, for comparisons."""
    return address.split("/")[0].upper()


def _is_local_initiator(device: Device, connection: Any) -> bool:
    """True when `device` is the central of `connection` (we drop from the peripheral)."""
    return connection.role == hci.Role.CENTRAL
