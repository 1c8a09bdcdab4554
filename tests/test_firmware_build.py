"""`make firmware` (tools/build_firmware.py): every device file through mpy-cross, and a
MicroPython freeze manifest of the same files for an image that runs the code from flash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from build_firmware import DEVICE_PACKAGES, device_sources  # noqa: E402


def build(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "build_firmware.py"),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)


def run_manifest(path: Path) -> dict:
    """Execute a manifest the way MicroPython's tools/manifestfile.py does (a Python file
    calling include/require/package/module), recording the calls."""
    calls: dict = {"include": [], "require": [], "package": {}, "module": []}

    def package(name, files=None, base_path=".", opt=None):
        calls["package"][name] = (files, base_path)

    exec(path.read_text(), {
        "include": calls["include"].append, "require": lambda name, **_: calls["require"].append(
            name), "package": package, "module": lambda *a, **k: calls["module"].append(a)})
    return calls


def test_every_device_file_compiles_and_the_manifest_freezes_them(tmp_path):
    done = build(tmp_path / "fw")
    assert done.returncode == 0, done.stderr
    sources = device_sources()
    mpy = sorted((tmp_path / "fw" / "lib").rglob("*.mpy"))
    assert len(mpy) == len(sources) and f"compiled {len(sources)} files" in done.stdout
    assert not any("host" in p.parts or "aioble" in p.parts for p in mpy)
    assert "aioble not bundled" in done.stdout                 # said, with the way to fix it

    calls = run_manifest(tmp_path / "fw" / "manifest.py")
    assert calls["include"] == ["$(BOARD_DIR)/manifest.py"]   # the board's own frozen modules
    # aioble from micropython-lib: the peripheral and server parts only (each pulls in core)
    assert calls["require"] == ["aioble-peripheral", "aioble-server"]
    assert set(calls["package"]) == set(DEVICE_PACKAGES)
    frozen = set()
    for name, (files, base_path) in calls["package"].items():
        for file in files:
            path = Path(base_path) / name / file
            assert path.is_file(), path
            frozen.add(path)
    simulation = {p for p in sources if "emulators" in p.relative_to(REPO).parts
                  or p.name in ("environment_model.py", "skin_model.py")}
    assert len(simulation) >= 7                                # five emulators, two models
    assert frozen == set(sources) - simulation                 # no simulation in a patch image
    assert (REPO / "firmware" / "flash_log.py") in frozen
    assert (REPO / "sensor_drivers" / "tmp117.py") in frozen


def test_a_file_mpy_cross_rejects_fails_the_build_naming_it(tmp_path, monkeypatch):
    import build_firmware

    bad = tmp_path / "firmware" / "broken.py"
    bad.parent.mkdir()
    bad.write_text("def f(:\n")
    monkeypatch.setattr(build_firmware, "REPO", tmp_path)
    error = build_firmware.compile_one(bad, tmp_path / "out")
    assert error is not None and error.startswith("firmware/broken.py:")


def stand_in_aioble(root: Path) -> Path:
    """A directory laid out as micropython-lib's micropython/bluetooth/aioble (our own two
    tiny modules: dermtwin ships no aioble source)."""
    package = root / "aioble"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from .core import log_info\n")
    (package / "core.py").write_text("def log_info(*args):\n    pass\n")
    (package / "central.py").write_text("def scan():\n    pass\n")   # a patch needs no central
    (root / "manifest.py").write_text("package('aioble')\n")     # not compiled: not in aioble/
    return root


def test_aioble_from_a_local_directory_is_bundled_so_flash_needs_no_network(tmp_path):
    aioble_root = stand_in_aioble(tmp_path / "micropython-lib-aioble")
    out = tmp_path / "fw"
    done = subprocess.run([sys.executable, str(REPO / "tools" / "build_firmware.py"), "--out",
                           str(out), "--aioble", str(aioble_root)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (out / "lib" / "aioble").glob("*.mpy")) == [
        "__init__.mpy", "core.mpy"]
    assert "and aioble (2 files)" in done.stdout and "not bundled" not in done.stdout
    wrong = subprocess.run([sys.executable, str(REPO / "tools" / "build_firmware.py"), "--out",
                            str(tmp_path / "fw2"), "--aioble", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "no aioble/__init__.py there" in wrong.stderr


def test_flash_leaves_the_emulators_and_their_models_off_a_patch():
    from gateway.provision import firmware_files
    onto_patch = {board for _, board in firmware_files(source=True)}
    onto_virtual_board = {board for _, board in firmware_files(source=True, with_emulators=True)}
    simulation_only = onto_virtual_board - onto_patch
    assert {p for p in simulation_only if "/emulators/" not in p} == {
        "/lib/sensor_drivers/environment_model.py", "/lib/sensor_drivers/skin_model.py"}
    assert "/lib/sensor_drivers/emulators/tmp117.py" in simulation_only
    assert "/lib/sensor_drivers/tmp117.py" in onto_patch
