"""Repo-wide pytest setup: shared fixtures for tests/ and hil_tests/, and a closing line that
counts the tests that ran under the real MicroPython VM."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))

pytest_plugins = ["mpvm", "mqtt_fixtures"]

_micropython_results = {"passed": 0, "failed": 0, "skipped": 0}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "micropython" not in report.keywords:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _micropython_results[report.outcome] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    passed, failed = _micropython_results["passed"], _micropython_results["failed"]
    terminalreporter.write_line(
        f"MicroPython VM: {passed} tests passed, {failed} failed under the real MicroPython VM")
