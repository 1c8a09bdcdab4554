"""The gateway's TOML configuration: every `run` option can come from it, a bad file fails
with file, key and reason (one line, no traceback), secrets come from the environment or a
file and are never printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import config_file
from gateway.cli import build_parser
from gateway.config_file import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
SECRET = "s3cr3t-Pa55-do-not-print"

FULL = """
[gateway]
id = "gw-7"
db = "state/gw.sqlite3"
models_dir = "/opt/models"
retention_days = 14
max_connections = 3
raw_samples = false
samples_format = "zlib"
location = "45.5,-73.6"

[ble]
hci = "tcp-client:127.0.0.1:1"

[mqtt]
broker = "mqtts://broker.example.org:8883"
username = "gw-7"
password_file = "mqtt-password"
ca_file = "ca.pem"
cert_file = "gw.pem"
key_file = "gw.key"
"""


def write(tmp_path, text, name="gateway.toml") -> Path:
    for pem in ("ca.pem", "gw.pem", "gw.key"):
        (tmp_path / pem).write_text("-----BEGIN PLACEHOLDER-----\n")
    path = tmp_path / name
    path.write_text(text)
    return path


def dermtwin(*args, env_extra=None, home=None):
    env = {**os.environ, "XDG_CONFIG_HOME": str(home or "/nonexistent"), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_every_run_option_can_come_from_the_file():
    run = next(a for a in build_parser()._subparsers._group_actions[0].choices.items()
               if a[0] == "run")[1]
    dests = {a.dest for a in run._actions if a.dest != "help"}
    assert dests == set(config_file.RUN_OPTION_KEYS)
    for key in config_file.RUN_OPTION_KEYS.values():
        section, name = key[1:].split("] ")
        assert name in config_file.SCHEMA[section], key


def test_a_full_file_is_read_with_paths_relative_to_it(tmp_path):
    secret = tmp_path / "mqtt-password"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    s = load_config(write(tmp_path, FULL))
    assert (s.gateway_id, s.db, s.models_dir) == ("gw-7", tmp_path / "state/gw.sqlite3",
                                                  Path("/opt/models"))
    assert (s.retention_days, s.max_connections, s.raw_samples) == (14.0, 3, False)
    assert s.location == (45.5, -73.6) and s.samples_format == "zlib"
    assert s.hci == "tcp-client:127.0.0.1:1" and s.broker.startswith("mqtts://")
    assert s.password == SECRET and SECRET not in repr(s)
    assert s.ca_file == tmp_path / "ca.pem" and s.key_file == tmp_path / "gw.key"
    unresolved = load_config(tmp_path / "gateway.toml", resolve_secrets=False)
    assert unresolved.password is None


@pytest.mark.parametrize("text, key, reason", [
    ('[mqtt]\nbrokr = "mqtt://x"\n', "[mqtt] brokr", "unknown key (known in [mqtt]: broker"),
    ('[gatway]\nid = "x"\n', "[gatway]", "unknown section"),
    ('[gateway]\nmax_connections = "five"\n', "[gateway] max_connections", "whole number"),
    ('[gateway]\nretention_days = -1\n', "[gateway] retention_days", "must be positive"),
    ('[gateway]\nraw_samples = "no"\n', "[gateway] raw_samples", "true or false"),
    ('[gateway]\nsamples_format = "cbor"\n', "[gateway] samples_format",
     "must be one of 'json', 'zlib', got 'cbor'"),
    ('[mqtt]\nbroker = "http://x"\n', "[mqtt] broker", "scheme must be mqtt or mqtts"),
    ('[mqtt]\npassword = "x"\n', "[mqtt] password", "use password_file or password_env"),
    ('[mqtt]\npassword_env = "DT_TEST_UNSET_VAR"\n', "[mqtt] password_env",
     "DT_TEST_UNSET_VAR is not set"),
    ('[mqtt]\npassword_file = "nope"\n', "[mqtt] password_file", "cannot read"),
    ('[mqtt]\nkey_file = "gw.key"\n', "[mqtt] key_file", "without cert_file"),
    ('[mqtt]\nca_file = "none.pem"\n', "[mqtt] ca_file", "none.pem: no such file"),
    ('gateway = 3\n', "gateway", "must be a table"),
    ('[gateway]\nlocation = "north"\n', "[gateway] location", 'give "LAT,LON"'),
    ('[gateway]\nlocation = [95, 0]\n', "[gateway] location", "latitude -90..90"),
])
def test_a_bad_file_names_file_key_and_reason(tmp_path, text, key, reason):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (caught.value.path, caught.value.key) == (str(path), key)
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"{path}: {key}: ")


def test_not_toml_names_the_file(tmp_path):
    path = write(tmp_path, "[gateway\nid = 1\n")
    with pytest.raises(ConfigError, match=f"^{path}: not valid TOML"):
        load_config(path)


def test_a_world_readable_secret_file_is_refused_without_printing_it(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text(SECRET)
    secret.chmod(0o644)
    path = write(tmp_path, '[mqtt]\nbroker = "mqtt://127.0.0.1:1"\npassword_file = "pw"\n')
    done = dermtwin("--config", str(path), "run")
    assert done.returncode == 1 and "readable by every user: chmod 600" in done.stderr
    assert SECRET not in done.stdout + done.stderr and "Traceback" not in done.stderr


def test_cli_bad_key_fails_with_file_key_and_reason_in_one_line(tmp_path):
    path = write(tmp_path, '[mqtt]\nbroker = "mqtt://127.0.0.1:1"\nbrokr = "x"\n')
    done = dermtwin("--config", str(path), "run")
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (f"dermtwin run: {path}: [mqtt] brokr: unknown key (known in "
                                   "[mqtt]: broker, username, password_env, password_file, "
                                   "ca_file, cert_file, key_file, max_payload_bytes)")
    missing = dermtwin("--config", str(tmp_path / "none.toml"), "status")
    assert missing.returncode == 1 and "none.toml: no such file (given with --config)" in \
        missing.stderr


def test_the_file_is_used_and_the_command_line_wins(tmp_path):
    secret = tmp_path / "mqtt-password"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    path = write(tmp_path, FULL)
    from tls_certs import issue, make_ca  # run checks the TLS files are PEM before the radio
    issue(tmp_path, make_ca(tmp_path, "ca"), "gw", "gw1")
    # status finds the database the file names (and needs no secret to do so)
    status = dermtwin("--config", str(path), "status")
    assert f"no health file at {tmp_path / 'state' / 'gw.health.json'}" in status.stderr
    # run takes hci from the file: the transport the file names is the one that fails
    ran = dermtwin("--config", str(path), "run")
    assert "--hci tcp-client:127.0.0.1:1" in ran.stderr and SECRET not in ran.stderr
    overridden = dermtwin("--config", str(path), "run", "--hci", "tcp-client:127.0.0.1:2")
    assert "--hci tcp-client:127.0.0.1:2" in overridden.stderr


def test_user_config_dir_is_read_when_no_file_is_given(tmp_path):
    (tmp_path / "dermtwin").mkdir()
    write(tmp_path / "dermtwin", f'[gateway]\ndb = "{tmp_path}/u.sqlite3"\n')
    if config_file.SYSTEM_CONFIG.exists():
        pytest.skip(f"{config_file.SYSTEM_CONFIG} exists on this machine and comes first")
    done = dermtwin("status", home=tmp_path)
    assert f"no health file at {tmp_path}/u.health.json" in done.stderr
