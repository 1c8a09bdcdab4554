"""A generic BLE central, as a phone app or a Home Assistant proxy would be, against a virtual
patch: bleak's public API through our Bumble backend, standard SIG UUIDs only, nothing from
dermtwin's protocol. It finds the patch by its advertisement, reads Device Information,
Battery and Environmental Sensing, and gets ESS notifications at the sampling period."""

from __future__ import annotations

import asyncio
import statistics
import struct
import time

from bleak import BleakClient, BleakScanner

from gateway.ble.bumble_backend import BumbleClientBackend, BumbleScannerBackend
from simulation.virtual_patch import VirtualPatch
from simulation.virtual_radio import VirtualRadio

DEVICE_ID = "5e11aa0b22cc9d3e"
TEMPERATURE_PERIOD_S = 1   # SET_CONFIG key 1; UV at its default 5 s


def sig(uuid16: int) -> str:
    return f"0000{uuid16:04x}-0000-1000-8000-00805f9b34fb"


async def test_a_generic_central_reads_and_subscribes_with_standard_uuids(tmp_path):
    radio = VirtualRadio(seed=31)
    patch = VirtualPatch(radio, DEVICE_ID, bytes(range(32)), tmp_path / "patch",
                         config_overrides={1: TEMPERATURE_PERIOD_S})
    await patch.start()
    adapter = await radio.new_adapter("phone")
    try:
        found: asyncio.Future = asyncio.get_running_loop().create_future()

        def on_detect(device, adv):
            # What a phone sees: a name and manufacturer data (company 0xFFFF, for testing)
            if (adv.local_name or "").startswith("DT-") and 0xFFFF in adv.manufacturer_data \
                    and not found.done():
                found.set_result((device, adv))

        async with BleakScanner(detection_callback=on_detect, backend=BumbleScannerBackend,
                                bumble={"adapter": adapter}):
            device, adv = await asyncio.wait_for(found, 5)
        assert adv.local_name == "DT-9D3E"

        async with BleakClient(device, backend=BumbleClientBackend,
                               bumble={"adapter": adapter}, timeout=5) as client:
            info = {name: (await client.read_gatt_char(sig(u))).decode()
                    for name, u in (("manufacturer", 0x2A29), ("model", 0x2A24),
                                    ("serial", 0x2A25), ("firmware", 0x2A26))}
            assert info == {"manufacturer": "dermtwin", "model": "virtual",
                            "serial": DEVICE_ID, "firmware": "0.1.0"}
            # the first samples land within about a second of boot
            deadline = time.monotonic() + 3
            while not await client.read_gatt_char(sig(0x2A19)) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            [battery] = await client.read_gatt_char(sig(0x2A19))
            assert 0 <= battery <= 100
            assert abs(battery - patch.environment.battery_soc_pct_at(patch.model_time_s())) <= 1
            centi_c = struct.unpack("<h", await client.read_gatt_char(sig(0x2A6E)))[0]
            assert abs(centi_c / 100 - patch.skin_celsius()) <= 0.1
            [uvi] = await client.read_gatt_char(sig(0x2A76))
            assert uvi == round(patch.environment.uv_index_at(patch.model_time_s()))

            arrivals: list[tuple[float, float]] = []
            enough = asyncio.Event()

            def on_temperature(_char, data: bytearray) -> None:
                arrivals.append((time.monotonic(), struct.unpack("<h", data)[0] / 100))
                if len(arrivals) >= 5:
                    enough.set()

            await client.start_notify(sig(0x2A6E), on_temperature)
            await asyncio.wait_for(enough.wait(), 5 * TEMPERATURE_PERIOD_S + 3)
            await client.stop_notify(sig(0x2A6E))
        times = [t for t, _ in arrivals]
        period_s = statistics.median(b - a for a, b in zip(times, times[1:], strict=False))
        assert abs(period_s - TEMPERATURE_PERIOD_S) < 0.25, arrivals
        assert all(abs(c - patch.skin_celsius()) < 0.5 for _, c in arrivals), arrivals
    finally:
        await patch.stop()
        await radio.close()
