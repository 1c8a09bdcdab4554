"""Type-check the device code (firmware/, sensor_drivers/) against the MicroPython stubs.

mypy runs with the micropython-stdlib-stubs as its typeshed and the micropython-esp32-stubs
(machine, bluetooth, micropython, …) on its path, so a CPython-only call in firmware is an
error here. The stubs are gathered into build/mpy-stubs from the installed distributions.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUB_DIST = "micropython-esp32-stubs"
STDLIB_DIST = "micropython-stdlib-stubs"
# Modules of ours that stand in for micropython-lib packages the stubs do not cover.
UNTYPED_MODULES = ("aioble",)


def gather_stubs(out: Path) -> tuple[Path, Path]:
    if out.exists():
        shutil.rmtree(out)
    path_dir, typeshed = out / "path", out / "typeshed"
    for dist_name, dest, keep in ((STUB_DIST, path_dir, lambda p: not p.startswith("stdlib/")),
                                  (STDLIB_DIST, typeshed, lambda p: p.startswith("stdlib/"))):
        dist = metadata.distribution(dist_name)
        for file in dist.files or []:
            rel = str(file)
            if rel.endswith(".pyi") or rel.endswith("VERSIONS"):
                if keep(rel) and ".dist-info" not in rel:
                    target = dest / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(file.locate(), target)
    # mypy itself needs mypy_extensions in any typeshed it is given.
    import mypy
    extensions = Path(mypy.__file__).parent / "typeshed/stubs/mypy-extensions/mypy_extensions.pyi"
    shutil.copy(extensions, typeshed / "stdlib" / "mypy_extensions.pyi")
    with open(typeshed / "stdlib" / "VERSIONS", "a") as versions:
        versions.write("mypy_extensions: 3.0-\n")
    return path_dir, typeshed


def main() -> int:
    path_dir, typeshed = gather_stubs(REPO / "build" / "mpy-stubs")
    files = [str(p) for pkg in ("firmware", "sensor_drivers") for p in sorted((REPO / pkg).rglob("*.py"))
             if "host" not in p.relative_to(REPO).parts]
    cmd = [sys.executable, "-m", "mypy", "--custom-typeshed-dir", str(typeshed),
           "--python-version", "3.11", "--no-site-packages", "--follow-imports=silent",
           "--explicit-package-bases", "--check-untyped-defs", "--no-error-summary",
           "--disable-error-code=import-untyped", "--disable-error-code=import-not-found",
           *files]
    env = {"MYPYPATH": f"{path_dir}:{REPO}", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    # Judge only our files: the generated stubs have a few errors of their own.
    ours = [line for line in (result.stdout + result.stderr).splitlines()
            if line.startswith(("firmware/", "sensor_drivers/"))]
    if any(": error:" in line for line in ours):
        print("\n".join(ours))
        print(f"firmware type check failed ({len(files)} files)", file=sys.stderr)
        return 1
    print(f"firmware type check passed ({len(files)} files against the MicroPython stubs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
