"""Pytest fixtures for MQTT tests: a private mosquitto and an independent subscriber.

Registered from tests/conftest.py with `pytest_plugins = ["mqtt_fixtures"]`
(tests/ on sys.path). Fixtures:
- `mqtt_broker`: a started `LocalBroker` (anonymous, no persistence), stopped after the test.
- `mqtt_collector`: a factory `collect(broker, topic_filter="#", **options) -> MessageCollector`;
  every collector it made is closed after the test.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import paho.mqtt.client as paho
import pytest

from simulation.broker import LocalBroker, free_loopback_port

DEFAULT_WAIT_S = 10.0
SUBSCRIBE_TIMEOUT_S = 5.0
COLLECTOR_RECONNECT_DELAY_S = 0.05
_collector_ids = itertools.count(1)


@dataclass(frozen=True)
class ReceivedMessage:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    message_expiry_s: int | None
    received_at: float  # time.monotonic()


class MessageCollector:
    """An independent MQTT 5 subscriber that records every message it receives.

    It reconnects on its own and subscribes again on every connection;
    `wait_subscribed(n)` waits for the n-th SUBACK (e.g. 2 after a broker
    restart). mosquitto 2.0.11 does not bring back a session that was connected
    at shutdown, so messages queued for it at that moment are lost; tests that
    restart the broker gate the publisher with a `TcpCable` instead.
    """

    def __init__(
        self,
        broker: LocalBroker,
        topic_filter: str = "#",
        *,
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
    ) -> None:
        self.topic_filter = topic_filter
        self._messages: list[ReceivedMessage] = []
        self._changed = threading.Condition()
        self._subscriptions = 0
        self._client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-collector-{next(_collector_ids)}",
            protocol=paho.MQTTv5,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(COLLECTOR_RECONNECT_DELAY_S, COLLECTOR_RECONNECT_DELAY_S)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._broker_url = broker.url
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        try:
            self.wait_subscribed(1)
        except AssertionError:
            self.close()
            raise

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe(self.topic_filter, qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._changed:
            self._subscriptions += 1
            self._changed.notify_all()

    def wait_subscribed(self, count: int, timeout: float = SUBSCRIBE_TIMEOUT_S) -> None:
        """Wait until the collector has been subscribed `count` times (once per connection)."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._subscriptions >= count, timeout):
                raise AssertionError(
                    f"collector did not subscribe to {self.topic_filter!r} on "
                    f"{self._broker_url} (subscription {count}) within {timeout} s"
                )

    def _on_message(self, client, userdata, message) -> None:
        expiry = getattr(message.properties, "MessageExpiryInterval", None)
        received = ReceivedMessage(
            message.topic,
            bytes(message.payload),
            message.qos,
            bool(message.retain),
            expiry,
            time.monotonic(),
        )
        with self._changed:
            self._messages.append(received)
            self._changed.notify_all()

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._changed:
            return list(self._messages)

    def on_topic(self, topic: str) -> list[ReceivedMessage]:
        return [m for m in self.messages if m.topic == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.on_topic(topic)]

    def wait_for(
        self,
        predicate: Callable[[list[ReceivedMessage]], bool],
        timeout: float = DEFAULT_WAIT_S,
        what: str = "expected messages",
    ) -> list[ReceivedMessage]:
        """Block until `predicate(messages)` holds; AssertionError after `timeout`
        seconds, listing (the tail of) what did arrive."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(list(self._messages)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    tail = [(m.topic, m.payload[:60], m.retain) for m in self._messages[-10:]]
                    raise AssertionError(
                        f"timed out after {timeout} s waiting for {what} on "
                        f"{self.topic_filter!r}; got {len(self._messages)} messages, last: {tail}"
                    )
                self._changed.wait(remaining)
            return list(self._messages)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def wait_until(
    predicate: Callable[[], bool],
    timeout: float = DEFAULT_WAIT_S,
    what: str = "condition",
    poll_s: float = 0.01,
) -> None:
    """Poll `predicate` (for state that has no event to wait on, such as
    publisher counters); AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll_s)


class TcpCable:
    """A TCP forwarder from 127.0.0.1:`port` to 127.0.0.1:`target_port` that a
    test can cut (connections reset, port refuses) and restore, to stage an
    outage between the gateway and the broker, or hold the gateway off while a
    restarted broker gets its subscribers back."""

    ACCEPT_POLL_S = 0.05
    CHUNK_BYTES = 65536

    def __init__(self, target_port: int, *, connected: bool = True) -> None:
        self.port = free_loopback_port()
        self._target_port = target_port
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.connections = 0
        if connected:
            self.restore()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        listener.settimeout(self.ACCEPT_POLL_S)
        with self._lock:
            self._listener = listener
        self._spawn(self._accept_loop, listener)

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        if listener is not None:
            listener.close()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=2)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            with self._lock:
                if self._listener is not listener:
                    return
            try:
                downstream, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target_port), timeout=2)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)
            downstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    downstream.close()
                    upstream.close()
                    return
                self._sockets += [downstream, upstream]
                self.connections += 1
            self._spawn(self._pump, downstream, upstream)
            self._spawn(self._pump, upstream, downstream)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(self.CHUNK_BYTES):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def mqtt_broker() -> Iterator[LocalBroker]:
    broker = LocalBroker()
    broker.start_sync()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def mqtt_collector() -> Iterator[Callable[..., MessageCollector]]:
    collectors: list[MessageCollector] = []

    def collect(broker: LocalBroker, topic_filter: str = "#", **options) -> MessageCollector:
        collector = MessageCollector(broker, topic_filter, **options)
        collectors.append(collector)
        return collector

    yield collect
    for collector in collectors:
        collector.close()


@pytest.fixture
def tcp_cable() -> Iterator[Callable[..., TcpCable]]:
    """Factory `cable(target_port, connected=True) -> TcpCable`; all cut after the test."""
    cables: list[TcpCable] = []

    def make(target_port: int, *, connected: bool = True) -> TcpCable:
        cable = TcpCable(target_port, connected=connected)
        cables.append(cable)
        return cable

    yield make
    for cable in cables:
        cable.cut()
