# An ordinary aioble peripheral program, written for a MicroPython board and nothing else
# (no dermtwin code): a skin thermometer with a battery. tests/test_aioble_conformance.py
# runs this file unmodified against the host aioble shim and reads it with a plain Bumble
# central. In the style of micropython-lib's aioble examples/temp_sensor.py.
import sys

# ruff: noqa: E402, I001
sys.path.append("")

from micropython import const

import asyncio
import aioble
import bluetooth

import struct

_ENV_SENSING = bluetooth.UUID(0x181A)
_TEMPERATURE = bluetooth.UUID(0x2A6E)
_BATTERY_SERVICE = bluetooth.UUID(0x180F)
_BATTERY_LEVEL = bluetooth.UUID(0x2A19)
_APPEARANCE_BODY_THERMOMETER = const(0x0302)   # Generic Thermometer: Body (Assigned Numbers)
_ADV_INTERVAL_US = const(100_000)
_SAMPLE_MS = const(200)

ess = aioble.Service(_ENV_SENSING)
temperature = aioble.Characteristic(ess, _TEMPERATURE, read=True, notify=True)
battery = aioble.Service(_BATTERY_SERVICE)
battery_level = aioble.Characteristic(battery, _BATTERY_LEVEL, read=True, notify=True,
                                      initial=b"\x5a")
aioble.register_services(ess, battery)

samples = 0


async def sensor_task():
    global samples
    centi_c = 3350
    while True:
        temperature.write(struct.pack("<h", centi_c), send_update=True)
        samples += 1
        centi_c += 1
        await asyncio.sleep_ms(_SAMPLE_MS)


async def peripheral_task():
    while True:
        async with await aioble.advertise(
            _ADV_INTERVAL_US,
            name="skin-thermo",
            services=[_ENV_SENSING, _BATTERY_SERVICE],
            appearance=_APPEARANCE_BODY_THERMOMETER,
            manufacturer=(0xFFFF, b"\x01\x02"),
        ) as connection:
            print("Connection from", connection.device)
            await connection.disconnected()


async def main():
    await asyncio.gather(asyncio.create_task(sensor_task()),
                         asyncio.create_task(peripheral_task()))


asyncio.run(main())
