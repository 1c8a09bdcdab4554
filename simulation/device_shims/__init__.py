"""CPython-only adapters that let the firmware source run as a virtual patch.

Nothing here is copied to a device. `install()` puts this folder first on sys.path so the
firmware's `import aioble`, `import bluetooth`, `import machine` and `from micropython import
const` resolve to the shims in it, and gives CPython's asyncio MicroPython's `sleep_ms` and
`ThreadSafeFlag` (mp_asyncio.py).
"""

import importlib
import sys
from pathlib import Path

HOST_DIR = Path(__file__).resolve().parent


def install() -> None:
    path = str(HOST_DIR)
    if path not in sys.path:
        sys.path.insert(0, path)
    importlib.import_module("mp_asyncio").install()   # one copy, as aioble's shim uses it
