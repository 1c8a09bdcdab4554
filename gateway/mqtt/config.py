"""Where and how the gateway talks MQTT: broker URL, credentials, TLS, topic root.

Everything a deployment changes (broker, TLS, username/password, client
certificates) lives here as configuration; the publisher never needs a code
change for it. Validation errors name the offending field.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from gateway.mqtt import topics

SCHEME_PLAIN = "mqtt"
SCHEME_TLS = "mqtts"
DEFAULT_PORT_PLAIN = 1883
DEFAULT_PORT_TLS = 8883
DEFAULT_KEEPALIVE_S = 60
MAX_KEEPALIVE_S = 65535  # MQTT Keep Alive is a 16-bit field
DEFAULT_GATEWAY_ID = "gw"
# A gateway id becomes one topic level: no separators, no wildcards, nothing invisible.
GATEWAY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_CLIENT_ID_CHARS = 256


class MqttConfigError(ValueError):
    """A broker setting is invalid; the message names the field."""


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int = DEFAULT_PORT_PLAIN
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str | None = None
    keepalive_s: int = DEFAULT_KEEPALIVE_S
    gateway_id: str = DEFAULT_GATEWAY_ID
    # Largest payload the broker is known to accept (mosquitto `message_size_limit`);
    # larger outbox rows are parked instead of published. None: no local limit.
    max_payload_bytes: int | None = None

    def __post_init__(self) -> None:
        if not self.host:
            raise MqttConfigError("broker host: must not be empty")
        if not 1 <= self.port <= 65535:
            raise MqttConfigError(f"broker port {self.port}: must be 1..65535")
        if not 0 <= self.keepalive_s <= MAX_KEEPALIVE_S:
            raise MqttConfigError(f"keepalive_s {self.keepalive_s}: must be 0..{MAX_KEEPALIVE_S}")
        if not GATEWAY_ID_PATTERN.match(self.gateway_id):
            raise MqttConfigError(
                f"gateway_id {self.gateway_id!r}: must be 1-64 characters of letters, digits, "
                "'.', '_' or '-' (it becomes a topic level)"
            )
        if self.client_id is not None and not 1 <= len(self.client_id) <= MAX_CLIENT_ID_CHARS:
            raise MqttConfigError(
                f"client_id {self.client_id!r}: must be 1..{MAX_CLIENT_ID_CHARS} characters"
            )
        if self.password is not None and self.username is None:
            raise MqttConfigError("password: given without a username")
        if self.max_payload_bytes is not None and self.max_payload_bytes <= 0:
            raise MqttConfigError(f"max_payload_bytes {self.max_payload_bytes}: must be positive")
        tls_files = {
            "ca_file": self.ca_file,
            "cert_file": self.cert_file,
            "key_file": self.key_file,
        }
        for name, path in tls_files.items():
            if path is None:
                continue
            if not self.tls:
                raise MqttConfigError(f"{name}: TLS files need an mqtts:// broker url")
            if not Path(path).is_file():
                raise MqttConfigError(f"{name} {path!r}: no such file")
        if self.key_file is not None and self.cert_file is None:
            raise MqttConfigError("key_file: given without cert_file")
        if self.tls:
            self.ssl_context()   # unreadable or mismatched TLS files fail here, named

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context for this broker: verifies the broker's certificate (against
        `ca_file`, else the system's CAs) and host name, presents the client certificate.
        MqttConfigError names the file that cannot be used."""
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (ssl.SSLError, OSError, ValueError) as err:
            raise MqttConfigError(f"ca_file {self.ca_file!r}: not a usable PEM CA certificate "
                                  f"({_ssl_reason(err)})") from None
        if self.cert_file is not None:
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except (ssl.SSLError, OSError) as err:
                raise MqttConfigError(
                    f"cert_file {self.cert_file!r} / key_file {self.key_file!r}: not a PEM "
                    f"certificate with its private key ({_ssl_reason(err)})") from None
        return context

    def describe_connect_error(self, err: BaseException | None) -> str:
        """One line saying why a connection attempt failed, naming the setting to check."""
        where = f"cannot connect to {self.url}"
        if isinstance(err, ssl.SSLCertVerificationError):
            trusted = (f"the CA in ca_file {self.ca_file!r}" if self.ca_file
                       else "the system's CAs")
            return (f"{where}: TLS: the broker's certificate is not trusted by {trusted} "
                    f"({err.verify_message or _ssl_reason(err)})")
        if isinstance(err, ssl.SSLError):
            hint = ("; the broker asks for a client certificate (cert_file, key_file)"
                    if "CERTIFICATE_REQUIRED" in str(err) and self.cert_file is None else "")
            return f"{where}: TLS: {_ssl_reason(err)}{hint}"
        if isinstance(err, ConnectionRefusedError):
            return f"{where}: connection refused (is the broker running, is the port right?)"
        if isinstance(err, OSError):
            return f"{where}: {err.strerror or err}"
        return where

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        password_env: str | None = None,
        password_file: str | os.PathLike[str] | None = None,
        client_id: str | None = None,
        keepalive_s: int = DEFAULT_KEEPALIVE_S,
        gateway_id: str = DEFAULT_GATEWAY_ID,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        max_payload_bytes: int | None = None,
    ) -> MqttConfig:
        """Parse `mqtt://host[:port]` or `mqtts://host[:port]`.

        Credentials may also come as `mqtt://user:pass@host`; explicit keyword
        arguments win. `password_env` names an environment variable that holds
        the password, `password_file` a file (first line; `dermtwin broker-config` writes
        such files), so it never appears on a command line.
        """
        parts = urlsplit(url)
        if parts.scheme not in (SCHEME_PLAIN, SCHEME_TLS):
            raise MqttConfigError(f"broker url {url!r}: scheme must be mqtt or mqtts")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise MqttConfigError(
                f"broker url {url!r}: must be scheme://host[:port], nothing after"
            )
        try:
            url_port = parts.port
        except ValueError as err:
            raise MqttConfigError(f"broker url {url!r}: port {err}") from None
        if not parts.hostname:
            raise MqttConfigError(f"broker url {url!r}: host is missing")
        tls = parts.scheme == SCHEME_TLS
        port = (
            url_port if url_port is not None else (DEFAULT_PORT_TLS if tls else DEFAULT_PORT_PLAIN)
        )

        given = [n for n, v in (("password", password), ("password_env", password_env),
                                ("password_file", password_file)) if v is not None]
        if len(given) > 1:
            raise MqttConfigError(f"{given[-1]}: give either {given[0]} or {given[-1]}, not both")
        if password_file is not None:
            password = _read_password_file(password_file)
        if password_env is not None:
            if password_env not in os.environ:
                raise MqttConfigError(
                    f"password_env {password_env!r}: environment variable is not set"
                )
            password = os.environ[password_env]
        if username is None and parts.username is not None:
            username = unquote(parts.username)
        if password is None and parts.password is not None:
            password = unquote(parts.password)

        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            ca_file=_optional_path(ca_file),
            cert_file=_optional_path(cert_file),
            key_file=_optional_path(key_file),
            username=username,
            password=password,
            client_id=client_id,
            keepalive_s=keepalive_s,
            gateway_id=gateway_id,
            max_payload_bytes=max_payload_bytes,
        )

    @property
    def url(self) -> str:
        """The broker URL without credentials (safe to log)."""
        scheme = SCHEME_TLS if self.tls else SCHEME_PLAIN
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def topic_root(self) -> str:
        return topics.root(self.gateway_id)

    @property
    def state_topic(self) -> str:
        return topics.STATE.path(self.topic_root)

    @property
    def effective_client_id(self) -> str:
        """client_id if set, otherwise a stable one derived from the gateway id.

        Stable matters: a reconnect with the same id resumes the session and so
        cancels a pending delayed Will.
        """
        return self.client_id if self.client_id is not None else f"dermtwin-{self.gateway_id}"

    def topic(self, *levels: str) -> str:
        """`dermtwin/v1/{gw}/level/...`; each level must be non-empty, without '/', '+' or '#'."""
        for level in levels:
            if not level or any(ch in level for ch in "/+#\0"):
                raise MqttConfigError(
                    f"topic level {level!r}: must be non-empty, without '/', '+', '#' or NUL"
                )
        return "/".join((self.topic_root, *levels))


def _read_password_file(path: str | os.PathLike[str]) -> str:
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise MqttConfigError(f"password_file {os.fspath(path)!r}: cannot read it "
                              f"({getattr(err, 'strerror', None) or err})") from None
    if not lines or not lines[0]:
        raise MqttConfigError(f"password_file {os.fspath(path)!r}: the first line is empty")
    return lines[0]


def _ssl_reason(err: BaseException) -> str:
    """An SSL error's text without the `(_ssl.c:1000)` source location."""
    text = str(err.args[1]) if isinstance(err, OSError) and len(err.args) > 1 else str(err)
    return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text)


def _optional_path(path: str | os.PathLike[str] | None) -> str | None:
    return None if path is None else os.fspath(path)
