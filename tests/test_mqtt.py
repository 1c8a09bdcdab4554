"""MQTT side of the gateway against a real mosquitto: config, LocalBroker, MqttPublisher."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from mqtt_fixtures import ReceivedMessage, wait_until
from mqtt_proxy import PubackHoldingProxy

from gateway import samples_message
from gateway.mqtt.config import MqttConfig, MqttConfigError
from gateway.mqtt.publisher import MqttPublisher
from gateway.outbox import Outbox
from simulation import broker as broker_module
from simulation.broker import BrokerError, LocalBroker, find_mosquitto

BIRTH = b'{"online": true}'
WILL = b'{"online": false, "why": "will"}'
OFFLINE = b'{"online": false, "why": "clean stop"}'
FAST_RECONNECT = {"reconnect_min_delay_s": 0.05, "reconnect_max_delay_s": 0.2}

# ---- helpers -----------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path) -> Path:
    path = tmp_path / "gateway.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    Outbox(conn)
    conn.commit()
    conn.close()
    return path


def put_rows(db_path: Path, messages) -> list[int]:
    conn = sqlite3.connect(db_path)
    try:
        ids = Outbox(conn).put_many(messages)
        conn.commit()
        return ids
    finally:
        conn.close()


def outbox_count(db_path: Path) -> int:
    conn = sqlite3.connect(db_path)
    try:
        return Outbox(conn).count()
    finally:
        conn.close()


def make_publisher(url: str, db_path: Path, gateway_id: str = "gw1", **options) -> MqttPublisher:
    config_options = {
        k: options.pop(k) for k in ("username", "password", "max_payload_bytes") if k in options
    }
    config = MqttConfig.from_url(url, gateway_id=gateway_id, **config_options)
    defaults = {
        "will_topic": config.state_topic,
        "will_payload": WILL,
        "birth_payload_fn": lambda: BIRTH,
        "offline_payload_fn": lambda: OFFLINE,
        "will_delay_s": 0,
        **FAST_RECONNECT,
    }
    return MqttPublisher(config, db_path, **{**defaults, **options})


def sample_messages(topic: str, start: int, stop: int) -> list[tuple[str, bytes]]:
    return [(topic, b"%s#%d" % (topic.encode(), i)) for i in range(start, stop)]


def assert_delivered_in_order(received: list[ReceivedMessage], expected: list[tuple[str, bytes]]):
    """Exactly the expected set (duplicates allowed: QoS 1), each topic in put order."""
    expected_topics = {t for t, _ in expected}
    got = [(m.topic, m.payload) for m in received if m.topic in expected_topics]
    assert set(got) == set(expected)
    for topic in expected_topics:
        first_seen = list(dict.fromkeys(p for t, p in got if t == topic))
        assert first_seen == [p for t, p in expected if t == topic], f"order on {topic}"


def has_all(expected):
    wanted = set(expected)
    return lambda ms: wanted <= {(m.topic, m.payload) for m in ms}


# A publisher in its own process, so a test can kill it as a crash would (no DISCONNECT).
CHILD_PUBLISHER = """
import sys, time
from gateway.mqtt.config import MqttConfig
from gateway.mqtt.publisher import MqttPublisher
url, db_path, max_inflight, will_delay_s, will, birth = sys.argv[1:]
config = MqttConfig.from_url(url, gateway_id="child")
publisher = MqttPublisher(
    config, db_path, will_topic=config.state_topic, will_payload=will.encode(),
    birth_payload_fn=lambda: birth.encode(), will_delay_s=int(will_delay_s),
    max_inflight=int(max_inflight), reconnect_min_delay_s=0.05,
)
publisher.start_sync()
time.sleep(120)
"""


def start_child_publisher(url: str, db_path: Path, *, max_inflight=100, will_delay_s=0):
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD_PUBLISHER,
            url,
            str(db_path),
            str(max_inflight),
            str(will_delay_s),
            WILL.decode(),
            BIRTH.decode(),
        ],
        stdin=subprocess.DEVNULL,
    )


def kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=5)


# ---- MqttConfig --------------------------------------------------------------


def test_config_from_url_defaults_and_topics():
    config = MqttConfig.from_url("mqtt://broker.local", gateway_id="pi-7")
    assert (config.host, config.port, config.tls) == ("broker.local", 1883, False)
    assert config.topic_root == "dermtwin/v1/pi-7"
    assert config.state_topic == "dermtwin/v1/pi-7/state"
    assert config.topic("s-3f2a", "delta") == "dermtwin/v1/pi-7/s-3f2a/delta"
    assert config.effective_client_id == "dermtwin-pi-7"
    assert config.url == "mqtt://broker.local:1883"

    tls = MqttConfig.from_url("mqtts://user:p%40ss@[::1]", client_id="gw-a", keepalive_s=30)
    assert (tls.host, tls.port, tls.tls) == ("::1", 8883, True)
    assert (tls.username, tls.password, tls.client_id, tls.keepalive_s) == (
        "user",
        "p@ss",
        "gw-a",
        30,
    )
    assert "p@ss" not in repr(tls)
    assert tls.url == "mqtts://[::1]:8883"


def test_config_password_from_environment(monkeypatch):
    monkeypatch.setenv("DT_MQTT_PASSWORD", "from-env")
    config = MqttConfig.from_url("mqtt://h:1", username="gw", password_env="DT_MQTT_PASSWORD")
    assert config.password == "from-env"


def test_config_tls_files_are_checked(tmp_path):
    certs = make_certificates(tmp_path)
    config = MqttConfig.from_url("mqtts://h", ca_file=certs["ca.pem"],
                                 cert_file=certs["client.pem"], key_file=certs["client.key"])
    assert config.ca_file == str(certs["ca.pem"])
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate")
    with pytest.raises(MqttConfigError, match=r"^ca_file '.*not\.pem': not a usable PEM CA"):
        MqttConfig.from_url("mqtts://h", ca_file=not_pem)
    with pytest.raises(MqttConfigError, match=r"^cert_file '.*client\.pem' / key_file "
                                              r"'.*server\.key': not a PEM certificate with"):
        MqttConfig.from_url("mqtts://h", ca_file=certs["ca.pem"], cert_file=certs["client.pem"],
                            key_file=certs["server.key"])


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("foo://x", {}, "broker url 'foo://x': scheme must be mqtt or mqtts"),
        ("mqtt://", {}, "broker url 'mqtt://': host is missing"),
        ("mqtt://h:99999", {}, "broker url 'mqtt://h:99999': port"),
        ("mqtt://h:1/path", {}, "broker url 'mqtt://h:1/path': must be scheme://host"),
        ("mqtt://h", {"password_env": "DT_SURELY_UNSET_VAR"}, "password_env 'DT_SURELY_UNSET_VAR'"),
        ("mqtt://h", {"password": "p", "password_env": "X"}, "password_env: give either"),
        ("mqtt://h", {"password": "p"}, "password: given without a username"),
        ("mqtt://h", {"ca_file": "/etc/hostname"}, "ca_file: TLS files need an mqtts"),
        ("mqtts://h", {"ca_file": "/no/such/ca.pem"}, "ca_file '/no/such/ca.pem': no such file"),
        ("mqtts://h", {"key_file": "/etc/hostname"}, "key_file: given without cert_file"),
        ("mqtt://h", {"gateway_id": "a/b"}, "gateway_id 'a/b'"),
        ("mqtt://h", {"gateway_id": "#"}, "gateway_id '#'"),
        ("mqtt://h", {"keepalive_s": -1}, "keepalive_s -1"),
        ("mqtt://h", {"client_id": ""}, "client_id ''"),
        ("mqtt://h", {"max_payload_bytes": 0}, "max_payload_bytes 0"),
    ],
)
def test_config_errors_name_the_field(url, options, message):
    with pytest.raises(MqttConfigError) as caught:
        MqttConfig.from_url(url, **options)
    assert message in str(caught.value)


def test_run_takes_a_payload_limit_and_refuses_a_bad_one(capsys):
    from gateway.cli import build_parser

    args = build_parser().parse_args(["run", "--broker", "mqtt://h", "--max-payload-bytes", "2000"])
    assert args.max_payload_bytes == 2000
    assert build_parser().parse_args(["run", "--broker", "mqtt://h"]).max_payload_bytes is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--broker", "mqtt://h", "--max-payload-bytes", "0"])
    assert "--max-payload-bytes" in capsys.readouterr().err


def test_config_topic_levels_are_checked():
    with pytest.raises(MqttConfigError, match="topic level 'a/b'"):
        MqttConfig.from_url("mqtt://h").topic("a/b")


# ---- LocalBroker -------------------------------------------------------------


def test_find_mosquitto_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(broker_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(broker_module, "SEARCH_DIRS", ())
    with pytest.raises(BrokerError, match=r"sudo apt-get install mosquitto mosquitto-clients"):
        find_mosquitto()


def test_broker_that_fails_to_start_reports_its_log(tmp_path):
    broker = LocalBroker(data_dir=tmp_path, extra_config=["no_such_option_xyz 1"])
    with pytest.raises(BrokerError) as caught:
        broker.start_sync()
    assert "no_such_option_xyz" in str(caught.value)
    assert not broker.running


def test_broker_restarts_on_the_same_port(mqtt_broker, mqtt_collector):
    port = mqtt_broker.port
    assert mqtt_broker.url == f"mqtt://127.0.0.1:{port}"
    mqtt_collector(mqtt_broker)
    mqtt_broker.stop_sync()
    assert not mqtt_broker.running
    mqtt_broker.start_sync()
    assert mqtt_broker.running and mqtt_broker.port == port
    collector = mqtt_collector(mqtt_broker, "after/restart")
    assert collector.messages == []


async def test_broker_async_context_manager_stops_the_process():
    async with LocalBroker() as broker:
        assert broker.running
    assert not broker.running


# ---- MqttPublisher -----------------------------------------------------------


def test_birth_is_retained_and_clean_stop_leaves_offline_state(
    mqtt_broker, mqtt_collector, db_path
):
    publisher = make_publisher(mqtt_broker.url, db_path)
    state_topic = publisher.will_topic
    publisher.start_sync()
    try:
        assert publisher.wait_connected(5), publisher.last_error
        live = mqtt_collector(mqtt_broker, state_topic)
        late = mqtt_collector(mqtt_broker, state_topic)  # subscribes after the birth
        (birth,) = late.wait_for(lambda ms: len(ms) >= 1, what="retained birth")
        assert (birth.payload, birth.retain) == (BIRTH, True)
    finally:
        publisher.stop_sync()
    live.wait_for(lambda ms: OFFLINE in [m.payload for m in ms], what="offline state")
    after = mqtt_collector(mqtt_broker, state_topic)
    (retained,) = after.wait_for(lambda ms: len(ms) >= 1, what="retained state after stop")
    assert (retained.payload, retained.retain) == (OFFLINE, True)
    assert WILL not in live.payloads(state_topic), "a clean stop must not trigger the Will"


def test_will_is_delivered_after_its_delay_when_the_gateway_dies(
    mqtt_broker, mqtt_collector, db_path
):
    will_delay_s = 2
    collector = mqtt_collector(mqtt_broker, "dermtwin/v1/child/state")
    child = start_child_publisher(mqtt_broker.url, db_path, will_delay_s=will_delay_s)
    try:
        collector.wait_for(lambda ms: BIRTH in [m.payload for m in ms], what="child birth")
    finally:
        kill(child)
    killed_at = time.monotonic()
    messages = collector.wait_for(
        lambda ms: WILL in [m.payload for m in ms], timeout=will_delay_s + 4, what="the Will"
    )
    will = next(m for m in messages if m.payload == WILL)
    # mosquitto counts whole seconds, so a 2 s delay is at least 1 s.
    assert will.received_at - killed_at >= 0.9, "Will Delay Interval was not honoured"
    retained = mqtt_collector(mqtt_broker, "dermtwin/v1/child/state").wait_for(
        lambda ms: len(ms) >= 1, what="retained Will"
    )
    assert (retained[0].payload, retained[0].retain) == (WILL, True)


def test_rows_put_while_the_broker_is_down_are_all_delivered_in_order(
    tmp_path, mqtt_collector, tcp_cable, db_path
):
    broker = LocalBroker(data_dir=tmp_path / "broker")
    samples = sample_messages("dermtwin/v1/gw1/s1/samples", 0, 150)
    deltas = sample_messages("dermtwin/v1/gw1/s2/delta", 0, 150)
    expected = [m for pair in zip(samples, deltas, strict=True) for m in pair]
    put_rows(db_path, expected)
    # The publisher reaches the broker through a cable that is down until the
    # test's subscriber is ready, so the subscriber cannot miss anything.
    cable = tcp_cable(broker.port, connected=False)
    publisher = make_publisher(cable.url, db_path)
    publisher.start_sync()
    try:
        assert publisher.pending == len(expected)
        wait_until(lambda: publisher.last_error is not None, what="a refused connection")
        assert not publisher.connected
        broker.start_sync()
        collector = mqtt_collector(broker, "dermtwin/#")
        cable.restore()
        received = collector.wait_for(has_all(expected), what="all outbox rows")
        wait_until(lambda: publisher.pending == 0, what="outbox drained")
    finally:
        publisher.stop_sync()
        broker.close()
    assert_delivered_in_order(received, expected)
    assert publisher.published == len(expected)
    assert outbox_count(db_path) == 0


def test_connection_lost_mid_stream_loses_nothing(mqtt_broker, mqtt_collector, tcp_cable, db_path):
    topic = "dermtwin/v1/gw1/s1/samples"
    collector = mqtt_collector(mqtt_broker, topic)
    cable = tcp_cable(mqtt_broker.port)
    publisher = make_publisher(cable.url, db_path, max_inflight=10)
    publisher.start_sync()
    try:
        assert publisher.wait_connected(5), publisher.last_error
        before = sample_messages(topic, 0, 300)
        put_rows(db_path, before)
        publisher.kick()
        collector.wait_for(lambda ms: len(ms) >= 30, what="the stream to start")
        cable.cut()  # rows in flight now: some reached the broker, some did not
        wait_until(lambda: not publisher.connected, what="publisher to notice the cut")
        during = sample_messages(topic, 300, 400)
        put_rows(db_path, during)
        publisher.kick()
        assert outbox_count(db_path) >= len(during)
        cable.restore()
        received = collector.wait_for(has_all(before + during), what="every row")
        wait_until(lambda: publisher.pending == 0, what="outbox drained")
        assert publisher.connects >= 2
    finally:
        publisher.stop_sync()
    assert_delivered_in_order(received, before + during)
    assert outbox_count(db_path) == 0


def test_broker_restart_on_the_same_port_loses_nothing(
    mqtt_broker, mqtt_collector, tcp_cable, db_path
):
    topic = "dermtwin/v1/gw1/s1/samples"
    collector = mqtt_collector(mqtt_broker, topic)
    cable = tcp_cable(mqtt_broker.port)
    publisher = make_publisher(cable.url, db_path, max_inflight=10)
    publisher.start_sync()
    try:
        before = sample_messages(topic, 0, 100)
        put_rows(db_path, before)
        publisher.kick()
        collector.wait_for(has_all(before), what="rows before the restart")
        wait_until(lambda: publisher.pending == 0, what="rows acknowledged before the restart")
        cable.cut()
        mqtt_broker.stop_sync()
        wait_until(lambda: not publisher.connected, what="publisher to notice the outage")
        during = sample_messages(topic, 100, 200)
        put_rows(db_path, during)
        publisher.kick()
        mqtt_broker.start_sync()
        collector.wait_subscribed(2)  # back on the restarted broker before the gateway is
        cable.restore()
        received = collector.wait_for(has_all(before + during), what="rows after the restart")
        wait_until(lambda: publisher.pending == 0, what="outbox drained")
    finally:
        publisher.stop_sync()
    assert_delivered_in_order(received, before + during)


@pytest.fixture
def roomy_broker(tmp_path) -> Iterator[LocalBroker]:
    """A broker that queues the whole stream for a subscriber slower than the publisher
    (mosquitto's default max_queued_messages, 1000, would drop the rest for it)."""
    broker = LocalBroker(data_dir=tmp_path / "roomy-broker",
                         extra_config=["max_queued_messages 10000"])
    broker.start_sync()
    try:
        yield broker
    finally:
        broker.close()


def test_unacknowledged_rows_survive_a_publisher_crash(roomy_broker, mqtt_collector, db_path):
    mqtt_broker = roomy_broker
    topic = "dermtwin/v1/child/s1/samples"
    expected = sample_messages(topic, 0, 1500)
    put_rows(db_path, expected)
    collector = mqtt_collector(mqtt_broker, topic)
    child = start_child_publisher(mqtt_broker.url, db_path, max_inflight=1)
    try:
        collector.wait_for(lambda ms: len(ms) >= 50, what="the child to publish")
        # Acknowledged rows are deleted in batches: wait for the first batch.
        wait_until(lambda: outbox_count(db_path) < len(expected), poll_s=0.002,
                   what="the child to delete acknowledged rows")
    finally:
        kill(child)
    left = outbox_count(db_path)
    assert 0 < left < len(expected), "the crash should come mid-stream"

    publisher = make_publisher(mqtt_broker.url, db_path, gateway_id="child")
    publisher.start_sync()
    try:
        received = collector.wait_for(has_all(expected), what="the rest after restart")
        wait_until(lambda: publisher.pending == 0, what="outbox drained")
    finally:
        publisher.stop_sync()
    assert_delivered_in_order(received, expected)
    assert publisher.published >= left


def test_rows_stay_in_the_outbox_when_stopped_before_any_connection(tmp_path, db_path):
    unused_port = LocalBroker(data_dir=tmp_path / "b").port  # never started
    put_rows(db_path, sample_messages("t/a", 0, 5))
    publisher = make_publisher(f"mqtt://127.0.0.1:{unused_port}", db_path)
    publisher.start_sync()
    wait_until(lambda: publisher.last_error is not None, what="a failed connection attempt")
    assert not publisher.connected
    publisher.stop_sync(timeout_s=1)
    assert outbox_count(db_path) == 5


def test_password_protected_broker(tmp_path, mqtt_collector, db_path):
    broker = LocalBroker(data_dir=tmp_path / "broker", users={"gw1": "s3cret", "reader": "r"})
    broker.start_sync()
    try:
        wrong = make_publisher(broker.url, db_path, username="gw1", password="wrong")
        wrong.start_sync()
        try:
            wait_until(
                lambda: "Not authorized" in (wrong.last_refusal or ""),
                what="the broker to refuse a wrong password",
            )
            assert not wrong.connected
        finally:
            wrong.stop_sync(timeout_s=1)

        collector = mqtt_collector(broker, "dermtwin/#", username="reader", password="r")
        put_rows(db_path, [("dermtwin/v1/gw1/s1/alert", b"80% MED")])
        right = make_publisher(broker.url, db_path, username="gw1", password="s3cret")
        right.start_sync()
        try:
            collector.wait_for(
                lambda ms: b"80% MED" in [m.payload for m in ms],
                what="delivery with the right password",
            )
        finally:
            right.stop_sync()
    finally:
        broker.close()


def test_anonymous_client_is_refused_by_a_password_broker(tmp_path):
    with LocalBroker(data_dir=tmp_path, users={"u": "p"}) as broker:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        client.connect(broker.host, broker.port)
        result = {}
        client.on_connect = lambda c, u, f, rc, p: result.setdefault("rc", rc)
        deadline = time.monotonic() + 5
        while "rc" not in result and time.monotonic() < deadline:
            client.loop(timeout=0.1)
        client.disconnect()
        assert str(result.get("rc")) == "Not authorized"


def test_puback_packet_too_large_parks_the_row_instead_of_looping(
    tmp_path, mqtt_collector, db_path
):
    broker = LocalBroker(data_dir=tmp_path / "broker", extra_config=["message_size_limit 200"])
    broker.start_sync()
    try:
        topic = "dermtwin/v1/gw1/s1/samples"
        collector = mqtt_collector(broker, topic)
        big_id = put_rows(db_path, [(topic, b"small-1"), (topic, b"x" * 500), (topic, b"small-2")])[
            1
        ]
        publisher = make_publisher(broker.url, db_path)
        publisher.start_sync()
        try:
            collector.wait_for(
                lambda ms: {b"small-1", b"small-2"} <= {m.payload for m in ms},
                what="the small messages around the big one",
            )
            wait_until(
                lambda: publisher.pending == 0 and publisher.failed == 1,
                what="the big row to be parked",
            )
            assert publisher.connects <= 3
        finally:
            publisher.stop_sync()
        conn = sqlite3.connect(db_path)
        (parked,) = Outbox(conn).parked()
        conn.close()
        assert parked.message.id == big_id
        assert "size limit" in parked.reason
        assert b"x" * 500 not in collector.payloads(topic)
    finally:
        broker.close()


def test_payload_over_configured_limit_is_parked_without_publishing(
    mqtt_broker, mqtt_collector, db_path
):
    topic = "dermtwin/v1/gw1/s1/samples"
    collector = mqtt_collector(mqtt_broker, topic)
    put_rows(db_path, [(topic, b"y" * 101), (topic, b"fits")])
    publisher = make_publisher(mqtt_broker.url, db_path, max_payload_bytes=100)
    publisher.start_sync()
    try:
        collector.wait_for(lambda ms: b"fits" in [m.payload for m in ms], what="the small row")
        wait_until(lambda: publisher.pending == 0, what="outbox drained")
        assert (publisher.failed, publisher.published, publisher.connects) == (1, 1, 1)
    finally:
        publisher.stop_sync()
    assert collector.payloads(topic) == [b"fits"]


def test_many_rows_respect_the_brokers_receive_maximum(mqtt_broker, mqtt_collector, db_path):
    topic = "dermtwin/v1/gw1/s1/samples"
    collector = mqtt_collector(mqtt_broker, topic)
    expected = sample_messages(topic, 0, 1000)
    publisher = make_publisher(mqtt_broker.url, db_path, max_inflight=100)
    publisher.start_sync()
    try:
        assert publisher.wait_connected(5)
        put_rows(db_path, expected)
        publisher.kick()
        received = collector.wait_for(has_all(expected), what="1000 rows")
        wait_until(lambda: publisher.pending == 0, what="outbox drained")
        # mosquitto announces Receive Maximum 20; exceeding it would get us disconnected.
        assert publisher.connects == 1, publisher.last_error
    finally:
        publisher.stop_sync()
    assert [m.payload for m in received] == [p for _, p in expected]


def test_message_expiry_counts_time_in_the_outbox(mqtt_broker, mqtt_collector, db_path):
    conn = sqlite3.connect(db_path)
    long_ago_ms = int(time.time() * 1000) - 3_600_000
    Outbox(conn, clock_ms=lambda: long_ago_ms).put("dermtwin/v1/gw1/s1/twin", b"stale", expiry_s=60)
    Outbox(conn).put("dermtwin/v1/gw1/s1/twin", b"fresh", retain=True, expiry_s=3600)
    conn.commit()
    conn.close()
    collector = mqtt_collector(mqtt_broker, "dermtwin/v1/gw1/s1/twin")
    publisher = make_publisher(mqtt_broker.url, db_path)
    publisher.start_sync()
    try:
        (fresh,) = collector.wait_for(lambda ms: len(ms) >= 1, what="the fresh snapshot")
        wait_until(lambda: publisher.pending == 0, what="outbox drained")
        assert publisher.expired == 1
    finally:
        publisher.stop_sync()
    assert fresh.payload == b"fresh"
    assert fresh.message_expiry_s is not None and 3590 <= fresh.message_expiry_s <= 3600
    assert collector.payloads("dermtwin/v1/gw1/s1/twin") == [b"fresh"]


async def test_asyncio_face_start_kick_stop(mqtt_broker, mqtt_collector, db_path):
    topic = "dermtwin/v1/gw1/s1/delta"
    collector = mqtt_collector(mqtt_broker, topic)
    publisher = make_publisher(mqtt_broker.url, db_path)
    await publisher.start()
    try:
        put_rows(db_path, [(topic, json.dumps({"rev": 1}).encode())])
        publisher.kick()
        import asyncio

        await asyncio.to_thread(collector.wait_for, lambda ms: len(ms) == 1, 5, "the delta")
    finally:
        await publisher.stop()
    assert publisher.stats().published == 1
    assert not publisher.connected


def test_start_with_an_unusable_database_path_names_it(tmp_path):
    bad = tmp_path / "no-such-dir" / "gateway.db"
    publisher = make_publisher("mqtt://127.0.0.1:1", bad)
    with pytest.raises(RuntimeError, match="no-such-dir"):
        publisher.start_sync()


def test_brokers_maximum_packet_size_is_respected_before_publishing(
    tmp_path, mqtt_collector, db_path
):
    with LocalBroker(data_dir=tmp_path / "broker", extra_config=["max_packet_size 300"]) as broker:
        topic = "dermtwin/v1/gw1/s1/samples"
        collector = mqtt_collector(broker, topic)
        put_rows(db_path, [(topic, b"z" * 400), (topic, b"fits")])
        publisher = make_publisher(broker.url, db_path)
        publisher.start_sync()
        try:
            collector.wait_for(lambda ms: b"fits" in [m.payload for m in ms], what="small row")
            wait_until(lambda: publisher.pending == 0, what="outbox drained")
            assert (publisher.failed, publisher.connects) == (1, 1)
        finally:
            publisher.stop_sync()
        conn = sqlite3.connect(db_path)
        (parked,) = Outbox(conn).parked()
        conn.close()
        assert "Maximum Packet Size 300" in parked.reason


def test_qos0_rows_are_published_and_deleted(mqtt_broker, mqtt_collector, db_path):
    topic = "dermtwin/v1/gw1/s1/samples"
    collector = mqtt_collector(mqtt_broker, topic)
    put_rows(db_path, [(topic, b"q0", 0), (topic, b"q1", 1)])
    publisher = make_publisher(mqtt_broker.url, db_path)
    publisher.start_sync()
    try:
        collector.wait_for(lambda ms: len(ms) >= 2, what="both rows")
        wait_until(lambda: publisher.pending == 0, what="outbox drained")
    finally:
        publisher.stop_sync()
    assert collector.payloads(topic) == [b"q0", b"q1"]
    assert publisher.published == 2


def test_the_same_publisher_can_stop_and_start_again(mqtt_broker, mqtt_collector, db_path):
    topic = "dermtwin/v1/gw1/s1/alert"
    collector = mqtt_collector(mqtt_broker, topic)
    publisher = make_publisher(mqtt_broker.url, db_path)
    publisher.start_sync()
    put_rows(db_path, [(topic, b"first")])
    publisher.kick()
    collector.wait_for(lambda ms: len(ms) >= 1, what="first row")
    publisher.stop_sync()
    put_rows(db_path, [(topic, b"second")])
    publisher.start_sync()
    try:
        collector.wait_for(lambda ms: len(ms) >= 2, what="row put while stopped")
        wait_until(lambda: publisher.pending == 0, what="outbox drained")
    finally:
        publisher.stop_sync()
    assert collector.payloads(topic) == [b"first", b"second"]


# ---- size limits: split, refuse, retry, never a reconnect loop ---------------


def samples_rows(topic: str, batches: int, per_batch: int) -> list[tuple[str, bytes]]:
    """`{subject}/samples` payloads (docs/mqtt.md, columnar) of `per_batch` samples each:
    temperature and UV alternating, values that do not compress to a repeated difference."""
    rows = []
    for b in range(batches):
        seqs = list(range(b * per_batch, (b + 1) * per_batch))
        doc = samples_message.encode(
            3, seqs, [1764262800000 + 5_000 * s + (s * s) % 89 for s in seqs],
            [s % 2 for s in seqs], [(s * 7919) % 100_003 for s in seqs], historical=True)
        rows.append((topic, json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()))
    return rows


def received_seqs(collector, topic: str) -> list[int]:
    return [sample.seq for payload in collector.payloads(topic)
            for sample in samples_message.decode(json.loads(payload))]


def all_samples(topic: str, count: int):
    return lambda ms: set(range(count)) <= {
        sample.seq for m in ms if m.topic == topic
        for sample in samples_message.decode(json.loads(m.payload))}


@pytest.mark.parametrize("configured_limit", [None, 2000])
def test_samples_over_the_brokers_message_size_limit_arrive_split_without_a_reconnect_loop(
    tmp_path, mqtt_collector, db_path, configured_limit
):
    """mosquitto `message_size_limit 2000`, batches of ~3-7 KB: every sample reaches a plain
    subscriber. Told the limit (`--max-payload-bytes`), the publisher never breaks it; not
    told, mosquitto drops the connection over the first big message and the publisher
    learns the limit from it in two strikes, then splits every batch to fit."""
    extra = ["message_size_limit 2000"]
    with LocalBroker(data_dir=tmp_path / "broker", extra_config=extra) as broker:
        topic = "dermtwin/v1/gw1/s1/samples"
        collector = mqtt_collector(broker, "dermtwin/#")
        rows = samples_rows(topic, 40, 250)
        sizes = [len(p) for _, p in rows]
        assert min(sizes) > 2000 and max(sizes) < 8000
        deltas = sample_messages("dermtwin/v1/gw1/s1/delta", 0, 40)
        put_rows(db_path, [m for pair in zip(rows, deltas, strict=True) for m in pair])
        publisher = make_publisher(broker.url, db_path, max_payload_bytes=configured_limit)
        publisher.start_sync()
        try:
            collector.wait_for(all_samples(topic, 40 * 250), timeout=20, what="every sample")
            collector.wait_for(has_all(deltas), what="the deltas between the batches")
            wait_until(lambda: publisher.pending == 0, what="outbox drained")
            assert publisher.failed == 0 and publisher.parked_count == 0
            assert publisher.split == 40
            if configured_limit is None:
                # two strikes to learn the limit; then nothing over it is ever sent again
                assert publisher.connects <= 3, (publisher.connects, publisher.refusals, publisher.failed,
                                         publisher.policy.learned_max_payload_bytes)
                assert publisher.refusals == {"dropped_connection": 1}
            else:
                assert publisher.connects == 1
        finally:
            publisher.stop_sync()
        assert all(len(p) <= 2000 for p in collector.payloads(topic))
        assert sorted(set(received_seqs(collector, topic))) == list(range(40 * 250))
        assert "oversize" not in broker.log_tail(200) or configured_limit is None


def test_samples_fit_the_maximum_packet_size_from_connack(tmp_path, mqtt_collector, db_path):
    with LocalBroker(data_dir=tmp_path / "broker", extra_config=["max_packet_size 1500"]) as broker:
        topic = "dermtwin/v1/gw1/s1/samples"
        collector = mqtt_collector(broker, topic)
        put_rows(db_path, samples_rows(topic, 10, 200))
        publisher = make_publisher(broker.url, db_path)
        publisher.start_sync()
        try:
            collector.wait_for(all_samples(topic, 2000), what="every sample")
            wait_until(lambda: publisher.pending == 0, what="outbox drained")
            assert (publisher.connects, publisher.failed, publisher.split) == (1, 0, 10)
            assert publisher.max_payload_bytes is not None
            assert publisher.max_payload_bytes < 1500
        finally:
            publisher.stop_sync()
        assert "oversize" not in broker.log_tail(200)


def test_parked_row_is_retried_when_a_reconnect_brings_a_larger_limit(
    tmp_path, mqtt_collector, db_path
):
    """A message that can never fit is refused before publishing, counted, and parked; the
    broker comes back with a larger Maximum Packet Size and the row is delivered."""
    small = LocalBroker(data_dir=tmp_path / "small", extra_config=["max_packet_size 300"])
    small.start_sync()
    topic = "dermtwin/v1/gw1/s1/twin"
    put_rows(db_path, [(topic, b"t" * 400, 1, True), (topic.replace("twin", "delta"), b"d1")])
    publisher = make_publisher(small.url, db_path)
    publisher.start_sync()
    large = None
    try:
        wait_until(lambda: publisher.pending == 0 and publisher.parked_count == 1,
                   what="the twin parked, the delta delivered")
        assert publisher.refusals == {"over_size_limit": 1}
        assert publisher.connects == 1
        small.stop_sync()
        wait_until(lambda: not publisher.connected, what="the outage")
        large = LocalBroker(port=small.port, data_dir=tmp_path / "large",
                            extra_config=["max_packet_size 1000"])
        large.start_sync()
        collector = mqtt_collector(large, topic)
        wait_until(lambda: publisher.connects == 2, what="the reconnect")
        (twin,) = collector.wait_for(lambda ms: len(ms) >= 1, what="the parked twin")
        assert twin.payload == b"t" * 400
        (retained,) = mqtt_collector(large, topic).wait_for(lambda ms: len(ms) >= 1,
                                                            what="the twin, retained")
        assert retained.retain
        wait_until(lambda: publisher.parked_count == 0 and publisher.pending == 0,
                   what="the parked row gone")
    finally:
        publisher.stop_sync()
        small.close()
        if large is not None:
            large.close()


def test_configured_limit_change_retries_parked_rows(mqtt_broker, mqtt_collector, db_path):
    topic = "dermtwin/v1/gw1/s1/alert"
    collector = mqtt_collector(mqtt_broker, topic)
    put_rows(db_path, [(topic, b"a" * 150)])
    publisher = make_publisher(mqtt_broker.url, db_path, max_payload_bytes=100)
    publisher.start_sync()
    try:
        wait_until(lambda: publisher.parked_count == 1, what="the alert parked")
        assert collector.messages == []
        publisher.set_max_payload_bytes(200)
        collector.wait_for(lambda ms: len(ms) == 1, what="the alert after the limit change")
        wait_until(lambda: publisher.parked_count == 0 and publisher.pending == 0,
                   what="outbox and parked rows empty")
    finally:
        publisher.stop_sync()


# ---- delete on PUBACK, not on publish ----------------------------------------


def test_rows_whose_pubacks_never_came_survive_a_crash_and_go_out_after_restart(
    mqtt_broker, mqtt_collector, db_path
):
    """The broker has every message, the publisher has none of their PUBACKs (a proxy keeps
    them back), and the publisher process is killed: every row is still in the outbox, and
    the next publisher delivers it. A publisher that deleted rows when it published them
    would have nothing left to deliver."""
    topic = "dermtwin/v1/child/s1/alert"
    expected = sample_messages(topic, 0, 12)
    put_rows(db_path, expected)
    collector = mqtt_collector(mqtt_broker, topic)
    proxy = PubackHoldingProxy(mqtt_broker.port)
    try:
        child = start_child_publisher(proxy.url, db_path)
        try:
            collector.wait_for(has_all(expected), what="the broker to have every message")
            wait_until(lambda: proxy.held_pubacks() >= len(expected), what="held PUBACKs")
            time.sleep(0.3)   # several of the publisher's settle periods
        finally:
            kill(child)
    finally:
        proxy.close()
    assert outbox_count(db_path) == len(expected)

    publisher = make_publisher(mqtt_broker.url, db_path, gateway_id="child")
    publisher.start_sync()
    try:
        collector.wait_for(lambda ms: len(ms) >= 2 * len(expected), what="the redelivery")
        wait_until(lambda: publisher.pending == 0, what="outbox drained")
    finally:
        publisher.stop_sync()
    assert sorted(collector.payloads(topic)) == sorted([p for _, p in expected] * 2)
    assert publisher.published == len(expected)


# ---- TLS: configuration, not code -------------------------------------------


def make_certificates(directory: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make test certificates")
    paths = {
        name: directory / name
        for name in ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")
    }
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=directory)

    run(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=dermtwin test CA",
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, subject in (("server", "/CN=127.0.0.1"), ("client", "/CN=gw1")):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        )
    return paths


def test_tls_with_client_certificate_is_configuration_only(tmp_path, db_path):
    certs = make_certificates(tmp_path)
    broker = LocalBroker(
        data_dir=tmp_path / "broker",
        tls_cert_file=certs["server.pem"],
        tls_key_file=certs["server.key"],
        tls_client_ca_file=certs["ca.pem"],
    )
    broker.start_sync()
    try:
        assert broker.url.startswith("mqtts://127.0.0.1:")
        config = MqttConfig.from_url(
            broker.url,
            gateway_id="tls",
            ca_file=certs["ca.pem"],
            cert_file=certs["client.pem"],
            key_file=certs["client.key"],
        )
        put_rows(db_path, [(config.topic("s1", "alert"), b"over TLS")])
        publisher = MqttPublisher(
            config,
            db_path,
            will_topic=config.state_topic,
            will_payload=WILL,
            birth_payload_fn=lambda: BIRTH,
            **FAST_RECONNECT,
        )
        publisher.start_sync()
        try:
            assert publisher.wait_connected(5), publisher.last_error
            wait_until(lambda: publisher.pending == 0, what="the row to be acknowledged")
            assert publisher.published == 1
        finally:
            publisher.stop_sync()

        without_client_cert = MqttConfig.from_url(
            broker.url, gateway_id="tls2", ca_file=certs["ca.pem"]
        )
        refused = MqttPublisher(
            without_client_cert,
            db_path,
            will_topic=without_client_cert.state_topic,
            will_payload=WILL,
            birth_payload_fn=lambda: BIRTH,
            **FAST_RECONNECT,
        )
        refused.start_sync()
        try:
            wait_until(
                lambda: "CERTIFICATE_REQUIRED" in (refused.last_error or ""),
                what="the broker to demand a client certificate",
            )
            assert not refused.connected
        finally:
            refused.stop_sync(timeout_s=1)
    finally:
        broker.close()


async def test_gateway_draining_a_backlog_through_a_broker_size_limit_delivers_every_sample(
    tmp_path, mqtt_collector, monkeypatch
):
    """Issue 10's fault, end to end: a patch drains a backlog through the gateway to a broker
    with `message_size_limit 1000`, below a batch's samples message (~1.5-3 KB), and the
    gateway is not told. A plain subscriber still gets every stored sample; the gateway
    learns the limit in at most two reconnects and parks nothing."""
    from functools import partial

    import gateway_harness
    from gateway_harness import GatewayRig, wait_for

    monkeypatch.setattr(gateway_harness, "LocalBroker",
                        partial(LocalBroker, extra_config=["message_size_limit 1000"]))
    async with GatewayRig(tmp_path, patches=1, seed=5) as rig:
        device_id, _, subject = rig.identities[0]
        rig.patches[0].preload_backlog(1500)
        collector = mqtt_collector(rig.broker, f"dermtwin/v1/rig/{subject}/samples")
        gateway = await rig.start_gateway()
        await wait_for(lambda: gateway.store.sample_count() >= 1500, 60, "the backlog stored")

        def delivered_everything() -> bool:
            stored = set(gateway.store.sample_seqs(device_id))
            got = set(received_seqs(collector, f"dermtwin/v1/rig/{subject}/samples"))
            return stored <= got

        await wait_for(delivered_everything, 60, "every stored sample at the subscriber")
        publisher = gateway.publisher
        assert publisher.connects <= 3, (publisher.connects, publisher.refusals, publisher.failed,
                                         publisher.policy.learned_max_payload_bytes)
        assert publisher.split > 0 and publisher.failed == 0
        assert publisher.refusals == {"dropped_connection": 1}
    assert all(len(p) <= 1000 for p in collector.payloads(f"dermtwin/v1/rig/{subject}/samples"))


def test_outbox_that_cannot_delete_is_reported_once_and_drained_when_it_can(
    mqtt_broker, mqtt_collector, db_path, caplog
):
    """Deletions fail (a trigger stands in for a full disk): the messages still go out, the
    rows stay (sent twice at worst, never lost), the error is logged once, not per retry,
    and once deleting works again the outbox drains and the recovery is logged."""
    topic = "dermtwin/v1/gw1/s1/delta"
    expected = sample_messages(topic, 0, 30)
    put_rows(db_path, expected)
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TRIGGER refuse_delete BEFORE DELETE ON outbox "
                 "BEGIN SELECT RAISE(FAIL, 'database or disk is full (test)'); END")
    conn.commit()
    collector = mqtt_collector(mqtt_broker, topic)
    publisher = make_publisher(mqtt_broker.url, db_path)
    caplog.set_level(logging.INFO, logger="gateway.mqtt.publisher")
    publisher.start_sync()
    try:
        collector.wait_for(has_all(expected), what="every message, deletes failing or not")
        time.sleep(0.5)   # ten settle periods: ten failed DELETEs
        assert outbox_count(db_path) == len(expected)
        assert "disk is full (test)" in (publisher.last_error or "")
        conn.execute("DROP TRIGGER refuse_delete")
        conn.commit()
        wait_until(lambda: outbox_count(db_path) == 0, what="the outbox drained")
    finally:
        publisher.stop_sync()
        conn.close()
    errors = [r for r in caplog.records if "outbox database error" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert any("usable again" in r.getMessage() for r in caplog.records)


def test_a_bug_in_puback_handling_is_logged_while_paho_logs_nothing(
    mqtt_broker, mqtt_collector, db_path, caplog, monkeypatch
):
    """paho's logger is off while connected (it cost a call per packet), so paho would
    swallow an exception from our PUBACK callback: the publisher logs it itself, says it in
    last_error, and goes on publishing."""
    topic = "dermtwin/v1/gw1/s1/delta"
    expected = sample_messages(topic, 0, 5)
    collector = mqtt_collector(mqtt_broker, topic)
    publisher = make_publisher(mqtt_broker.url, db_path)
    real_on_puback = publisher.policy.on_puback
    calls = []

    def on_puback_failing_once(token, *args):
        calls.append(token)
        if len(calls) == 1:
            raise RuntimeError("injected bug")
        return real_on_puback(token, *args)

    monkeypatch.setattr(publisher.policy, "on_puback", on_puback_failing_once)
    caplog.set_level(logging.ERROR, logger="gateway.mqtt.publisher")
    publisher.start_sync()
    try:
        assert publisher.wait_connected(5), publisher.last_error
        wait_until(lambda: calls, what="the birth message's PUBACK")
        put_rows(db_path, expected)
        publisher.kick()
        collector.wait_for(has_all(expected), what="every message after the failure")
    finally:
        publisher.stop_sync(timeout_s=1)
    assert "injected bug" in (publisher.last_error or "")
    assert publisher.internal_errors == 1 and "injected bug" in publisher.last_internal_error
    logged = [r for r in caplog.records if r.exc_info and "injected bug" in str(r.exc_info[1])]
    assert len(logged) == 1, [r.getMessage() for r in caplog.records]
