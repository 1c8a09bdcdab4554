"""Drain the SQLite outbox to an MQTT 5 broker with paho-mqtt 2.x.

Threads, and who owns what:
- paho's network thread (`loop_start`) runs the callbacks. They publish the
  birth message on connect and otherwise only post events to a queue.
- the drainer thread owns the publisher's own sqlite3 connection. It reads
  outbox rows, hands them to paho, matches PUBACKs to rows by mid, deletes
  acknowledged rows and commits. Nothing else touches that connection.
- the caller (asyncio or not) only calls `start`, `stop` and `kick`.

Delivery: QoS 1, at least once. A row is deleted only when its PUBACK
arrives. Rows in flight when the connection drops stay in paho's session and
are resent by paho after the reconnect (same mid, DUP set). Rows not yet
acknowledged when the process stops stay in the outbox and are published by
the next publisher.

Refused messages are parked, not dropped and not retried: a PUBACK with a
failure reason code (>= 0x80), a payload over `MqttConfig.max_payload_bytes`
or the broker's Maximum Packet Size, and a message the broker keeps dropping
the connection over (mosquitto answers a publish over its
`message_size_limit` with PUBACK 0x95, which paho rejects as malformed and
reconnects, forever). Parked rows move to `outbox_parked` with the reason and
count in `failed`.

Rows whose Message Expiry Interval ran out while waiting in the outbox are
deleted unpublished and count in `expired`.

Inbound: the topic filters in `subscriptions` are subscribed (QoS 1) on every
(re)connect, and each message is handed to `on_message(topic, payload,
properties)` on paho's network thread: the hook must only hand it on (the
gateway uses `loop.call_soon_threadsafe`). `publish_direct` sends a message
that must not wait in the outbox (answers to `cmd` requests).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.clock import now_ms
from gateway.mqtt.config import MqttConfig
from gateway.outbox import Outbox, OutboxMessage

log = logging.getLogger(__name__)


class _DropReconnectNoise(logging.Filter):
    """paho logs an ERROR on every loop pass while the broker is unreachable;
    our own callbacks already report the outage once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_paho_log = logging.getLogger(f"{__name__}.paho")
_paho_log.addFilter(_DropReconnectNoise())

DEFAULT_MAX_INFLIGHT = 100
# Slots kept free of the broker's Receive Maximum for birth/offline state messages.
CONTROL_SLOTS = 2
DEFAULT_WILL_DELAY_S = 10
DEFAULT_RECONNECT_MIN_DELAY_S = 1.0
DEFAULT_RECONNECT_MAX_DELAY_S = 30.0
DEFAULT_STOP_TIMEOUT_S = 5.0
# Rows committed without a kick() (e.g. by another process) are found within this time.
IDLE_POLL_S = 1.0
PENDING_REFRESH_S = 0.5
SQLITE_BUSY_TIMEOUT_S = 30.0
# A row that is the oldest unacknowledged one when the broker connection fails with a
# protocol error this many times is taken to be the cause and parked.
MAX_PROTOCOL_STRIKES = 3
PROTOCOL_ERROR_REASONS = frozenset({0x81, 0x82, 0x95})  # malformed, protocol error, too large
PUBACK_FAILURE_MIN = 0x80
STARTUP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class PublisherStats:
    connected: bool
    connects: int
    published: int
    failed: int
    expired: int
    pending: int
    in_flight: int
    last_error: str | None


@dataclass(frozen=True)
class _Ack:
    mid: int
    reason_code: int
    reason: str


@dataclass(frozen=True)
class _Connected:
    receive_maximum: int | None
    maximum_packet_size: int | None


@dataclass(frozen=True)
class _Disconnected:
    reason_code: int
    reason: str


class MqttPublisher:
    """Publishes outbox rows from `db_path` over MQTT 5; see the module docstring."""

    def __init__(
        self,
        config: MqttConfig,
        db_path: str | Path,
        *,
        will_topic: str,
        will_payload: bytes,
        birth_payload_fn: Callable[[], bytes],
        offline_payload_fn: Callable[[], bytes] | None = None,
        will_delay_s: int = DEFAULT_WILL_DELAY_S,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        reconnect_min_delay_s: float = DEFAULT_RECONNECT_MIN_DELAY_S,
        reconnect_max_delay_s: float = DEFAULT_RECONNECT_MAX_DELAY_S,
        subscriptions: Sequence[str] = (),
        on_message: Callable[[str, bytes, Properties | None], None] | None = None,
    ) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight {max_inflight}: must be at least 1")
        if will_delay_s < 0:
            raise ValueError(f"will_delay_s {will_delay_s}: must not be negative")
        self.config = config
        self.db_path = Path(db_path)
        self.will_topic = will_topic
        self._will_payload = bytes(will_payload)
        self._birth_payload_fn = birth_payload_fn
        self._offline_payload_fn = offline_payload_fn or (lambda: self._will_payload)
        self._will_delay_s = will_delay_s
        self._max_inflight = max_inflight
        self._reconnect_delays_s = (reconnect_min_delay_s, reconnect_max_delay_s)
        self._subscriptions = tuple(subscriptions)
        self._on_message_hook = on_message

        self._events: queue.SimpleQueue[_Ack | _Connected | _Disconnected] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._connected_event = threading.Event()
        self._idle_event = threading.Event()  # set while nothing is in flight
        self._drainer_ready = threading.Event()
        self._drainer_error: BaseException | None = None
        self._hold_new = False  # stop() sets it: publish nothing new, let in-flight finish
        self._exit = False
        self._client: paho.Client | None = None
        # Held while the drainer swaps paho clients and while stop() takes the client.
        self._client_lock = threading.Lock()
        self._drainer: threading.Thread | None = None

        # Owned by the drainer thread.
        self._inflight: dict[int, OutboxMessage] = {}
        self._cursor_id = 0
        self._strikes: dict[int, int] = {}
        self._inflight_limit = max_inflight
        self._max_packet_bytes: int | None = None
        self._pending_refreshed_at = 0.0

        self._connected = False
        self._connects = 0
        self._published = 0
        self._failed = 0
        self._expired = 0
        self._pending = 0
        self._last_error: str | None = None
        self._last_refusal: str | None = None
        self._last_paho_error: str | None = (
            None  # paho reports TLS and socket errors only in its log
        )
        self._connack_refused = False

    # ---- public face -------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def connects(self) -> int:
        return self._connects

    @property
    def published(self) -> int:
        return self._published

    @property
    def failed(self) -> int:
        return self._failed

    @property
    def expired(self) -> int:
        return self._expired

    @property
    def pending(self) -> int:
        """Rows in the outbox, in flight or not (refreshed by the drainer)."""
        return self._pending

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def last_refusal(self) -> str | None:
        """The broker's last CONNACK refusal (kept when later errors replace last_error)."""
        return self._last_refusal

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def stats(self) -> PublisherStats:
        return PublisherStats(
            connected=self._connected,
            connects=self._connects,
            published=self._published,
            failed=self._failed,
            expired=self._expired,
            pending=self._pending,
            in_flight=len(self._inflight),
            last_error=self._last_error,
        )

    def kick(self) -> None:
        """Wake the drainer: new rows were committed. Safe from any thread."""
        self._wake.set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected_event.wait(timeout_s)

    async def start(self) -> None:
        await asyncio.to_thread(self.start_sync)

    async def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        await asyncio.to_thread(self.stop_sync, timeout_s)

    def start_sync(self) -> None:
        """Open the database, start paho's thread and the drainer. Returns
        without waiting for the broker: a broker that is down is retried with
        backoff, forever."""
        if self._drainer is not None:
            raise RuntimeError("publisher already started")
        self._exit = False
        self._hold_new = False
        self._drainer_error = None
        self._drainer_ready.clear()
        # A restart begins from the outbox alone: what was in flight is still in it.
        self._events = queue.SimpleQueue()
        self._inflight.clear()
        self._strikes.clear()
        self._cursor_id = 0
        self._drainer = threading.Thread(
            target=self._drain_thread_main, name="mqtt-outbox-drainer", daemon=True
        )
        self._drainer.start()
        self._drainer_ready.wait(STARTUP_TIMEOUT_S)
        if self._drainer_error is not None:
            self._drainer.join()
            self._drainer = None
            raise RuntimeError(
                f"outbox database {str(self.db_path)!r}: {self._drainer_error}"
            ) from self._drainer_error
        self._client = self._new_client()
        self._client.connect_async(
            self.config.host,
            self.config.port,
            keepalive=self.config.keepalive_s,
            clean_start=paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=self._connect_properties(),
        )
        self._client.loop_start()
        log.info(
            "mqtt publisher started for %s (client id %s)",
            self.config.url,
            self.config.effective_client_id,
        )

    def stop_sync(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop cleanly: publish nothing new, wait up to `timeout_s` for in-flight
        PUBACKs, publish the offline state (retained), DISCONNECT (so the broker
        discards the Will), and stop both threads. Unacknowledged rows stay in
        the outbox."""
        if self._drainer is None:
            return
        deadline = time.monotonic() + timeout_s
        self._idle_event.clear()
        with self._client_lock:
            self._hold_new = True
            client = self._client
        self._wake.set()
        if client is not None and self._connected:
            self._idle_event.wait(max(0.0, deadline - time.monotonic()))
            self._publish_offline(client, max(0.0, deadline - time.monotonic()))
        if client is not None:
            client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Normal disconnection"))
            client.loop_stop()
        self._exit = True
        self._wake.set()
        self._drainer.join()
        self._drainer = None
        self._client = None
        self._connected = False
        self._connected_event.clear()
        log.info("mqtt publisher stopped: %d published, %d pending", self._published, self._pending)

    # ---- paho client and its callbacks (paho's network thread) -------------

    def _new_client(self) -> paho.Client:
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=self.config.effective_client_id,
            protocol=paho.MQTTv5,
        )
        client.suppress_exceptions = True  # a bug in a callback must not kill paho's thread
        client.enable_logger(_paho_log)
        # Our drainer bounds what is in flight; this is only a backstop.
        client.max_inflight_messages_set(self._max_inflight + CONTROL_SLOTS)
        # paho annotates int, but its backoff arithmetic works in float seconds.
        client.reconnect_delay_set(*self._reconnect_delays_s)  # type: ignore[arg-type]
        if self.config.username is not None:
            client.username_pw_set(self.config.username, self.config.password)
        if self.config.tls:
            client.tls_set_context(self.config.ssl_context())
        will_properties = None
        if self._will_delay_s > 0:
            will_properties = Properties(PacketTypes.WILLMESSAGE)
            will_properties.WillDelayInterval = self._will_delay_s
        client.will_set(
            self.will_topic, self._will_payload, qos=1, retain=True, properties=will_properties
        )
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_log = self._on_log
        return client

    def _connect_properties(self) -> Properties:
        properties = Properties(PacketTypes.CONNECT)
        # The broker publishes a delayed Will no later than the session ends, so
        # the session must outlive the Will Delay for the delay to mean anything.
        properties.SessionExpiryInterval = self._will_delay_s
        return properties

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if client is not self._client:
            return  # a replaced session's last words
        if reason_code.is_failure:
            self._connack_refused = True
            self._last_error = f"broker refused connection: {reason_code}"
            self._last_refusal = self._last_error
            log.warning("mqtt %s refused connection: %s", self.config.url, reason_code)
            return
        try:
            birth = self._birth_payload_fn()
        except Exception as err:  # the gateway's payload builder; keep the connection
            log.exception("birth payload builder failed; no birth message this time")
            self._last_error = f"birth payload: {err}"
        else:
            client.publish(self.will_topic, birth, qos=1, retain=True)
        if self._subscriptions:
            # Every connection: a resumed session keeps them, a new one does not.
            client.subscribe([(topic, 1) for topic in self._subscriptions])
        self._connects += 1
        self._connected = True
        self._connected_event.set()
        self._events.put(
            _Connected(
                receive_maximum=getattr(properties, "ReceiveMaximum", None),
                maximum_packet_size=getattr(properties, "MaximumPacketSize", None),
            )
        )
        self._wake.set()
        log.info(
            "mqtt connected to %s (session present: %s)", self.config.url, flags.session_present
        )

    def _on_log(self, client, userdata, level: int, message: str) -> None:
        if level == paho.MQTT_LOG_ERR and not message.startswith("Client is not connected"):
            self._last_paho_error = message

    def _on_connect_fail(self, client, userdata) -> None:
        if client is not self._client:
            return  # a replaced session's last words
        # paho calls this inside its `except OSError:` around the connection attempt.
        error = sys.exc_info()[1]
        if error is not None:
            message = self.config.describe_connect_error(error)
        else:
            detail = f": {self._last_paho_error}" if self._last_paho_error else ""
            message = f"cannot connect to {self.config.url}{detail}"
        if message != self._last_error:   # once per cause, not at every retry
            log.warning("mqtt %s; retrying with backoff", message)
        self._last_error = message

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if client is not self._client:
            return  # a replaced session's last words
        was_connected = self._connected
        self._connected = False
        self._connected_event.clear()
        self._events.put(_Disconnected(reason_code.value, str(reason_code)))
        self._wake.set()
        refused, self._connack_refused = self._connack_refused, False
        if not was_connected and not refused:
            self._last_error = (
                f"connection to {self.config.url} closed before CONNACK: "
                f"{self._last_paho_error or reason_code}"
            )
        elif reason_code.value != 0:
            self._last_error = f"disconnected: {reason_code}"
            log.warning("mqtt disconnected from %s: %s", self.config.url, reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if client is not self._client:
            return  # a replaced session's last words
        self._events.put(_Ack(mid, reason_code.value, str(reason_code)))
        self._wake.set()

    def _on_message(self, client, userdata, message) -> None:
        if client is not self._client or self._on_message_hook is None:
            return
        try:
            self._on_message_hook(message.topic, bytes(message.payload),
                                  getattr(message, "properties", None))
        except Exception:  # the gateway's hook; paho's thread must go on
            log.exception("inbound message handler failed for %s", message.topic)

    def publish_direct(self, topic: str, payload: bytes, *, qos: int = 1,
                       retain: bool = False, properties: Properties | None = None) -> bool:
        """Publish now, bypassing the outbox (answers that are worthless later). False if
        offline: the message is dropped."""
        with self._client_lock:
            client = self._client
        if client is None or not self._connected:
            return False
        client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        return True

    def republish_state(self) -> bool:
        """Publish the birth payload again now, bypassing the outbox: for news that cannot
        wait for, or cannot be written to, the outbox (the store alarm). False if offline;
        the next (re)connect publishes the birth payload anyway."""
        with self._client_lock:
            client = self._client
        if client is None or not self._connected:
            return False
        client.publish(self.will_topic, self._birth_payload_fn(), qos=1, retain=True)
        return True

    def _publish_offline(self, client: paho.Client, timeout_s: float) -> None:
        try:
            info = client.publish(self.will_topic, self._offline_payload_fn(), qos=1, retain=True)
            info.wait_for_publish(timeout_s)
        except Exception as err:  # connection lost meanwhile: the Will speaks for us
            log.warning("offline state not confirmed before disconnect: %s", err)

    # ---- drainer thread ----------------------------------------------------

    def _drain_thread_main(self) -> None:
        try:
            conn = sqlite3.connect(self.db_path, timeout=SQLITE_BUSY_TIMEOUT_S)
            # Only deletions are committed here; in WAL mode one lost to a power cut
            # means a duplicate delivery, which QoS 1 allows anyway: skip the fsync per commit.
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                conn.execute("PRAGMA synchronous=NORMAL")
            outbox = Outbox(conn)
            conn.commit()
            self._refresh_pending(outbox, force=True)
        except Exception as err:
            self._drainer_error = err
            self._drainer_ready.set()
            return
        self._drainer_ready.set()
        try:
            while True:
                self._wake.wait(IDLE_POLL_S)
                self._wake.clear()
                try:
                    self._drain_once(conn, outbox)
                except sqlite3.Error as err:
                    # Rows acknowledged in this round stay in the outbox and are sent
                    # again by the next publisher: a duplicate, never a loss.
                    self._last_error = f"outbox database: {err}"
                    log.warning("outbox database error, will retry: %s", err)
                    conn.rollback()
                except Exception as err:  # a bug must not silence the gateway for good
                    self._last_error = f"drainer: {err!r}"
                    log.exception("mqtt outbox drainer error, will retry")
                    conn.rollback()
                if self._exit:
                    self._drain_once(conn, outbox)  # acks that arrived during disconnect
                    break
        except Exception as err:
            self._last_error = f"drainer stopped: {err}"
            log.exception("mqtt outbox drainer stopped")
        finally:
            conn.close()

    def _drain_once(self, conn: sqlite3.Connection, outbox: Outbox) -> None:
        done_ids: list[int] = []
        needs_new_session = False
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            if isinstance(event, _Ack):
                self._handle_ack(event, outbox, done_ids)
            elif isinstance(event, _Connected):
                self._handle_connected(event)
            elif isinstance(event, _Disconnected):
                needs_new_session |= self._handle_disconnected(event, outbox)
        if done_ids:
            outbox.delete(done_ids)
        conn.commit()
        if needs_new_session and not self._exit:
            self._replace_client()
        if self._connected and not self._hold_new and not self._exit:
            self._publish_more(conn, outbox)
        if not self._inflight:
            self._idle_event.set()
        else:
            self._idle_event.clear()
        self._refresh_pending(outbox, force=bool(done_ids) and not self._inflight)

    def _handle_ack(self, ack: _Ack, outbox: Outbox, done_ids: list[int]) -> None:
        message = self._inflight.pop(ack.mid, None)
        if message is None:
            return  # birth or offline state: not an outbox row
        self._strikes.pop(message.id, None)
        if ack.reason_code >= PUBACK_FAILURE_MIN:
            self._park(outbox, message, f"PUBACK 0x{ack.reason_code:02X} {ack.reason}")
        else:
            done_ids.append(message.id)
            self._published += 1

    def _handle_connected(self, event: _Connected) -> None:
        limit = self._max_inflight
        if event.receive_maximum is not None:
            limit = min(limit, max(1, event.receive_maximum - CONTROL_SLOTS))
        self._inflight_limit = limit
        self._max_packet_bytes = event.maximum_packet_size

    def _handle_disconnected(self, event: _Disconnected, outbox: Outbox) -> bool:
        """Returns True when the paho session must be replaced to drop a poison message."""
        # paho drops QoS 0 messages that were not written yet; send them again.
        for mid, message in list(self._inflight.items()):
            if message.qos == 0:
                del self._inflight[mid]
                self._cursor_id = min(self._cursor_id, message.id - 1)
        if event.reason_code not in PROTOCOL_ERROR_REASONS or not self._inflight:
            return False
        suspect = min(self._inflight.values(), key=lambda m: m.id)
        strikes = self._strikes.get(suspect.id, 0) + 1
        self._strikes[suspect.id] = strikes
        if strikes < MAX_PROTOCOL_STRIKES:
            return False
        self._park(
            outbox,
            suspect,
            f"broker dropped the connection ({event.reason}) {strikes} times while this "
            "message awaited its PUBACK (a payload over the broker's size limit does this)",
        )
        return True

    def _replace_client(self) -> None:
        """Start a fresh paho session, forgetting what paho would resend; the
        outbox still holds every unacknowledged row, so re-read it from the start."""
        with self._client_lock:
            if self._hold_new:
                return  # stopping: stop() disconnects the current client
            self._swap_client()

    def _swap_client(self) -> None:
        old = self._client
        if old is not None:
            old.disconnect()
            old.loop_stop()
        self._inflight.clear()
        self._strikes.clear()
        self._cursor_id = 0
        self._connected = False
        self._connected_event.clear()
        client = self._new_client()
        client.connect_async(
            self.config.host,
            self.config.port,
            keepalive=self.config.keepalive_s,
            clean_start=True,
            properties=self._connect_properties(),
        )
        self._client = client
        client.loop_start()

    def _publish_more(self, conn: sqlite3.Connection, outbox: Outbox) -> None:
        client = self._client
        if client is None:
            return
        room = self._inflight_limit - len(self._inflight)
        while room > 0 and self._connected:
            batch = outbox.pending(room, after_id=self._cursor_id)
            if not batch:
                return
            sent_at_ms = now_ms()
            changed_rows = False
            # After a QoS 0 rewind the batch can hold rows that are still in flight.
            inflight_ids = {m.id for m in self._inflight.values()}
            for message in batch:
                if message.id in inflight_ids:
                    self._cursor_id = message.id
                    continue
                verdict = self._send(client, outbox, message, sent_at_ms)
                if verdict == "retry":
                    return
                self._cursor_id = message.id
                if verdict == "sent":
                    room -= 1
                else:
                    changed_rows = True
            if changed_rows:
                conn.commit()

    def _send(
        self, client: paho.Client, outbox: Outbox, message: OutboxMessage, now_ms: int
    ) -> str:
        """Hand one row to paho: 'sent', 'retry' (try this row again later) or 'settled'
        (expired or parked without publishing)."""
        remaining_expiry_s = message.remaining_expiry_s(now_ms)
        if remaining_expiry_s == 0:
            outbox.delete([message.id])
            self._expired += 1
            log.info(
                "outbox row %d for %s expired before it could be published",
                message.id,
                message.topic,
            )
            return "settled"
        too_large = self._size_problem(message)
        if too_large is not None:
            self._park(outbox, message, too_large)
            return "settled"
        properties = None
        if remaining_expiry_s is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = remaining_expiry_s
        try:
            info = client.publish(
                message.topic,
                message.payload,
                qos=message.qos,
                retain=message.retain,
                properties=properties,
            )
        except ValueError as err:  # paho refuses the topic or payload outright
            self._park(outbox, message, f"rejected by paho: {err}")
            return "settled"
        if info.rc == paho.MQTT_ERR_SUCCESS or (
            message.qos > 0 and info.rc == paho.MQTT_ERR_NO_CONN
        ):
            # QoS 1 with NO_CONN: paho keeps it and sends it after reconnecting.
            self._inflight[info.mid] = message
            return "sent"
        return "retry"

    def _size_problem(self, message: OutboxMessage) -> str | None:
        limit = self.config.max_payload_bytes
        if limit is not None and len(message.payload) > limit:
            return f"payload {len(message.payload)} bytes over max_payload_bytes {limit}"
        if self._max_packet_bytes is not None:
            size = _publish_packet_bytes(message)
            if size > self._max_packet_bytes:
                return f"PUBLISH packet {size} bytes over the broker's Maximum Packet Size {self._max_packet_bytes}"
        return None

    def _park(self, outbox: Outbox, message: OutboxMessage, reason: str) -> None:
        outbox.park(message.id, reason)
        self._failed += 1
        log.error("outbox row %d for %s parked: %s", message.id, message.topic, reason)

    def _refresh_pending(self, outbox: Outbox, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._pending_refreshed_at >= PENDING_REFRESH_S:
            self._pending = outbox.count()
            self._pending_refreshed_at = now


def _publish_packet_bytes(message: OutboxMessage) -> int:
    """Upper bound of the PUBLISH packet size, for the broker's Maximum Packet Size."""
    properties_bytes = 1 + (5 if message.expiry_s is not None else 0)
    remaining = 2 + len(message.topic.encode()) + 2 + properties_bytes + len(message.payload)
    length_bytes = (
        1 if remaining < 128 else 2 if remaining < 16384 else 3 if remaining < 2097152 else 4
    )
    return 1 + length_bytes + remaining
