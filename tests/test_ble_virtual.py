"""The software BLE layer end to end: aioble shim (patch) <-> VirtualRadio <-> bleak backend.

The peripheral here is a tiny stand-in written against the aioble shim, not the
real firmware; the central uses only bleak's public API with the Bumble backend.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "simulation" / "device_shims"))

import aioble  # noqa: E402
import bluetooth  # noqa: E402
from aioble.peripheral import build_advertising_payloads  # noqa: E402
from bleak import BleakClient, BleakScanner  # noqa: E402
from bleak.backends.device import BLEDevice  # noqa: E402
from bleak.backends.scanner import AdvertisementData  # noqa: E402
from bleak.exc import BleakError  # noqa: E402

from gateway.ble.bumble_backend import (  # noqa: E402
    BumbleAdapter,
    BumbleClientBackend,
    BumbleScannerBackend,
    set_default_adapter,
)
from simulation.virtual_radio import VirtualRadio  # noqa: E402

STREAM_SERVICE = "d7000001-5345-4c50-834d-247ec90e2b93"
SAMPLES_CHAR = "d7000002-5345-4c50-834d-247ec90e2b93"
CONTROL_CHAR = "d7000003-5345-4c50-834d-247ec90e2b93"
STATUS_CHAR = "d7000004-5345-4c50-834d-247ec90e2b93"
INBOX_CHAR = "d7000005-5345-4c50-834d-247ec90e2b93"
BATTERY_SERVICE = "0000180f-0000-1000-8000-00805f9b34fb"
BATTERY_LEVEL_CHAR = "00002a19-0000-1000-8000-00805f9b34fb"
COMPANY_ID_TESTING = 0xFFFF
MANUFACTURER_PAYLOAD = b"\x01\x02\x03\x04"
STEP_TIMEOUT_S = 5.0


class StandInPatch:
    """A minimal patch written against aioble; runs in its own task, bound to its device."""

    def __init__(self, radio: VirtualRadio, name: str, notify_limit: int = 8) -> None:
        self.radio = radio
        self.name = name
        self.notify_limit = notify_limit
        self.connections: asyncio.Queue[aioble.DeviceConnection] = asyncio.Queue()
        self._registered = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> StandInPatch:
        self.device = await self.radio.new_device(self.name)
        self.address = self.device.random_address.to_string(with_type_qualifier=False)
        self.task = asyncio.create_task(self._main())
        await asyncio.wait_for(self._registered.wait(), STEP_TIMEOUT_S)
        return self

    def _build(self) -> None:
        stream = aioble.Service(bluetooth.UUID(STREAM_SERVICE))
        self.samples = aioble.Characteristic(stream, bluetooth.UUID(SAMPLES_CHAR), notify=True)
        self.control = aioble.Characteristic(
            stream, bluetooth.UUID(CONTROL_CHAR), write=True, indicate=True
        )
        self.status = aioble.Characteristic(
            stream, bluetooth.UUID(STATUS_CHAR), read=True, initial=b"status-v1"
        )
        self.inbox = aioble.Characteristic(
            stream, bluetooth.UUID(INBOX_CHAR), write=True, write_no_response=True, capture=True
        )
        battery = aioble.Service(bluetooth.UUID(0x180F))
        self.battery = aioble.Characteristic(
            battery, bluetooth.UUID(0x2A19), read=True, notify=True, initial=b"\x57"
        )
        aioble.register_services(stream, battery)

    async def _main(self) -> None:
        aioble.bind_device(self.device, notify_in_flight_limit=self.notify_limit)
        self._build()
        self._registered.set()
        while True:
            connection = await aioble.advertise(
                20_000,
                name=self.name,
                services=[bluetooth.UUID(STREAM_SERVICE)],
                manufacturer=(COMPANY_ID_TESTING, MANUFACTURER_PAYLOAD),
            )
            self.connections.put_nowait(connection)
            await connection.disconnected(timeout_ms=None)

    async def next_connection(self) -> aioble.DeviceConnection:
        return await asyncio.wait_for(self.connections.get(), STEP_TIMEOUT_S)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def radio():
    virtual_radio = VirtualRadio(seed=7)
    yield virtual_radio
    await virtual_radio.close()


@pytest.fixture
async def adapter(radio: VirtualRadio) -> BumbleAdapter:
    return await radio.new_adapter()


@pytest.fixture
async def patch(radio: VirtualRadio):
    peripheral = await StandInPatch(radio, "DT-0001").start()
    yield peripheral
    await peripheral.stop()


def make_client(adapter: BumbleAdapter, address: str | BLEDevice, **kwargs) -> BleakClient:
    return BleakClient(
        address, backend=BumbleClientBackend, bumble={"adapter": adapter}, timeout=3, **kwargs
    )


async def scan_until(
    adapter: BumbleAdapter, predicate, scanner_kwargs: dict | None = None
) -> tuple[BLEDevice, AdvertisementData]:
    found: asyncio.Future[tuple[BLEDevice, AdvertisementData]] = (
        asyncio.get_running_loop().create_future()
    )

    def on_detect(device: BLEDevice, adv: AdvertisementData) -> None:
        if predicate(device, adv) and not found.done():
            found.set_result((device, adv))

    kwargs = scanner_kwargs or {"bumble": {"adapter": adapter}}
    async with BleakScanner(detection_callback=on_detect, backend=BumbleScannerBackend, **kwargs):
        return await asyncio.wait_for(found, STEP_TIMEOUT_S)


# --- bluetooth.UUID and advertising payloads ---------------------------------------------------
def test_bluetooth_uuid_equality_hash_str_and_bytes():
    long_a = bluetooth.UUID(STREAM_SERVICE)
    long_b = bluetooth.UUID(STREAM_SERVICE.upper())
    assert long_a == long_b and hash(long_a) == hash(long_b)
    assert long_a != bluetooth.UUID(SAMPLES_CHAR)
    assert str(long_a) == f"UUID('{STREAM_SERVICE}')"
    assert bytes(long_a) == bytes.fromhex(STREAM_SERVICE.replace("-", ""))[::-1]
    short = bluetooth.UUID(0x180F)
    assert str(short) == "UUID(0x180f)"
    assert bytes(short) == b"\x0f\x18"
    assert short == bluetooth.UUID(b"\x0f\x18") and short != long_a
    with pytest.raises(ValueError):
        bluetooth.UUID("not-a-uuid")


def test_advertising_payload_overflows_into_scan_response_like_aioble():
    adv, resp = build_advertising_payloads(
        name="DT-0001",
        services=[bluetooth.UUID(STREAM_SERVICE)],
        manufacturer=(COMPANY_ID_TESTING, MANUFACTURER_PAYLOAD),
    )
    assert len(adv) <= 31 and resp is not None and len(resp) <= 31
    # flags + 128-bit service uuid + name fill the advertisement; manufacturer data overflows.
    assert adv[:3] == b"\x02\x01\x06"
    assert adv[3:5] == bytes([17, 0x07])
    assert resp == bytes([7, 0xFF]) + b"\xff\xff" + MANUFACTURER_PAYLOAD
    with pytest.raises(ValueError, match="too long"):
        build_advertising_payloads(name="N" * 40, services=[bluetooth.UUID(STREAM_SERVICE)])


def test_advertising_groups_uuids_of_one_size_in_one_ad_structure_like_aioble():
    adv, resp = build_advertising_payloads(
        services=[bluetooth.UUID(0x180F), bluetooth.UUID(STREAM_SERVICE), bluetooth.UUID(0x181A)],
        name="NN",
    )
    assert adv == (b"\x02\x01\x06" + b"\x05\x03\x0f\x18\x1a\x18"
                   + bytes([17, 0x07]) + bytes(bluetooth.UUID(STREAM_SERVICE)))
    # 27 bytes + a 4-byte name would make exactly 31, which aioble's `<` check does not allow
    assert resp == b"\x03\x09NN"


# --- scanning ----------------------------------------------------------------------------------
async def test_scan_sees_name_service_uuid_and_manufacturer_data(adapter, patch):
    device, adv = await scan_until(
        adapter, lambda d, a: a.local_name == "DT-0001" and bool(a.manufacturer_data)
    )
    assert device.address == patch.address
    assert adv.service_uuids == [STREAM_SERVICE]
    assert adv.manufacturer_data == {COMPANY_ID_TESTING: MANUFACTURER_PAYLOAD}
    assert isinstance(adv.rssi, int)


async def test_connect_from_scanned_device_while_scanner_keeps_running(adapter, patch):
    seen: asyncio.Queue[BLEDevice] = asyncio.Queue()
    scanner = BleakScanner(
        detection_callback=lambda d, a: seen.put_nowait(d) if a.local_name == "DT-0001" else None,
        backend=BumbleScannerBackend,
        bumble={"adapter": adapter},
    )
    set_default_adapter(adapter)
    try:
        async with scanner:
            device = await asyncio.wait_for(seen.get(), STEP_TIMEOUT_S)
            # No adapter argument: the module default is used.
            async with BleakClient(device, backend=BumbleClientBackend, timeout=3) as client:
                assert client.is_connected
                assert await client.read_gatt_char(STATUS_CHAR) == b"status-v1"
            assert adapter.device.scanning
    finally:
        set_default_adapter(None)


async def test_two_scanners_share_one_adapter_and_adapter_kwarg_works(adapter, patch):
    def wanted(d, a):
        return a.local_name == "DT-0001"

    with pytest.warns(DeprecationWarning):  # bleak 3.1 deprecates adapter= (meant for BlueZ)
        first, second = await asyncio.gather(
            scan_until(adapter, wanted, {"adapter": adapter}),
            scan_until(adapter, wanted),
        )
    assert first[0].address == second[0].address == patch.address
    assert not adapter.device.scanning  # both scanners stopped, so the adapter stopped


# --- connection, MTU, discovery, read -------------------------------------------------
async def test_connect_negotiates_mtu_and_discovers_services(adapter, patch):
    async with make_client(adapter, patch.address) as client:
        peripheral_side = await patch.next_connection()
        assert client.is_connected
        assert client.mtu_size == 247
        assert peripheral_side.mtu == 247
        assert peripheral_side.device.addr_hex() == adapter.address.lower()

        services = client.services
        assert services.get_service(STREAM_SERVICE) is not None
        assert services.get_service(BATTERY_SERVICE) is not None
        properties = {c.uuid: set(c.properties) for c in services.characteristics.values()}
        assert properties[SAMPLES_CHAR] == {"notify"}
        assert properties[CONTROL_CHAR] == {"write", "indicate"}
        assert properties[STATUS_CHAR] == {"read"}
        assert properties[INBOX_CHAR] == {"write", "write-without-response"}
        assert properties[BATTERY_LEVEL_CHAR] == {"read", "notify"}
        samples = services.get_characteristic(SAMPLES_CHAR)
        assert samples.max_write_without_response_size == 244
        assert any(d.uuid.startswith("00002902") for d in samples.descriptors)  # CCCD

        status = services.get_characteristic(STATUS_CHAR)
        assert await client.read_gatt_char(STATUS_CHAR) == b"status-v1"
        assert await client.read_gatt_char(status.handle) == b"status-v1"
        patch.status.write(b"status-v2")
        assert await client.read_gatt_char(status) == b"status-v2"


async def test_connect_to_absent_device_times_out_clearly(adapter, patch):
    client = BleakClient(
        "C0:00:00:00:00:01", backend=BumbleClientBackend, bumble={"adapter": adapter}, timeout=0.3
    )
    with pytest.raises(TimeoutError, match="C0:00:00:00:00:01"):
        await client.connect()
    assert not client.is_connected


# --- notifications with ENOMEM back-pressure --------------------------------------------------
def test_notify_flood_raises_enomem_at_the_in_flight_limit():
    async def scenario() -> None:
        radio = VirtualRadio(seed=3)
        try:
            adapter = await radio.new_adapter()
            patch = await StandInPatch(radio, "DT-0009", notify_limit=4).start()
            async with make_client(adapter, patch.address):
                connection = await patch.next_connection()
                for i in range(4):  # no await in between: nothing can drain
                    patch.samples.notify(connection, bytes([i]))
                with pytest.raises(OSError) as error:
                    patch.samples.notify(connection, b"one too many")
                assert error.value.errno == errno.ENOMEM
                await asyncio.sleep(0.01)
                patch.samples.notify(connection, b"room again")  # drained: accepted
            await patch.stop()
        finally:
            await radio.close()

    asyncio.run(scenario())


async def test_thousand_notifications_arrive_complete_and_in_order(adapter, patch):
    count = 1000
    frame_bytes = 244  # a full frame at ATT MTU 247
    received: list[bytes] = []
    all_received = asyncio.Event()

    def on_notify(_char, data: bytearray) -> None:
        received.append(bytes(data))
        if len(received) == count:
            all_received.set()

    async with make_client(adapter, patch.address) as client:
        connection = await patch.next_connection()
        await client.start_notify(SAMPLES_CHAR, on_notify)

        enomem_retries = 0
        for seq in range(count):
            frame = struct.pack("<I", seq) + bytes([seq & 0xFF]) * (frame_bytes - 4)
            while True:
                try:
                    patch.samples.notify(connection, frame)
                    break
                except OSError as error:
                    assert error.errno == errno.ENOMEM
                    enomem_retries += 1
                    await asyncio.sleep(0)

        await asyncio.wait_for(all_received.wait(), STEP_TIMEOUT_S)
        assert enomem_retries > 0
        assert [struct.unpack_from("<I", f)[0] for f in received] == list(range(count))
        assert all(len(f) == frame_bytes and f[4] == (i & 0xFF) for i, f in enumerate(received))
        # every one came by the host's short-cut (gateway/ble/fast_host.py)
        assert adapter.fast_host.notifications_short_cut == count

        await client.stop_notify(SAMPLES_CHAR)
        assert adapter.fast_host.listening == 0
        patch.samples.notify(connection, b"after unsubscribe")
        await asyncio.sleep(0.05)
        assert len(received) == count


async def test_notifications_take_bumbles_own_path_while_it_logs_debug(adapter, patch):
    """With Bumble's debug log on, nothing is short-cut: its lines stay complete."""
    received: asyncio.Queue[bytes] = asyncio.Queue()
    bumble_log = logging.getLogger("bumble.gatt_client")
    async with make_client(adapter, patch.address) as client:
        connection = await patch.next_connection()
        await client.start_notify(SAMPLES_CHAR, lambda _c, d: received.put_nowait(bytes(d)))
        before, bumble_log_level = adapter.fast_host.notifications_short_cut, bumble_log.level
        bumble_log.setLevel(logging.DEBUG)
        try:
            patch.samples.notify(connection, b"logged")
            assert await asyncio.wait_for(received.get(), STEP_TIMEOUT_S) == b"logged"
        finally:
            bumble_log.setLevel(bumble_log_level)
        assert adapter.fast_host.notifications_short_cut == before
        patch.samples.notify(connection, b"quiet")
        assert await asyncio.wait_for(received.get(), STEP_TIMEOUT_S) == b"quiet"
        assert adapter.fast_host.notifications_short_cut == before + 1


# --- writes and indications ----------------------------------------------------------------
async def test_write_with_response_then_indication_round_trip(adapter, patch):
    indications: asyncio.Queue[bytes] = asyncio.Queue()
    confirmed = asyncio.Event()

    async def firmware_control_point() -> None:
        connection = await patch.control.written(timeout_ms=int(STEP_TIMEOUT_S * 1000))
        command = patch.control.read()
        await patch.control.indicate(connection, b"ok:" + command, timeout_ms=1000)
        confirmed.set()

    async with make_client(adapter, patch.address) as client:
        await patch.next_connection()
        await client.start_notify(CONTROL_CHAR, lambda _c, d: indications.put_nowait(bytes(d)))
        responder = asyncio.create_task(firmware_control_point())
        await client.write_gatt_char(CONTROL_CHAR, b"PING", response=True)
        assert await asyncio.wait_for(indications.get(), STEP_TIMEOUT_S) == b"ok:PING"
        await asyncio.wait_for(confirmed.wait(), STEP_TIMEOUT_S)
        await responder


async def test_written_with_capture_keeps_queued_writes(adapter, patch):
    async with make_client(adapter, patch.address) as client:
        connection = await patch.next_connection()
        await client.write_gatt_char(INBOX_CHAR, b"first", response=True)
        await client.write_gatt_char(INBOX_CHAR, b"second", response=False)
        await client.write_gatt_char(INBOX_CHAR, b"third", response=True)
        # 30 bytes into a 20-byte MicroPython attribute buffer: truncated, as on the device.
        await client.write_gatt_char(INBOX_CHAR, bytes(range(30)), response=True)

        captured = [await patch.inbox.written(timeout_ms=1000) for _ in range(4)]
        assert [data for _, data in captured] == [b"first", b"second", b"third", bytes(range(20))]
        assert all(conn is connection for conn, _ in captured)
        with pytest.raises(TimeoutError):
            await patch.inbox.written(timeout_ms=50)


# --- disconnection ---------------------------------------------------------------------------------
async def test_peripheral_disconnect_reaches_both_sides(adapter, patch):
    central_saw_drop = asyncio.Event()
    client = make_client(
        adapter, patch.address, disconnected_callback=lambda _c: central_saw_drop.set()
    )
    await client.connect()
    connection = await patch.next_connection()

    await connection.disconnect(timeout_ms=2000)

    assert not connection.is_connected()
    await asyncio.wait_for(central_saw_drop.wait(), STEP_TIMEOUT_S)
    assert not client.is_connected
    with pytest.raises(ValueError, match="Not connected"):
        await patch.control.indicate(connection, b"late")


async def test_central_disconnect_reaches_both_sides(adapter, patch):
    central_saw_drop = asyncio.Event()
    client = make_client(
        adapter, patch.address, disconnected_callback=lambda _c: central_saw_drop.set()
    )
    await client.connect()
    connection = await patch.next_connection()

    await client.disconnect()

    await asyncio.wait_for(connection.disconnected(timeout_ms=2000), STEP_TIMEOUT_S)
    assert not connection.is_connected()
    assert central_saw_drop.is_set()
    # Upstream aioble passes the connection handle it cleared at the disconnect to
    # ble.gatts_notify: MicroPython's int conversion of None raises TypeError.
    with pytest.raises(TypeError):
        patch.samples.notify(connection, b"gone")
    # The patch advertises again and accepts the next connection.
    async with make_client(adapter, patch.address) as again:
        assert again.is_connected
        assert (await patch.next_connection()).is_connected()


async def test_radio_drop_link_interrupts_waits_on_both_sides(radio, adapter, patch):
    central_saw_drop = asyncio.Event()
    client = make_client(
        adapter, patch.address, disconnected_callback=lambda _c: central_saw_drop.set()
    )
    await client.connect()
    connection = await patch.next_connection()

    async def wait_for_write() -> None:
        with connection.timeout(None):
            await patch.control.written()

    waiter = asyncio.create_task(wait_for_write())
    await asyncio.sleep(0)
    assert await radio.drop_link(patch.address) == 1

    with pytest.raises(aioble.DeviceDisconnectedError):
        await asyncio.wait_for(waiter, STEP_TIMEOUT_S)
    await asyncio.wait_for(central_saw_drop.wait(), STEP_TIMEOUT_S)
    assert not connection.is_connected()


async def test_advertise_timeout_raises_and_stops_advertising(radio):
    device = await radio.new_device("DT-QUIET")

    async def firmware() -> None:
        aioble.bind_device(device)
        await aioble.advertise(20_000, name="DT-QUIET", timeout_ms=60)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(firmware(), STEP_TIMEOUT_S)
    assert not device.is_advertising


def test_aioble_without_bound_device_names_the_fix():
    async def firmware() -> None:
        aioble.register_services(aioble.Service(bluetooth.UUID(0x180F)))

    with pytest.raises(RuntimeError, match="bind_device"):
        asyncio.run(firmware())


# --- several patches at once -----------------------------------------------------------------------
async def test_two_peripherals_connected_to_one_adapter(radio, adapter):
    patches = [
        await StandInPatch(radio, "DT-0001").start(),
        await StandInPatch(radio, "DT-0002").start(),
    ]
    clients = [make_client(adapter, p.address) for p in patches]
    inboxes: list[asyncio.Queue[bytes]] = [asyncio.Queue(), asyncio.Queue()]
    try:
        await asyncio.gather(*(c.connect() for c in clients))
        connections = [await p.next_connection() for p in patches]
        assert all(c.is_connected for c in clients)
        assert len(adapter.device.connections) == 2

        for client, inbox in zip(clients, inboxes, strict=True):
            await client.start_notify(
                SAMPLES_CHAR, lambda _c, d, inbox=inbox: inbox.put_nowait(bytes(d))
            )
        for patch, connection in zip(patches, connections, strict=True):
            patch.samples.notify(connection, patch.name.encode())
        for patch, inbox in zip(patches, inboxes, strict=True):
            assert await asyncio.wait_for(inbox.get(), STEP_TIMEOUT_S) == patch.name.encode()

        patches[1].status.write(b"only-patch-2")
        assert await clients[0].read_gatt_char(STATUS_CHAR) == b"status-v1"
        assert await clients[1].read_gatt_char(STATUS_CHAR) == b"only-patch-2"
    finally:
        for client in clients:
            await client.disconnect()
        for p in patches:
            await p.stop()


# --- a gateway attached over an HCI transport (as to a USB/UART dongle) -----------------------------
async def test_adapter_over_hci_transport_reaches_the_virtual_link(radio, patch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serving = asyncio.create_task(radio.serve_hci(f"tcp-server:127.0.0.1:{port}"))
    await asyncio.sleep(0.05)  # let the server socket listen
    remote_adapter = await asyncio.wait_for(
        BumbleAdapter.open(f"tcp-client:127.0.0.1:{port}"), STEP_TIMEOUT_S
    )
    try:
        await asyncio.wait_for(serving, STEP_TIMEOUT_S)
        async with make_client(remote_adapter, patch.address) as client:
            assert client.mtu_size == 247
            assert await client.read_gatt_char(STATUS_CHAR) == b"status-v1"
            # notifications over HCI take the host's short-cut, as in `dermtwin run --hci`
            received: asyncio.Queue[bytes] = asyncio.Queue()
            connection = await patch.next_connection()
            await client.start_notify(SAMPLES_CHAR, lambda _c, d: received.put_nowait(bytes(d)))
            for i in range(20):
                patch.samples.notify(connection, bytes([i]) * 200)
                assert await asyncio.wait_for(received.get(), STEP_TIMEOUT_S) == bytes([i]) * 200
            assert remote_adapter.fast_host is not None
            assert remote_adapter.fast_host.notifications_short_cut == 20
        # the disconnection dropped the connection's listener (its handle may be reused)
        assert remote_adapter.fast_host.listening == 0
    finally:
        await remote_adapter.close()


async def test_open_unreachable_hci_transport_raises_bleak_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(BleakError, match=f"tcp-client:127.0.0.1:{port}"):
        await BumbleAdapter.open(f"tcp-client:127.0.0.1:{port}")
