#!/usr/bin/env node
// Run a Python script under the real MicroPython VM (WebAssembly build).
//
//   node tools/mpvm.mjs [--mount HOSTDIR:VMDIR]... [--path VMDIR]... SCRIPT.py|-
//
// --mount copies the *.py files of HOSTDIR (recursively; skipping host/, tests/
//         and __pycache__ folders, which never go onto a patch) to VMDIR in the
//         VM's in-memory filesystem.
// --path  prepends VMDIR to sys.path (in the order given).
//
// The script runs with runPythonAsync, so top-level `await` works: drive a
// coroutine with `await main()`. `asyncio.run` does not exist in this build; we
// install one that raises a clear error instead of an AttributeError.
//
// The program's stdout goes to stdout. An uncaught exception prints the
// MicroPython traceback to stderr and exits 1; sys.exit(n) exits n. The process
// exits when the script returns: tasks still pending then are abandoned, so a
// test must await everything it wants to see finish.

import { readFileSync, readdirSync, statSync } from "node:fs";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const REPO_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const VM_MODULE = join(
  REPO_DIR,
  "node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs",
);
const SKIPPED_DIR_NAMES = new Set(["host", "tests", "__pycache__"]);
const EXIT_USAGE = 2;

function usage(message) {
  process.stderr.write(
    `mpvm: ${message}\n` +
      "usage: node tools/mpvm.mjs [--mount HOSTDIR:VMDIR]... [--path VMDIR]... SCRIPT.py|-\n",
  );
  process.exit(EXIT_USAGE);
}

function parseArgs(argv) {
  const mounts = [];
  const paths = [];
  let script = null;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--mount" || arg === "--path") {
      const value = argv[++i];
      if (value === undefined) usage(`${arg} needs a value`);
      if (arg === "--path") {
        paths.push(value);
        continue;
      }
      // Split on the last colon so Windows-style host paths would still work.
      const sep = value.lastIndexOf(":");
      if (sep <= 0 || sep === value.length - 1) usage(`--mount expects HOSTDIR:VMDIR, got ${value}`);
      mounts.push({ hostDir: value.slice(0, sep), vmDir: value.slice(sep + 1) });
    } else if (script === null) {
      script = arg;
    } else {
      usage(`unexpected argument ${arg}`);
    }
  }
  if (script === null) usage("no script given");
  return { mounts, paths, script };
}

function makeDirs(FS, vmDir) {
  let current = "";
  for (const part of vmDir.split("/").filter(Boolean)) {
    current += "/" + part;
    try {
      FS.mkdir(current);
    } catch (error) {
      // EEXIST is fine; anything else is a real problem.
      if (!FS.analyzePath(current).exists) throw error;
    }
  }
}

function copyTree(FS, hostDir, vmDir) {
  makeDirs(FS, vmDir);
  for (const name of readdirSync(hostDir)) {
    const hostPath = join(hostDir, name);
    const vmPath = vmDir.replace(/\/$/, "") + "/" + name;
    if (statSync(hostPath).isDirectory()) {
      if (!SKIPPED_DIR_NAMES.has(name)) copyTree(FS, hostPath, vmPath);
    } else if (name.endsWith(".py")) {
      FS.writeFile(vmPath, readFileSync(hostPath));
    }
  }
}

function systemExitCode(traceback) {
  // The PythonError carries only the formatted traceback; its last line is
  // "SystemExit" or "SystemExit: <arg>".
  const lines = traceback.trimEnd().split("\n");
  const match = /^SystemExit(?::\s*(.*))?$/.exec(lines[lines.length - 1]);
  if (!match || match[1] === undefined || match[1] === "None") return 0;
  const code = Number(match[1]);
  if (Number.isInteger(code)) return code;
  process.stderr.write(match[1] + "\n");
  return 1;
}

function writeThenExit(code) {
  // process.exit() can drop buffered pipe output; exit from the write callbacks.
  process.stdout.write("", () => process.stderr.write("", () => process.exit(code)));
}

const ASYNCIO_RUN_SHIM = `
import asyncio
if not hasattr(asyncio, "run"):
    def _mpvm_asyncio_run(coro):
        raise RuntimeError("asyncio.run is not available under mpvm: use top-level 'await main()'")
    asyncio.run = _mpvm_asyncio_run
    del _mpvm_asyncio_run
del asyncio
`;

async function main() {
  const { mounts, paths, script } = parseArgs(process.argv.slice(2));
  let code;
  try {
    code = readFileSync(script === "-" ? 0 : script, "utf8");
  } catch (error) {
    usage(`cannot read ${script}: ${error.message}`);
  }
  let loadMicroPython;
  try {
    ({ loadMicroPython } = await import(VM_MODULE));
  } catch (error) {
    process.stderr.write(
      `mpvm: cannot load the MicroPython VM from ${VM_MODULE} (${error.message}); run 'npm ci' in ${REPO_DIR}\n`,
    );
    process.exit(EXIT_USAGE);
  }

  const stdoutBytes = [];
  const flushStdout = () => {
    if (stdoutBytes.length) process.stdout.write(Buffer.from(stdoutBytes.splice(0)));
  };
  const mp = await loadMicroPython({
    linebuffer: false,
    stdout: (bytes) => {
      for (const byte of bytes) stdoutBytes.push(byte);
      if (bytes[bytes.length - 1] === 10) flushStdout();
    },
    stderr: (bytes) => process.stderr.write(Buffer.from(bytes)),
  });

  for (const { hostDir, vmDir } of mounts) {
    if (!statSync(hostDir, { throwIfNoEntry: false })?.isDirectory()) {
      usage(`--mount: ${hostDir} is not a directory`);
    }
    copyTree(mp.FS, hostDir, vmDir);
  }
  const sysPathSetup =
    "import sys\n" +
    paths
      .slice()
      .reverse()
      .map((p) => {
        const entry = JSON.stringify(p);
        return `if ${entry} in sys.path: sys.path.remove(${entry})\nsys.path.insert(0, ${entry})\n`;
      })
      .join("") +
    "del sys\n";
  mp.runPython(sysPathSetup + ASYNCIO_RUN_SHIM);

  let exitCode = 0;
  try {
    await mp.runPythonAsync(code);
  } catch (error) {
    if (error.name !== "PythonError") throw error;
    flushStdout();
    if (error.type === "SystemExit") {
      exitCode = systemExitCode(error.message);
    } else {
      process.stderr.write(error.message);
      exitCode = 1;
    }
  }
  flushStdout();
  writeThenExit(exitCode);
}

main().catch((error) => {
  process.stderr.write(`mpvm: internal error: ${error.stack || error}\n`);
  process.exit(EXIT_USAGE);
});
