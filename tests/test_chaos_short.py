"""The chaos harness itself (tools/chaos.py) on two of its faults, so it cannot rot: real
simulate + run + mosquitto processes and its verifying subscriber; every generated sample
delivered, none lost, none duplicated after dedup by seq (the full table: `make chaos`)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_chaos_short_corrupt_database_and_runtime_model_failure(tmp_path):
    result = subprocess.run(
        [sys.executable, "tools/chaos.py", "--short", "--only",
         "corrupt database,model fails", "--keep", str(tmp_path / "chaos")],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| fault |")]
    assert len(rows) == 2, result.stdout
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        generated, delivered, lost, dup = int(cells[1]), int(cells[3]), int(cells[4]), int(cells[5])
        assert generated > 300 and delivered == generated and lost == 0 and dup == 0, row
    assert rows[0].endswith("| model:temp_anomaly |"), "failing at run time, not at the swap"
    assert rows[1].endswith("| database |")
