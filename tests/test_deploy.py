"""deploy/: the systemd unit passes `systemd-analyze verify` and asks for what the gateway
provides (notify + watchdog pings, restart on failure, its own user and state directory);
the example configuration uses only known keys."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.config_file import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "deploy" / "dermtwin.service"
EXEC = "/opt/dermtwin/venv/bin/dermtwin"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_asks_for_what_the_gateway_provides():
    service = unit()["Service"]
    assert service["Type"] == "notify" and int(service["WatchdogSec"]) >= 15  # pings every 5 s
    assert service["Restart"] == "on-failure"
    assert service["User"] == "dermtwin" and service["StateDirectory"] == "dermtwin"
    assert "bluetooth" in service["SupplementaryGroups"]
    argv = service["ExecStart"].split()
    assert argv[0] == EXEC
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and str(args.config) == "/etc/dermtwin/gateway.toml"


def test_unit_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    fake = tmp_path / "dermtwin"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    copy = tmp_path / "dermtwin.service"
    copy.write_text(UNIT.read_text().replace(EXEC, str(fake)))
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stderr


def test_example_config_has_only_known_keys(monkeypatch):
    monkeypatch.setenv("DERMTWIN_MQTT_PASSWORD", "x")
    with pytest.raises(ConfigError) as caught:
        load_config(REPO / "deploy" / "gateway.toml")
    # every key is known and well-typed; only the TLS file is absent on this machine
    assert caught.value.key == "[mqtt] ca_file" and not os.path.exists("/etc/dermtwin/ca.pem")


SINK_UNIT = REPO / "deploy" / "dermtwin-sink@.service"


def test_sink_unit_restarts_each_member_under_its_own_client_id(tmp_path):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(SINK_UNIT.read_text())
    service = parser["Service"]
    assert service["Restart"] == "always"
    argv = (service["ExecStart"].replace("\\\n", " ").replace("${DERMTWIN_SINK_DB}",
                                                             "postgresql://db/x")
            .replace("${DERMTWIN_SINK_BROKER}", "mqtt://b").replace("%i", "1")).split()
    assert argv[0] == EXEC
    args = build_parser().parse_args([a for a in argv[1:] if a])
    assert args.command == "sink" and args.client_id == "sink-1" and args.session_expiry > 0
    if shutil.which("systemd-analyze") is None:
        return
    fake = tmp_path / "dermtwin"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    copy = tmp_path / "dermtwin-sink@1.service"
    copy.write_text(SINK_UNIT.read_text().replace(EXEC, str(fake)))
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stderr
