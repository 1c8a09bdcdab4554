"""Flash-log recovery at boot, under the real MicroPython VM: how long `FlashLog(dir)` takes to
walk every block header of a full log, against reading the same files raw in the same run.

A patch reopens its log at every boot, so this is the boot delay the log adds. The baseline
is the naive recovery: read every byte of the same files and CRC-check all of it with the
log's own CRC-16, in the same VM and run (a bare read is no baseline: the VM's in-memory
filesystem reads the files in well under a millisecond, which made an earlier version of
this figure divide by ~0). Interleaved rounds, medians. Not a test:
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

sys.path.insert(0, str(REPO / "bench"))
from figures import figure, print_table  # noqa: E402

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
from firmware.flash_format import crc16
buf = bytearray(4096)
raw, opened = [], []
for _ in range({rounds}):
    t0 = time.ticks_ms()
    crc = 0
    for n in names:
        with open("/data/log/" + n, "rb") as f:
            while True:
                got = f.readinto(buf)
                if not got:
                    break
                crc ^= crc16(buf, got)
    raw.append(time.ticks_diff(time.ticks_ms(), t0))
    t0 = time.ticks_ms()
    again = FlashLog("/data/log", max_segments=200, boot_id=2)
    opened.append(time.ticks_diff(time.ticks_ms(), t0))
    n_records = len(again)
    again.close()
raw.sort()
opened.sort()
print("log", len(names), size, n_records)
print("ms", raw[len(raw) // 2], opened[len(opened) // 2])
"""


def figures() -> dict[str, dict]:
    rounds = max(1, int(os.environ.get("BENCH_REPEATS", "3")))
    out = run_micropython(SCRIPT.format(days=DAYS, rounds=rounds), timeout_s=900)
    fields = dict((line.split(" ", 1)[0], line.split()[1:]) for line in out.splitlines()
                  if line.split(" ", 1)[0] in ("log", "ms"))
    segments, size, records = (int(x) for x in fields["log"])
    crc_ms, open_ms = (int(x) for x in fields["ms"])
    return {
        "flash_log.recovery_ms_per_day": figure(
            open_ms / DAYS, crc_ms / DAYS, "ms/day",
            f"FlashLog(dir) at boot over {DAYS} days at default rates ({records} samples, "
            f"{size} B in {segments} segments) in the MicroPython VM, against reading and "
            "CRC-16-checking every byte of the same files in the same VM", better="lower"),
    }


def main() -> int:
    print_table(figures())
    return 0


if __name__ == "__main__":
    sys.exit(main())
