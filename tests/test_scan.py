"""`dermtwin scan` reads a patch's manufacturer data from whichever part of the
advertisement carries it (primary advertisement or scan response), over the bleak API and
our Bumble backend, on a virtual link: two plain Bumble peripherals advertise the same
record, one in each place; a third advertiser is not a patch and is left out."""

from __future__ import annotations

import struct

from bumble.core import AdvertisingData

from gateway.ble.radio import BleRadio
from gateway.scan import format_table, scan_patches, sighting_from_advertisement
from simulation.virtual_radio import VirtualRadio

COMPANY_ID = 0xFFFF


def mfr(fw=(1, 2, 3), battery=57, unacked=1234, flags=0x01) -> bytes:
    return struct.pack("<H3BBHB", COMPANY_ID, *fw, battery, unacked, flags)


def ad(*fields: tuple[int, bytes]) -> bytes:
    return bytes(AdvertisingData(list(fields)))


async def advertise(radio, name, primary: bytes, response: bytes):
    device = await radio.new_device(name)
    await device.start_advertising(advertising_data=primary, scan_response_data=response,
                                   auto_restart=True)
    return device


async def test_manufacturer_data_in_either_part_of_the_advertisement():
    radio = VirtualRadio(seed=3)
    name_field = lambda n: (AdvertisingData.COMPLETE_LOCAL_NAME, n.encode())  # noqa: E731
    flags = (AdvertisingData.FLAGS, b"\x06")
    mfr_field = (AdvertisingData.MANUFACTURER_SPECIFIC_DATA, mfr())
    try:
        await advertise(radio, "DT-AAAA", ad(flags, name_field("DT-AAAA"), mfr_field), b"")
        await advertise(radio, "DT-BBBB", ad(flags, name_field("DT-BBBB")),
                        ad(mfr_field))
        await advertise(radio, "Watch", ad(flags, name_field("Watch")),
                        ad((AdvertisingData.MANUFACTURER_SPECIFIC_DATA, b"\x4c\x00\x01")))
        radio_api = BleRadio(await radio.new_adapter())
        sightings = await scan_patches(radio_api, 2.0, {"DT-BBBB": "s-0007"})
    finally:
        await radio.close()
    by_name = {s.name: s for s in sightings}
    assert set(by_name) == {"DT-AAAA", "DT-BBBB"}
    for s in by_name.values():
        assert (s.battery_pct, s.backlog, s.firmware, s.provisioned) == (57, 1234, "1.2.3", True)
        assert isinstance(s.rssi, int)
    assert by_name["DT-BBBB"].subject == "s-0007" and not by_name["DT-AAAA"].paired
    table = format_table(sightings)
    assert "s-0007" in table and max(map(len, table.splitlines())) <= 80


def test_a_patch_name_without_manufacturer_data_is_listed_with_unknown_values():
    class Adv:
        local_name, manufacturer_data, service_uuids, rssi = "DT-CCCC", {}, [], -70

    sighting = sighting_from_advertisement("AA:BB:CC:DD:EE:FF", Adv(), {})
    assert sighting is not None and sighting.battery_pct is None and sighting.backlog is None
    assert "—" in format_table([sighting])
