"""The firmware's steady-state heap use under the real MicroPython VM (goal: frozen firmware
plus aioble <= 40 KB at steady state; issues 4 and 13).

The non-BLE firmware is built as on a patch: the .mpy files that tools/build_firmware.py
deploys, `app.Patch` on a board whose I2C bus is a VirtualI2C carrying the four chip
emulators fed by `PatchEnvironment`, the FlashLog at the board's segment cap, the Sampler's
four tasks, and the PatchLink serving one connection (frames encoded and "notified", ACKs and
REPLAY arriving as signed Control Point writes through the control codec). Only the BLE layer
is replaced: `aioble` and `bluetooth` are small stand-ins written into the VM, so GattTable
builds stub characteristics.

Time is virtual and runs SCALE times faster than real time (the firmware's sleeps and its tick
clock, the I2C bus clock and the environment model all follow it), so an hour of default-rate
sampling takes seconds.

How the heap is measured, honestly. Two properties of this VM build would distort it:
- gc.collect() inside running Python frees nothing; the collector runs when control returns to
  JavaScript (a real sleep). So a reading yields to JavaScript, collects and reads
  gc.mem_alloc() on resuming, the lowest of several tries (garbage only ever adds).
- every asyncio suspension leaves a JavaScript proxy on the MicroPython heap until
  JavaScript's own collector finalizes it (a sawtooth of several KB that looks like a leak).
  Node runs with --expose-gc; the script calls JavaScript's gc before each reading and during
  the run, and first drives the VM's asyncio as hard as the patch will, so that its proxy
  table has its working size before the baseline.
During a reading every firmware task is held in one of its own sleeps (its idle state between
samples), so no firmware code runs while the heap is read. A self-check first proves that 50 KB
of garbage disappears under this procedure; the steady readings then agree to within ~50 B.

Reported (run with -s to see them):
- scaffolding: interpreter, asyncio, the emulators, the environment model, the BLE stand-ins;
  subtracted from everything below (none of it is on a patch);
- code: the firmware and driver modules imported from .mpy (bytecode, constants and interned
  names in RAM, plus what every module keeps even when frozen: module, class and function
  objects, global name tables, tables built at import);
- objects at start: what app.Patch, the drivers and the tasks allocate before sampling;
- steady state: firmware total (code + data) after a warm-up, the lowest reading in each of
  two windows of 40 virtual minutes; the second must not exceed the first (no leak).

Frozen code does not cost zero heap. On a real 32-bit MicroPython (the unix port, this very
procedure) the steady state was 66.5 KB from .mpy files and 24.9 KB with the firmware frozen:
freezing moved 41.6 KB to flash, about the size of the device .mpy files (41 KB), and left
~14 KB of module objects and name tables on the heap. The VM cannot freeze, so the test
estimates the frozen figure: steady state minus the .mpy bytes of the device modules and
minus the interned-name pools' table overhead (micropython.qstr_info()), raised by a constant
that makes it read 24.9 KB on the firmware measured on the real build; then it adds aioble's
estimated frozen share (docs/firmware.md, Memory) for the 40 KB budget.

Not measured (no BLE in the VM): aioble's objects and the port's BLE buffers (estimated, see
AIOBLE_FROZEN_ESTIMATE_BYTES); and on a device, LittleFS gives each of the log's (at most two)
open files a small cache buffer.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAP_GOAL_BYTES = 40 * 1024   # frozen firmware + aioble, steady state
# aioble (core, device, peripheral, server) frozen, estimated: its module, class and function
# objects ~4 KB, the patch's GATT table 2.5 KB and a connection 1.3 KB (both measured in this
# VM over a stand-in `bluetooth`), the port's BLE buffers on the heap ~1 KB (rp2/BTstack).
AIOBLE_FROZEN_ESTIMATE_BYTES = 9 * 1024
# The VM's frozen estimate (below) read 20,302 B on the firmware that measured 24.9 KB
# (25,498 B) frozen on the real 32-bit build (main at 24a8028): the estimate is raised by the
# difference, so it stays calibrated to that measurement.
FROZEN_CALIBRATION_BYTES = 25_498 - 20_302
# Measured 76.0 KB (with the authenticated control channel, issue 11; frozen estimate 35.2
# KB of the 40 KB goal): 55.8 KB of module code + 20.3 KB of data, of which ~9 KB is a step of
# the interned-name pools (their tables grow in steps: at ~1,260 names, which the firmware
# has now passed (1,287), a ~9 KB pool was added; the next step is about twice as far). A guard
# against regressions, not the budget: frozen into the image, the bytecode and every
# interned name live in flash (the frozen estimate subtracts both). Module constants that are
# private const()s add no name.
HEAP_WITH_MPY_CODE_BYTES = 80 * 1024
# Steady readings agree to within 50 B over thousands of samples; a leak of one byte per
# sample would show as kilobytes.
LEAK_TOLERANCE_BYTES = 512

SCRIPT = r"""
import asyncio, gc, micropython, os, struct, sys, time

SCALE = 200                  # virtual ms per real ms
WARMUP_S = 1200              # virtual seconds of sampling before the first steady reading
# Two windows of 40 virtual minutes: ~1,900 samples each at this model's rates, so the log's
# active segment (~2,900 samples) changes inside them whatever the machine's load (with 20
# minutes a loaded CI machine fell just short of the change).
WINDOW_S = 2400
WINDOWS = 2

try:
    from js import gc as js_gc      # node --expose-gc (NODE_OPTIONS), see below
except ImportError:
    js_gc = None

async def live_heap(tries=12):
    if js_gc is not None:
        # This VM holds a JavaScript proxy per asyncio suspension until JavaScript's own
        # collector finalizes it; collect there first so they do not count.
        for _ in range(2):
            js_gc()
            await asyncio.sleep_ms(20)
    best = None
    for _ in range(tries):
        gc.collect()
        await asyncio.sleep_ms(1)      # back to JavaScript: the collector runs
        m = gc.mem_alloc()
        if best is None or m < best:
            best = m
    return best

# -- the procedure sees garbage go ------------------------------------------------------------
before = await live_heap()
junk = [bytearray(1000) for _ in range(50)]
made = gc.mem_alloc() - before
junk = None
print("gc-check made %d left %d js-gc %s" % (made, await live_heap() - before,
                                            "yes" if js_gc else "no"))

# -- scaffolding (not on a patch): .mpy files, BLE stand-ins, emulators, virtual time ---------
for path, data in MPY_FILES:
    parts = path.split("/")
    for i in range(2, len(parts)):
        try:
            os.mkdir("/".join(parts[:i]))
        except OSError:
            pass
    with open(path, "wb") as f:
        f.write(data)
MPY_FILES = None
sys.path.insert(0, "/mpy")
with open("/mpy/bluetooth.py", "w") as f:
    # bytes(uuid): the real UUID has the buffer protocol; iterating gives the same bytes
    f.write("class UUID:\n    def __init__(self, value):\n        self.value = value\n"
            "    def __iter__(self):\n        return iter(bytes(16))\n")
with open("/mpy/aioble.py", "w") as f:
    f.write('''import asyncio
class Service:
    def __init__(self, uuid):
        self.uuid = uuid
class Characteristic:
    def __init__(self, service, uuid, read=False, write=False, notify=False, indicate=False,
                 initial=None, capture=False):
        self.value = initial
        self.inbox = []
        self.event = asyncio.Event()
    def write(self, data, send_update=False):
        self.value = data
    def notify(self, connection, data=None):
        connection.on_notify(data)
    async def indicate(self, connection, data=None, timeout_ms=1000):
        connection.on_indicate(data)
    async def written(self, timeout_ms=None):
        while not self.inbox:
            self.event.clear()
            await self.event.wait()
        return self.inbox.pop(0)
def register_services(*services):
    pass
async def advertise(*args, **kwargs):
    raise OSError(19)
''')
import aioble, bluetooth

T0 = time.ticks_ms()

def virtual_ms():
    return time.ticks_diff(time.ticks_ms(), T0) * SCALE

real_sleep_ms = asyncio.sleep_ms
paused = [False]

async def scaled_sleep_ms(ms):
    await real_sleep_ms(-(-ms // SCALE))
    while paused[0]:              # held here while the heap is read: no firmware code runs
        await real_sleep_ms(5)

async def firmware_heap():
    # Every firmware task parked in one of its sleeps (its idle state between samples),
    # then the live heap.
    paused[0] = True
    await real_sleep_ms(50)
    m = await live_heap()
    paused[0] = False
    return m

from sensor_drivers.emulators.i2c_bus import VirtualI2C
from sensor_drivers.environment_model import PatchEnvironment, attach_patch_chips
env = PatchEnvironment(seed=3)
bus = VirtualI2C(clock_ms=virtual_ms)
chips = attach_patch_chips(bus, env, lambda: 36000 + virtual_ms() / 1000)   # from 10:00

class Connection:
    mtu = 247
    def __init__(self):
        self.frames = 0
        self.responses = 0
    def is_connected(self):
        return True
    async def disconnect(self):
        pass
    def on_notify(self, frame):
        self.frames += 1
    def on_indicate(self, data):
        self.responses += 1

conn = Connection()
KEY = bytes(range(32))
os.mkdir("/data")
with open("/data/identity", "w") as f:
    f.write("device_id=3f2a0c11d4e59b07\nkey=" + "".join("%02x" % b for b in KEY) + "\n")

async def idle(n):
    for i in range(n):
        await asyncio.sleep_ms(i & 1)

# Bring the VM's own asyncio bookkeeping (its proxy table grows with use, then plateaus) to
# its working size before the baseline, with as many tasks suspending as often as the patch's.
for _ in range(3):
    warm = [asyncio.create_task(idle(1500)) for _ in range(8)]
    for t in warm:
        await t
    warm = t = None
m_scaffold = await live_heap()
print("qstr-at scaffold")
micropython.qstr_info()

# -- the firmware, as on a patch -----------------------------------------------------------------
from firmware import aio, app, clock as clock_module
from firmware import protocol_ids as ids
from firmware.board import LOG_SEGMENTS_MAX, Board
from firmware.control_codec import request_tag
aio.sleep_ms = scaled_sleep_ms
clock_module.ticks_ms = virtual_ms
m_code = await live_heap()

class TestBoard(Board):
    def make_i2c(self):
        return bus

    def random_bytes(self, n):     # this VM has no os.urandom (a board has)
        import random
        return bytes(random.getrandbits(8) for _ in range(n))

patch = app.Patch(TestBoard("heap-test", (0, 0, 0), "/data", LOG_SEGMENTS_MAX))
i2c = patch.board.make_i2c()
tasks = [asyncio.create_task(patch.sampler.run_channel(ch, driver(i2c)))
         for ch, driver in app.DRIVERS]
link = patch.link
tasks.append(asyncio.create_task(link.serve(conn)))
m_built = await live_heap()

# -- the gateway's part: signed Control Point writes ----------------------------------------------
counter = [0]

def control(opcode, fmt, *operands):
    body = bytes([opcode]) + struct.pack("<I", counter[0]) + struct.pack(fmt, *operands)
    counter[0] += 1
    cp = patch.gatt.control_point
    cp.inbox.append((conn, body + request_tag(KEY, patch.boot_state.boot_nonce, body)))
    cp.event.set()

control(ids.OP_SET_TIME, "<Q", 1800000000000)
control(ids.OP_REPLAY, "<I", 0)

async def run_for(virtual_s):
    end = virtual_ms() + virtual_s * 1000
    while virtual_ms() < end:
        await real_sleep_ms(10000 // SCALE)          # every 10 s: ACK what was sent
        if link.cursor > 0:
            control(ids.OP_ACK, "<I", link.cursor - 1)
            control(ids.OP_GET_STATUS, "")
        if js_gc is not None:
            js_gc()     # keeps the VM's pending proxies below what the warm-up above reached

def state():
    log = patch.log
    return "samples %d unacked %d frames %d responses %d errors %d segments %d active %d" % (
        log.next_seq, len(log), link.frames_sent, conn.responses, patch.sampler.error_flags,
        log._nseg, log._first[log._as] if log._as >= 0 else -1)

async def window(virtual_s, parts=6):
    # The lowest of readings spread over the window: any reading is live heap plus whatever
    # the collector could not prove dead at that instant; the lowest is the closest bound.
    lows = []
    for _ in range(parts):
        await run_for(virtual_s // parts)
        lows.append(await firmware_heap())
    print("readings", " ".join(str(m - m_scaffold) for m in lows))
    return min(lows)

started = time.ticks_ms()
await run_for(WARMUP_S)      # frames and ACKs; a segment (~2,900 samples here) changes later
print("warm", state())
readings = []
for _ in range(WINDOWS):
    readings.append(await window(WINDOW_S))
    print("window", state())
for task in tasks:
    task.cancel()
print("real-ms", time.ticks_diff(time.ticks_ms(), started))
print("heap scaffolding", m_scaffold)
print("heap code", m_code - m_scaffold)
print("heap objects-at-start", m_built - m_code)
print("heap steady", " ".join(str(m - m_scaffold) for m in readings))
print("qstr-at steady")
micropython.qstr_info()
"""


def compiled_firmware(out: Path) -> list[tuple[str, bytes]]:
    """The .mpy files tools/build_firmware.py deploys, as (VM path, bytes)."""
    subprocess.run([sys.executable, str(REPO / "tools" / "build_firmware.py"), "--out", str(out)],
                   check=True, capture_output=True)
    lib = out / "lib"
    return [("/mpy/" + p.relative_to(lib).as_posix(), p.read_bytes())
            for p in sorted(lib.rglob("*.mpy"))]


def device_mpy_bytes(files: list[tuple[str, bytes]]) -> int:
    """.mpy bytes of the modules a patch runs (what freezing moves to flash): not the
    simulation beside the drivers, which the scaffolding loads."""
    sys.path.insert(0, str(REPO / "tools"))
    from build_firmware import simulation_only

    return sum(len(data) for path, data in files
               if not simulation_only(REPO / path.removeprefix("/mpy/").replace(".mpy", ".py")))


def test_steady_state_heap_is_under_goal_and_does_not_grow(micropython, tmp_path, monkeypatch):
    monkeypatch.setenv("NODE_OPTIONS", "--expose-gc")   # lets the script run JavaScript's gc
    files = compiled_firmware(tmp_path / "build")
    script = "MPY_FILES = " + repr(files) + "\n" + SCRIPT
    out = micropython(script, timeout_s=240)
    print(out)

    made, left, js_gc = re.search(r"gc-check made (\d+) left (-?\d+) js-gc (\w+)", out).groups()
    assert int(made) > 50_000 and int(left) < 1024, out     # the measurement sees garbage go
    assert js_gc == "yes", "node did not expose gc: readings would include VM proxies"

    frames = [int(n) for n in re.findall(r"frames (\d+)", out)]
    unacked = [int(n) for n in re.findall(r"unacked (\d+)", out)]
    errors = [int(n) for n in re.findall(r"errors (\d+)", out)]
    assert frames[-1] > 40, out                           # it sampled, streamed ...
    active = [int(n) for n in re.findall(r"active (-?\d+)", out)]
    assert active[0] < active[-1], out                   # ... across a segment change ...
    assert max(unacked) < 200, out                        # ... and ACKs emptied the log
    assert not any(errors), out                           # no sensor fault, log never full

    heap = {m[0]: [int(x) for x in m[1].split()]
            for m in re.findall(r"heap (\S+) ([\d ]+)", out)}
    code, objects, steady = heap["code"][0], heap["objects-at-start"][0], heap["steady"]
    data = [s - code for s in steady]
    qstr = {at: tuple(int(x) for x in nums) for at, *nums in re.findall(
        r"qstr-at (\w+)\nqstr pool: n_pool=\d+, n_qstr=(\d+), n_str_data_bytes=(\d+), "
        r"n_total_bytes=(\d+)", out)}
    # Frozen, the bytecode and every interned name of the firmware live in flash: subtract
    # the .mpy bytes and the interned-name pools' own overhead (their tables; the names' text
    # is in the .mpy bytes already), which grows in ~9 KB steps (see the bound above).
    pool_overhead = ((qstr["steady"][2] - qstr["scaffold"][2])
                     - (qstr["steady"][1] - qstr["scaffold"][1]))
    frozen = max(steady) - device_mpy_bytes(files) - pool_overhead + FROZEN_CALIBRATION_BYTES
    print(f"\nfirmware heap: code {code} B (.mpy in RAM), objects at start {objects} B, "
          f"steady state {steady} B = code + data {data} B; frozen, estimated: {frozen} B "
          f"+ aioble {AIOBLE_FROZEN_ESTIMATE_BYTES} B = {frozen + AIOBLE_FROZEN_ESTIMATE_BYTES} B")
    # The budget: frozen firmware (measured 24.9 KB on a real build) plus aioble.
    assert frozen + AIOBLE_FROZEN_ESTIMATE_BYTES <= HEAP_GOAL_BYTES, (frozen, out)
    # With the modules loaded from .mpy files their bytecode is heap too.
    assert max(steady) < HEAP_WITH_MPY_CODE_BYTES, (steady, out)
    assert steady[-1] - steady[0] < LEAK_TOLERANCE_BYTES, (steady, out)
