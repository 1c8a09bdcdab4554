"""The virtual patch serves its GATT profile (docs/protocol.md §3) to an independent GATT
client: Bumble's own, not our bleak backend."""

import asyncio
import struct

import pytest
from bumble.core import UUID
from bumble.device import Peer
from bumble.gatt import Characteristic

from gateway.protocol import constants as ids
from gateway.protocol import control as cp
from gateway.protocol.control import decode_status
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
