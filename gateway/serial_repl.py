"""The MicroPython raw REPL over a serial port (pyserial): run code, move files.

The same protocol mpremote speaks, written out so it also works where mpremote cannot
(a pty: mpremote 1.29 dies on the RTS ioctl). Used by `dermtwin provision` / `flash`, and
by hil_tests against a real board (/dev/ttyACM0) or tools/virtual_board.py.

    with RawRepl("/dev/ttyACM0") as repl:     # opens the port, enters the raw REPL
        print(repl.exec("print(1 + 1)"))      # "2\\n"
        repl.put_file(b"hello", "/data/greeting")

Protocol (MicroPython docs, "raw REPL"):
    enter:  \\r Ctrl-C Ctrl-C (stop whatever runs), \\r Ctrl-A -> "raw REPL; CTRL-B to exit\\r\\n>"
    exec:   code, Ctrl-D -> "OK", stdout, \\x04, exception text, \\x04, ">"
    exit:   Ctrl-B (back to the friendly REPL)
Code goes in raw-paste mode (Ctrl-E A Ctrl-A; the board grants flow-control windows)
when the board has it, as mpremote does; otherwise 256 bytes at a time with a 10 ms pause
so a UART-bridged board's receive buffer cannot overflow.

Every read has a deadline; errors name the port. Output lines end in \\n (a board sends
\\r\\n; both are accepted).
"""

from __future__ import annotations

import ast
import base64
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import serial

DEFAULT_BAUDRATE = 115200
DEFAULT_TIMEOUT_S = 10.0
READ_POLL_S = 0.05
ENTER_ATTEMPTS = 3
ENTER_SETTLE_S = 0.1
WRITE_CHUNK_BYTES = 256
WRITE_PAUSE_S = 0.01
# File transfer: bytes of file data per line of code, lines per exec. A 4 KiB exec
# compiles comfortably in a Pico W's heap.
PUT_LINE_BYTES = 768
PUT_LINES_PER_EXEC = 6
GET_CHUNK_BYTES = 768
# Reading a file back prints base64; allow this many bytes per second beyond the timeout.
TRANSFER_BYTES_PER_S = 8_000

RAW_REPL_BANNER = b"raw REPL; CTRL-B to exit\r\n"
PROMPT = b">"
CTRL_A, CTRL_B, CTRL_C, CTRL_D = b"\x01", b"\x02", b"\x03", b"\x04"
RAW_PASTE_REQUEST = b"\x05A\x01"

# Names the helpers leave in the board's __main__ between execs start with this.
_NS = "_dt_"


class ReplError(Exception):
    """Base of everything this module raises."""


class BoardConnectionError(ReplError, serial.SerialException):
    """The port is missing or unusable, or the board did not answer in time."""


class BoardError(ReplError):
    """Code raised an exception on the board; the message is the board's traceback."""

    def __init__(self, port: str, traceback: str, stdout: str = ""):
        self.port = port
        self.traceback = traceback.strip()
        self.stdout = stdout
        super().__init__(f"exception on the board at {port}:\n{self.traceback}")

    @property
    def exception_line(self) -> str:
        """The last traceback line, e.g. "OSError: [Errno 2] ENOENT"."""
        lines = self.traceback.splitlines()
        return lines[-1] if lines else ""


ProgressCallback = Callable[[int, int], None]


def _normalise(text: bytes) -> str:
    return text.decode("utf-8", errors="replace").replace("\r\n", "\n")


class RawRepl:
    """One serial connection to a MicroPython board, speaking the raw REPL."""

    def __init__(self, port: str, baudrate: int = DEFAULT_BAUDRATE,
                 timeout_s: float = DEFAULT_TIMEOUT_S, *,
                 raw_paste: bool = True, write_chunk_bytes: int = WRITE_CHUNK_BYTES,
                 write_pause_s: float = WRITE_PAUSE_S):
        self.port = port
        self.baudrate = baudrate
        self.timeout_s = timeout_s
        self.write_chunk_bytes = write_chunk_bytes
        self.write_pause_s = write_pause_s
        self._serial: serial.Serial | None = None
        self._in_raw = False
        self._helpers_ready = False
        self._rx = bytearray()  # received, not yet consumed
        self._raw_paste: bool | None = None if raw_paste else False  # None: not asked yet

    # -- connection ------------------------------------------------------------------

    def open(self) -> None:
        if self._serial is not None:
            return
        try:
            self._serial = serial.Serial(self.port, self.baudrate, timeout=READ_POLL_S,
                                         write_timeout=self.timeout_s)
        except (serial.SerialException, OSError, ValueError) as error:
            cause = error.__context__ if isinstance(error.__context__, OSError) else error
            reason = getattr(cause, "strerror", None) or str(error)
            raise BoardConnectionError(
                f"cannot open serial port {self.port}: {reason}. Is the board plugged in, and is "
                "the port right (ls /dev/ttyACM* /dev/ttyUSB*)? Close any other program using it "
                "(a serial monitor, mpremote).") from error

    def close(self) -> None:
        """Leave the raw REPL (best effort) and close the port."""
        if self._serial is None:
            return
        try:
            if self._in_raw:
                self.exit()
        except ReplError:
            pass
        finally:
            self._serial.close()
            self._serial = None
            self._in_raw = False

    def __enter__(self) -> RawRepl:
        self.open()
        try:
            self.enter()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def in_raw_repl(self) -> bool:
        return self._in_raw

    @property
    def serial(self) -> serial.Serial:
        if self._serial is None:
            self.open()
        assert self._serial is not None
        if not self._serial.is_open:
            # Closed under us (the cable pulled, the device gone): pyserial would raise
            # TypeError from its ioctl on a closed descriptor.
            self._in_raw = False
            raise BoardConnectionError(
                f"the connection to {self.port} was closed: is the board still plugged in?")
        return self._serial

    # -- low level -------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        try:
            self.serial.write(data)
            self.serial.flush()
        except serial.SerialTimeoutException as error:
            raise BoardConnectionError(
                f"writing to {self.port} timed out after {self.timeout_s:.0f} s: the board is "
                "not reading its input") from error
        except (serial.SerialException, OSError) as error:
            raise BoardConnectionError(f"writing to {self.port} failed: {error}") from error

    def _read_available(self) -> bytes:
        try:
            return self.serial.read(max(1, self.serial.in_waiting))
        except (serial.SerialException, OSError) as error:
            raise BoardConnectionError(f"reading from {self.port} failed: {error}") from error

    def read_until(self, marker: bytes, timeout_s: float, what: str) -> bytes:
        """Bytes up to and including marker (the rest stays buffered for the next read).

        BoardConnectionError, naming the port and what was awaited, after timeout_s.
        """
        deadline = time.monotonic() + timeout_s
        rx = self._rx
        searched = 0
        while True:
            index = rx.find(marker, searched)
            if index >= 0:
                end = index + len(marker)
                data = bytes(rx[:end])
                del rx[:end]
                return data
            searched = max(0, len(rx) - len(marker) + 1)
            if time.monotonic() > deadline:
                tail = bytes(rx[-200:])
                raise BoardConnectionError(
                    f"no {what} from the board on {self.port} within {timeout_s:.1f} s "
                    f"(received {len(rx)} bytes{': ' + repr(tail) if tail else ''})")
            rx += self._read_available()

    def _discard_input(self, quiet_s: float, max_s: float = 2.0) -> None:
        """Drop everything received until the line has been quiet for quiet_s."""
        deadline = time.monotonic() + max_s
        quiet_until = time.monotonic() + quiet_s
        while time.monotonic() < min(deadline, quiet_until):
            if self._read_available():
                quiet_until = time.monotonic() + quiet_s
        self._rx.clear()

    # -- raw REPL --------------------------------------------------------------------

    def enter(self) -> None:
        """Interrupt whatever runs and enter the raw REPL."""
        self.open()
        last = b""
        for attempt in range(ENTER_ATTEMPTS):
            self._write(b"\r" + CTRL_C + CTRL_C)
            self._discard_input(quiet_s=ENTER_SETTLE_S * (attempt + 1))
            self._write(b"\r" + CTRL_A)
            try:
                last = self.read_until(RAW_REPL_BANNER + PROMPT, timeout_s=min(self.timeout_s, 2.0),
                                       what="raw-REPL prompt")
            except BoardConnectionError as error:
                last = str(error).encode()
                continue
            self._in_raw = True
            self._helpers_ready = False
            return
        raise BoardConnectionError(
            f"could not enter the raw REPL on {self.port} after {ENTER_ATTEMPTS} attempts: is it "
            f"a MicroPython board, at {self.baudrate} baud? Last answer: {last[-200:]!r}")

    def exit(self) -> None:
        """Back to the friendly REPL (Ctrl-B)."""
        self._write(b"\r" + CTRL_B)
        self._in_raw = False

    def interrupt(self) -> None:
        """Send Ctrl-C: raises KeyboardInterrupt in the code the board is running."""
        self._write(CTRL_C)

    def exec_raw_no_follow(self, code: str | bytes) -> None:
        """Send code and wait for the board's OK; the code is then running."""
        if not self._in_raw:
            self.enter()
        data = code.encode() if isinstance(code, str) else bytes(code)
        if CTRL_D in data:
            raise ValueError("code must not contain \\x04 (Ctrl-D ends the code in the raw REPL)")
        # The board is idle at its prompt: anything already received is stale.
        self._rx.clear()
        try:
            waiting = self.serial.in_waiting
            if waiting:
                self.serial.read(waiting)
        except (serial.SerialException, OSError) as error:
            raise BoardConnectionError(f"reading from {self.port} failed: {error}") from error
        if self._raw_paste is not False and self._try_raw_paste(data):
            return
        for start in range(0, len(data), self.write_chunk_bytes):
            self._write(data[start:start + self.write_chunk_bytes])
            if self.write_pause_s:
                time.sleep(self.write_pause_s)
        self._write(CTRL_D)
        answer = self.read_until(b"OK", timeout_s=self.timeout_s, what="OK after the code")
        if answer != b"OK":
            self._in_raw = False
            raise BoardConnectionError(
                f"the board on {self.port} did not accept the code: {answer[-200:]!r}")

    def _try_raw_paste(self, data: bytes) -> bool:
        """Send data in raw-paste mode if the board has it (MicroPython >= 1.14).

        The board grants a window of bytes at a time (b"\x01" = one more window), so no
        pacing guesswork is needed. False if the board does not support it (then never
        asked again on this connection).
        """
        self._write(RAW_PASTE_REQUEST)
        answer = self._read_exact(2, "raw-paste answer")
        if answer == b"R\x00":
            self._raw_paste = False
            return False
        if answer != b"R\x01":
            # A board that predates raw-paste took the request as input; the Ctrl-A in it
            # restarted its raw REPL.
            self._raw_paste = False
            self.read_until(RAW_REPL_BANNER + PROMPT, self.timeout_s, "raw-REPL prompt")
            return False
        self._raw_paste = True
        window = int.from_bytes(self._read_exact(2, "raw-paste window size"), "little")
        remaining = window
        sent = 0
        while sent < len(data):
            while remaining == 0 or self._rx or self.serial.in_waiting:
                flow = self._read_exact(1, "raw-paste flow control")
                if flow == b"\x01":
                    remaining += window
                elif flow == CTRL_D:
                    # The board ended the transfer (e.g. out of memory): acknowledge it.
                    self._write(CTRL_D)
                    self.read_until(CTRL_D, self.timeout_s, "raw-paste abort")
                    raise BoardConnectionError(
                        f"the board on {self.port} aborted the raw-paste transfer after "
                        f"{sent} of {len(data)} bytes")
                else:
                    raise BoardConnectionError(
                        f"unexpected byte {flow!r} from {self.port} during raw-paste transfer")
            chunk = data[sent:sent + remaining]
            self._write(chunk)
            sent += len(chunk)
            remaining -= len(chunk)
        self._write(CTRL_D)
        self.read_until(CTRL_D, self.timeout_s, "end-of-code acknowledgement")
        return True

    def _read_exact(self, count: int, what: str) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        while len(self._rx) < count:
            if time.monotonic() > deadline:
                raise BoardConnectionError(
                    f"no {what} from the board on {self.port} within {self.timeout_s:.1f} s "
                    f"(received {bytes(self._rx)!r})")
            self._rx += self._read_available()
        data = bytes(self._rx[:count])
        del self._rx[:count]
        return data

    def follow(self, timeout_s: float | None = None) -> tuple[str, str]:
        """Read the running code's (stdout, exception text) until the board's next prompt."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            out = self.read_until(CTRL_D, timeout_s, "end of output")
            err = self.read_until(CTRL_D, max(0.5, deadline - time.monotonic()),
                                  "end of the error text")
            self.read_until(PROMPT, max(0.5, deadline - time.monotonic()), "raw-REPL prompt")
        except BoardConnectionError:
            # Leave the board usable: stop the code; the next exec re-enters the raw REPL.
            self._in_raw = False
            try:
                self.interrupt()
            except ReplError:
                pass
            raise
        return _normalise(out[:-1]), _normalise(err[:-1])

    def exec(self, code: str | bytes, timeout_s: float | None = None) -> str:
        """Run code on the board and return what it printed. BoardError if it raised."""
        self.exec_raw_no_follow(code)
        out, err = self.follow(timeout_s)
        if err:
            raise BoardError(self.port, err, out)
        return out

    def eval(self, expression: str, timeout_s: float | None = None):
        """The value of a Python literal-valued expression on the board (via repr)."""
        out = self.exec(f"print(repr({expression}))", timeout_s)
        text = out.strip()
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError) as error:
            raise ReplError(
                f"the board on {self.port} printed {text[:200]!r} for {expression!r}, which is "
                "not a Python literal") from error

    def soft_reset(self) -> None:
        """Ctrl-D on an empty raw REPL: a fresh interpreter (modules, globals), same files."""
        if not self._in_raw:
            self.enter()
        self._write(CTRL_D)
        self.read_until(b"soft reboot\r\n", self.timeout_s, "soft reboot")
        self.read_until(RAW_REPL_BANNER + PROMPT, self.timeout_s, "raw-REPL prompt after reset")
        self._helpers_ready = False

    # -- files -----------------------------------------------------------------------

    def _helpers(self) -> None:
        """Define the file helpers in the board's __main__ (once per raw-REPL session)."""
        if self._helpers_ready:
            return
        self.exec(_HELPERS)
        self._helpers_ready = True

    def _file_exec(self, code: str, timeout_s: float | None = None) -> str:
        self._helpers()
        try:
            return self.exec(code, timeout_s)
        except BoardError as error:
            if f"NameError: name '{_NS}" not in error.traceback:
                raise
            # The board was reset behind our back: define the helpers again, once.
            self._helpers_ready = False
            self._helpers()
            return self.exec(code, timeout_s)

    def _file_eval(self, expression: str):
        out = self._file_exec(f"print(repr({expression}))").strip()
        try:
            return ast.literal_eval(out)
        except (ValueError, SyntaxError) as error:
            raise ReplError(f"unexpected answer from {self.port}: {out[:200]!r}") from error

    def makedirs(self, path: str) -> None:
        """Create path and its parents on the board (no error if they exist)."""
        self._file_exec(f"{_NS}mkdirs({path!r})\n")

    def stat_size(self, path: str) -> int | None:
        """Size of a file on the board in bytes; -1 for a directory; None if absent."""
        return self._file_eval(f"{_NS}size({path!r})")

    def exists(self, path: str) -> bool:
        return self.stat_size(path) is not None

    def listdir(self, path: str = "/") -> list[str]:
        """Names in a directory on the board, sorted."""
        return self.eval(f"sorted(__import__('os').listdir({path!r}))")

    def remove(self, path: str, *, recursive: bool = False) -> None:
        """Delete a file or an empty directory (any directory with recursive=True)."""
        self._file_exec(f"{_NS}rm({path!r}, {recursive!r})\n")

    def put_file(self, source: bytes | bytearray | str | os.PathLike, remote_path: str, *,
                 verify: bool = True, progress: ProgressCallback | None = None) -> int:
        """Write bytes (or a local file's bytes) to remote_path, creating its directories.

        Writes go to remote_path + ".part", renamed into place once complete, so an
        interrupted transfer never leaves a truncated file under the real name. Checks the
        size afterwards, and the SHA-256 when verify=True and the board has hashlib.
        progress(done_bytes, total_bytes) is called after each chunk. Returns the size.
        """
        data = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
        if not remote_path.startswith("/") or remote_path.endswith("/"):
            raise ValueError(f"remote path must be an absolute file path, got {remote_path!r}")
        parent = remote_path.rsplit("/", 1)[0]
        if parent:
            self.makedirs(parent)
        part = remote_path + ".part"
        self._file_exec(f"{_NS}open({part!r})\n")
        total = len(data)
        done = 0
        per_exec = PUT_LINE_BYTES * PUT_LINES_PER_EXEC
        try:
            for start in range(0, total, per_exec):
                block = data[start:start + per_exec]
                self.exec("".join(
                    f"{_NS}w({base64.b64encode(block[i:i + PUT_LINE_BYTES])!r})\n"
                    for i in range(0, len(block), PUT_LINE_BYTES)))
                done += len(block)
                if progress is not None:
                    progress(done, total)
            self._file_exec(f"{_NS}close({part!r}, {remote_path!r})\n")
        except BaseException:
            try:
                self._file_exec(f"{_NS}close({part!r}, None)\n")
            except ReplError:
                pass
            raise
        if progress is not None and total == 0:
            progress(0, 0)
        size, digest = self._file_eval(f"({_NS}size({remote_path!r}), "
                                       f"{_NS}sha({remote_path!r}) if {verify!r} else None)")
        if size != total:
            raise ReplError(
                f"{remote_path} on {self.port} is {size} bytes after the copy, expected {total}")
        if digest is not None and digest != hashlib.sha256(data).hexdigest():
            raise ReplError(f"{remote_path} on {self.port}: SHA-256 differs after the copy")
        return total

    def get_file(self, remote_path: str, *, progress: ProgressCallback | None = None) -> bytes:
        """The bytes of a file on the board."""
        size = self.stat_size(remote_path)
        if size is None:
            raise BoardError(self.port, f"OSError: [Errno 2] ENOENT: {remote_path}")
        if size < 0:
            raise BoardError(self.port, f"OSError: [Errno 21] EISDIR: {remote_path}")
        out = self._file_exec(f"{_NS}cat({remote_path!r})\n",
                              timeout_s=self.timeout_s + size / TRANSFER_BYTES_PER_S)
        data = b"".join(base64.b64decode(line) for line in out.split())
        if len(data) != size:
            raise ReplError(
                f"read {len(data)} bytes of {remote_path} from {self.port}, expected {size}")
        if progress is not None:
            progress(size, size)
        return data


# File helpers, defined on the board once per session. Plain MicroPython: os, binascii,
# and hashlib only if the port has it.
_HELPERS = f"""
import os, binascii
def {_NS}size(p):
    try:
        s = os.stat(p)
    except OSError:
        return None
    return -1 if s[0] & 0x4000 else s[6]
def {_NS}mkdirs(p):
    d = ''
    for part in p.split('/'):
        if part:
            d += '/' + part
            if {_NS}size(d) is None:
                os.mkdir(d)
            elif {_NS}size(d) >= 0:
                raise OSError('not a directory: ' + d)
def {_NS}rm(p, r):
    if os.stat(p)[0] & 0x4000:
        if r:
            for n in os.listdir(p):
                {_NS}rm(p.rstrip('/') + '/' + n, r)
        os.rmdir(p)
    else:
        os.remove(p)
def {_NS}open(p):
    global {_NS}f
    {_NS}f = open(p, 'wb')
def {_NS}w(b64):
    {_NS}f.write(binascii.a2b_base64(b64))
def {_NS}close(part, final):
    global {_NS}f
    {_NS}f.close()
    {_NS}f = None
    if final is None:
        os.remove(part)
        return
    if {_NS}size(final) is not None:
        os.remove(final)
    os.rename(part, final)
def {_NS}sha(p):
    try:
        import hashlib
        h = hashlib.sha256()
    except (ImportError, AttributeError):
        return None
    with open(p, 'rb') as f:
        while True:
            b = f.read(512)
            if not b:
                break
            h.update(b)
    return binascii.hexlify(h.digest()).decode()
def {_NS}cat(p):
    with open(p, 'rb') as f:
        while True:
            b = f.read({GET_CHUNK_BYTES})
            if not b:
                break
            print(binascii.b2a_base64(b).decode().strip())
"""
