"""The chaos harness itself (tools/chaos.py) on two of its faults, so it cannot rot: real
simulate + run + mosquitto processes and its verifying subscriber; every generated sample
delivered, none lost, none duplicated after dedup by seq (the full table: `make chaos`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_chaos_short_corrupt_database_and_runtime_model_failure(tmp_path):
    rows = short_chaos_rows("corrupt database,model fails", tmp_path / "chaos",
                            min_generated=300)
    assert rows[0].endswith("| model:temp_anomaly |"), "failing at run time, not at the swap"
    assert rows[1].endswith("| database |")


def test_chaos_short_link_drops_and_patch_power_loss(tmp_path):
    """The simulator's own faults: links dropped mid-drain, patches cut mid-write and booted
    from their flash image (earlier boots' seqs count as generated)."""
    rows = short_chaos_rows("link drops,power loss", tmp_path / "chaos", min_generated=600)
    assert "×10; " in rows[0] and "mid-drain" in rows[0]
    assert "×3; " in rows[1]
    statuses = [json.loads(p.read_text()) for p in (tmp_path / "chaos").glob("01/sim/patches.json")]
    assert sum(len(p["earlier_boots"]) for s in statuses for p in s.values()) == 3


def short_chaos_rows(faults: str, keep: Path, min_generated: int) -> list[str]:
    """`tools/chaos.py --short --only FAULTS`: its table rows, each checked for nothing lost
    and nothing duplicated."""
    result = subprocess.run(
        [sys.executable, "tools/chaos.py", "--short", "--only", faults, "--keep", str(keep)],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| fault |")]
    assert len(rows) == len(faults.split(",")), result.stdout
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        generated, delivered, lost, dup = int(cells[1]), int(cells[3]), int(cells[4]), int(cells[5])
        assert generated > min_generated and delivered == generated, row
        assert lost == 0 and dup == 0, row
    return rows
