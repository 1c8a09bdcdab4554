"""CPython-only adapters that let the firmware source run as a virtual patch.

Nothing here is copied to a device. `install()` puts this folder first on sys.path so the
firmware's `import aioble`, `import bluetooth`, `import machine` and `from micropython import
const` resolve to the shims in it.
"""

import sys
from pathlib import Path

HOST_DIR = Path(__file__).resolve().parent


def install() -> None:
    path = str(HOST_DIR)
    if path not in sys.path:
        sys.path.insert(0, path)
