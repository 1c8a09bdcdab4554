"""The benchmarks still run (their numbers are printed by `make bench`, never asserted)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("bench_*.py")))
def test_benchmark_runs(script):
    env = dict(os.environ, BENCH_REPEATS="1", BENCH_BASELINE_SAMPLES="200")
    result = subprocess.run([sys.executable, str(BENCH / script)], capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "ratio" in result.stdout
