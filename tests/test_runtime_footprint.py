"""A Pi installs only what `dermtwin run` needs: Bumble is an extra (`hci`, `sim`), and
`run` without --hci loads no Bumble module (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
from gateway import cli, service, health, config_file
from gateway.ble import radio, availability
from gateway.cli_errors import explain
print(json.dumps(sorted(sys.modules)))
"""


def test_bumble_is_an_extra_not_a_runtime_dependency():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    assert "bumble" not in runtime
    for extra in ("hci", "sim", "dev"):
        assert any(d.startswith("bumble") for d in project["optional-dependencies"][extra])


def test_run_without_hci_loads_no_bumble_module():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=60).stdout
    loaded = json.loads(out.splitlines()[-1])
    assert [m for m in loaded if m == "bumble" or m.startswith("bumble.")] == []
