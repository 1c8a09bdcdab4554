"""The sink's MQTT adapter (paho): a member of a consumer group that acknowledges late.

Subscribes to `$share/{group}/{root}/+/{samples,alert,delta,twin}` (each message goes to one
member of the group) and to `{root}/+/meta` on its own (retained: every member needs it).
paho runs with `manual_ack=True`: a QoS 1 message gets its PUBACK only when the sink calls
`ack()`, after the rows it carried are committed. Until then the broker holds it in flight;
if this process dies, the broker sends it again when the same client id reconnects (a
persistent session: Session Expiry Interval > 0, Clean Start off). docs/sink.md describes
mosquitto's behaviour in detail.

Each message carries a token `(connection, mid, qos)`. A PUBACK is sent only on the connection
that received the message: after a reconnect the broker resends what was not acknowledged
(and a packet id on a new connection may name another message).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.mqtt import topics
from gateway.mqtt.config import MqttConfig

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_S = 30
SESSION_TAKEN_OVER = 142        # MQTT 5 reason code: another client connected with our id
# mosquitto 2.0 does not send that code: it closes the old connection. Two members with one
# client id then take the session from each other every couple of seconds; so many drops in a
# row, each within seconds of connecting, end the sink with the likely cause.
SHORT_LIVED_S = 5.0
MAX_SHORT_LIVED_DROPS = 3
GROUPED = (topics.SAMPLES, topics.ALERT, topics.DELTA, topics.TWIN)


class SinkMqttError(RuntimeError):
    """The broker refused us, could not be reached, or took our session away."""


@dataclass(frozen=True)
class Inbound:
    topic: str
    payload: bytes
    content_type: str | None
    redelivered: bool      # DUP: sent before on this session and not acknowledged
    token: tuple[int, int, int]   # (connection, mid, qos)


class MqttSource:
    def __init__(self, config: MqttConfig, *, client_id: str, group: str,
                 session_expiry_s: int, receive_maximum: int, leave: bool = False):
        """`leave`: take what the broker kept for this member's session, but subscribe to
        nothing (unsubscribe the group's filters), so that no new message is routed here;
        `stop()` then ends the session."""
        if not group or any(ch in group for ch in "/+#"):
            raise ValueError(f"--group {group!r}: one topic level without '/', '+' or '#'")
        self.config = config
        self.root = config.topic_root
        self.client_id = client_id
        self.group = group
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.leave = leave
        self.filters = ([f"$share/{group}/{t.filter(self.root)}" for t in GROUPED]
                        + [topics.META.filter(self.root)])
        self.messages: queue.Queue[Inbound] = queue.Queue()
        self.session_present: bool | None = None
        self.fatal: str | None = None      # set when the sink must stop (session taken over)
        self.acks_dropped = 0              # tokens of a connection that is gone
        self._connection = 0
        self._connected_at = 0.0
        self._short_drops = 0
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._refusal: str | None = None
        self._client: paho.Client | None = None

    def start(self) -> None:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=paho.MQTTv5, manual_ack=True)
        if self.config.username is not None:
            client.username_pw_set(self.config.username, self.config.password)
        if self.config.tls:
            client.tls_set_context(self.config.ssl_context())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 30)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.session_expiry_s
        # in flight to us at most this many: what a batch may hold before it must commit
        properties.ReceiveMaximum = self.receive_maximum
        self._client = client
        try:
            client.connect(self.config.host, self.config.port, keepalive=KEEPALIVE_S,
                           clean_start=self.session_expiry_s == 0, properties=properties)
        except OSError as e:
            self._client = None
            raise SinkMqttError(self.config.describe_connect_error(e)) from None
        client.loop_start()
        if not self._connected.wait(CONNECT_TIMEOUT_S) or self.fatal or self._refusal:
            self.stop()
            reason = self._refusal or self.fatal or f"no CONNACK within {CONNECT_TIMEOUT_S:.0f} s"
            raise SinkMqttError(f"cannot connect to {self.config.url}: {reason}")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refusal = f"the broker refused the connection ({reason_code})"
            log.warning("sink: %s refused the connection: %s", self.config.url, reason_code)
            self._connected.set()   # start() reports it; later, paho retries
            return
        with self._lock:
            self._connection += 1
        self._connected_at = time.monotonic()
        self.session_present = bool(flags.session_present)
        if self.leave:
            client.unsubscribe(self.filters)
        else:
            client.subscribe([(f, 1) for f in self.filters])
        if self._connected.is_set():
            log.info("sink: reconnected to %s (session %s)", self.config.url,
                     "resumed" if self.session_present else "new: messages sent meanwhile to "
                     "this member are lost")
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        code = getattr(reason_code, "value", 0)
        if code == 0:
            return   # we disconnected
        taken_over = (f"another client connected with client id {self.client_id!r} and took "
                      "this session over: give each member of the group its own --client-id")
        if code == SESSION_TAKEN_OVER:
            self.fatal = taken_over
            client.disconnect()
            return
        short = time.monotonic() - self._connected_at < SHORT_LIVED_S
        self._short_drops = self._short_drops + 1 if short else 0
        if self._short_drops >= MAX_SHORT_LIVED_DROPS:
            self.fatal = (f"{self.config.url} dropped the connection {self._short_drops} times "
                          f"in a row within {SHORT_LIVED_S:.0f} s of connecting: most likely "
                          f"{taken_over}")
            client.disconnect()
            return
        if code != 0:
            log.warning("sink: disconnected from %s (%s); reconnecting, unacknowledged "
                        "messages will come again", self.config.url, reason_code)

    def _on_message(self, client, userdata, message) -> None:
        content_type = getattr(message.properties, "ContentType", None) or None
        with self._lock:
            connection = self._connection
        self.messages.put(Inbound(message.topic, bytes(message.payload), content_type,
                                  bool(message.dup), (connection, message.mid, message.qos)))

    def ack(self, tokens: list[Any]) -> int:
        """PUBACK each token received on the current connection, in order; returns how many
        were sent. The others are left to the broker, which resends them."""
        client = self._client
        with self._lock:
            current = self._connection
        sent = 0
        for connection, mid, qos in tokens:
            if qos == 0:
                continue
            if connection != current or client is None:
                self.acks_dropped += 1
                continue
            client.ack(mid, qos)
            sent += 1
        return sent

    def stop(self) -> None:
        """Disconnect. The session stays on the broker for `session_expiry_s`, unless leaving:
        then it ends now (Session Expiry Interval 0 in DISCONNECT)."""
        client, self._client = self._client, None
        if client is not None:
            properties = None
            if self.leave and self.session_expiry_s:
                properties = Properties(PacketTypes.DISCONNECT)
                properties.SessionExpiryInterval = 0
            client.disconnect(properties=properties)
            client.loop_stop()
