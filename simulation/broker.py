"""A private mosquitto broker on a loopback port, for `make demo` and tests.

`LocalBroker` writes its own mosquitto.conf into a private directory, starts
`mosquitto -c` on 127.0.0.1, and waits until the port accepts connections.
It can be stopped and started again on the same port, which is how tests
simulate a broker outage.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.broker_config import (
    CREDENTIALS_DIR,
    Deployment,
    acl_text,
    generate_password,
    mosquitto_password_line,
)
from gateway.private_files import FILE_MODE, private_dir, write_private

LOOPBACK_HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_GRACE_S = 3.0
PORT_POLL_INTERVAL_S = 0.02
LOG_TAIL_LINES = 20

INSTALL_HINT = "install it with: sudo apt-get install mosquitto mosquitto-clients"
SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin")


class BrokerError(RuntimeError):
    """mosquitto is missing, did not start, or exited unexpectedly."""


def find_mosquitto() -> str:
    """Path of the mosquitto binary: PATH first, then /usr/sbin (not on a user's PATH on Debian)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for directory in SEARCH_DIRS:
        candidate = Path(directory) / "mosquitto"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise BrokerError(f"mosquitto not found on PATH or in {', '.join(SEARCH_DIRS)}; {INSTALL_HINT}")


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK_HOST, 0))
        return sock.getsockname()[1]


class LocalBroker:
    """A mosquitto process of our own, listening on 127.0.0.1 only.

    `config_file` runs mosquitto with a configuration of its own (one `dermtwin
    broker-config` wrote) instead; `port` is then its plain listener's.

    `users` maps username -> password; when given, anonymous clients are
    refused. `acl` is the text of a mosquitto ACL file (gateway/broker_config.py writes
    one per role); `LocalBroker.for_deployment` makes both from a `Deployment`.
    `persistence=True` keeps retained messages across a stop/start (in `data_dir`).
    With `tls_cert_file` and `tls_key_file` the listener speaks TLS only (`url`
    becomes mqtts://); `tls_client_ca_file` then requires client certificates signed
    by that CA. `extra_config` lines are appended verbatim (e.g. "message_size_limit
    1024")."""

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        users: dict[str, str] | None = None,
        acl: str | None = None,
        persistence: bool = False,
        extra_config: list[str] | tuple[str, ...] = (),
        tls_cert_file: str | os.PathLike[str] | None = None,
        tls_key_file: str | os.PathLike[str] | None = None,
        tls_client_ca_file: str | os.PathLike[str] | None = None,
        mosquitto_path: str | None = None,
        config_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if config_file is not None and (port is None or users or acl or tls_cert_file
                                        or extra_config or persistence):
            raise BrokerError("config_file: give only the port of its plain listener with it")
        self._given_config = None if config_file is None else Path(config_file).resolve()
        if (tls_cert_file is None) != (tls_key_file is None):
            raise BrokerError("tls_cert_file and tls_key_file: give both or neither")
        if tls_client_ca_file is not None and tls_cert_file is None:
            raise BrokerError("tls_client_ca_file: needs tls_cert_file and tls_key_file")
        self._mosquitto_path = mosquitto_path or find_mosquitto()
        self._port = port if port is not None else free_loopback_port()
        self._temp_dir: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._temp_dir = tempfile.TemporaryDirectory(prefix="dermtwin-mosquitto-")
            data_dir = self._temp_dir.name
        self.data_dir = Path(data_dir)
        private_dir(self.data_dir)
        self._users = dict(users or {})
        if acl is not None and not self._users:
            raise BrokerError("acl: needs users (an ACL names accounts)")
        self._acl = acl
        self._persistence = persistence
        self._extra_config = list(extra_config)
        self._tls_files = tuple(
            None if f is None else os.path.abspath(f)
            for f in (tls_cert_file, tls_key_file, tls_client_ca_file)
        )
        self._process: subprocess.Popen[bytes] | None = None
        self.credentials: dict[str, Path] = {}

    @classmethod
    def for_deployment(cls, deployment: Deployment, *,
                       data_dir: str | os.PathLike[str] | None = None,
                       **options: Any) -> LocalBroker:
        """A broker with one account per role of `deployment` (fresh passwords) and its ACL:
        no anonymous access. `credentials[name]` is a 0600 file under
        `data_dir/credentials/` holding that account's password, for its client."""
        passwords = {a.name: generate_password() for a in deployment.accounts}
        broker = cls(data_dir=data_dir, users=passwords, acl=acl_text(deployment), **options)
        credentials_dir = private_dir(broker.data_dir / CREDENTIALS_DIR)
        for name, password in passwords.items():
            path = credentials_dir / f"{name}.password"
            write_private(path, password + "\n")
            broker.credentials[name] = path
        return broker

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        return LOOPBACK_HOST

    @property
    def tls(self) -> bool:
        return self._tls_files[0] is not None

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{LOOPBACK_HOST}:{self._port}"

    @property
    def config_path(self) -> Path:
        return self._given_config or self.data_dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "mosquitto.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"

    def _write_config(self) -> None:
        config = [
            f"listener {self._port} {LOOPBACK_HOST}",
            # Running as root, mosquitto would switch to user "mosquitto", who cannot read our files.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        cert_file, key_file, client_ca_file = self._tls_files
        if cert_file is not None:
            config += [f"certfile {cert_file}", f"keyfile {key_file}"]
        if client_ca_file is not None:
            config += [f"cafile {client_ca_file}", "require_certificate true"]
        if self._users:
            password_file = self.data_dir / "passwd"
            write_private(password_file, "".join(
                mosquitto_password_line(u, p) + "\n" for u, p in self._users.items()))
            config += ["allow_anonymous false", f"password_file {password_file}"]
            if self._acl is not None:
                write_private(self.data_dir / "acl", self._acl)
                config.append(f"acl_file {self.data_dir / 'acl'}")
        else:
            config.append("allow_anonymous true")
        if self._persistence:
            config += ["persistence true", f"persistence_location {self.data_dir}/"]
        else:
            config.append("persistence false")
        config += self._extra_config
        write_private(self.config_path, "\n".join(config) + "\n")

    def start_sync(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start mosquitto and return once its port accepts TCP connections."""
        if self.running:
            raise BrokerError(f"broker on port {self._port} is already running")
        if self._given_config is None:
            self._write_config()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        with open(fd, "ab") as log_file:
            self._process = subprocess.Popen(
                [self._mosquitto_path, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            exit_code = self._process.poll()
            if exit_code is not None:
                self._process = None
                raise BrokerError(
                    f"mosquitto exited with code {exit_code} while starting on port "
                    f"{self._port}; log tail:\n{self.log_tail()}"
                )
            if _port_accepts(self._port):
                return
            if time.monotonic() >= deadline:
                self.stop_sync()
                raise BrokerError(
                    f"mosquitto did not accept connections on {LOOPBACK_HOST}:{self._port} "
                    f"within {timeout_s} s; log tail:\n{self.log_tail()}"
                )
            time.sleep(PORT_POLL_INTERVAL_S)

    def stop_sync(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop mosquitto: SIGTERM, then SIGKILL after `grace_s`. Safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill_sync(self) -> None:
        """Kill mosquitto at once (SIGKILL), as a crash or power loss would."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        await asyncio.to_thread(self.start_sync, timeout_s)

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        await asyncio.to_thread(self.stop_sync, grace_s)

    def close(self) -> None:
        """Stop the broker and remove its private temporary directory (if it made one)."""
        self.stop_sync()
        if self._temp_dir is not None:
            self._temp_dir.cleanup()
            self._temp_dir = None

    def __enter__(self) -> LocalBroker:
        self.start_sync()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> LocalBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.close)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LocalBroker({self.url}, {state})"


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK_HOST, port), timeout=0.2):
            return True
    except OSError:
        return False
