"""A virtual MicroPython board on a pseudo-terminal, driven exactly like a real one.

    with VirtualBoard() as board:
        repl = RawRepl(board.port)        # board.port is e.g. /dev/pts/7
        ...

or, for a technician trying the tools by hand:

    python tools/virtual_board.py         # prints the port, runs until Ctrl-C
    dermtwin provision --port /dev/pts/7

How it works. node runs the MicroPython 1.27 WebAssembly VM (the npm package
@micropython/micropython-webassembly-pyscript) with the small driver below: it
starts the VM's event-driven REPL (`replInit`) and feeds it the bytes of its
stdin one at a time (`replProcessCharWithAsyncify`, each awaited before the
next), writing the VM's output to its stdout. node's stdin and stdout are the
slave of a first pty (the "board side", in raw mode so no \\r\\n translation
happens). A relay thread in this process copies bytes between that pty's
master and the master of a second pty (the "host side"); the second pty's
slave path is the board's serial port, opened with pyserial like
/dev/ttyACM0. The relay keeps the host-side slave open itself, so clients can
open and close the port any number of times, as with USB CDC.

What behaves like a real board:
- the raw REPL (Ctrl-A, code + Ctrl-D -> OK, output, \\x04, error, \\x04, >);
- Ctrl-C raises KeyboardInterrupt in running code. The VM runs code
  synchronously, so the driver checks for Ctrl-C whenever that code calls into
  the host: time.sleep*/ticks*/time() and any output. A loop that does pure
  computation without those calls cannot be interrupted here (it can on a real
  board); stop() ends it.
- Ctrl-C during a raw-paste transfer (a host that lost its connection mid-transfer and
  comes back) ends the transfer with a KeyboardInterrupt, as pyexec's reader does.
- Ctrl-D in the friendly REPL, or on an empty raw-REPL buffer, is a soft reset:
  a fresh VM, the same files, "MPY: soft reboot", back in the same REPL mode.
- The filesystem starts empty (no /lib, no /data), cwd is /, and sys.path is
  ['', '.frozen', '/lib'], as on a freshly flashed board. Everything gets onto
  the board over the REPL. (The VM's own /dev and /proc remain in `/`.)

Output from print() ends lines with \\n (a real board sends \\r\\n); RawRepl
normalises both.
"""

from __future__ import annotations

import argparse
import errno
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import tty
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
VM_MODULE = (
    REPO_DIR / "node_modules" / "@micropython" / "micropython-webassembly-pyscript" / "micropython.mjs"
)
BOOT_TIMEOUT_S = 15.0
STOP_GRACE_S = 2.0
# The VM's friendly-REPL prompt: printed once the board has booted.
BOOT_PROMPT = b">>> "
# Output the relay holds for a client that is not reading; past this it drops the oldest
# bytes, as a UART with nobody listening would.
HOST_BACKLOG_MAX_BYTES = 256 * 1024
READ_CHUNK_BYTES = 4096

# The node side. Configured through the environment (argv would confuse the VM module's
# own command-line detection). Kept here so the board is one file to read.
DRIVER_JS = r"""
import fs from "node:fs";

const VM_MODULE = process.env.DERMTWIN_VM_MODULE;
const POLL_INTERVAL_MS = 2;
const PASTE_WINDOW_BYTES = 256;  // raw-paste flow-control window we announce
const CTRL_A = 1, CTRL_B = 2, CTRL_C = 3;
const SYSTEM_DIRS = new Set(["/dev", "/proc"]);

let mp = null;          // the running VM
let pollFd = -1;        // a second, non-blocking descriptor on our stdin tty
let lastPollMs = 0;
let rawMode = false;    // which REPL we are in, to come back to it after a soft reset
let muted = false;      // swallow output while re-entering the raw REPL after a reset
const input = [];       // bytes not yet given to the REPL, in arrival order
const output = [];
let recent = "";        // output since the last Ctrl-A/Ctrl-B, to see which REPL we are in
let tail = "";          // the last few output characters (is the raw-REPL prompt showing?)
let fedSinceOutput = true;
let paste = null;       // raw-paste transfer in progress: {code: [], sinceAck: n}
let dropOk = 0;         // raw-paste answers without the "OK" the raw REPL prints

function flushOutput() {
  if (!output.length) return;
  const bytes = Buffer.from(output.splice(0));
  let offset = 0;
  while (offset < bytes.length) {
    try {
      offset += fs.writeSync(1, bytes, offset);
    } catch (error) {
      if (error.code !== "EAGAIN") throw error;
    }
  }
}

function send(text) {
  output.push(...Buffer.from(text, "latin1"));
  tail = (tail + text).slice(-32);
  fedSinceOutput = false;
  flushOutput();
}

// Called from inside running Python code (through the host calls hooked below): pick up
// newly arrived bytes; Ctrl-C becomes a KeyboardInterrupt, like a UART interrupt would.
function pollInput() {
  const now = Date.now();
  if (pollFd < 0 || now - lastPollMs < POLL_INTERVAL_MS) return;
  lastPollMs = now;
  const buf = Buffer.alloc(256);
  let n = 0;
  try {
    n = fs.readSync(pollFd, buf, 0, buf.length, null);
  } catch (error) {
    if (error.code === "EAGAIN") return;
    throw error;
  }
  receive(buf.subarray(0, n));
}

// Bytes from the host. The VM arms Ctrl-C only while it runs code
// (mp_hal_set_interrupt_char), as a board does: then it raises KeyboardInterrupt at once
// instead of waiting in line.
function receive(bytes) {
  for (const b of bytes) {
    if (b === CTRL_C && mp !== null && mp._module._mp_hal_get_interrupt_char() === CTRL_C) {
      mp._module._mp_sched_keyboard_interrupt();
    } else {
      input.push(b);
    }
  }
}

const instantiate = WebAssembly.instantiate;
WebAssembly.instantiate = async (binary, imports) => {
  const env = imports.env;
  for (const name of ["mp_js_ticks_ms", "mp_js_time_ms"]) {
    const original = env[name];
    env[name] = (...args) => { pollInput(); return original(...args); };
  }
  const fdWrite = env.fd_write;
  env.fd_write = (...args) => {
    const result = fdWrite(...args);
    flushOutput();
    pollInput();
    return result;
  };
  return instantiate(binary, imports);
};

const { loadMicroPython } = await import(VM_MODULE);

async function newVm() {
  const vm = await loadMicroPython({
    linebuffer: false,
    stdout: (bytes) => {
      if (muted) return;
      for (const b of bytes) {
        if (dropOk > 0 && b === "OK".charCodeAt(2 - dropOk)) { dropOk--; continue; }
        dropOk = 0;
        output.push(b);
      }
      const text = Buffer.from(bytes).toString("latin1");
      if (recent.length < 256) recent += text;
      tail = (tail + text).slice(-32);
      fedSinceOutput = false;
    },
    stderr: (bytes) => process.stderr.write(Buffer.from(bytes)),
  });
  // A freshly flashed board: cwd /, nothing in the filesystem but the VM's devices.
  vm.runPython("import os\nos.chdir('/')\ndel os\n");
  for (const dir of ["/home/web_user", "/home", "/tmp"]) {
    try { vm.FS.rmdir(dir); } catch (error) { /* not there or not empty */ }
  }
  return vm;
}

function copyFiles(fromFS, toFS, dir) {
  for (const name of fromFS.readdir(dir)) {
    if (name === "." || name === "..") continue;
    const path = (dir === "/" ? "" : dir) + "/" + name;
    if (SYSTEM_DIRS.has(path)) continue;
    if (fromFS.isDir(fromFS.stat(path).mode)) {
      try { toFS.mkdir(path); } catch (error) { /* exists */ }
      copyFiles(fromFS, toFS, path);
    } else {
      toFS.writeFile(path, fromFS.readFile(path));
    }
  }
}

async function softReset() {
  const old = mp;
  const next = await newVm();
  copyFiles(old.FS, next.FS, "/");
  mp = next;
  globalThis.Module = next._module;
  send("MPY: soft reboot\r\n");
  if (rawMode) {
    muted = true;
    mp.replInit();
    await mp.replProcessCharWithAsyncify(CTRL_A);
    muted = false;
    send("raw REPL; CTRL-B to exit\r\n>");
  } else {
    mp.replInit();
  }
  flushOutput();
}

// Raw-paste mode (docs.micropython.org, "raw REPL paste mode"), which the VM's own
// event-driven REPL announces but cannot do: collect the code under flow control, then
// give it to the raw REPL as if typed, without its "OK".
async function runPasted(code) {
  send("\x04");  // end of data received
  if (code.length === 0) { send("\x04\x04>"); return; }
  for (const b of code) {
    fedSinceOutput = true;
    await mp.replProcessCharWithAsyncify(b);
  }
  dropOk = 2;
  fedSinceOutput = true;
  await mp.replProcessCharWithAsyncify(4);
  dropOk = 0;
  flushOutput();
}

function rawPromptShowing() {
  return rawMode && !fedSinceOutput && tail.endsWith(">");
}

let pumping = false;
async function pump() {
  if (pumping) return;
  pumping = true;
  try {
    while (input.length) {
      if (paste !== null) {
        const b = input.shift();
        if (b === CTRL_C) {
          // As pyexec's stdin reader does: end the transfer (\x04), raise KeyboardInterrupt
          // while compiling, report it as the raw REPL reports an exception, prompt again.
          paste = null;
          send("\x04\x04Traceback (most recent call last):\r\nKeyboardInterrupt: \r\n\x04>");
          continue;
        }
        if (b === 4) {
          const code = paste.code;
          paste = null;
          await runPasted(code);
        } else {
          paste.code.push(b);
          if (++paste.sinceAck === PASTE_WINDOW_BYTES) { paste.sinceAck = 0; send("\x01"); }
        }
        continue;
      }
      if (input[0] === 5 && rawPromptShowing()) {
        if (input.length < 3) break;  // the rest of the request is on its way
        if (input[1] === 0x41 && input[2] === 1) {
          input.splice(0, 3);
          paste = { code: [], sinceAck: 0 };
          send("R\x01" + String.fromCharCode(PASTE_WINDOW_BYTES & 0xff, PASTE_WINDOW_BYTES >> 8));
          continue;
        }
      }
      const c = input.shift();
      recent = "";
      fedSinceOutput = true;
      const result = await mp.replProcessCharWithAsyncify(c);
      if (c === CTRL_A && recent.includes("raw REPL; CTRL-B to exit")) rawMode = true;
      if (c === CTRL_B && recent.includes("MicroPython")) rawMode = false;
      flushOutput();
      if (result !== 0) await softReset();
    }
  } finally {
    pumping = false;
  }
}

mp = await newVm();
pollFd = fs.openSync("/proc/self/fd/0", fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
mp.replInit();
flushOutput();
process.stdin.setRawMode(true);
process.stdin.on("data", (data) => {
  // Code that sleeps (asyncify) lets node read its stdin while the code still runs.
  receive(data);
  pump().catch((error) => {
    process.stderr.write(`virtual board: ${error.stack || error}\n`);
    process.exit(1);
  });
});
process.stdin.on("end", () => process.exit(0));
process.stdin.on("error", () => process.exit(0));
"""


class VirtualBoardError(RuntimeError):
    """The virtual board could not start, or its VM died."""


class VirtualBoard:
    """The MicroPython VM behind a pty; `.port` is its serial port path."""

    def __init__(self, *, node: str | None = None, vm_module: Path = VM_MODULE,
                 boot_timeout_s: float = BOOT_TIMEOUT_S):
        self._node = node
        self._vm_module = Path(vm_module)
        self._boot_timeout_s = boot_timeout_s
        self.port: str | None = None
        self._process: subprocess.Popen | None = None
        self._stderr_file = None
        self._board_fd = -1  # master of the node-side pty
        self._host_fd = -1  # master of the client-side pty
        self._host_slave_fd = -1  # held open so clients can come and go
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._booted = threading.Event()
        self._relay_error: BaseException | None = None
        self.dropped_bytes = 0

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> VirtualBoard:
        if self._process is not None:
            raise VirtualBoardError("virtual board already started")
        node = self._node or shutil.which("node")
        if node is None:
            raise VirtualBoardError("node is not on PATH: install Node 20 to run the virtual board")
        if not self._vm_module.is_file():
            raise VirtualBoardError(
                f"MicroPython VM not found at {self._vm_module}: run `npm ci` in {REPO_DIR}")
        try:
            self._spawn(node)
            if not self._booted.wait(self._boot_timeout_s):
                raise VirtualBoardError(
                    f"virtual board did not boot within {self._boot_timeout_s:.0f} s"
                    + self._diagnostics())
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, node: str) -> None:
        board_fd, board_slave = os.openpty()
        self._board_fd = board_fd
        host_fd, host_slave = os.openpty()
        self._host_fd, self._host_slave_fd = host_fd, host_slave
        # Raw on both slaves: no echo, no CR/LF translation, no signals from ^C.
        tty.setraw(board_slave)
        tty.setraw(host_slave)
        for fd in (board_fd, host_fd):
            os.set_blocking(fd, False)
        self.port = os.ttyname(host_slave)
        self._wake_r, self._wake_w = os.pipe()
        self._stderr_file = tempfile.TemporaryFile()
        env = dict(os.environ, DERMTWIN_VM_MODULE=str(self._vm_module))
        try:
            self._process = subprocess.Popen(
                [node, "--input-type=module", "-e", DRIVER_JS],
                stdin=board_slave, stdout=board_slave, stderr=self._stderr_file,
                env=env, cwd=REPO_DIR, start_new_session=True, close_fds=True)
        finally:
            os.close(board_slave)
        self._thread = threading.Thread(target=self._relay, name="virtual-board-relay",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the VM and the relay; idempotent. No process is left behind."""
        self._stopping.set()
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=STOP_GRACE_S)
        self._thread = None
        process, self._process = self._process, None
        if process is not None:
            _terminate(process)
        for name in ("_board_fd", "_host_fd", "_host_slave_fd", "_wake_r", "_wake_w"):
            fd = getattr(self, name)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, -1)
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None

    def __enter__(self) -> VirtualBoard:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stderr_text(self) -> str:
        """What node wrote to stderr (VM crashes land here, never on the serial port)."""
        if self._stderr_file is None:
            return ""
        self._stderr_file.seek(0)
        return self._stderr_file.read().decode(errors="replace")

    def _diagnostics(self) -> str:
        parts = []
        if self._process is not None and self._process.poll() is not None:
            parts.append(f"node exited with status {self._process.returncode}")
        if self._relay_error is not None:
            parts.append(f"relay failed: {self._relay_error!r}")
        stderr = self.stderr_text().strip()
        if stderr:
            parts.append("node stderr:\n" + stderr[-2000:])
        return ("; " + "; ".join(parts)) if parts else ""

    # -- the relay -------------------------------------------------------------------

    def _relay(self) -> None:
        to_board = bytearray()
        to_host = bytearray()
        boot_seen = bytearray()
        try:
            while not self._stopping.is_set():
                readers = [self._board_fd, self._host_fd, self._wake_r]
                writers = []
                if to_board:
                    writers.append(self._board_fd)
                if to_host:
                    writers.append(self._host_fd)
                readable, writable, _ = select.select(readers, writers, [], 1.0)
                if self._wake_r in readable:
                    return
                if self._board_fd in readable:
                    data = _read(self._board_fd)
                    if data is None:  # node exited: its pty slave is gone
                        return
                    if not self._booted.is_set():
                        boot_seen += data
                        if BOOT_PROMPT in boot_seen:
                            self._booted.set()
                    to_host += data
                    if len(to_host) > HOST_BACKLOG_MAX_BYTES:
                        excess = len(to_host) - HOST_BACKLOG_MAX_BYTES
                        del to_host[:excess]
                        self.dropped_bytes += excess
                if self._host_fd in readable:
                    data = _read(self._host_fd)
                    if data:
                        to_board += data
                if self._board_fd in writable and to_board:
                    del to_board[:_write(self._board_fd, to_board)]
                if self._host_fd in writable and to_host:
                    del to_host[:_write(self._host_fd, to_host)]
        except BaseException as error:  # surfaced through _diagnostics()
            self._relay_error = error


def _read(fd: int) -> bytes | None:
    """Bytes available on a pty master; b"" if none yet; None once the other side is gone."""
    try:
        data = os.read(fd, READ_CHUNK_BYTES)
    except BlockingIOError:
        return b""
    except OSError as error:
        if error.errno == errno.EIO:
            return None
        raise
    return data if data else None


def _write(fd: int, data: bytearray) -> int:
    try:
        return os.write(fd, data[:READ_CHUNK_BYTES])
    except BlockingIOError:
        return 0


def _terminate(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=STOP_GRACE_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run a virtual MicroPython board on a pty until Ctrl-C.")
    parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        board = VirtualBoard().start()
    except VirtualBoardError as error:
        print(f"virtual board: {error}", file=sys.stderr)
        return 1
    try:
        print(f"virtual board serial port: {board.port}", flush=True)
        print("  a freshly flashed MicroPython board (empty filesystem); try:", flush=True)
        print(f"  dermtwin flash --port {board.port}   (after python tools/build_firmware.py)",
              flush=True)
        print(f"  dermtwin provision --port {board.port}", flush=True)
        print("Ctrl-C to stop.", flush=True)
        while not stop.is_set() and board.alive:
            stop.wait(0.5)
        if not board.alive:
            print("virtual board: the VM exited" + board._diagnostics(), file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
