"""The patch's BLE link under the real MicroPython VM: the advertisement it builds (golden
vectors, docs/protocol.md §2) and the sampling path's live characteristics (ESS Temperature,
UV Index, Battery Level notified on every sample, Status refreshed) allocating nothing.

The VM has no `bluetooth`: aioble and bluetooth are stand-ins written into the VM whose
`Characteristic.write(data, send_update)` copies into a preallocated buffer and counts
updates, as the stack's gatts_write copies into its attribute table (C memory). The firmware
is the repo's source, as on a patch.
"""

from __future__ import annotations

import json
from pathlib import Path

VECTORS = Path(__file__).parent / "vectors"
ADVERTISING = json.loads((VECTORS / "advertising.json").read_text())
STREAM_SERVICE_LE = bytes.fromhex("d7000001-5345-4c50-834d-247ec90e2b93".replace("-", ""))[::-1]

STAND_INS = r'''
import os, sys
for d in ("/stand", ):
    try:
        os.mkdir(d)
    except OSError:
        pass
sys.path.insert(0, "/stand")
with open("/stand/bluetooth.py", "w") as f:
    f.write("class UUID:\n    def __init__(self, value):\n        self.value = value\n")
with open("/stand/aioble.py", "w") as f:
    f.write("""
class Characteristic:
    def __init__(self, size):
        self.value = bytearray(size)
        self.length = 0
        self.updates = 0
    def write(self, data, send_update=False):
        n = len(data)
        self.value[0:n] = data
        self.length = n
        if send_update:
            self.updates += 1
async def advertise(*args, **kwargs):
    raise OSError(19)
""")
import aioble

class Gatt:
    firmware_version = (0, 1, 0)
    def __init__(self, uuid_le):
        self.temperature = aioble.Characteristic(2)
        self.uv_index = aioble.Characteristic(1)
        self.battery_level = aioble.Characteristic(1)
        self.status = aioble.Characteristic(40)
        self.stream_service_uuid = uuid_le

class Log:
    def __init__(self, held, full):
        self.held, self.full, self.next_seq, self.oldest_seq = held, full, 0, 0
    def __len__(self):
        return self.held
    def is_full(self):
        return self.full

class Boot:
    boot_id = 7
    boot_nonce = 0x9E3779B9   # above 2**30: a long int on a board, as in the vectors
'''


def test_advertisement_matches_the_golden_vectors_under_micropython(micropython):
    cases = [[c["device_id"], c["fw"], c["battery_pct"], c["unacked_samples"],
              c["provisioned"], c["log_full"]] for c in ADVERTISING["cases"]]
    out = micropython(STAND_INS + f"""
import binascii
from firmware.ble_link import PatchLink
from firmware.clock import TickClock
from firmware.sampling_config import SamplingConfig
for device_id, fw, battery, unacked, provisioned, log_full in {cases!r}:
    gatt = Gatt({STREAM_SERVICE_LE!r})
    gatt.firmware_version = tuple(fw)
    link = PatchLink(gatt, device_id, bytes(32) if provisioned else None, Boot(),
                     Log(unacked, log_full), TickClock(), SamplingConfig(), None)
    link.battery_pct = battery
    print("adv", binascii.hexlify(link._pack_advertisement()).decode(),
          binascii.hexlify(link._resp_data).decode())
""")
    lines = [line.split()[1:] for line in out.splitlines() if line.startswith("adv ")]
    assert lines == [[c["adv_data"], c["scan_response"]] for c in ADVERTISING["cases"]]


def test_live_values_notify_on_every_sample_without_allocating(micropython):
    # Raw inputs: TMP117 LSBs (33.5 °C), UVI x 100 (3.4), SOC 1/256 % (87 %), hydration fF.
    out = micropython(STAND_INS + r"""
import gc, micropython, struct
from firmware import protocol_ids as ids
from firmware.ble_link import PatchLink
from firmware.clock import TickClock
from firmware.sampling_config import SamplingConfig
gatt = Gatt(b"0123456789abcdef")
log = Log(0, False)
link = PatchLink(gatt, "3f2a0c11d4e59b07", bytes(32), Boot(), log, TickClock(),
                 SamplingConfig(), None)
print("before", gatt.temperature.length, gatt.uv_index.length, gatt.battery_level.length)
link._refresh_status()
for channel, value in ((0, 4288), (1, 340), (2, 41000), (3, 87 * 256)):   # warm
    link.on_sample(channel, value)
gc.collect()
before = gc.mem_alloc()
micropython.heap_lock()
try:
    for i in range(300):
        log.next_seq = 100 + i
        link.on_sample(i % 4, (4288, 340, 41000, 87 * 256)[i % 4])
finally:
    micropython.heap_unlock()
print("alloc", gc.mem_alloc() - before)
print("updates", gatt.temperature.updates, gatt.uv_index.updates, gatt.battery_level.updates)
print("values", struct.unpack("<h", gatt.temperature.value)[0], gatt.uv_index.value[0],
      gatt.battery_level.value[0])
print("status", gatt.status.length, struct.unpack_from("<I", gatt.status.value, 10)[0],
      gatt.status.value[30], struct.unpack_from("<H", gatt.status.value, 31)[0],
      struct.unpack_from("<I", gatt.status.value, 33)[0])
""")
    assert "alloc 0" in out, out          # heap_lock would have raised MemoryError anyway
    # one update per sample of its channel: 75 each in the 300 plus the warm-up sample
    assert "updates 76 76 76" in out, out
    assert "values 3350 3 87" in out, out  # 4288 LSB x 7.8125 m°C = 33.50 °C; UVI 3.4 -> 3
    # the status record after the last sample: next_seq of it, battery, flush interval 60 s,
    # and the boot nonce the in-place refresh left alone
    assert "status 41 399 87 60 2654435769" in out, out

