"""The host aioble shim behaves as upstream micropython-lib aioble does for a peripheral.

1. An ordinary aioble peripheral program (tests/aioble_programs/skin_thermometer.py, no
   dermtwin code, written as for a board) runs unmodified against the shim, and a plain Bumble
   central (bumble.device.Device + Peer) finds, reads and subscribes to it.
2. The points where the shim once differed from upstream (docs/firmware.md, "The aioble
   shim"): disconnected() waits without a timeout, advertising groups same-size UUIDs,
   cancelling advertise() returns None, stop() switches the stack off and drops links,
   config() takes every BLE.config name, asyncio has sleep_ms and ThreadSafeFlag.
Upstream behaviour was read from micropython-lib (micropython/bluetooth/aioble/aioble/).
"""

from __future__ import annotations

import asyncio
import inspect
import statistics
import struct
import threading
import time
from pathlib import Path

import pytest
from bumble.core import UUID, AdvertisingData
from bumble.device import Peer

from simulation.aioble_program import run_program
from simulation.device_shims import install
from simulation.virtual_radio import VirtualRadio

install()

import aioble  # noqa: E402  (the host shim)
import bluetooth  # noqa: E402

PROGRAM = Path(__file__).parent / "aioble_programs" / "skin_thermometer.py"
PROGRAM_SAMPLE_MS = 200
STEP_S = 5.0


def uuid16(value: int) -> UUID:
    return UUID.from_16_bits(value)


# --- 1. an unmodified aioble program, read by a plain Bumble central ------------------------
def test_an_ordinary_aioble_program_runs_unmodified_and_a_bumble_central_reads_it():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    radio = VirtualRadio(seed=21)
    try:
        peripheral = loop.run_until_complete(radio.new_device("mpy-board"))
        central = loop.run_until_complete(radio.new_device("plain-central"))
        seen = loop.create_task(central_session(central))
        program = run_program(PROGRAM, peripheral, loop, until=seen)
        result = seen.result()
    finally:
        loop.run_until_complete(radio.close())
        asyncio.set_event_loop(None)
        loop.close()

    adv, merged = result["adv"], result["merged"]
    # aioble's packing: flags, the two 16-bit UUIDs in one AD structure, name, appearance;
    # the manufacturer data no longer fits (31 bytes would be reached): scan response only
    assert adv.get_all(AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS, raw=True) \
        == [b"\x1a\x18\x0f\x18"]
    assert adv.get(AdvertisingData.COMPLETE_LOCAL_NAME, raw=True) == b"skin-thermo"
    assert adv.get(AdvertisingData.APPEARANCE, raw=True) == b"\x02\x03"
    assert adv.get(AdvertisingData.MANUFACTURER_SPECIFIC_DATA, raw=True) is None
    assert merged.get(AdvertisingData.MANUFACTURER_SPECIFIC_DATA, raw=True) == b"\xff\xff\x01\x02"

    assert result["battery"] == b"\x5a"
    first = result["read"]
    assert 3350 <= first < 3350 + program["samples"]        # the value the program wrote last
    values = [v for _, v in result["notified"]]
    assert values == list(range(values[0], values[0] + len(values)))   # every sample, in order
    times = [t for t, _ in result["notified"]]
    gaps_ms = [(b - a) * 1000 for a, b in zip(times, times[1:], strict=False)]
    assert PROGRAM_SAMPLE_MS * 0.7 < statistics.median(gaps_ms) < PROGRAM_SAMPLE_MS * 1.5
    # after the central left, the program's `async with` ended the link and it advertised again
    assert result["advertising_again"]


async def scan_for(central, name: bytes, *, active: bool):
    """The first advertising report from `name`: with active scanning Bumble merges the
    advertisement and the scan response into one report."""
    found: asyncio.Future = asyncio.get_running_loop().create_future()

    def on_advertisement(advertisement) -> None:
        if (advertisement.data.get(AdvertisingData.COMPLETE_LOCAL_NAME, raw=True) == name
                and advertisement.is_scan_response == active and not found.done()):
            found.set_result(advertisement)

    central.on("advertisement", on_advertisement)
    await central.start_scanning(active=active, filter_duplicates=False)
    try:
        return await asyncio.wait_for(found, STEP_S)
    finally:
        central.remove_listener("advertisement", on_advertisement)
        await central.stop_scanning()


async def central_session(central) -> dict:
    passive = await scan_for(central, b"skin-thermo", active=False)
    active = await scan_for(central, b"skin-thermo", active=True)
    address = passive.address
    adv, merged = passive.data, active.data
    connection = await central.connect(address, timeout=STEP_S)
    peer = Peer(connection)
    await peer.discover_services()
    for service in peer.services:
        await service.discover_characteristics()
    [temperature] = peer.get_characteristics_by_uuid(uuid16(0x2A6E))
    [battery] = peer.get_characteristics_by_uuid(uuid16(0x2A19))
    read = struct.unpack("<h", bytes(await peer.read_value(temperature)))[0]
    notified: list[tuple[float, int]] = []
    five = asyncio.Event()

    def on_value(value) -> None:
        notified.append((time.monotonic(), struct.unpack("<h", bytes(value))[0]))
        if len(notified) >= 6:
            five.set()

    await peer.subscribe(temperature, on_value)
    await asyncio.wait_for(five.wait(), STEP_S)
    battery_value = bytes(await peer.read_value(battery))
    await connection.disconnect()
    again = await scan_for(central, b"skin-thermo", active=False)
    advertising_again = again.address == address
    return {"adv": adv, "merged": merged, "read": read, "notified": notified,
            "battery": battery_value, "advertising_again": advertising_again}


# --- 2. upstream's behaviour where the shim once differed --------------------------------------
@pytest.fixture
async def radio():
    virtual_radio = VirtualRadio(seed=5)
    yield virtual_radio
    await virtual_radio.close()


async def connected_pair(radio, name="DT-SHIM"):
    """A bound peripheral device with one service, advertising; a central connected to it."""
    device = await radio.new_device(name)
    central = await radio.new_device(name + "-central")
    aioble.bind_device(device)
    service = aioble.Service(bluetooth.UUID(0x181A))
    characteristic = aioble.Characteristic(service, bluetooth.UUID(0x2A6E), read=True,
                                           notify=True, initial=b"\x00\x80")
    aioble.register_services(service)
    advertising = asyncio.create_task(aioble.advertise(20_000, name=name))
    await asyncio.sleep(0.05)
    central_link = await central.connect(device.random_address, timeout=STEP_S)
    connection = await asyncio.wait_for(advertising, STEP_S)
    return device, central_link, connection, characteristic


def test_signatures_and_defaults_follow_upstream():
    disconnected = inspect.signature(aioble.DeviceConnection.disconnected)
    assert disconnected.parameters["timeout_ms"].default is None        # since 2022 upstream
    assert inspect.signature(aioble.DeviceConnection.disconnect).parameters[
        "timeout_ms"].default == 2000
    assert inspect.signature(aioble.advertise).parameters["timeout_ms"].default is None
    assert list(inspect.signature(aioble.advertise).parameters) == [
        "interval_us", "adv_data", "resp_data", "connectable", "limited_disc", "br_edr", "name",
        "services", "appearance", "manufacturer", "timeout_ms"]
    with pytest.raises(NotImplementedError, match="scanning"):
        aioble.scan(1000)


async def test_disconnected_waits_without_a_timeout(radio):
    _, central_link, connection, _ = await connected_pair(radio)
    waiting = asyncio.create_task(connection.disconnected())
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await central_link.disconnect()
    await asyncio.wait_for(waiting, STEP_S)
    assert not connection.is_connected()


async def test_cancelled_advertise_returns_none_and_stops_advertising(radio):
    device = await radio.new_device("DT-CANCEL")
    aioble.bind_device(device)
    advertising = asyncio.create_task(aioble.advertise(20_000, name="DT-CANCEL"))
    await asyncio.sleep(0.05)
    assert device.is_advertising
    advertising.cancel()
    assert await advertising is None          # upstream catches the CancelledError
    assert not advertising.cancelled()
    assert not device.is_advertising


async def test_notify_on_a_dead_connection_raises_like_upstream(radio):
    _, central_link, connection, characteristic = await connected_pair(radio)
    await central_link.disconnect()
    await asyncio.wait_for(connection.disconnected(), STEP_S)
    with pytest.raises(TypeError):             # ble.gatts_notify(None, ...) on MicroPython
        characteristic.notify(connection, b"\x01\x00")


async def test_stop_switches_the_stack_off_and_drops_links(radio):
    device, central_link, connection, characteristic = await connected_pair(radio)
    central_dropped = asyncio.Event()
    central_link.on("disconnection", lambda reason: central_dropped.set())
    aioble.stop()
    assert not connection.is_connected()
    await asyncio.wait_for(central_dropped.wait(), STEP_S)     # the peer sees the link end
    with pytest.raises(OSError):
        characteristic.write(b"\x01\x00")      # its table went with the stack
    # The next aioble call switches the stack on again; services are registered anew.
    service = aioble.Service(bluetooth.UUID(0x180F))
    battery = aioble.Characteristic(service, bluetooth.UUID(0x2A19), read=True, initial=b"\x07")
    aioble.register_services(service)
    assert aioble.config("gap_name") == b"DT-SHIM"
    assert battery.read() == b"\x07"


async def test_config_passes_every_ble_config_name_through(radio):
    device = await radio.new_device("DT-CONFIG")
    aioble.bind_device(device)
    addr_type, addr = aioble.config("mac")
    assert addr_type == 1 and len(addr) == 6
    aioble.config(bond=True, mitm=True, io=4, le_secure=True, rxbuf=1024, mtu=185,
                  gap_name="DT-RENAMED")
    assert [aioble.config(name) for name in ("bond", "mitm", "io", "le_secure", "rxbuf", "mtu")] \
        == [True, True, 4, True, 1024, 185]
    assert aioble.config("gap_name") == b"DT-RENAMED" and device.name == "DT-RENAMED"
    with pytest.raises(ValueError, match="unknown config param"):
        aioble.config("colour")
    with pytest.raises(ValueError, match="unknown config param"):
        aioble.config(colour=1)


async def test_asyncio_has_micropythons_sleep_ms_and_thread_safe_flag():
    started = time.monotonic()
    await asyncio.sleep_ms(50)
    assert time.monotonic() - started >= 0.045
    flag = asyncio.ThreadSafeFlag()
    flag.set()
    await asyncio.wait_for(flag.wait(), 1)     # a set() before wait() is kept ...
    waiter = asyncio.create_task(flag.wait())
    await asyncio.sleep(0.02)
    assert not waiter.done()                   # ... and wait() cleared it
    threading.Thread(target=flag.set).start()  # set from another thread (an IRQ on a board)
    await asyncio.wait_for(waiter, 1)

