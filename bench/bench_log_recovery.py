"""Flash-log recovery at boot, under the real MicroPython VM: how long `FlashLog(dir)` takes to
walk every block header of a full log, against reading the same files raw in the same run.

A patch reopens its log at every boot, so this is the boot delay the log adds. Printed as
ms per day of samples at default rates and as the ratio to a raw read of the files. Not a test:
numbers depend on the machine (the VM here is WebAssembly on a desktop CPU; an RP2040 at
125 MHz runs MicroPython several times slower).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from mpvm import run_micropython  # noqa: E402

DAYS = int(os.environ.get("BENCH_LOG_DAYS", "2"))

SCRIPT = """
import os, time
from firmware.flash_log import FlashLog
DAYS = {days}
os.mkdir("/data")
log = FlashLog("/data/log", max_segments=200, boot_id=1)
# default rates: temperature 10 s, UV 5 s, hydration 60 s, battery 300 s (in 100 ms ticks)
temp, uv, hyd, bat = 4300, 0, 15000, 25600
for s in range(0, DAYS * 86400, 5):
    t = s * 10
    if s % 300 == 0:
        bat -= 1
        log.append(3, t, bat)
    if s % 60 == 0:
        hyd += (s // 60) % 5 - 2
        log.append(2, t, hyd)
    if s % 10 == 0:
        temp += (s // 10) % 3 - 1
        log.append(0, t, temp)
    log.append(1, t, uv)
log.close()
names = [n for n in os.listdir("/data/log") if n.startswith("seg_")]
size = sum(os.stat("/data/log/" + n)[6] for n in names)
buf = bytearray(4096)
best_raw = best_open = 1 << 30
for _ in range(3):
    t0 = time.ticks_us()
    for n in names:
        with open("/data/log/" + n, "rb") as f:
            while f.readinto(buf):
                pass
    best_raw = min(best_raw, time.ticks_diff(time.ticks_us(), t0))
    t0 = time.ticks_us()
    again = FlashLog("/data/log", max_segments=200, boot_id=2)
    best_open = min(best_open, time.ticks_diff(time.ticks_us(), t0))
    n_records = len(again)
    again.close()
print("log", len(names), size, n_records)
print("us", best_raw, best_open)
"""


def main() -> int:
    out = run_micropython(SCRIPT.format(days=DAYS), timeout_s=600)
    fields = dict((line.split(" ", 1)[0], line.split()[1:]) for line in out.splitlines()
                  if line.split(" ", 1)[0] in ("log", "us"))
    segments, size, records = (int(x) for x in fields["log"])
    raw_us, open_us = (int(x) for x in fields["us"])
    print(f"{DAYS} days at default rates: {records} samples, {size} B in {segments} segments")
    print(f"  raw read of the files:   {raw_us / 1000:8.1f} ms")
    print(f"  FlashLog recovery:       {open_us / 1000:8.1f} ms  "
          f"({open_us / 1000 / DAYS:.1f} ms per day of samples)")
    print(f"ratio recovery / raw read: {open_us / max(raw_us, 1):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
