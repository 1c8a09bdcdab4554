"""The production gateway loads no device, emulator or simulation code.

`dermtwin run` and everything it imports must work on a Pi that carries only the gateway:
checked in a fresh interpreter, from `sys.modules` after importing what `run` imports.
"""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN_PREFIXES = ("firmware", "sensor_drivers", "simulation", "aioble", "machine")

PROBE = """
import json, sys
import gateway.cli
from gateway.cli import build_parser
from gateway import service  # what `run` builds
from gateway.ble import radio, bumble_backend  # the BLE adapters `run` may use
print(json.dumps(sorted(sys.modules)))
"""


def test_run_imports_no_device_or_simulation_module() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = json.loads(out.splitlines()[-1])
    offending = [
        name
        for name in loaded
        if any(name == p or name.startswith(p + ".") for p in FORBIDDEN_PREFIXES)
    ]
    assert offending == [], f"`dermtwin run` would load {offending}"
