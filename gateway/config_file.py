"""The gateway's configuration file (TOML): every option of `dermtwin run`, validated at
start. A bad file fails with the file, the key and the reason; secrets come from the
environment or from files and are never printed.

Where it is looked for, first found wins: `--config FILE` (must exist), then
/etc/dermtwin/gateway.toml, then the user's config dir ($XDG_CONFIG_HOME or
~/.config)/dermtwin/gateway.toml. Command-line options override the file. Relative paths
in the file are relative to the file's directory.

    [gateway]
    id = "gw1"                       # gateway id in MQTT topics
    db = "/var/lib/dermtwin/gateway.sqlite3"
    models_dir = "/opt/dermtwin/models"   # optional: the bundled reference models
    retention_days = 30
    archive_days = 730               # 15-minute summaries of pruned samples
    max_connections = 5
    raw_samples = true               # publish {subject}/samples
    samples_format = "json"          # or "zlib": compressed samples (docs/mqtt.md)

    [ble]
    hci = "usb:0"                    # optional: a Bumble transport instead of BlueZ

    [mqtt]
    broker = "mqtts://broker.example.org:8883"
    username = "gw1"
    password_file = "/etc/dermtwin/mqtt-password"   # or password_env = "DERMTWIN_MQTT_PASSWORD"
    ca_file = "/etc/dermtwin/ca.pem"
    cert_file = "/etc/dermtwin/gw1.pem"
    key_file = "/etc/dermtwin/gw1.key"
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SYSTEM_CONFIG = Path("/etc/dermtwin/gateway.toml")
CONFIG_NAME = "dermtwin/gateway.toml"


class ConfigError(ValueError):
    """A configuration file that cannot be used: file, key and reason."""

    def __init__(self, path: Path | str, key: str | None, reason: str):
        self.path = str(path)
        self.key = key
        self.reason = reason
        super().__init__(f"{path}: {key}: {reason}" if key else f"{path}: {reason}")


def user_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / CONFIG_NAME


def find_config(explicit: Path | None) -> Path | None:
    """The file to read: --config (must exist), else the system file, else the user's."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise ConfigError(explicit, None, "no such file (given with --config)")
        return Path(explicit)
    for candidate in (SYSTEM_CONFIG, user_config_path()):
        if candidate.is_file():
            return candidate
    return None


# key -> (type, description). Types: str, int, float, bool, "path", "secret-env",
# "secret-file".
SCHEMA: dict[str, dict[str, tuple[Any, str]]] = {
    "gateway": {
        "id": (str, "gateway id in MQTT topics"),
        "db": ("path", "the gateway's SQLite database"),
        "models_dir": ("path", "directory of ONNX models"),
        "retention_days": (float, "days raw samples are kept"),
        "archive_days": (float, "days the 15-minute summaries of pruned samples are kept"),
        "max_connections": (int, "BLE connection slots on the adapter"),
        "raw_samples": (bool, "publish raw samples on {subject}/samples"),
        "samples_format": ("samples-format", "\"json\" or \"zlib\": {subject}/samples "
                                             "payloads compressed (MQTT 5 Content Type)"),
        "location": ("location", "the gateway's \"LAT,LON\" in degrees (UV forecast)"),
        "homeassistant": (str, "Home Assistant MQTT discovery under this prefix (e.g. "
                               "\"homeassistant\"); unset: off"),
    },
    "ble": {
        "hci": (str, "a Bumble HCI transport (usb:0, serial:/dev/ttyUSB0, tcp-client:H:P)"),
    },
    "mqtt": {
        "broker": (str, "mqtt://host[:port] or mqtts://host[:port]"),
        "username": (str, "MQTT user name"),
        "password_env": ("secret-env", "environment variable holding the MQTT password"),
        "password_file": ("secret-file", "file holding the MQTT password"),
        "ca_file": ("path", "CA certificate (PEM) for mqtts"),
        "cert_file": ("path", "client certificate (PEM)"),
        "key_file": ("path", "client key (PEM)"),
        "max_payload_bytes": (int, "largest payload the broker accepts (message_size_limit)"),
    },
}
# Every option of `dermtwin run` (argparse dest) and the key that sets it in the file.
RUN_OPTION_KEYS = {
    "db": "[gateway] db", "gateway_id": "[gateway] id", "models_dir": "[gateway] models_dir",
    "retention_days": "[gateway] retention_days", "archive_days": "[gateway] archive_days",
    "max_connections": "[gateway] max_connections", "no_raw_samples": "[gateway] raw_samples",
    "location": "[gateway] location", "homeassistant": "[gateway] homeassistant",
    "samples_format": "[gateway] samples_format",
    "hci": "[ble] hci", "broker": "[mqtt] broker", "username": "[mqtt] username",
    "password_env": "[mqtt] password_env", "ca_file": "[mqtt] ca_file",
    "cert_file": "[mqtt] cert_file", "key_file": "[mqtt] key_file",
    "max_payload_bytes": "[mqtt] max_payload_bytes",
}
# Keys whose value would be a secret written into the file itself: refused.
PLAIN_SECRETS = {("mqtt", "password"): "password_file or password_env"}


@dataclass
class GatewaySettings:
    """What the file says (None: not set there)."""

    path: Path | None = None
    gateway_id: str | None = None
    db: Path | None = None
    models_dir: Path | None = None
    retention_days: float | None = None
    archive_days: float | None = None
    max_connections: int | None = None
    raw_samples: bool | None = None
    samples_format: str | None = None
    location: tuple[float, float] | None = None
    homeassistant: str | None = None
    hci: str | None = None
    broker: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    max_payload_bytes: int | None = None


_FIELD_OF = {("gateway", "id"): "gateway_id"}


def _check(path: Path, section: str, key: str, value: Any, kind: Any,
           resolve_secrets: bool) -> Any:
    name = f"[{section}] {key}"
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, name, f"must be true or false, got {type(value).__name__}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, name, f"must be a whole number, got {value!r}")
        if value < 1:
            raise ConfigError(path, name, f"must be at least 1, got {value}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, name, f"must be a number, got {value!r}")
        if value <= 0:
            raise ConfigError(path, name, f"must be positive, got {value}")
        return float(value)
    if kind == "location":
        return _location(path, name, value)
    if kind == "samples-format":
        from gateway.payload_encoding import FORMATS

        if value not in FORMATS:
            raise ConfigError(path, name, f"must be one of {', '.join(map(repr, FORMATS))}, "
                                          f"got {value!r}")
        return value
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(path, name, "must be a non-empty string")
    if kind == "path":
        resolved = Path(value).expanduser()
        return resolved if resolved.is_absolute() else (path.parent / resolved)
    if kind in ("secret-env", "secret-file") and not resolve_secrets:
        return None
    if kind == "secret-env":
        if value not in os.environ:
            raise ConfigError(path, name, f"environment variable {value} is not set")
        return os.environ[value]
    if kind == "secret-file":
        secret_path = Path(value).expanduser()
        secret_path = secret_path if secret_path.is_absolute() else path.parent / secret_path
        try:
            mode = secret_path.stat().st_mode
            text = secret_path.read_text().rstrip("\r\n")
        except OSError as error:
            raise ConfigError(path, name, f"cannot read {secret_path}: "
                                          f"{error.strerror or error}") from None
        if mode & (stat.S_IRWXO):
            raise ConfigError(path, name, f"{secret_path} is readable by every user: "
                                          f"chmod 600 {secret_path} (or 640, group dermtwin)")
        if not text:
            raise ConfigError(path, name, f"{secret_path} is empty")
        return text
    return value


def _location(path: Path, name: str, value: Any) -> tuple[float, float]:
    """"LAT,LON" or [LAT, LON], in degrees."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        latitude, longitude = (float(x) for x in parts)
    except (TypeError, ValueError):
        raise ConfigError(path, name, f'give "LAT,LON" in degrees, e.g. "45.5,-73.6"; got '
                                      f"{value!r}") from None
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise ConfigError(path, name, f"latitude -90..90, longitude -180..180; got {value!r}")
    return latitude, longitude


def load_config(path: Path, *, resolve_secrets: bool = True) -> GatewaySettings:
    """Read and validate one file; ConfigError names the file, the key and the reason.

    Secrets are read only with resolve_secrets (the daemon); other commands (status, scan,
    devices) need not see them, and may run as a user who cannot."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise ConfigError(path, None, f"cannot read: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(path, None, f"not valid TOML: {error}") from None
    settings = GatewaySettings(path=path)
    for section, table in data.items():
        if section not in SCHEMA:
            raise ConfigError(path, f"[{section}]", "unknown section (known: "
                                                    f"{', '.join(sorted(SCHEMA))})")
        if not isinstance(table, dict):
            raise ConfigError(path, section, f"must be a table: write [{section}]")
        known = SCHEMA[section]
        if section == "mqtt" and "password_env" in table and "password_file" in table:
            raise ConfigError(path, "[mqtt] password_env",
                              "give either password_env or password_file, not both")
        for key, value in table.items():
            if (section, key) in PLAIN_SECRETS:
                raise ConfigError(path, f"[{section}] {key}",
                                  "secrets do not go in the configuration file: use "
                                  f"{PLAIN_SECRETS[(section, key)]}")
            if key not in known:
                raise ConfigError(path, f"[{section}] {key}",
                                  f"unknown key (known in [{section}]: {', '.join(known)})")
            checked = _check(path, section, key, value, known[key][0], resolve_secrets)
            attr = _FIELD_OF.get((section, key)) or (
                "password" if key.startswith("password_") else key)
            setattr(settings, attr, checked)
    for key in ("ca_file", "cert_file", "key_file"):
        file = getattr(settings, key)
        if file is not None and not Path(file).is_file():
            raise ConfigError(path, f"[mqtt] {key}", f"{file}: no such file")
    if settings.key_file is not None and settings.cert_file is None:
        raise ConfigError(path, "[mqtt] key_file", "given without cert_file")
    if settings.broker is not None:
        from gateway.mqtt.config import MqttConfig

        try:
            MqttConfig.from_url(settings.broker)
        except ValueError as error:
            raise ConfigError(path, "[mqtt] broker", str(error)) from None
    return settings


def load(explicit: Path | None, *, resolve_secrets: bool = True) -> GatewaySettings:
    """The settings from the file that applies (empty settings if there is none)."""
    found = find_config(explicit)
    if found is None:
        return GatewaySettings()
    return load_config(found, resolve_secrets=resolve_secrets)
