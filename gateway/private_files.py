"""Files only their owner may read: device keys, broker passwords, registries.

Created 0600 from the first byte (never written world-readable and tightened later), in
directories created 0700; replaced atomically.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: str | os.PathLike[str], *, tighten: bool = False) -> Path:
    """Create `path` (and missing parents) 0700. An existing directory is left as it is
    (it may be shared, like the current directory) unless `tighten`: then made 0700."""
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if tighten:
        path.chmod(DIR_MODE)
    return path


def open_to_others(path: str | os.PathLike[str]) -> int:
    """The permission bits of `path` that let group or others in (0: none)."""
    return stat.S_IMODE(Path(path).stat().st_mode) & 0o077


def write_private(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write `data` to `path` as a 0600 file, atomically (a temporary file, then rename).
    Its directory must exist; use private_dir() to make one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)   # an existing .tmp keeps its old mode through O_CREAT
        os.write(fd, data.encode() if isinstance(data, str) else data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path
