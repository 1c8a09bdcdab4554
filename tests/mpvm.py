"""Run code under the real MicroPython VM (WebAssembly, via node) from pytest.

The repo's on-device packages are laid out as on a patch: ``/lib/firmware`` and
``/lib/sensor_drivers`` with ``/lib`` on ``sys.path`` (the simulation and
``tests/`` folders are not copied). Top-level ``await`` works in the code you
pass; ``asyncio.run`` does not exist in this build, so write ``await main()``.

Used as a pytest plugin (``pytest_plugins = ["mpvm"]``) it provides the
``micropython`` fixture and marks every test that uses it ``micropython``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO_DIR = Path(__file__).resolve().parent.parent
MPVM_SCRIPT = REPO_DIR / "tools" / "mpvm.mjs"
VM_MODULE = (
    REPO_DIR
    / "node_modules"
    / "@micropython"
    / "micropython-webassembly-pyscript"
    / "micropython.mjs"
)
DEVICE_PACKAGES = ("firmware", "sensor_drivers")
DEVICE_LIB_DIR = "/lib"
MARKER = "micropython"


class MicroPythonError(Exception):
    """Code run under the MicroPython VM failed; the message is its traceback."""

    def __init__(self, traceback: str, stdout: str = ""):
        super().__init__(traceback)
        self.traceback = traceback
        self.stdout = stdout


class MicroPythonUnavailable(RuntimeError):
    """node or the MicroPython npm package is missing."""


def _vm_command() -> list[str]:
    node = shutil.which("node")
    if node is None:
        raise MicroPythonUnavailable(
            "node is not on PATH: install Node 20, then run `npm ci` in " + str(REPO_DIR)
        )
    if not VM_MODULE.is_file():
        raise MicroPythonUnavailable(
            f"MicroPython VM not found at {VM_MODULE}: run `npm ci` in {REPO_DIR}"
        )
    command = [node, str(MPVM_SCRIPT)]
    for package in DEVICE_PACKAGES:
        command += ["--mount", f"{REPO_DIR / package}:{DEVICE_LIB_DIR}/{package}"]
    return command + ["--path", DEVICE_LIB_DIR, "-"]


def run_micropython(code: str, *, timeout_s: float = 60) -> str:
    """Run ``code`` in a fresh MicroPython VM and return its stdout.

    Raises MicroPythonError (message: the MicroPython traceback) if the code
    raises, and MicroPythonUnavailable if node or the VM package is missing.
    """
    try:
        completed = subprocess.run(
            _vm_command(),
            input=code,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=REPO_DIR,
        )
    except subprocess.TimeoutExpired as timeout:
        stdout = timeout.stdout.decode() if isinstance(timeout.stdout, bytes) else timeout.stdout
        raise MicroPythonError(
            f"MicroPython run timed out after {timeout_s} s", stdout or ""
        ) from None
    if completed.returncode != 0:
        message = completed.stderr or f"MicroPython exited with status {completed.returncode}"
        raise MicroPythonError(message, completed.stdout)
    return completed.stdout


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}: runs under the real MicroPython VM (node + wasm)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Marking at collection time lets `-m "not micropython"` deselect these tests.
    for item in items:
        if MARKER in getattr(item, "fixturenames", ()):
            item.add_marker(MARKER)


@pytest.fixture
def micropython(request: pytest.FixtureRequest):
    """``run_micropython``; fails (never skips) if the VM is unavailable."""
    request.node.add_marker(pytest.mark.micropython)
    try:
        _vm_command()
    except MicroPythonUnavailable as missing:
        pytest.fail(str(missing), pytrace=False)
    return run_micropython
