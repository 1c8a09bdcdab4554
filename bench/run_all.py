"""`make bench`: run every bench/bench_*.py, collect their figures into bench/results.json
(`{figure: {value, baseline, ratio, unit, better, how}}`) and print one table.

Each benchmark measures its baseline in the same run, interleaved with what it measures.
A benchmark that fails is reported and makes the run exit non-zero; the others still run.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from figures import print_table  # noqa: E402


def machine() -> dict[str, object]:
    return {"python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "system": f"{platform.system()} {platform.release()}",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(argv: list[str]) -> int:
    only = set(argv)
    out = Path(os.environ.get("BENCH_RESULTS", BENCH / "results.json"))
    results: dict[str, dict] = {}
    failed = []
    for path in sorted(BENCH.glob("bench_*.py")):
        name = path.stem
        if only and name not in only:
            continue
        module = importlib.import_module(name)
        if not hasattr(module, "figures"):
            print(f"== {name}: no figures() (skipped)")
            continue
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        try:
            figures = module.figures()
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        print_table(figures)
        print(f"   ({time.perf_counter() - start:.1f} s)", flush=True)
        results.update(figures)
    written = {"machine": machine(), "figures": results}
    if only and out.exists():
        # A partial run (`run_all.py bench_twin`): its figures replace theirs in the last full
        # run's file, and the file says which figures are newer than its date.
        written = json.loads(out.read_text())
        written["figures"].update(results)
        partial = written["machine"].setdefault("partial_runs", {})
        partial[" ".join(sorted(only))] = machine()["date"]
    out.write_text(json.dumps(written, indent=2) + "\n")
    print(f"\n{len(results)} figures -> {out}")
    print_table(written["figures"])
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
