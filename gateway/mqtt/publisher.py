"""Drain the SQLite outbox to an MQTT 5 broker: paho-mqtt 2.x around the delivery policy.

What to send, when, and what becomes of each row is decided by the sans-I/O
`DeliveryPolicy` (gateway/mqtt/delivery.py). This adapter only carries it out:
paho for the network, its own sqlite3 connection for the outbox.

Threads, and who owns what:
- paho's network thread (`loop_start`) runs the callbacks. Each one appends what
  happened (a PUBACK, a connect, a disconnect) to `_inbox` and, if the policy lock is
  free, feeds the inbox to the policy and hands the client what the policy sends next,
  there and then: a PUBACK is answered by the next PUBLISH without a thread switch, as
  paho's own queue would. When the read-ahead runs half empty it reads the next rows
  there too (a read-only connection, WAL: readers never wait for the writer), so no
  second thread contends for the GIL row by row. It never waits for the lock (paho holds
  its message lock while it calls us): if the drainer holds it, the drainer acts instead.
- the drainer thread owns the writing sqlite3 connection. Woken only when the policy has
  outbox writes (`io_due`: a batch of acknowledged rows, the last ones of a burst, rows to
  park, parked rows to retry), on `kick()`, or by a short timer: it deletes acknowledged
  rows and parks refused ones in one commit per batch, never per PUBACK, and reads rows
  while nothing is in flight to bring PUBACKs.
- the caller (asyncio or not) calls `start`, `stop`, `kick`, `publish_direct`,
  `republish_state` and reads the counters.

Delivery: QoS 1, at least once. A row is deleted only after its PUBACK (every part's,
for a split row). On every (re)connect paho's own resend queue is dropped and the policy
resends what was unacknowledged, under the new connection's limits; rows not acknowledged
when the process stops stay in the outbox for the next publisher.

Inbound: the topic filters in `subscriptions` are subscribed (QoS 1) on every
(re)connect, and each message is handed to `on_message(topic, payload, properties)` on
paho's network thread: the hook must only hand it on (the gateway uses
`loop.call_soon_threadsafe`). `publish_direct` sends a message that must not wait in the
outbox (answers to `cmd` requests).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.clock import now_ms
from gateway.mqtt.config import MqttConfig
from gateway.mqtt.delivery import (
    CONTROL_SLOTS,
    DEFAULT_WINDOW,
    PUBACK_FAILURE_MIN,
    DeliveryPolicy,
    ParkedRow,
    ParkKind,
    Sendable,
    Settled,
    Splitter,
)
from gateway.outbox import Outbox
from gateway.payload_encoding import content_type as payload_content_type
from gateway.samples_split import SAMPLES_TOPIC_LEVEL, split_samples_payload

log = logging.getLogger(__name__)


class _DropReconnectNoise(logging.Filter):
    """paho logs an ERROR on every loop pass while the broker is unreachable;
    our own callbacks already report the outage once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_paho_log = logging.getLogger(f"{__name__}.paho")
_paho_log.addFilter(_DropReconnectNoise())


class _PahoWarnings:
    """What paho logs through while it connects: its warnings and errors reach `_paho_log`;
    its debug lines stop here, before logging's machinery. While connected paho logs
    nothing at all (see `_on_connect`)."""

    def log(self, level: int, msg: str, *args: object) -> None:
        if level >= logging.WARNING:
            _paho_log.log(level, msg, *args)

DEFAULT_MAX_INFLIGHT = DEFAULT_WINDOW
DEFAULT_WILL_DELAY_S = 10
DEFAULT_RECONNECT_MIN_DELAY_S = 1.0
DEFAULT_RECONNECT_MAX_DELAY_S = 30.0
DEFAULT_STOP_TIMEOUT_S = 5.0
# Rows committed without a kick() (e.g. by another process) are found within this time.
IDLE_POLL_S = 1.0
# Acknowledged rows wait at most this long for their DELETE when fewer than a batch
# (`delivery.SETTLE_BATCH_ROWS`).
SETTLE_DELAY_S = 0.1
COUNT_REFRESH_S = 1.0
SQLITE_BUSY_TIMEOUT_S = 30.0
# WAL readers rarely wait at all; paho's thread must never wait long (keep-alive).
READER_BUSY_TIMEOUT_S = 1.0
PARKED_RETRY_BATCH = 1000
STARTUP_TIMEOUT_S = 10.0
# PUBLISH properties kept for reuse, one per distinct (Message Expiry Interval, Content Type).
PROPERTIES_CACHE_SIZE = 256
DEFAULT_SPLITTERS: Mapping[str, Splitter] = {SAMPLES_TOPIC_LEVEL: split_samples_payload}


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
    parked: int = 0
    split: int = 0


@dataclass(frozen=True)
class _Connected:
    receive_maximum: int | None
    maximum_packet_size: int | None


@dataclass(frozen=True)
class _Disconnected:
    reason_code: int


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
        splitters: Mapping[str, Splitter] = DEFAULT_SPLITTERS,
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
        self._reconnect_delays_s = (reconnect_min_delay_s, reconnect_max_delay_s)
        self._subscriptions = tuple(subscriptions)
        self._on_message_hook = on_message
        self.policy = DeliveryPolicy(window=max_inflight,
                                     max_payload_bytes=config.max_payload_bytes,
                                     splitters=splitters)

        # Guards the policy; paho's thread only ever tries it (see the module docstring).
        self._lock = threading.Lock()
        self._inbox: deque[tuple[int, ReasonCode] | _Connected | _Disconnected] = deque()
        self._wake = threading.Event()
        self._kicked = False
        self._idle_event = threading.Event()  # set while nothing awaits a PUBACK
        self._connected_event = threading.Event()
        self._drainer_ready = threading.Event()
        self._drainer_error: BaseException | None = None
        self._exit = False
        self._client: paho.Client | None = None
        self._drainer: threading.Thread | None = None
        self._reader: Outbox | None = None   # read-only use, under self._lock
        # Used under self._lock; keyed by (expiry_s, content_type).
        self._properties_cache: dict[tuple[int | None, str | None], Properties] = {}
        self._paho_warnings = _PahoWarnings()

        self._connected = False
        self._pending = 0
        self._parked_count = 0
        self._counted_at = 0.0
        self._db_error: str | None = None   # the outbox error last logged, until it clears
        self._last_error: str | None = None
        # Bugs caught on paho's thread, for the gateway's `task` alarm (service.py).
        self.internal_errors = 0
        self.last_internal_error: str | None = None
        self._last_refusal: str | None = None
        self._last_paho_error: str | None = None  # paho reports TLS and socket errors only in its log
        self._connack_refused = False

    # ---- public face -------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def connects(self) -> int:
        return self.policy.connects

    @property
    def published(self) -> int:
        """Rows acknowledged by the broker (every part of a split row)."""
        return self.policy.published

    @property
    def failed(self) -> int:
        """Rows parked by this publisher (refused, too large, poison)."""
        return self.policy.parked

    @property
    def expired(self) -> int:
        return self.policy.expired

    @property
    def split(self) -> int:
        """Rows published in several parts to fit a size limit."""
        return self.policy.split_rows

    @property
    def refusals(self) -> dict[str, int]:
        """Rows not delivered, counted by reason (`delivery.Refusal`)."""
        return {str(reason): n for reason, n in self.policy.refusals.items()}

    @property
    def pending(self) -> int:
        """Rows in the outbox, in flight or not (refreshed by the drainer)."""
        return self._pending

    @property
    def outbox_depth(self) -> int:
        """The same as `pending`, by the name the state topic uses."""
        return self._pending

    @property
    def parked_count(self) -> int:
        """Rows in `outbox_parked` (refreshed by the drainer)."""
        return self._parked_count

    @property
    def in_flight(self) -> int:
        return self.policy.in_flight

    @property
    def max_payload_bytes(self) -> int | None:
        """The payload limit in force for a short topic without expiry (all limits known)."""
        return self.policy.max_payload_for("", False)

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
            connects=self.connects,
            published=self.published,
            failed=self.failed,
            expired=self.expired,
            pending=self._pending,
            in_flight=self.in_flight,
            last_error=self._last_error,
            parked=self._parked_count,
            split=self.split,
        )

    def kick(self) -> None:
        """Wake the drainer: new rows were committed. Safe from any thread."""
        self._kicked = True
        self._wake.set()

    def set_max_payload_bytes(self, limit: int | None) -> None:
        """Change the configured payload limit while running; parked rows that fit are retried."""
        with self._lock:
            self.policy.set_max_payload_bytes(limit)
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
        self._drainer_error = None
        self._drainer_ready.clear()
        self._inbox.clear()
        with self._lock:
            self.policy.forget_rows()  # a restart begins from the outbox alone
        self._client = self._new_client()
        self._drainer = threading.Thread(
            target=self._drain_thread_main, name="mqtt-outbox-drainer", daemon=True
        )
        self._drainer.start()
        self._drainer_ready.wait(STARTUP_TIMEOUT_S)
        if self._drainer_error is not None:
            self._drainer.join()
            self._drainer = None
            self._client = None
            raise RuntimeError(
                f"outbox database {str(self.db_path)!r}: {self._drainer_error}"
            ) from self._drainer_error
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
        with self._lock:
            self.policy.holding = True
            if self.policy.idle:
                self._idle_event.set()
            else:
                self._idle_event.clear()
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
        log.info("mqtt publisher stopped: %d published, %d pending", self.published,
                 self._pending)

    # ---- paho client and its callbacks (paho's network thread) -------------

    def _new_client(self) -> paho.Client:
        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=self.config.effective_client_id,
            protocol=paho.MQTTv5,
        )
        client.suppress_exceptions = True  # a bug in a callback must not kill paho's thread
        client.enable_logger(self._paho_warnings)  # type: ignore[arg-type]  # duck-typed by paho
        # The policy bounds what is in flight (the broker's Receive Maximum); paho queues nothing.
        client.max_inflight_messages_set(0)
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

    def _on_connect(self, client: paho.Client, userdata: object, flags: paho.ConnectFlags,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        if reason_code.is_failure:
            self._connack_refused = True
            self._last_error = f"broker refused connection: {reason_code}"
            self._last_refusal = self._last_error
            log.warning("mqtt %s refused connection: %s", self.config.url, reason_code)
            return
        # paho would now resend what it holds, under no limit; the policy resends instead.
        client.drop_out_messages()
        # on_log makes paho format every packet's debug line, and its logger costs a call
        # for each of two debug lines per message (~1.5 us of ~60); both only serve to learn
        # why a connection attempt failed (TLS, socket), so both are off while connected.
        # Our callbacks log their own exceptions; a lost connection is logged with paho's
        # reason code by _on_disconnect, which turns them back on.
        client.on_log = None
        client.disable_logger()
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
        self._connected = True
        self._connected_event.set()
        self._post(_Connected(getattr(properties, "ReceiveMaximum", None),
                              getattr(properties, "MaximumPacketSize", None)))
        self._wake.set()  # parked rows may be due a retry
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
        client.on_log = self._on_log
        client.enable_logger(self._paho_warnings)  # type: ignore[arg-type]
        was_connected = self._connected
        self._connected = False
        self._connected_event.clear()
        self._post(_Disconnected(reason_code.value))
        refused, self._connack_refused = self._connack_refused, False
        if not was_connected and not refused:
            self._last_error = (
                f"connection to {self.config.url} closed before CONNACK: "
                f"{self._last_paho_error or reason_code}"
            )
        elif reason_code.value != 0:
            # paho's logger is off while connected, so a socket error's text is not logged;
            # say at least whether the broker sent DISCONNECT or the connection was lost.
            how = ("the broker sent DISCONNECT" if flags.is_disconnect_packet_from_server
                   else "socket closed")
            self._last_error = f"disconnected ({how}): {reason_code}"
            log.warning("mqtt disconnected from %s (%s): %s", self.config.url, how, reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        # The hot path, once per PUBACK: `_post` without the inbox when nothing waits in it
        # (only this thread appends to it, so order is kept).
        if self._inbox or not self._lock.acquire(False):
            self._post((mid, reason_code))
            return
        policy = self.policy
        try:
            code = reason_code.value
            if code < PUBACK_FAILURE_MIN:
                policy.on_puback(mid)
            else:
                policy.on_puback(mid, code, str(reason_code))
            if policy.reading_due():
                self._fill()
            sends = policy.take_sends(now_ms)
            if sends:
                self._hand(sends)
            if policy.holding and policy.idle:
                self._idle_event.set()
            due = policy.io_due()
        except Exception as err:  # a bug: paho logs nothing while connected; the row waits
            self._last_error = f"PUBACK handling: {err!r}"
            self._count_internal_error(self._last_error)
            log.exception("mqtt PUBACK %d handling failed; its row is resent after a reconnect",
                          mid)
            due = True
        finally:
            self._lock.release()
        if due and not self._wake.is_set():
            self._wake.set()

    def _on_message(self, client, userdata, message) -> None:
        if self._on_message_hook is None:
            return
        try:
            self._on_message_hook(message.topic, bytes(message.payload),
                                  getattr(message, "properties", None))
        except Exception:  # the gateway's hook; paho's thread must go on
            log.exception("inbound message handler failed for %s", message.topic)

    def _count_internal_error(self, detail: str) -> None:
        self.last_internal_error = detail
        self.internal_errors += 1

    def _post(self, event: tuple[int, ReasonCode] | _Connected | _Disconnected) -> None:
        """From paho's thread: queue the event and, if the policy is free, act on it now."""
        self._inbox.append(event)
        if self._lock.acquire(blocking=False):
            try:
                self._pump()
                due = self.policy.io_due()
            except Exception as err:  # a bug: paho logs nothing while connected
                self._last_error = f"publisher events: {err!r}"
                self._count_internal_error(self._last_error)
                log.exception("mqtt publisher failed to act on %r", event)
                due = True
            finally:
                self._lock.release()
            if due and not self._wake.is_set():
                self._wake.set()
        else:
            self._wake.set()   # the drainer holds the policy; it feeds the inbox on release

    # ---- the policy's decisions, carried out (with self._lock held) ---------

    def _pump(self) -> None:
        """Feed the inbox to the policy and hand the client what it sends next."""
        policy, inbox = self.policy, self._inbox
        if policy.reading_due():
            self._fill()
        while inbox or policy.queued:
            while inbox:
                event = inbox.popleft()
                if type(event) is tuple:
                    mid, reason_code = event
                    code = reason_code.value
                    policy.on_puback(mid, code, str(reason_code) if code >= PUBACK_FAILURE_MIN
                                     else "")
                elif isinstance(event, _Connected):
                    policy.on_connected(event.receive_maximum, event.maximum_packet_size)
                elif isinstance(event, _Disconnected):
                    policy.on_disconnected(event.reason_code)
            if policy.reading_due():
                self._fill()
            sends = policy.take_sends(now_ms)
            if not sends:
                break
            self._hand(sends)   # fills the window: take more only after more events
            if not inbox:
                break
        if policy.holding and policy.idle:
            self._idle_event.set()

    def _fill(self) -> None:
        """Read the next rows into the policy's queue."""
        outbox, policy = self._reader, self.policy
        if outbox is None:
            return
        try:
            while want := policy.rows_wanted():
                rows = outbox.pending(want, after_id=policy.cursor)
                policy.add_rows(rows, want)
                if len(rows) < want:
                    break
        except sqlite3.Error as err:
            # Read again at the next kick or poll; the rows stay in the outbox meanwhile.
            policy.add_rows([], 1)
            self._last_error = f"outbox database: {err}"
            if str(err) != self._db_error:
                log.warning("outbox read failed, will retry: %s", err)
                self._db_error = str(err)

    def _hand(self, sends: list[Sendable]) -> None:
        client = self._client
        if client is None:
            self.policy.not_handed(sends)
            return
        policy = self.policy
        publish, handed = client.publish, policy.handed
        for i, send in enumerate(sends):
            expiry_s = send.expiry_s
            content_type = payload_content_type(send.payload)   # compressed samples only
            try:
                info = publish(send.topic, send.payload, send.qos, send.retain,
                               None if expiry_s is None and content_type is None
                               else self._properties(expiry_s, content_type))
            except ValueError as err:  # paho refuses the topic or payload outright
                policy.client_refused(send, f"rejected by paho: {err}")
                continue
            if info.rc:   # not MQTT_ERR_SUCCESS (0)
                # Not connected: it goes again after the next CONNACK.
                policy.not_handed(sends[i:])
                return
            handed(send, info.mid)

    def _properties(self, expiry_s: int | None, content_type: str | None) -> Properties:
        """PUBLISH properties with a Message Expiry Interval and/or a Content Type: one object
        per pair of values, reused (paho only reads them, to pack each PUBLISH)."""
        key = (expiry_s, content_type)
        properties = self._properties_cache.get(key)
        if properties is None:
            if len(self._properties_cache) >= PROPERTIES_CACHE_SIZE:
                self._properties_cache.clear()
            properties = Properties(PacketTypes.PUBLISH)
            if expiry_s is not None:
                properties.MessageExpiryInterval = expiry_s
            if content_type is not None:
                properties.ContentType = content_type
            self._properties_cache[key] = properties
        return properties

    # ---- drainer thread ----------------------------------------------------

    def _drain_thread_main(self) -> None:
        try:
            conn = sqlite3.connect(self.db_path, timeout=SQLITE_BUSY_TIMEOUT_S,
                                   check_same_thread=True)
            # Only deletions are committed here; in WAL mode one lost to a power cut
            # means a duplicate delivery, which QoS 1 allows anyway: skip the fsync per commit.
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                conn.execute("PRAGMA synchronous=NORMAL")
            outbox = Outbox(conn)
            conn.commit()
            # Used under self._lock from whichever thread pumps (see the module docstring).
            reader = sqlite3.connect(self.db_path, timeout=READER_BUSY_TIMEOUT_S,
                                     check_same_thread=False)
            with self._lock:
                self._reader = Outbox(reader)
            reader.commit()
            self._refresh_counts(outbox, force=True)
        except Exception as err:
            self._drainer_error = err
            self._drainer_ready.set()
            return
        self._drainer_ready.set()
        try:
            while True:
                timeout = (SETTLE_DELAY_S if self.policy.settled_waiting or not self.policy.idle
                           else IDLE_POLL_S)
                woken = self._wake.wait(timeout)
                self._wake.clear()
                try:
                    self._drain_once(conn, outbox, looked_for_rows=not woken or self._kicked)
                    if self._db_error is not None:
                        log.info("outbox database usable again (after: %s)", self._db_error)
                        self._db_error = None
                except sqlite3.Error as err:
                    # Rows stay in the outbox: at worst sent twice, never lost. Said once
                    # per distinct error, not every retry (a full disk lasts).
                    self._last_error = f"outbox database: {err}"
                    if str(err) != self._db_error:
                        log.warning("outbox database error, will retry: %s", err)
                        self._db_error = str(err)
                    conn.rollback()
                except Exception as err:  # a bug must not silence the gateway for good
                    self._last_error = f"drainer: {err!r}"
                    self._count_internal_error(self._last_error)
                    log.exception("mqtt outbox drainer error, will retry")
                    conn.rollback()
                if self._exit:
                    self._drain_once(conn, outbox, looked_for_rows=False)  # the last PUBACKs
                    break
        except Exception as err:
            self._last_error = f"drainer stopped: {err}"
            self._count_internal_error(self._last_error)
            log.exception("mqtt outbox drainer stopped")
        finally:
            with self._lock:
                self._reader = None
            reader.close()
            conn.close()

    def _drain_once(self, conn: sqlite3.Connection, outbox: Outbox, *,
                    looked_for_rows: bool) -> None:
        policy = self.policy
        with self._lock:
            if looked_for_rows:
                self._kicked = False
                policy.rows_committed()
            self._pump()
            retry_due = policy.parked_retry_due
            settled = policy.take_settled()
        if settled:
            self._write_settled(conn, outbox, settled)
        if retry_due:
            self._retry_parked(conn, outbox)
            with self._lock:
                self._pump()
        self._refresh_counts(outbox, force=bool(settled) and policy.idle)

    def _write_settled(self, conn: sqlite3.Connection, outbox: Outbox, settled: Settled) -> None:
        try:
            if settled.delete_ids:
                outbox.delete(settled.delete_ids)
            for park in settled.parks:
                outbox.park(park.row_id, park.reason, park.kind.value)
            conn.commit()
        except sqlite3.Error:
            conn.rollback()
            with self._lock:
                self.policy.settle_failed(settled)
            raise
        for park in settled.parks:
            log.error("outbox row %d parked (%s): %s", park.row_id, park.kind.value, park.reason)

    def _retry_parked(self, conn: sqlite3.Connection, outbox: Outbox) -> None:
        parked = [ParkedRow(p.message, ParkKind(p.kind)) for p in outbox.parked(PARKED_RETRY_BATCH)]
        with self._lock:
            ids = self.policy.parked_to_retry(parked)
        if not ids:
            return
        moved = outbox.unpark(ids)
        conn.commit()
        with self._lock:
            self.policy.rows_unparked(moved)
        log.info("retrying %d parked outbox rows (ids %d..%d)", len(moved), min(moved, default=0),
                 max(moved, default=0))
        self._refresh_counts(outbox, force=True)

    def _refresh_counts(self, outbox: Outbox, *, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._counted_at >= COUNT_REFRESH_S:
            self._pending = outbox.count()
            self._parked_count = outbox.parked_count()
            self._counted_at = now

    # ---- messages that bypass the outbox ------------------------------------

    def publish_direct(self, topic: str, payload: bytes, *, qos: int = 1,
                       retain: bool = False, properties: Properties | None = None) -> bool:
        """Publish now, bypassing the outbox (answers that are worthless later). False if
        offline: the message is dropped."""
        client = self._client
        if client is None or not self._connected:
            return False
        client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        return True

    def republish_state(self) -> bool:
        """Publish the birth payload again now, bypassing the outbox: for news that cannot
        wait for, or cannot be written to, the outbox (the store alarm). False if offline;
        the next (re)connect publishes the birth payload anyway."""
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


__all__ = ["CONTROL_SLOTS", "MqttPublisher", "PublisherStats"]
