"""Provisioning and flashing a patch over USB serial (the raw REPL), at the clinic bench.

The device id and the HMAC key are written only here, over the USB cable, never over the
air. The board keeps them in `<data_dir>/identity` (docs: firmware/board.py reads it):

    device_id=<16 lowercase hex>
    key=<64 lowercase hex>

    result = provision("/dev/ttyACM0")           # random id and key, board only
    # ... or as one transaction with the gateway's registry (gateway.provision_record):
    result = provision("/dev/ttyACM0", record=RegistryRecord(store, "s-0001", skin_type=2))

    flash("/dev/ttyACM0", "build/firmware", progress=print)

Both accept an open RawRepl instead of a port path (tests, or several steps on one
connection).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gateway.serial_repl import (
    DEFAULT_TIMEOUT_S,
    BoardConnectionError,
    BoardError,
    RawRepl,
    ReplError,
)

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
# The models that feed the emulators go with them (tools/build_firmware.py SIMULATION_ONLY).
EMULATOR_MODELS = ("environment_model", "skin_model")
# micropython-lib's aioble for `flash --source`: the directory holding its aioble/ package
# (as for `make firmware AIOBLE_DIR=...`); without it the board must have aioble already.
AIOBLE_DIR_ENV = "AIOBLE_DIR"
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
    """The board already has an identity and replace_identity was not given."""

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
    replaced: bool  # an earlier identity was overwritten (replace_identity)
    replacements: tuple[str, ...] = ()  # what the pairing replaced in the registry

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
              replace_identity: bool = False, record: IdentityRecord | None = None,
              timeout_s: float = DEFAULT_TIMEOUT_S) -> ProvisionResult:
    """Write the identity file onto the board at `port` as one transaction with `record`.

    A random device id / key is generated for whichever is not given. Refuses
    (IdentityExistsError) to replace an existing identity unless replace_identity: a patch
    that changes its key must be paired again.

    Order: read the board's identity; `record.prepare` (the registry accepts or refuses:
    nothing has touched the board yet); write and read back the identity; `record.commit`.
    A board failure aborts the record, after checking on a fresh connection what the board
    holds (an identity that did land is committed; anything else is put back). A failed
    commit puts the board's earlier identity back. The ProvisionError says where each
    side was left.
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
        earlier = _read_identity(repl, path)
        existing_id = (_parse_device_id(earlier.decode(errors="replace"))
                       if earlier is not None else None)
        if earlier is not None and not replace_identity:
            who = f"device {existing_id}" if existing_id else "an unreadable identity"
            raise IdentityExistsError(
                f"the board on {repl.port} is already provisioned ({who} in {path}); nothing "
                "was changed. To give it a new identity (it must then be paired again), run "
                "`dermtwin provision --replace-identity`", existing_id)
        if record is not None:
            record.prepare(device_id, raw_key, replaces=existing_id)
        try:
            _write_identity(repl, path, text)
        except (ReplError, ProvisionError) as error:
            landed, where = _settle_after_failure(repl, path, earlier, text)
            if not landed:
                if record is not None:
                    record.abort()
                raise ProvisionError(f"writing the identity to {repl.port} failed ({error}); "
                                     f"{where}; {_record_state(record)}") from error
        except BaseException:
            # Interrupted (Ctrl-C): put both back as they were, then stop.
            _settle_after_failure(repl, path, earlier, text, keep_new=False)
            if record is not None:
                record.abort()
            raise
        if record is not None:
            try:
                record.commit(device_id, raw_key)
            except (ValueError, RuntimeError, OSError) as error:
                # Any refusal at commit (a clash that appeared meanwhile, a full disk, a
                # read-only file): the board goes back to what it had, then the error is raised.
                record.abort()
                where = _put_back(repl, path, earlier)
                raise ProvisionError(
                    f"the registry refused the pairing after the board was written ({error}); "
                    f"{where}; {_record_state(record)}") from error
        return ProvisionResult(device_id, raw_key, repl.port, path, earlier is not None,
                               tuple(record.replacements()) if record is not None else ())


class IdentityRecord:
    """Where a new identity is recorded besides the board (the gateway's registry, a key
    file). prepare() refuses (raises) before the board is touched; commit() makes it
    durable; abort() undoes prepare(). Subclasses: gateway.provision_record."""

    def prepare(self, device_id: str, key: bytes, replaces: str | None = None) -> None:
        """`replaces`: the device id of the identity the board holds now (overwritten)."""
        raise NotImplementedError

    def commit(self, device_id: str, key: bytes) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Undo prepare(); must not raise."""

    def replacements(self) -> list[str]:
        """What the commit replaced, one sentence each."""
        return []

    def untouched(self) -> str:
        """Where the record was left after abort(), for the error message."""
        return "the registry is unchanged"


def _record_state(record: IdentityRecord | None) -> str:
    return "nothing was recorded" if record is None else record.untouched()


def _read_identity(repl: RawRepl, path: str) -> bytes | None:
    size = repl.stat_size(path)
    if size is None:
        return None
    if size < 0:
        raise ProvisionError(f"{path} on {repl.port} is a directory", "data_dir")
    return repl.get_file(path)


def _write_identity(repl: RawRepl, path: str, text: bytes) -> None:
    try:
        repl.put_file(text, path)
        written = repl.get_file(path)
    except BoardError as error:
        raise ProvisionError(f"the board raised {error.exception_line}") from error
    if written != text:
        raise ProvisionError(f"{path} reads back differently from what was written: the "
                             "board's filesystem may be faulty")


def _reconnect(repl: RawRepl) -> None:
    repl.close()
    repl.enter()


def _settle_after_failure(repl: RawRepl, path: str, earlier: bytes | None,
                          text: bytes, *, keep_new: bool = True) -> tuple[bool, str]:
    """After a failed write: (the new identity is on the board, where the board was left).

    Checks on a fresh connection, removes a half-written file, and puts the earlier
    identity back if the board holds anything else (or the new one, unless keep_new)."""
    try:
        _reconnect(repl)
        if repl.exists(path + ".part"):
            repl.remove(path + ".part")
        now = _read_identity(repl, path)
    except (ReplError, ProvisionError) as error:
        return False, (f"the board could not be checked afterwards ({error}): it holds either "
                       "its earlier identity or the new one; run `dermtwin provision "
                       "--replace-identity` again once it answers")
    if now == text and keep_new:
        return True, "the new identity is on the board"
    if now == earlier:
        return False, ("the board keeps its earlier identity" if earlier is not None
                       else "the board still has no identity")
    return False, _put_back(repl, path, earlier)


def _put_back(repl: RawRepl, path: str, earlier: bytes | None) -> str:
    """Restore the board's earlier identity (or its absence); where the board was left."""
    try:
        try:
            _restore(repl, path, earlier)
        except BoardConnectionError:
            _reconnect(repl)
            _restore(repl, path, earlier)
    except (ReplError, ProvisionError) as error:
        return (f"the board could not be put back ({error}): it may hold an identity no "
                "gateway knows; run `dermtwin provision --replace-identity` again")
    return ("the board's earlier identity was put back" if earlier is not None
            else "the identity was removed from the board again")


def _restore(repl: RawRepl, path: str, earlier: bytes | None) -> None:
    if earlier is None:
        if repl.exists(path):
            repl.remove(path)
        return
    _write_identity(repl, path, earlier)


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
    emulators and the models feeding them only with_emulators.
    """
    files = _firmware_files(build_dir, source)
    if with_emulators:
        return files
    return [(local, board_path) for local, board_path in files
            if not _simulation_only(board_path)]


def _simulation_only(board_path: str) -> bool:
    *dirs, name = board_path.split("/")
    return EMULATOR_DIR in dirs or name.rsplit(".", 1)[0] in EMULATOR_MODELS


def _firmware_files(build_dir: str | Path | None, source: bool) -> list[tuple[Path, str]]:
    if source:
        root = source_root()
        files = [(root / "firmware" / BUILD_MAIN, "/" + BUILD_MAIN)]
        for package in DEVICE_PACKAGES:
            for path in sorted((root / package).rglob("*.py")):
                relative = path.relative_to(root)
                if SOURCE_EXCLUDED_DIRS.isdisjoint(relative.parts[1:-1]):
                    files.append((path, f"{BOARD_LIB_DIR}/{relative.as_posix()}"))
        aioble_dir = os.environ.get(AIOBLE_DIR_ENV)
        if aioble_dir:
            aioble = Path(aioble_dir)
            for path in sorted(aioble.glob("aioble/*.py")):
                files.append((path, f"{BOARD_LIB_DIR}/{path.relative_to(aioble).as_posix()}"))
        return files
    if build_dir is None:
        raise FlashError("no build directory given (or flash the sources with --source)")
    build = Path(build_dir)
    main, lib = build / BUILD_MAIN, build / BUILD_LIB_DIR
    if not main.is_file() or not lib.is_dir():
        raise FlashError(
            f"no firmware build in {build} (need {BUILD_MAIN} and {BUILD_LIB_DIR}/): run "
            "`make firmware` in the dermtwin source tree first (it writes build/firmware), "
            "or flash the sources with --source")
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


# Before flashing: a patch whose log holds segments of an older format (today's firmware reads
# only firmware/flash_format.FORMAT_VERSION) must hand their samples to a gateway first. The
# listing runs on the board's current firmware, which may predate flash_format: it only lists
# file names, header starts and sizes; the format is read here, with the firmware's module.
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

    # Deferred: `dermtwin run` loads no firmware module (tests/test_layering.py).
    from firmware import flash_format as fmt

    segments, acked = ast.literal_eval(
        repl.exec(_LOG_LISTING.format(log_dir=data_dir + "/log")).strip())
    watermark = max(0, fmt.parse_acked(acked))
    unsent = 0
    for name, head, size in segments:   # seg_<first_seq>.log, as the listing filters
        version = fmt.header_version(head)
        if version < 0 or version == fmt.FORMAT_VERSION or not name[4:-4].isdigit():
            continue
        first = int(name[4:-4])
        records = max(0, (size - fmt.HDR_BYTES) // fmt.V1_RECORD_BYTES)
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
    "aioble is not on the board, and the patch cannot advertise without it: flash a build "
    "from `make firmware AIOBLE_DIR=DIR` (it bundles micropython-lib's aioble from DIR), run "
    "`mpremote mip install aioble` once with a network, or build a MicroPython image with the "
    "firmware frozen in (build/firmware/manifest.py, see docs/firmware.md)")


def _board_has_aioble(repl: RawRepl) -> bool:
    # In /lib (flashed with the firmware, or by mip), or frozen into the image. An import
    # would fail on a board without the `bluetooth` module even with aioble present.
    if repl.exists(f"{BOARD_LIB_DIR}/aioble/__init__.py") or repl.exists(
            f"{BOARD_LIB_DIR}/aioble/__init__.mpy"):
        return True
    out = repl.exec("try:\n import aioble\n print('yes')\nexcept ImportError:\n print('no')\n")
    return out.strip() == "yes"


def _board_mpy(repl: RawRepl) -> int | None:
    value = repl.eval("getattr(__import__('sys').implementation, '_mpy', None)")
    return value if isinstance(value, int) else None


def print_progress(update: FlashProgress) -> None:
    """A progress callback for the CLI: one line per finished file."""
    if update.file_finished:
        print(update, flush=True)
