"""Provisioning and flashing a patch over USB serial (the raw REPL), at the clinic bench.

The device id and the HMAC key are written only here, over the USB cable, never over the
air. The board keeps them in `<data_dir>/identity` (docs: firmware/board.py reads it):

    device_id=<16 lowercase hex>
    key=<64 lowercase hex>

    result = provision("/dev/ttyACM0")           # random id and key
    registry.add(result.device_id, result.key)   # the gateway keeps the key

    flash("/dev/ttyACM0", "build/firmware", progress=print)

Both accept an open RawRepl instead of a port path (tests, or several steps on one
connection).
"""

from __future__ import annotations

import importlib.util
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gateway.private_files import private_dir, write_private
from gateway.serial_repl import DEFAULT_TIMEOUT_S, BoardConnectionError, RawRepl, ReplError

DEVICE_ID_BYTES = 8
DEVICE_ID_HEX_CHARS = 2 * DEVICE_ID_BYTES
KEY_BYTES = 32  # HMAC-SHA256 key
KEY_HEX_CHARS = 2 * KEY_BYTES
DEFAULT_DATA_DIR = "/data"
KEYS_DIR = "keys"          # beside the gateway's database: keys not yet paired

IDENTITY_FILE = "identity"  # the name firmware/board.py reads

# Flashing: what goes where on the board (tools/build_firmware.py writes this layout).
BUILD_MAIN = "main.py"
BUILD_LIB_DIR = "lib"
BOARD_LIB_DIR = "/lib"
DEVICE_PACKAGES = ("firmware", "sensor_drivers")
SOURCE_EXCLUDED_DIRS = frozenset({"host", "tests", "__pycache__"})
# Chip emulators serve boards without the chips (the virtual board, a test bench): a patch
# does not carry them unless asked (flash(..., with_emulators=True)).
EMULATOR_DIR = "emulators"
MPY_MAGIC = ord("M")
MPY_HEADER_BYTES = 4
MPY_ARCH_SHIFT = 2  # .mpy header byte 2: arch << 2 | sub-version (py/persistentcode.h)
MPY_SUB_VERSION_MASK = 0x3


class ProvisionError(ValueError):
    """Provisioning or flashing refused or failed; `field` names the bad input, if any."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class IdentityExistsError(ProvisionError):
    """The board already has an identity and force was not given."""

    def __init__(self, message: str, device_id: str | None):
        super().__init__(message)
        self.device_id = device_id


class FlashError(ProvisionError):
    """The firmware could not be flashed (missing build, incompatible .mpy, copy failed)."""


@dataclass(frozen=True)
class ProvisionResult:
    device_id: str  # 16 lowercase hex characters
    key: bytes = field(repr=False)  # 32 bytes; never printed by repr()
    port: str
    identity_path: str
    replaced: bool  # an earlier identity was overwritten (force=True)

    @property
    def key_hex(self) -> str:
        return self.key.hex()


@dataclass(frozen=True)
class FlashProgress:
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    path: str  # the board path being written
    file_finished: bool  # path is complete (else: a chunk of it was written)

    def __str__(self) -> str:
        return (f"[{self.files_done}/{self.files_total}] {self.path}  "
                f"{self.bytes_done}/{self.bytes_total} bytes")


@dataclass(frozen=True)
class FlashResult:
    port: str
    files: int
    bytes: int
    seconds: float
    source: bool  # .py sources rather than .mpy
    board_mpy: str | None  # e.g. "6.3"; None if the board does not say
    board_paths: tuple[str, ...]
    aioble_on_board: bool = True  # the firmware's BLE library (micropython-lib), not ours


# -- validation ---------------------------------------------------------------------


def _hex_field(value: str, field_name: str, hex_chars: int) -> str:
    text = value.strip().lower()
    if text.startswith("0x"):
        text = text[2:]
    if len(text) != hex_chars:
        raise ProvisionError(
            f"{field_name} must be {hex_chars} hex characters ({hex_chars // 2} bytes), "
            f"got {len(text)} characters", field_name)
    try:
        bytes.fromhex(text)
    except ValueError:
        raise ProvisionError(
            f"{field_name} must be hexadecimal (0-9, a-f), got {value.strip()[:20]!r}",
            field_name) from None
    return text


def validate_device_id(device_id_hex: str) -> str:
    """A device id as 16 lowercase hex characters; ProvisionError(field="device_id") if not."""
    if not isinstance(device_id_hex, str):
        raise ProvisionError("device_id must be a string of 16 hex characters", "device_id")
    return _hex_field(device_id_hex, "device_id", DEVICE_ID_HEX_CHARS)


def validate_key(key: bytes | bytearray | str) -> bytes:
    """A device key as 32 bytes, from bytes or 64 hex characters; ProvisionError(field="key")."""
    if isinstance(key, str):
        raw = bytes.fromhex(_hex_field(key, "key", KEY_HEX_CHARS))
    elif isinstance(key, (bytes, bytearray)):
        raw = bytes(key)
        if len(raw) != KEY_BYTES:
            raise ProvisionError(
                f"key must be {KEY_BYTES} bytes ({KEY_HEX_CHARS} hex characters), "
                f"got {len(raw)} bytes", "key")
    else:
        raise ProvisionError("key must be bytes or a hex string", "key")
    if raw == bytes(KEY_BYTES):
        raise ProvisionError("key must not be all zeros", "key")
    return raw


def load_key_file(path: str | Path) -> bytes:
    """A key file for `--key-file`: 64 hex characters (whitespace ignored) or 32 raw bytes."""
    data = Path(path).read_bytes()
    text = "".join(data.decode("latin-1").split())
    try:
        if len(text) != KEY_HEX_CHARS and len(data) == KEY_BYTES:
            return validate_key(data)
        return validate_key(text)
    except ProvisionError as error:
        raise ProvisionError(f"key file {path}: {error}", "key") from None


def default_key_path(db_path: str | Path, device_id_hex: str) -> Path:
    """Where `provision` keeps a key not yet paired: `keys/<id>.key` beside the gateway's
    database (the state directory), never the current directory (a repository, a share)."""
    return Path(db_path).parent / KEYS_DIR / f"{validate_device_id(device_id_hex)}.key"


def save_key_file(path: str | Path, key: bytes) -> Path:
    """Write a key file (64 hex characters) created 0600, its directory created 0700."""
    private_dir(Path(path).parent)
    return write_private(path, validate_key(key).hex() + "\n")


def identity_text(device_id_hex: str, key: bytes) -> str:
    return f"device_id={device_id_hex}\nkey={key.hex()}\n"


def _parse_device_id(text: str) -> str | None:
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == "device_id":
            return value.strip().lower() or None
    return None


@contextmanager
def _connected(port: str | RawRepl, timeout_s: float) -> Iterator[RawRepl]:
    if isinstance(port, RawRepl):
        if not port.in_raw_repl:
            port.enter()
        yield port
        return
    with RawRepl(port, timeout_s=timeout_s) as repl:
        yield repl


# -- provisioning -------------------------------------------------------------------


def provision(port: str | RawRepl, device_id_hex: str | None = None,
              key: bytes | bytearray | str | None = None, *, data_dir: str = DEFAULT_DATA_DIR,
              force: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S) -> ProvisionResult:
    """Write the identity file onto the board at `port` and read it back.

    A random device id / key is generated for whichever is not given. Refuses
    (IdentityExistsError) to replace an existing identity unless force=True: a patch
    that changes its key must be paired again.
    """
    device_id = (validate_device_id(device_id_hex) if device_id_hex is not None
                 else secrets.token_bytes(DEVICE_ID_BYTES).hex())
    raw_key = validate_key(key) if key is not None else secrets.token_bytes(KEY_BYTES)
    if not data_dir.startswith("/") or data_dir.rstrip("/") == "":
        raise ProvisionError(f"data_dir must be an absolute directory, got {data_dir!r}",
                             "data_dir")
    path = data_dir.rstrip("/") + "/" + IDENTITY_FILE
    text = identity_text(device_id, raw_key).encode()
    with _connected(port, timeout_s) as repl:
        replaced = False
        size = repl.stat_size(path)
        if size is not None:
            if size < 0:
                raise ProvisionError(f"{path} on {repl.port} is a directory", "data_dir")
            existing_id = _parse_device_id(repl.get_file(path).decode(errors="replace"))
            if not force:
                who = f"device {existing_id}" if existing_id else "an unreadable identity"
                raise IdentityExistsError(
                    f"the board on {repl.port} is already provisioned ({who} in {path}); "
                    "use force=True (dermtwin provision --force) to replace it, then pair the "
                    "patch again", existing_id)
            replaced = True
        try:
            repl.put_file(text, path)
            written = repl.get_file(path)
        except BoardConnectionError:
            raise
        except ReplError as error:
            raise ProvisionError(f"writing {path} on {repl.port} failed: {error}") from error
        if written != text:
            raise ProvisionError(f"{path} on {repl.port} reads back differently from what was "
                                 "written: the board's filesystem may be faulty")
        return ProvisionResult(device_id, raw_key, repl.port, path, replaced)


# -- flashing -----------------------------------------------------------------------


def source_root() -> Path:
    """The folder holding the device packages (firmware/, sensor_drivers/)."""
    spec = importlib.util.find_spec("firmware")
    if spec is None or spec.origin is None:
        raise FlashError("the firmware package is not installed alongside the gateway")
    return Path(spec.origin).resolve().parent.parent


def firmware_files(build_dir: str | Path | None = None, *, source: bool = False,
                   with_emulators: bool = False) -> list[tuple[Path, str]]:
    """(local file, board path) pairs to flash, main.py first.

    From the mpy-cross build (build_dir/main.py, build_dir/lib/**.mpy), or with
    source=True from the .py sources (what tools/build_firmware.py compiles). The chip
    emulators only with_emulators.
    """
    files = _firmware_files(build_dir, source)
    if with_emulators:
        return files
    return [(local, board_path) for local, board_path in files
            if EMULATOR_DIR not in board_path.split("/")]


def _firmware_files(build_dir: str | Path | None, source: bool) -> list[tuple[Path, str]]:
    if source:
        root = source_root()
        files = [(root / "firmware" / BUILD_MAIN, "/" + BUILD_MAIN)]
        for package in DEVICE_PACKAGES:
            for path in sorted((root / package).rglob("*.py")):
                relative = path.relative_to(root)
                if SOURCE_EXCLUDED_DIRS.isdisjoint(relative.parts[1:-1]):
                    files.append((path, f"{BOARD_LIB_DIR}/{relative.as_posix()}"))
        return files
    if build_dir is None:
        raise FlashError("no build directory given (or flash the sources with --source)")
    build = Path(build_dir)
    main, lib = build / BUILD_MAIN, build / BUILD_LIB_DIR
    if not main.is_file() or not lib.is_dir():
        raise FlashError(
            f"no firmware build in {build} (need {BUILD_MAIN} and {BUILD_LIB_DIR}/): run "
            "`python tools/build_firmware.py` first, or flash the sources with --source")
    files = [(main, "/" + BUILD_MAIN)]
    for path in sorted(p for p in lib.rglob("*") if p.is_file()):
        files.append((path, f"{BOARD_LIB_DIR}/{path.relative_to(lib).as_posix()}"))
    return files


def mpy_version(header: bytes) -> tuple[int, int, int]:
    """(version, sub-version, arch) from the first bytes of a .mpy file."""
    if len(header) < MPY_HEADER_BYTES or header[0] != MPY_MAGIC:
        raise FlashError("not a .mpy file (bad header)")
    return header[1], header[2] & MPY_SUB_VERSION_MASK, header[2] >> MPY_ARCH_SHIFT


def check_mpy_compatible(board_mpy: int, header: bytes, path: str = "") -> None:
    """Raise FlashError if the board cannot import a .mpy with this header.

    board_mpy is sys.implementation._mpy: version | sub-version << 8 | arch << 10.
    Bytecode-only files (arch 0) need the same version; native code also the same
    sub-version and arch (py/persistentcode.c, mp_raw_code_load).
    """
    version, sub, arch = mpy_version(header)
    board_version, board_sub, board_arch = board_mpy & 0xFF, (board_mpy >> 8) & 0x3, board_mpy >> 10
    if version != board_version or (arch and (sub != board_sub or arch != board_arch)):
        raise FlashError(
            f"{path or 'the build'} is mpy v{version}.{sub} (arch {arch}) but the board reads "
            f"mpy v{board_version}.{board_sub} (arch {board_arch}): build with an mpy-cross that "
            "matches the board's MicroPython, or flash the sources with --source")


# The first firmware's flash log: 8-byte records after a 32-byte segment header whose 4th
# byte is the format version. Today's firmware (format 2, firmware/flash_log.py) does not
# read such segments, so their unacknowledged samples must reach a gateway before it runs.
LOG_FORMAT_VERSION = 2
_V1_RECORD_BYTES = 8
_SEGMENT_HEADER_BYTES = 32
_LOG_LISTING = """import os
d = {log_dir!r}
out = []
try:
    names = os.listdir(d)
except OSError:
    names = []
for n in names:
    if n.startswith("seg_") and n.endswith(".log"):
        with open(d + "/" + n, "rb") as f:
            out.append((n, f.read(4), os.stat(d + "/" + n)[6]))
acked = b""
if "acked" in names:
    with open(d + "/acked", "rb") as f:
        acked = f.read()
print(repr((out, acked)))
"""


def unsent_old_format_samples(repl: RawRepl, data_dir: str = DEFAULT_DATA_DIR) -> int:
    """Samples the patch holds in segments of an older flash-log format that no gateway has
    acknowledged yet (today's firmware would not read them back)."""
    import ast

    from firmware.flash_log import crc16

    segments, acked = ast.literal_eval(
        repl.exec(_LOG_LISTING.format(log_dir=data_dir + "/log")).strip())
    watermark = 0
    if len(acked) == 6 and crc16(acked, 4) == acked[4] | acked[5] << 8:
        watermark = int.from_bytes(acked[:4], "little")
    unsent = 0
    for name, head, size in segments:
        if head[:3] != b"DTL" or len(head) < 4 or head[3] == LOG_FORMAT_VERSION:
            continue
        first = int(name[4:-4])
        records = max(0, (size - _SEGMENT_HEADER_BYTES) // _V1_RECORD_BYTES)
        unsent += max(0, first + records - max(first, watermark))
    return unsent


def flash(port: str | RawRepl, build_dir: str | Path | None = None, *, source: bool = False,
          progress: Callable[[FlashProgress], None] | None = None, soft_reset: bool = True,
          timeout_s: float = DEFAULT_TIMEOUT_S, discard_old_log: bool = False,
          with_emulators: bool = False) -> FlashResult:
    """Copy the firmware onto the board, replacing any earlier copy of its packages.

    /data (identity, counters, the flash log) and other libraries in /lib are left alone.
    Refused while the patch holds unacknowledged samples in an older log format, unless
    discard_old_log. Every file is checked for size (and SHA-256) after the copy; the board
    is soft-reset afterwards so the next import loads the new code.
    """
    files = firmware_files(build_dir, source=source, with_emulators=with_emulators)
    sizes = [local.stat().st_size for local, _ in files]
    bytes_total = sum(sizes)
    started = time.monotonic()
    with _connected(port, timeout_s) as repl:
        unsent = unsent_old_format_samples(repl)
        if unsent and not discard_old_log:
            raise FlashError(
                f"the patch on {repl.port} holds {unsent} samples in an older flash-log format "
                "that no gateway has acknowledged, and this firmware cannot read them: let a "
                "gateway drain the patch first (its advertised unacked count reaches 0), or "
                "pass --discard-old-log to flash anyway and lose them")
        board_mpy = _board_mpy(repl)
        if not source and board_mpy is not None:
            for local, board_path in files:
                if local.suffix == ".mpy":
                    check_mpy_compatible(board_mpy, local.read_bytes()[:MPY_HEADER_BYTES],
                                         board_path)
        packages = sorted({board_path.split("/")[2] for _, board_path in files
                           if board_path.startswith(BOARD_LIB_DIR + "/")
                           and board_path.count("/") > 2})
        try:
            for package in packages:
                if repl.exists(f"{BOARD_LIB_DIR}/{package}"):
                    repl.remove(f"{BOARD_LIB_DIR}/{package}", recursive=True)
            bytes_before = 0
            for index, ((local, board_path), size) in enumerate(zip(files, sizes, strict=True)):
                def chunk_done(done: int, _total: int, index=index, board_path=board_path,
                               base=bytes_before) -> None:
                    if progress is not None:
                        progress(FlashProgress(index, len(files), base + done, bytes_total,
                                               board_path, False))
                repl.put_file(local, board_path, progress=chunk_done)
                bytes_before += size
                if progress is not None:
                    progress(FlashProgress(index + 1, len(files), bytes_before, bytes_total,
                                           board_path, True))
            aioble = _board_has_aioble(repl)
            if soft_reset:
                repl.soft_reset()
        except BoardConnectionError:
            raise
        except ReplError as error:  # an exception on the board, or a copy that did not verify
            raise FlashError(f"flashing {repl.port} failed: {error}") from error
        return FlashResult(
            repl.port, len(files), bytes_total, time.monotonic() - started, source,
            None if board_mpy is None else f"{board_mpy & 0xFF}.{(board_mpy >> 8) & 0x3}",
            tuple(board_path for _, board_path in files), aioble)


AIOBLE_MISSING = (
    "aioble is not on the board, and the patch cannot advertise without it: install it once "
    "with `mpremote mip install aioble` (or copy micropython-lib's aioble package to /lib), "
    "or build a MicroPython image with the firmware frozen in (build/firmware/manifest.py, "
    "see docs/firmware.md)")


def _board_has_aioble(repl: RawRepl) -> bool:
    # Frozen into the image or in /lib: either way it imports.
    out = repl.exec("try:\n import aioble\n print('yes')\nexcept ImportError:\n print('no')\n")
    return out.strip() == "yes"


def _board_mpy(repl: RawRepl) -> int | None:
    value = repl.eval("getattr(__import__('sys').implementation, '_mpy', None)")
    return value if isinstance(value, int) else None


def print_progress(update: FlashProgress) -> None:
    """A progress callback for the CLI: one line per finished file."""
    if update.file_finished:
        print(update, flush=True)
