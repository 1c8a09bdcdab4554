"""The virtual patch serves its GATT profile (docs/protocol.md §2, §3) to an independent GATT
client: Bumble's own, not our bleak backend."""

import asyncio
import json
import struct
import time
from pathlib import Path

import pytest
from bumble.core import UUID, AdvertisingData
from bumble.device import Peer
from bumble.gatt import Characteristic
from bumble.hci import HCI_ACL_DATA_PACKET
from bumble.snoop import Snooper

from gateway.protocol import constants as ids
from gateway.protocol import control as cp
from gateway.protocol.control import decode_manufacturer_data, decode_status
from simulation.virtual_patch import VirtualPatch
from simulation.virtual_radio import VirtualRadio

DEVICE_ID = "0a1b2c3d4e5f6071"
STREAM = ids.STREAM_SERVICE_UUID


def uuid16(value: int) -> UUID:
    return UUID.from_16_bits(value)


KEY = bytes(32)


async def connect_peer(radio, patch, name="independent-client"):
    central = await radio.new_device(name)
    connection = await central.connect(patch.bumble_device.random_address, timeout=5)
    peer = Peer(connection)
    await peer.discover_services()
    for service in peer.services:
        await service.discover_characteristics()
    return connection, peer


@pytest.fixture
async def patch_and_peer(tmp_path):
    radio = VirtualRadio(seed=11)
    patch = VirtualPatch(radio, DEVICE_ID, KEY, tmp_path / "patch",
                         config_overrides={1: 1}, baseline_c=34.0)
    await patch.start()
    for _ in range(100):   # the first sample of all four channels lands within about 0.3 s
        if patch.patch.log.next_seq - patch.patch.boot_state.first_seq >= 4:
            break
        await asyncio.sleep(0.05)
    connection, peer = await connect_peer(radio, patch)
    yield patch, peer
    await connection.disconnect()
    await patch.stop()
    await radio.close()


async def read(peer: Peer, uuid: UUID) -> bytes:
    [characteristic] = peer.get_characteristics_by_uuid(uuid)
    return bytes(await peer.read_value(characteristic))


async def test_all_services_are_discovered(patch_and_peer):
    _, peer = patch_and_peer
    found = {str(s.uuid).lower() for s in peer.services}
    for expected in (uuid16(0x1800), uuid16(0x180A), uuid16(0x180F), uuid16(0x181A),
                     UUID(STREAM)):
        assert str(expected).lower() in found, (expected, found)


async def test_device_information_and_battery(patch_and_peer):
    patch, peer = patch_and_peer
    assert await read(peer, uuid16(0x2A29)) == b"dermtwin"
    assert await read(peer, uuid16(0x2A24)) == b"virtual"
    assert await read(peer, uuid16(0x2A25)) == DEVICE_ID.encode()
    assert await read(peer, uuid16(0x2A26)) == b"0.1.0"
    [level] = await read(peer, uuid16(0x2A19))
    assert level == patch.patch.link.battery_pct    # from the MAX17048's SOC register
    assert abs(level - patch.environment.battery_soc_pct_at(patch.model_time_s())) <= 1


async def test_environmental_sensing_values_are_correct(patch_and_peer):
    patch, peer = patch_and_peer
    centi_c = struct.unpack("<h", await read(peer, uuid16(0x2A6E)))[0]
    assert centi_c / 100 == pytest.approx(patch.skin_celsius(), abs=0.1)   # TMP117: ±0.1 °C
    [uvi] = await read(peer, uuid16(0x2A76))
    assert uvi == round(patch.environment.uv_index_at(patch.model_time_s()))


async def test_stream_service_characteristics_and_status(patch_and_peer):
    patch, peer = patch_and_peer
    props = {str(c.uuid).lower(): c.properties
             for c in peer.get_characteristics_by_uuid(UUID(ids.SAMPLES_CHAR_UUID))
             + peer.get_characteristics_by_uuid(UUID(ids.CONTROL_POINT_CHAR_UUID))
             + peer.get_characteristics_by_uuid(UUID(ids.STATUS_CHAR_UUID))}
    assert props[ids.SAMPLES_CHAR_UUID] & Characteristic.Properties.NOTIFY
    cp = props[ids.CONTROL_POINT_CHAR_UUID]
    assert cp & Characteristic.Properties.WRITE and cp & Characteristic.Properties.INDICATE
    assert props[ids.STATUS_CHAR_UUID] & Characteristic.Properties.READ
    status = decode_status(await read(peer, UUID(ids.STATUS_CHAR_UUID)))
    assert status.boot_id == patch.patch.boot_state.boot_id
    assert status.next_seq >= status.oldest_seq
    assert status.config[1] == 1   # skin temperature period from SET_CONFIG/board overrides


class ControlClient:
    """A plain Bumble central speaking the Control Point (protocol.md §5) on its own."""

    def __init__(self, peer: Peer):
        self.peer = peer
        [self.char] = peer.get_characteristics_by_uuid(UUID(ids.CONTROL_POINT_CHAR_UUID))
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()

    async def subscribe(self) -> None:
        await self.peer.subscribe(self.char, lambda value: self.answers.put_nowait(bytes(value)),
                                  prefer_notify=False)

    async def status(self) -> cp.PatchStatus:
        return decode_status(await read(self.peer, UUID(ids.STATUS_CHAR_UUID)))

    async def write(self, request: bytes, nonce: int) -> cp.ControlResponse:
        await self.peer.write_value(self.char, request, with_response=True)
        answer = await asyncio.wait_for(self.answers.get(), 5)
        return cp.decode_response(answer, KEY, nonce, request)   # tagged, bound to request


async def test_a_captured_set_config_written_again_is_refused(patch_and_peer):
    patch, peer = patch_and_peer
    client = ControlClient(peer)
    await client.subscribe()
    status = await client.status()
    n, nonce = status.next_counter, status.boot_nonce
    assert nonce == patch.patch.boot_state.boot_nonce
    set_time = cp.set_time(KEY, nonce, n, 1_800_000_000_000)   # 21 bytes: the longest request
    answer = await client.write(set_time, nonce)
    assert answer.status is ids.Status.SUCCESS and len(set_time) == 21
    n += 1
    assert (await client.status()).next_counter == n   # Status follows every request
    captured = cp.set_config(KEY, nonce, n, ids.ConfigKey.UV_PERIOD_S, 7)   # off the air
    assert (await client.write(captured, nonce)).status is ids.Status.SUCCESS
    assert patch.patch.config.get(ids.ConfigKey.UV_PERIOD_S) == 7
    later = cp.set_config(KEY, nonce, n + 1, ids.ConfigKey.UV_PERIOD_S, 9)
    assert (await client.write(later, nonce)).status is ids.Status.SUCCESS
    replayed = await client.write(captured, nonce)        # the capture, played back
    assert replayed.status is ids.Status.STALE_REQUEST
    assert patch.patch.config.get(ids.ConfigKey.UV_PERIOD_S) == 9     # unchanged
    status = await client.status()
    assert status.config[ids.ConfigKey.UV_PERIOD_S] == 9 and status.next_counter == n + 2


async def test_a_request_captured_before_a_reboot_is_refused_after_it(tmp_path):
    radio = VirtualRadio(seed=12)
    data_dir = tmp_path / "patch"
    first = VirtualPatch(radio, DEVICE_ID, KEY, data_dir)
    await first.start()
    connection, peer = await connect_peer(radio, first)
    client = ControlClient(peer)
    await client.subscribe()
    status = await client.status()
    captured = cp.set_config(KEY, status.boot_nonce, status.next_counter,
                             ids.ConfigKey.UV_PERIOD_S, 7)
    assert (await client.write(captured, status.boot_nonce)).ok
    await connection.disconnect()
    await first.stop()
    # A stale boot_id file (an old backup, say) would bring back the first boot's number:
    # the patch moves past it, since the log still holds that boot's records.
    first_boot = first.patch.boot_state.boot_id
    (data_dir / "boot_id").write_text(str((first_boot - 1) & 0xFFFF))
    second = VirtualPatch(radio, DEVICE_ID, KEY, data_dir)
    await second.start()
    connection, peer = await connect_peer(radio, second, "client-after-reboot")
    client = ControlClient(peer)
    await client.subscribe()
    status = await client.status()
    assert status.boot_nonce == second.patch.boot_state.boot_nonce
    assert status.boot_nonce != first.patch.boot_state.boot_nonce and status.next_counter == 0
    assert status.boot_id == (first_boot + 1) & 0xFFFF == second.patch.log.boot_id
    fresh = cp.set_config(KEY, status.boot_nonce, 0, ids.ConfigKey.UV_PERIOD_S, 9)
    assert (await client.write(fresh, status.boot_nonce)).ok
    await peer.write_value(client.char, captured, with_response=True)   # the old capture
    answer = await asyncio.wait_for(client.answers.get(), 5)
    refused = cp.decode_response(answer, KEY, status.boot_nonce, captured)
    assert refused.status is ids.Status.AUTH_FAILED
    assert second.patch.config.get(ids.ConfigKey.UV_PERIOD_S) == 9   # unchanged
    assert second.patch.link.guard.next_counter == 1
    await connection.disconnect()
    await second.stop()
    await radio.close()
# --- live values, status and advertisement (issue 13) ---------------------------------------
ADVERTISING = json.loads(
    (Path(__file__).parent / "vectors" / "advertising.json").read_text())["cases"]
FAST = {1: 1, 2: 1, 5: 1}   # temperature, UV and battery every second


async def connect(radio, patch):
    central = await radio.new_device("phone")
    connection = await central.connect(patch.bumble_device.random_address, timeout=5)
    peer = Peer(connection)
    await peer.discover_services()
    for service in peer.services:
        await service.discover_characteristics()
    return central, connection, peer


async def test_before_the_first_sample_ess_and_battery_read_not_known(tmp_path):
    radio = VirtualRadio(seed=12)
    patch = VirtualPatch(radio, DEVICE_ID, bytes(32), tmp_path / "patch")
    await patch.start()
    for chip in patch.chips.values():   # before the firmware runs: no chip will answer,
        patch.bus.detach(chip.address)  # so no sample is ever taken
    try:
        _, connection, peer = await connect(radio, patch)
        assert patch.samples_taken == 0
        assert await read(peer, uuid16(0x2A6E)) == b"\x00\x80"   # sint16 0x8000: not known
        assert await read(peer, uuid16(0x2A76)) == b""             # UV Index: no value yet
        assert await read(peer, uuid16(0x2A19)) == b""             # Battery Level: none yet
        await connection.disconnect()
    finally:
        await patch.stop()
        await radio.close()


class AttSnooper:
    """Counts the ATT Handle Value Notifications a central's controller hands its host."""

    def __init__(self):
        self.by_handle: dict[int, list[int]] = {}

    def snoop(self, packet: bytes, direction) -> None:
        if direction != Snooper.Direction.CONTROLLER_TO_HOST or packet[0] != HCI_ACL_DATA_PACKET:
            return
        acl = packet[5:]                                # after type, handle+flags, length
        if len(acl) >= 7 and struct.unpack_from("<H", acl, 2)[0] == 4 and acl[4] == 0x1B:
            handle = struct.unpack_from("<H", acl, 5)[0]
            self.by_handle.setdefault(handle, []).append(len(acl))   # L2CAP header + ATT PDU


async def test_ess_and_battery_notify_every_new_sample(tmp_path):
    radio = VirtualRadio(seed=13)
    patch = VirtualPatch(radio, DEVICE_ID, bytes(32), tmp_path / "patch", config_overrides=FAST)
    await patch.start()
    try:
        central, connection, peer = await connect(radio, patch)
        snooper = AttSnooper()
        central.host.snooper = snooper
        chars = {ch: peer.get_characteristics_by_uuid(uuid16(u))[0]
                 for ch, u in ((0, 0x2A6E), (1, 0x2A76), (3, 0x2A19))}
        got: dict[int, list[bytes]] = {ch: [] for ch in chars}
        log = patch.patch.log
        for ch, characteristic in chars.items():
            await peer.subscribe(characteristic, lambda v, ch=ch: got[ch].append(bytes(v)))
        first_seq = log.next_seq
        await asyncio.sleep(3.2)
        last_seq = log.next_seq
        await asyncio.sleep(0.2)   # the last sample's notification is on its way
        logged = {ch: sum(1 for s in range(first_seq, last_seq) if log.channel(s) == ch)
                  for ch in chars}
        for ch in chars:
            assert logged[ch] >= 3, logged
            # one notification per sample logged (give or take the one at each edge)
            assert abs(len(got[ch]) - logged[ch]) <= 1, (ch, len(got[ch]), logged)
        # and each carries what a read says now (the latest sample)
        assert got[0][-1] == await read(peer, uuid16(0x2A6E))
        assert got[3][-1] == bytes([patch.patch.link.battery_pct])
        # on the air: L2CAP 4 + ATT 3 + value; the LE 1M link layer adds 10 bytes
        sizes = {ch: set(snooper.by_handle[c.handle]) for ch, c in chars.items()}
        assert sizes == {0: {9}, 1: {8}, 3: {8}}, sizes
        print(f"\nair bytes per notification (LE 1M, unencrypted): temperature "
              f"{9 + 10}, UV index {8 + 10}, battery {8 + 10}")
        await connection.disconnect()
    finally:
        await patch.stop()
        await radio.close()


async def test_status_is_current_on_every_read(patch_and_peer):
    patch, peer = patch_and_peer
    link = patch.patch.link
    seen = []
    for _ in range(4):
        await asyncio.sleep(1.1)   # temperature every second here
        status = decode_status(await read(peer, UUID(ids.STATUS_CHAR_UUID)))
        log = patch.patch.log
        assert log.next_seq - 1 <= status.next_seq <= log.next_seq    # none or one sample behind
        assert abs(status.tick - patch.patch.clock.now()) <= 12          # within ~1.2 s
        assert status.battery_pct == link.battery_pct
        assert status.config[ids.ConfigKey.FLUSH_INTERVAL_S] == 60      # the firmware default
        seen.append(status.next_seq)
    assert seen == sorted(seen) and seen[-1] > seen[0]
    [level] = await read(peer, uuid16(0x2A19))
    assert level == status.battery_pct


async def test_advertisement_carries_manufacturer_data_and_the_scan_response_the_uuid(
        tmp_path, monkeypatch):
    from firmware import ble_link  # after simulation.virtual_patch installed the shims

    # Advertising restarts with fresh values every ADV_REFRESH_MS (30 s on a patch).
    monkeypatch.setattr(ble_link, "ADV_REFRESH_MS", 300)
    radio = VirtualRadio(seed=14)
    patch = VirtualPatch(radio, DEVICE_ID, bytes(32), tmp_path / "patch")
    await patch.start()
    try:
        scanner = await radio.new_device("passive-proxy")
        passive: list = []
        merged: list = []

        def on_advertisement(advertisement):
            if advertisement.address == patch.bumble_device.random_address:
                (merged if advertisement.is_scan_response else passive).append(advertisement)

        scanner.on("advertisement", on_advertisement)
        await scanner.start_scanning(active=False, filter_duplicates=False)
        link = patch.patch.link
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            if passive and link.battery_pct != NOT_KNOWN and info_of(
                    passive[-1]).battery_pct == link.battery_pct:
                break
        await scanner.stop_scanning()
        # A passive scanner (a BLE proxy, the gateway's scan) sees name and manufacturer data.
        layout = bytes.fromhex(ADVERTISING[0]["adv_data"])
        adv = passive[-1].data_bytes
        assert len(adv) == len(layout) == 23
        assert adv[:3] == layout[:3]                                       # flags 0x06
        assert adv[3:12] == bytes([8, 0x09]) + patch.name.encode()         # name
        assert adv[12:16] == layout[12:16]                                 # mfr, company 0xFFFF
        info = info_of(passive[-1])
        assert info.fw_version == (0, 1, 0) and info.provisioned and not info.log_full
        assert info.battery_pct == link.battery_pct != NOT_KNOWN
        # the first advertisement went out before the gauge's first sample: "not known"
        assert info_of(passive[0]).battery_pct in (NOT_KNOWN, info.battery_pct)
        assert passive[-1].data.get(
            AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS) is None
        assert not merged                          # passive: no scan request, no response
        await scanner.start_scanning(active=True, filter_duplicates=False)
        for _ in range(50):
            if merged:
                break
            await asyncio.sleep(0.05)
        await scanner.stop_scanning()
        [stream] = merged[0].data.get(AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS)
        assert str(stream).lower() == STREAM
    finally:
        await patch.stop()
        await radio.close()


NOT_KNOWN = 255   # battery_pct before the gauge's first sample (protocol.md §2)


def info_of(advertisement):
    raw = advertisement.data.get(AdvertisingData.MANUFACTURER_SPECIFIC_DATA, raw=True)
    assert raw[:2] == b"\xff\xff"
    return decode_manufacturer_data(raw[2:])
