"""The virtual patch serves its GATT profile (docs/protocol.md §3) to an independent GATT
client: Bumble's own, not our bleak backend."""

import asyncio
import struct

import pytest
from bumble.core import UUID
from bumble.device import Peer
from bumble.gatt import Characteristic

from gateway.protocol import constants as ids
from gateway.protocol.control import decode_status
from simulation.virtual_patch import VirtualPatch
from simulation.virtual_radio import VirtualRadio

DEVICE_ID = "0a1b2c3d4e5f6071"
STREAM = ids.STREAM_SERVICE_UUID


def uuid16(value: int) -> UUID:
    return UUID.from_16_bits(value)


@pytest.fixture
async def patch_and_peer(tmp_path):
    radio = VirtualRadio(seed=11)
    patch = VirtualPatch(radio, DEVICE_ID, bytes(32), tmp_path / "patch",
                         config_overrides={1: 1}, baseline_c=34.0)
    await patch.start()
    central = await radio.new_device("independent-client")
    for _ in range(100):   # the first sample of all four channels lands within about 0.3 s
        if patch.patch.log.next_seq - patch.patch.boot_state.first_seq >= 4:
            break
        await asyncio.sleep(0.05)
    connection = await central.connect(patch.bumble_device.random_address, timeout=5)
    peer = Peer(connection)
    await peer.discover_services()
    for service in peer.services:
        await service.discover_characteristics()
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
