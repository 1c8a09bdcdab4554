"""Broker roles and TLS against a real mosquitto configured by `dermtwin broker-config`
(docs/security.md): the test writes the configuration with the CLI, starts mosquitto with it
on free ports and checks each role from outside with plain MQTT clients, and the gateway
itself over mqtts with a client certificate."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from gateway_harness import GatewayRig, wait_for
from mqtt_fixtures import wait_until
from tls_certs import issue, make_ca

from gateway import cli
from gateway.mqtt.config import MqttConfig, MqttConfigError
from gateway.mqtt.publisher import MqttPublisher
from gateway.outbox import Outbox
from gateway.protocol.constants import ConfigKey
from simulation.broker import LocalBroker, free_loopback_port

REPO = Path(__file__).resolve().parents[1]
GATEWAY = "rig"          # the gateway id GatewayRig uses
OTHER_GATEWAY = "gw2"
CLINIC = "clinic"
VIEWER = "viewer"        # a subscriber reading everything
DASHBOARD = "dash"       # a subscriber limited to twin and samples
NOT_AUTHORIZED = 135     # MQTT 5 reason code 0x87
QUIET_S = 1.0            # how long "nothing arrives" is watched


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@dataclass
class Deployment:
    out: Path
    port: int
    tls_port: int
    certs: Path
    stdout: str

    def password(self, name: str) -> str:
        return (self.out / "credentials" / f"{name}.password").read_text().strip()

    def cert(self, name: str) -> tuple[Path, Path]:
        return self.certs / f"{name}.pem", self.certs / f"{name}.key"

    @property
    def ca(self) -> Path:
        return self.certs / "ca.pem"


def broker_config(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["broker-config", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def deployment(tmp_path, capsys) -> Deployment:
    certs = tmp_path / "certs"
    ca = make_ca(certs, "ca")
    issue(certs, ca, "server", "127.0.0.1")
    for name in (GATEWAY, OTHER_GATEWAY):
        issue(certs, ca, name, name)          # the CN is the account name
    other_ca = make_ca(certs, "other-ca")     # a CA the broker does not trust, and vice versa
    issue(certs, other_ca, "stranger", GATEWAY)
    port, tls_port = free_loopback_port(), free_loopback_port()
    out = tmp_path / "broker"
    code, stdout, stderr = broker_config(
        capsys, "--out", str(out), "--gateway", GATEWAY, "--gateway", OTHER_GATEWAY,
        "--clinic", CLINIC, "--subscriber", VIEWER, "--subscriber", f"{DASHBOARD}:twin,samples",
        "--listen", f"127.0.0.1:{port}", "--tls-listen", f"127.0.0.1:{tls_port}",
        "--tls-ca", str(certs / "ca.pem"), "--tls-cert", str(certs / "server.pem"),
        "--tls-key", str(certs / "server.key"), "--run-as", "root")
    assert code == 0, stderr
    return Deployment(out, port, tls_port, certs, stdout)


@pytest.fixture
def broker(deployment):
    broker = LocalBroker(config_file=deployment.out / "mosquitto.conf", port=deployment.port,
                         data_dir=deployment.out.parent / "broker-run")
    broker.start_sync()
    yield broker
    broker.close()


class Client:
    """A plain MQTT 5 client of one account: connect, publish (PUBACK reason), subscribe."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None,
                 tls: tuple[Path, Path, Path] | None = None):
        self.connack: paho.ReasonCode | None = None
        self.error: BaseException | None = None
        self.pubacks: dict[int, int] = {}
        self.messages: list[tuple[str, bytes]] = []
        self._changed = threading.Condition()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=f"sec-{username}-{time.time_ns()}",
                                  protocol=paho.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            ca, cert, key = tls
            self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        try:
            self.client.connect("127.0.0.1", port)
        except OSError as err:   # a TLS handshake refused
            self.error = err
            return
        self.client.loop_start()
        with self._changed:
            self._changed.wait_for(lambda: self.connack is not None or self.error is not None, 5)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._changed:
            self.connack = reason_code
            self._changed.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._changed:
            if self.connack is None:   # closed before CONNACK (a refused certificate)
                self.error = ConnectionError(str(reason_code))
            self._changed.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._changed:
            self.pubacks[mid] = reason_code.value
            self._changed.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        with self._changed:
            self.messages.append((message.topic, bytes(message.payload)))
            self._changed.notify_all()

    @property
    def connected(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """The PUBACK's reason code (0 or 16: accepted; 135: not authorized)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._changed:
            assert self._changed.wait_for(lambda: info.mid in self.pubacks, 5), topic
            return self.pubacks[info.mid]

    def subscribe(self, topic_filter: str) -> None:
        self.client.subscribe(topic_filter, qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients(deployment, broker):
    made: list[Client] = []

    def connect(username: str | None = None, *, password: str | None = None,
                tls_as: str | None = None, ca: Path | None = None) -> Client:
        if tls_as is not None:
            client = Client(deployment.tls_port, tls=(ca or deployment.ca,
                                                      *deployment.cert(tls_as)))
        else:
            if username is not None and password is None:
                password = deployment.password(username)
            client = Client(deployment.port, username, password)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


# -- the files -----------------------------------------------------------------------------


def test_broker_config_files_are_private_and_in_mosquittos_formats(deployment, capsys):
    out = deployment.out
    assert mode(out) == 0o700
    assert mode(out / "credentials") == 0o700 and mode(out / "data") == 0o700
    names = [GATEWAY, OTHER_GATEWAY, CLINIC, VIEWER, DASHBOARD]
    for path in [out / "mosquitto.conf", out / "acl", out / "passwd",
                 *(out / "credentials" / f"{n}.password" for n in names)]:
        assert mode(path) == 0o600, path
    # `$7$` lines as mosquitto_passwd writes them: PBKDF2-SHA512, 101 iterations, 12-byte salt.
    lines = dict(line.split(":", 1) for line in (out / "passwd").read_text().splitlines())
    assert sorted(lines) == sorted(names)
    for name, entry in lines.items():
        _, seven, iterations, salt, digest = entry.split("$")
        assert (seven, iterations) == ("7", "101") and len(base64.b64decode(salt)) == 12
        expected = hashlib.pbkdf2_hmac("sha512", deployment.password(name).encode(),
                                       base64.b64decode(salt), 101)
        assert base64.b64decode(digest) == expected
    # Passwords go to their files, never to the terminal.
    assert "credentials/clinic.password" in deployment.stdout
    for name in names:
        assert deployment.password(name) not in deployment.stdout
    conf = (out / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "allow_anonymous true" not in conf
    assert "require_certificate true" in conf and "use_identity_as_username true" in conf

    # Again, rotating one account: the others keep their passwords.
    clinic_before, viewer_before = deployment.password(CLINIC), deployment.password(VIEWER)
    code, stdout, _ = broker_config(
        capsys, "--out", str(out), "--gateway", GATEWAY, "--gateway", OTHER_GATEWAY,
        "--clinic", CLINIC, "--subscriber", VIEWER, "--rotate", VIEWER)
    assert code == 0
    assert deployment.password(CLINIC) == clinic_before
    assert deployment.password(VIEWER) != viewer_before
    assert f"removed {DASHBOARD}" in stdout and "no TLS listener" in stdout
    assert DASHBOARD not in (out / "passwd").read_text()


def test_broker_config_refuses_bad_input_naming_the_option(tmp_path, capsys):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    code, _, err = broker_config(capsys, "--out", str(shared), "--gateway", "gw1")
    assert code == 1 and "--out" in err and "others may enter it" in err
    assert list(shared.iterdir()) == []
    code, _, err = broker_config(capsys, "--out", str(tmp_path / "x"), "--clinic", "c")
    assert code == 1 and "--gateway: at least one gateway" in err
    code, _, err = broker_config(capsys, "--out", str(tmp_path / "x"), "--gateway", "g",
                                 "--subscriber", "d:twin,secrets")
    assert code == 1 and "unknown kind 'secrets'" in err
    code, _, err = broker_config(capsys, "--out", str(tmp_path / "x"), "--gateway", "a/b")
    assert code == 1 and "account 'a/b'" in err
    code, _, err = broker_config(capsys, "--out", str(tmp_path / "x"), "--gateway", "g",
                                 "--tls-ca", str(tmp_path / "none.pem"))
    assert code == 1 and "give all three or none" in err


# -- the roles, from outside ---------------------------------------------------------------


def test_anonymous_and_wrong_credentials_are_refused(deployment, clients):
    assert clients().connack.is_failure                          # anonymous, plain listener
    assert clients(CLINIC, password="not-the-password").connack.is_failure
    no_cert = Client(deployment.tls_port, tls=None)              # plain MQTT to the TLS port
    assert not no_cert.connected
    no_cert.close()
    stranger = clients(tls_as="stranger")   # a certificate from a CA the broker does not trust
    assert not stranger.connected
    assert clients(CLINIC).connected and clients(tls_as=GATEWAY).connected   # the controls


def test_another_gateway_can_neither_read_nor_write_this_gateways_tree(clients):
    tree = f"dermtwin/v1/{GATEWAY}"
    clinic, viewer, dash = clients(CLINIC), clients(VIEWER), clients(DASHBOARD)
    intruder = clients(OTHER_GATEWAY)
    for client in (clinic, viewer, dash, intruder):
        client.subscribe("#")
    intruder.subscribe(f"{tree}/#")
    time.sleep(0.3)

    gateway = clients(GATEWAY)
    for kind in ("twin", "samples", "alert"):
        assert gateway.publish(f"{tree}/s-1/{kind}", b"from " + kind.encode()) in (0, 16)
    assert gateway.publish(f"{tree}/state", b"online") in (0, 16)
    wait_until(lambda: len(clinic.messages) == 4, what="the clinic reads the gateway's tree")
    wait_until(lambda: len(viewer.messages) == 4, what="the viewer reads it too")

    for topic in (f"{tree}/s-1/twin", f"{tree}/s-1/desired", f"{tree}/cmd", f"{tree}/state",
                  f"dermtwin/reply/{GATEWAY}/x"):
        assert intruder.publish(topic, b"forged", retain=True) == NOT_AUTHORIZED, topic
    # over TLS, with its own client certificate, the same
    intruder_tls = clients(tls_as=OTHER_GATEWAY)
    assert intruder_tls.publish(f"{tree}/s-1/twin", b"forged over TLS") == NOT_AUTHORIZED
    assert intruder_tls.publish(f"dermtwin/v1/{OTHER_GATEWAY}/state", b"own") in (0, 16)

    time.sleep(QUIET_S)
    assert intruder.messages == []     # nothing of this gateway's tree, nor anyone else's
    assert all(b"forged" not in payload for _, payload in clinic.messages + viewer.messages)
    # the dashboard subscriber reads only what it is limited to
    assert sorted(t.rsplit("/", 1)[1] for t, _ in dash.messages) == ["samples", "twin"]
    # a gateway reads only its own desired and cmd, not its own twin or another tree
    assert gateway.messages == []


def test_tls_gateway_with_a_client_certificate_publishes_and_a_wrong_ca_fails_clearly(
        deployment, clients, tmp_path, caplog):
    clinic = clients(CLINIC)
    clinic.subscribe(f"dermtwin/v1/{GATEWAY}/#")
    time.sleep(0.3)
    db_path = tmp_path / "outbox.sqlite3"
    conn = sqlite3.connect(db_path)
    Outbox(conn).put(f"dermtwin/v1/{GATEWAY}/s-1/alert", b"over mqtts")
    conn.commit()
    conn.close()

    def publisher(ca: Path) -> MqttPublisher:
        cert, key = deployment.cert(GATEWAY)
        config = MqttConfig.from_url(f"mqtts://127.0.0.1:{deployment.tls_port}",
                                     gateway_id=GATEWAY, ca_file=ca, cert_file=cert,
                                     key_file=key)
        return MqttPublisher(config, db_path, will_topic=config.state_topic,
                             will_payload=b'{"online": false}',
                             birth_payload_fn=lambda: b'{"online": true}',
                             reconnect_min_delay_s=0.05, reconnect_max_delay_s=0.1)

    wrong = publisher(deployment.certs / "other-ca.pem")
    with caplog.at_level(logging.WARNING, logger="gateway.mqtt.publisher"):
        wrong.start_sync()
        try:
            wait_until(lambda: wrong.last_error is not None, what="a failed TLS handshake")
            time.sleep(0.5)                    # several retries
            assert not wrong.connected
        finally:
            wrong.stop_sync(timeout_s=1)
    expected = (f"cannot connect to mqtts://127.0.0.1:{deployment.tls_port}: TLS: the broker's "
                f"certificate is not trusted by the CA in ca_file "
                f"'{deployment.certs / 'other-ca.pem'}' (")
    # OpenSSL's reason follows, e.g. "self-signed certificate in certificate chain)".
    assert wrong.last_error.startswith(expected) and wrong.last_error.endswith(")")
    records = [r for r in caplog.records if r.name == "gateway.mqtt.publisher"]
    assert [r.getMessage() for r in records] == [f"mqtt {wrong.last_error}; retrying with backoff"]
    assert records[0].exc_info is None and "\n" not in records[0].getMessage()

    right = publisher(deployment.ca)
    right.start_sync()
    try:
        assert right.wait_connected(5), right.last_error
        wait_until(lambda: right.pending == 0, what="the row acknowledged")
    finally:
        right.stop_sync()
    assert (f"dermtwin/v1/{GATEWAY}/s-1/alert", b"over mqtts") in clinic.messages


def test_cli_names_an_unusable_tls_file_in_one_line(tmp_path):
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "--db", str(tmp_path / "gw.sqlite3"),
         "--broker", "mqtts://127.0.0.1:8883", "--ca-file", str(not_pem)],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith(f"dermtwin run: ca_file '{not_pem}': not a usable PEM CA")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    with pytest.raises(MqttConfigError, match="password_file '.*': cannot read it"):
        MqttConfig.from_url("mqtt://h", username="u", password_file=tmp_path / "missing")
    password_file = tmp_path / "gw1.password"
    password_file.write_text("s3cret-from-broker-config\n")
    config = MqttConfig.from_url("mqtt://h", username="gw1", password_file=password_file)
    assert config.password == "s3cret-from-broker-config"
    assert "s3cret" not in repr(config)
    with pytest.raises(MqttConfigError, match="password_file: give either password_env or"):
        MqttConfig.from_url("mqtt://h", username="u", password_env="X",
                            password_file=password_file)


@pytest.mark.slow
async def test_a_subscriber_cannot_configure_the_patch_over_a_tls_gateway(
        deployment, broker, clients, tmp_path):
    """The whole gateway over mqtts with its client certificate; a subscriber's `desired`
    and `cmd` are refused by the broker and nothing changes on the patch; the clinic's
    reach it."""
    cert, key = deployment.cert(GATEWAY)
    async with GatewayRig(tmp_path / "rig", patches=1, broker=broker,
                          mqtt_url=f"mqtts://127.0.0.1:{deployment.tls_port}",
                          mqtt_options={"ca_file": deployment.ca, "cert_file": cert,
                                        "key_file": key}) as rig:
        device_id, _, subject = rig.identities[0]
        tree = f"dermtwin/v1/{GATEWAY}"
        viewer, clinic = clients(VIEWER), clients(CLINIC)
        viewer.subscribe(f"{tree}/#")
        clinic.subscribe(f"{tree}/+/reported")
        clinic.subscribe(f"dermtwin/reply/{GATEWAY}/#")
        gateway = await rig.start_gateway()
        firmware = rig.patches[0].patch
        await wait_for(lambda: gateway.publisher.connected, what="the gateway over mqtts")
        await wait_for(lambda: any(t == f"{tree}/{subject}/twin" for t, _ in viewer.messages),
                       what="the subscriber reads twins")

        desired = json.dumps({"ver": 1, "cfg": {"temp_period_s": 5}}).encode()
        assert await asyncio.to_thread(viewer.publish, f"{tree}/{subject}/desired", desired,
                                       True) == NOT_AUTHORIZED
        assert await asyncio.to_thread(viewer.publish, f"{tree}/cmd", json.dumps(
            {"op": "identify", "subject": subject}).encode()) == NOT_AUTHORIZED
        await asyncio.sleep(QUIET_S)
        assert gateway.store.desired(device_id) is None
        assert firmware.config.get(ConfigKey.TEMP_PERIOD_S) == 1
        assert firmware.board.identify_requests == []
        assert clinic.messages == []                       # no reported, no answer
        late = clients(CLINIC)                             # and nothing was retained
        late.subscribe(f"{tree}/+/desired")
        await asyncio.sleep(0.5)
        assert late.messages == []

        # The clinic can: the same desired is applied, identify is answered on its reply topic.
        assert await asyncio.to_thread(clinic.publish, f"{tree}/{subject}/desired", desired,
                                       True) in (0, 16)
        await wait_for(lambda: firmware.config.get(ConfigKey.TEMP_PERIOD_S) == 5,
                       what="the clinic's desired applied")
        await wait_for(lambda: any(b'"applied"' in p for _, p in clinic.messages),
                       what="reported: applied")


# -- keys at rest --------------------------------------------------------------------------


def test_database_key_files_and_registry_are_private(tmp_path, caplog):
    from gateway import store as store_mod
    from gateway.provision import default_key_path
    from gateway.values import RegisteredDevice

    db = tmp_path / "state" / "gateway.sqlite3"
    store = store_mod.Store(store_mod.connect(db))
    with store.transaction():
        store.register(RegisteredDevice("00112233aabbccdd", b"k" * 32, "s-1", 3, None), 0)
    assert mode(db.parent) == 0o700
    for suffix in ("", "-wal", "-shm"):
        assert mode(db.with_name(db.name + suffix)) == 0o600, suffix
    store.conn.close()

    old = tmp_path / "old.sqlite3"         # what earlier versions left behind: 0644
    sqlite3.connect(old).close()
    old.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="gateway.store"):
        store_mod.connect(old).close()
    assert mode(old) == 0o600
    assert "readable by others (mode 644)" in caplog.text

    assert default_key_path(db, "00112233aabbccdd") == db.parent / "keys" / "00112233aabbccdd.key"


def test_provision_without_a_subject_keeps_the_key_beside_the_database(tmp_path):
    sys.path.insert(0, str(REPO / "tools"))
    from virtual_board import VirtualBoard

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    db = tmp_path / "state" / "gateway.sqlite3"
    with VirtualBoard() as board:
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "provision", "--port", board.port,
             "--db", str(db)], cwd=cwd, capture_output=True, text=True, timeout=120,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    device_id = result.stdout.split("device ")[1].split()[0]
    key_path = db.parent / "keys" / f"{device_id}.key"
    assert f"key saved to {key_path} (mode 600)" in result.stdout
    assert mode(key_path) == 0o600 and mode(key_path.parent) == 0o700
    assert list(cwd.iterdir()) == []       # nothing in the current directory
    assert key_path.read_text().strip() not in result.stdout + result.stderr


def test_simulator_registry_is_private(tmp_path):
    workdir = tmp_path / "sim"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "simulate", "--patches", "1", "--workdir",
         str(workdir)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (workdir / "hci.json").exists():
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the simulator did not start"
            time.sleep(0.1)
        registry = workdir / "registry.json"
        assert mode(registry) == 0o600 and mode(workdir) == 0o700
        assert json.loads(registry.read_text())[0]["key"]
    finally:
        process.terminate()
        process.wait(30)
