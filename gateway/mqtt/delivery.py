"""MQTT delivery policy: which outbox rows go to the broker, when, and what becomes of them.

Sans-I/O, after h11: values in, decisions out. No sockets, no SQLite, no clock, no threads:
the adapter (gateway/mqtt/publisher.py) reads rows, publishes, writes to the outbox and
tells the policy what happened. One caller at a time.

The policy owns:
- a cursor over outbox rows (ids only grow; `rows_wanted`, `add_rows`) and a queue of rows
  read ahead but not yet published;
- the in-flight window: at most `window` messages handed to the client and not yet
  acknowledged, and never more than the broker's Receive Maximum less `CONTROL_SLOTS` (kept
  for the gateway's state messages); 1 while a suspect is isolated (below);
- PUBACKs in any order, matched by the client's token (the packet id); a row is settled (to
  be deleted) only when every part of it is acknowledged: delete-on-PUBACK durability;
- size limits: the configured payload limit, the broker's Maximum Packet Size from CONNACK
  and a limit learned from a broker that drops the connection over a message. A row over them
  is split by the splitter for its topic's last level (`{subject}/samples`), into parts that
  each fit, or refused before publishing (parked, counted) when it can never fit;
- expiry: a row whose Message Expiry Interval ran out in the outbox is dropped unpublished;
  the others go out with the time left;
- poison messages, in two strikes: a connection dropped with a protocol error while several
  messages were in flight puts the oldest alone on the wire after the reconnect; dropped again
  with it alone, it is the cause. Its size minus one becomes the learned payload limit (it is
  then split or parked as too large; splittable rows are split to the largest payload the
  broker has acknowledged, or a quarter of the learned limit if none of 256 bytes or more
  was, so one lesson is usually enough); a message too small to blame on size is parked.
  Nothing is ever published again over a limit it broke, so there is no reconnect loop;
- parking and its retry: `too_large` when it fits the current limits again, `refused`
  (a PUBACK failure code) after every reconnect, `poison` at a new start only.

On every (re)connect the adapter drops what the client would resend by itself, and the
policy resends every unacknowledged message (oldest first), under the limits of the new
connection: so it alone decides what goes on the wire.

What the policy hands out to publish is, for the usual row (whole, no expiry), the row's
`OutboxMessage` itself; for a part of a split row or a row with time left to deduct, a `Send`.
Both have `id` (the outbox row's), `topic`, `payload`, `qos`, `retain` and `expiry_s` (the
Message Expiry Interval to send). The publisher's hot path so makes no object per message.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from operator import attrgetter
from typing import NamedTuple

from gateway.outbox_message import OutboxMessage
from gateway.payload_encoding import ZLIB_CONTENT_TYPE

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 100
# Rows read ahead of the window, so a PUBACK can be answered by the next PUBLISH at once.
# Half of them is the adapter's slack to read more: ~25 ms at 20k messages/s, several of
# CPython's 5 ms GIL switch intervals.
DEFAULT_READ_AHEAD_ROWS = 1024
# ... but no more than this many payload bytes held, read or in flight (a Pi's RAM), read this
# many rows at a time.
READ_AHEAD_BYTES = 4 << 20
READ_CHUNK_ROWS = 256
# Acknowledged rows worth a DELETE + COMMIT of their own (`io_due`); fewer wait for a timer
# (the adapter's 100 ms). A range DELETE costs ~0.6 us a row in batches this size, ~1 us at 512.
SETTLE_BATCH_ROWS = 2048
# Receive Maximum slot kept free for the state messages and direct answers (one: every slot
# is throughput while the broker's round trip paces the window).
CONTROL_SLOTS = 1
PUBACK_FAILURE_MIN = 0x80
# Disconnect reasons that blame something we sent: malformed packet, protocol error,
# packet too large (paho reports mosquitto's PUBACK 0x95 over message_size_limit as 0x82).
PROTOCOL_ERROR_REASONS = frozenset({0x81, 0x82, 0x95})
# A message this small that gets the connection dropped is not a size problem: parked as poison.
MIN_LEARNED_PAYLOAD_BYTES = 256
LEARNED_LIMIT_CAP = 1 << 28   # MQTT's largest packet: no limit at all
# Room for the fixed header, remaining length, topic length, packet id and properties of a
# PUBLISH, besides topic and payload (MQTT 5 §3.3): 1 + 4 + 2 + 2 + 1.
PUBLISH_FIXED_OVERHEAD_BYTES = 10
MESSAGE_EXPIRY_PROPERTY_BYTES = 5
# A compressed samples message also carries Content Type `application/zlib` (1 + 2 + 16 bytes);
# reserved under the broker's limit for every message, compressed or not.
CONTENT_TYPE_PROPERTY_BYTES = 3 + len(ZLIB_CONTENT_TYPE)

_message_id = attrgetter("id")
_message_payload = attrgetter("payload")

# Splits a payload into parts of at most max_bytes each, or None if it cannot.
Splitter = Callable[[bytes, int], list[bytes] | None]


class ParkKind(StrEnum):
    """Why a row left the queue for `outbox_parked`; decides when it is tried again."""

    TOO_LARGE = "too_large"   # over a size limit, unsplittable: again when it fits
    REFUSED = "refused"       # a PUBACK failure code: again after every reconnect
    POISON = "poison"         # the broker dropped the connection over it: again at a new start


class Refusal(StrEnum):
    """Counted reasons a row was not delivered (`DeliveryPolicy.refusals`)."""

    OVER_SIZE_LIMIT = "over_size_limit"
    PUBACK_FAILURE = "puback_failure"
    DROPPED_CONNECTION = "dropped_connection"
    CLIENT_REFUSED = "client_refused"


@dataclass(frozen=True, slots=True)
class Park:
    row_id: int
    kind: ParkKind
    reason: str


@dataclass(slots=True)
class Settled:
    """What to write to the outbox: rows to delete (acknowledged or expired) and to park."""

    delete_ids: list[int] = field(default_factory=list)
    parks: list[Park] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.delete_ids or self.parks)


class _Row:
    """A row being sent in parts, or with its remaining expiry fixed: made only for those."""

    __slots__ = ("message", "parts", "expiry_s", "next_part", "acked_parts")

    def __init__(self, message: OutboxMessage, parts: list[bytes], expiry_s: int | None) -> None:
        self.message = message
        self.parts = parts
        self.expiry_s = expiry_s    # remaining, fixed when prepared
        self.next_part = 0
        self.acked_parts = 0


class Send(NamedTuple):
    """One PUBLISH of a part of a split row, or of a row whose expiry had time deducted. Its
    first fields are an OutboxMessage's (what a whole row is handed as)."""

    id: int                # the outbox row's
    topic: str
    payload: bytes
    qos: int
    retain: bool
    expiry_s: int | None   # Message Expiry Interval to send (time in the outbox deducted)
    row: _Row
    part: int


# What the client is handed: a whole row without expiry as itself, anything else as a Send.
Sendable = Send | OutboxMessage


@dataclass(frozen=True, slots=True)
class ParkedRow:
    """A parked row as the adapter reads it back, for `parked_to_retry`."""

    message: OutboxMessage
    kind: ParkKind


def publish_packet_bytes(topic: str, payload_bytes: int, has_expiry: bool) -> int:
    """Upper bound of a QoS 1 PUBLISH packet's size, for the broker's Maximum Packet Size."""
    return (PUBLISH_FIXED_OVERHEAD_BYTES + len(topic.encode()) + payload_bytes
            + CONTENT_TYPE_PROPERTY_BYTES + (MESSAGE_EXPIRY_PROPERTY_BYTES if has_expiry else 0))


class DeliveryPolicy:
    """See the module docstring. Counters are plain attributes, for the state topic and stats."""

    def __init__(
        self,
        *,
        window: int = DEFAULT_WINDOW,
        max_payload_bytes: int | None = None,
        splitters: Mapping[str, Splitter] | None = None,
        read_ahead_rows: int = DEFAULT_READ_AHEAD_ROWS,
    ) -> None:
        if window < 1:
            raise ValueError(f"window {window}: must be at least 1")
        if read_ahead_rows < 1:
            raise ValueError(f"read_ahead_rows {read_ahead_rows}: must be at least 1")
        if max_payload_bytes is not None and max_payload_bytes < 1:
            raise ValueError(f"max_payload_bytes {max_payload_bytes}: must be positive")
        self.window = window
        self.read_ahead_rows = read_ahead_rows
        self._read_low_rows = read_ahead_rows // 2
        self.max_payload_bytes = max_payload_bytes     # configured
        self.broker_max_packet_bytes: int | None = None  # from the last CONNACK
        self.learned_max_payload_bytes: int | None = None
        self.largest_acked_payload_bytes = 0     # a size the broker is known to take
        self.receive_maximum: int | None = None
        self._splitters = dict(splitters or {})

        self._rows: dict[int, OutboxMessage] = {}   # read, not yet settled
        self._rows_bytes = 0                        # their payloads' bytes
        # Waiting to be handed to the client: rows as read, but for a split row some of whose
        # parts are handed already, which stays at the front until its last part goes.
        self._queue: deque[OutboxMessage | _Row] = deque()
        self._handed: dict[object, Sendable] = {}   # client token -> what it carries
        self._settled = Settled()
        self.cursor = 0                          # highest outbox id read
        self._read_max_id = 0                    # ... and the highest ever, since forget_rows
        self._exhausted = False                  # the last read found no more rows
        self.connected = False
        self.holding = False                     # stopping: hand nothing new to the client
        self.isolating = False                   # a suspect goes alone on the wire
        self.parked_retry_due = False
        self._fresh_start = True                 # no connection yet since `forget_rows`
        self._no_limits = True                   # cached by _limits_changed
        self._window_now = window

        # counters
        self.connects = 0
        self.published = 0         # rows acknowledged (every part)
        self.parts_published = 0   # PUBLISH packets acknowledged
        self.split_rows = 0        # rows published in several parts
        self.expired = 0
        self.parked = 0            # rows parked by this policy
        self.unparked = 0          # parked rows put back to be tried again
        self.refusals: Counter[str] = Counter()
        self._limits_changed()

    # ---- limits ----------------------------------------------------------------------

    @property
    def effective_window(self) -> int:
        """Messages that may await their PUBACK now."""
        if self.isolating:
            return 1
        if self.receive_maximum is None:
            return self.window
        return max(1, min(self.window, self.receive_maximum - CONTROL_SLOTS))

    def max_payload_for(self, topic: str, has_expiry: bool) -> int | None:
        """The largest payload that may go out on `topic` now, or None for no limit."""
        limits = [x for x in (self.max_payload_bytes, self.learned_max_payload_bytes)
                  if x is not None]
        if self.broker_max_packet_bytes is not None:
            limits.append(self.broker_max_packet_bytes
                          - publish_packet_bytes(topic, 0, has_expiry))
        return min(limits) if limits else None

    def _limits_changed(self) -> None:
        self._no_limits = (self.max_payload_bytes is None and self.broker_max_packet_bytes is None
                           and self.learned_max_payload_bytes is None)
        self._window_now = self.effective_window

    def set_max_payload_bytes(self, limit: int | None) -> None:
        """A new configured limit: queued rows are measured again, parked ones may fit now."""
        if limit is not None and limit < 1:
            raise ValueError(f"max_payload_bytes {limit}: must be positive")
        self.max_payload_bytes = limit
        self._limits_changed()
        self.parked_retry_due = True

    # ---- connection ------------------------------------------------------------------

    def on_connected(self, receive_maximum: int | None = None,
                     maximum_packet_size: int | None = None) -> None:
        """CONNACK accepted. The client has dropped what it would resend: resend it all."""
        self.connected = True
        self.connects += 1
        self.receive_maximum = receive_maximum
        self.broker_max_packet_bytes = maximum_packet_size
        self._limits_changed()
        self._requeue_handed()
        self._exhausted = False
        self.parked_retry_due = True

    def on_disconnected(self, reason_code: int = 0) -> None:
        """The connection is gone. What was handed stays handed until the next connect."""
        self.connected = False
        if reason_code not in PROTOCOL_ERROR_REASONS or not self._handed:
            return
        if len(self._handed) > 1:
            # Strike one: whose fault is unclear; the oldest goes alone next time.
            self.isolating = True
            self._limits_changed()
            return
        (send,) = self._handed.values()
        self.isolating = False
        self._convict(send, reason_code)
        self._limits_changed()

    def _convict(self, send: Sendable, reason_code: int) -> None:
        """Strike two: the connection was dropped with `send` alone in flight."""
        size = len(send.payload)
        self.refusals[Refusal.DROPPED_CONNECTION] += 1
        if size - 1 >= MIN_LEARNED_PAYLOAD_BYTES:
            learned = size - 1
            if self.learned_max_payload_bytes is None or learned < self.learned_max_payload_bytes:
                self.learned_max_payload_bytes = learned
            log.warning(
                "the broker dropped the connection (reason 0x%02X) over a %d-byte message to "
                "%s alone: payloads over %d bytes are split or refused from now on",
                reason_code, size, send.topic, self.learned_max_payload_bytes)
            return   # resent as read, so measured against the learned limit
        self._park(send.id, ParkKind.POISON,
                   f"the broker dropped the connection (reason 0x{reason_code:02X}) with only "
                   f"this {size}-byte message in flight, twice")

    def _requeue_handed(self) -> None:
        """Every unsettled row handed (or half handed) goes back to the queue as read, to be
        prepared again under the new connection's limits."""
        rows = self._rows
        again = {send.id: rows[send.id] for send in self._handed.values() if send.id in rows}
        self._handed.clear()
        queue = self._queue
        head = queue[0] if queue else None
        if isinstance(head, _Row):   # a split row, some of its parts handed
            queue.popleft()
            again[head.message.id] = head.message
        # Requeued rows are older than the queued ones; keep id order where it is cheap.
        queue.extendleft(sorted(again.values(), reverse=True))

    # ---- rows in ---------------------------------------------------------------------

    def rows_wanted(self) -> int:
        """How many rows to read past `cursor` now (0: none)."""
        if not self.connected or self.holding or self._exhausted:
            return 0
        room = self.read_ahead_rows - len(self._queue)
        if room <= 0 or self._rows_bytes >= READ_AHEAD_BYTES:
            return 0
        return min(room, READ_CHUNK_ROWS)

    def add_rows(self, messages: Sequence[OutboxMessage], asked: int) -> None:
        """Rows read with id > cursor, in id order; fewer than `asked` means no more for now."""
        rows, queue = self._rows, self._queue
        if messages and messages[0].id > self._read_max_id:
            # The usual read: every row is new. No Python-level loop per row.
            rows.update(zip(map(_message_id, messages), messages, strict=True))
            queue.extend(messages)
            self._rows_bytes += sum(map(len, map(_message_payload, messages)))
            self._read_max_id = messages[-1].id
        else:
            # After rows were unparked (the cursor went back): skip the rows we hold.
            for message in messages:
                if message.id not in rows:
                    rows[message.id] = message
                    queue.append(message)
                    self._rows_bytes += len(message.payload)
                    self._read_max_id = max(self._read_max_id, message.id)
        if messages:
            self.cursor = max(self.cursor, messages[-1].id)
        if len(messages) < asked:
            self._exhausted = True

    def rows_committed(self) -> None:
        """New rows may be in the outbox (a kick, or a periodic look)."""
        self._exhausted = False

    # ---- parked rows -----------------------------------------------------------------

    def parked_to_retry(self, parked: Iterable[ParkedRow]) -> list[int]:
        """Ids of parked rows worth another try now (call when `parked_retry_due`)."""
        self.parked_retry_due = False
        retry = []
        for p in parked:
            if p.kind is ParkKind.REFUSED:
                retry.append(p.message.id)
            elif p.kind is ParkKind.TOO_LARGE:
                if self._parts_for(p.message) is not None:
                    retry.append(p.message.id)
            elif p.kind is ParkKind.POISON and self._fresh_start:
                retry.append(p.message.id)
        self._fresh_start = False
        return retry

    def rows_unparked(self, ids: Sequence[int]) -> None:
        """The adapter put these parked rows back into the outbox, with their ids."""
        if ids:
            self.unparked += len(ids)
            self.cursor = min(self.cursor, min(ids) - 1)
            self._exhausted = False

    # ---- sending ---------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._handed)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """Nothing handed to the client awaits its PUBACK."""
        return not self._handed

    def take_sends(self, now_ms: int | Callable[[], int]) -> list[Sendable]:
        """What to hand to the client now, in order. Rows that expired or can never fit are
        settled on the way (see `take_settled`). `now_ms` is the time, or a clock read only
        if a row to send has an expiry (the usual row has none)."""
        if not self.connected or self.holding:
            return []
        room = self._window_now - len(self._handed)
        queue = self._queue
        if room <= 0 or not queue:
            return []
        now: int | None = None   # read once, for the first row with an expiry
        whole = self._no_limits
        sends: list[Sendable] = []
        while room > 0 and queue:
            row = queue[0]
            if not isinstance(row, _Row):
                if whole and row.expiry_s is None:
                    queue.popleft()
                    sends.append(row)   # the usual row: whole, as read
                    room -= 1
                    continue
                if now is None and row.expiry_s is not None:
                    now = now_ms() if callable(now_ms) else now_ms
                queue.popleft()
                prepared = self._prepare(row, now if now is not None else 0)
                if prepared is None:
                    continue   # settled: expired or parked
                if not isinstance(prepared, _Row):
                    sends.append(prepared)   # fits whole, no expiry: as read
                    room -= 1
                    continue
                queue.appendleft(prepared)
                row = prepared
            part = row.next_part
            row.next_part = part + 1
            parts = row.parts
            if row.next_part == len(parts):
                queue.popleft()
            m = row.message
            sends.append(Send(m.id, m.topic, parts[part], m.qos, m.retain, row.expiry_s, row,
                              part))
            room -= 1
        return sends

    def handed(self, send: Sendable, token: object) -> None:
        """The client took `send`; its PUBACK will carry `token`."""
        self._handed[token] = send

    def not_handed(self, sends: Sequence[Sendable]) -> None:
        """The client refused these (in order): they go back to the front of the queue."""
        back: dict[int, OutboxMessage | _Row] = {}
        for send in sends:
            if isinstance(send, Send):
                row = send.row
                row.next_part = min(row.next_part, send.part)
                back.setdefault(send.id, row)
            else:
                back.setdefault(send.id, send)
        queue = self._queue
        head = queue[0] if queue else None
        if isinstance(head, _Row) and head.message.id in back:
            queue.popleft()
        # A row none of whose parts is handed goes back as read.
        queue.extendleft(reversed([
            entry.message if isinstance(entry, _Row) and entry.next_part == 0 else entry
            for entry in back.values()]))

    def client_refused(self, send: Sendable, reason: str) -> None:
        """The client would not take `send` at all (e.g. a topic it rejects): parked."""
        self.refusals[Refusal.CLIENT_REFUSED] += 1
        self._park(send.id, ParkKind.REFUSED, reason)

    def _prepare(self, message: OutboxMessage, now_ms: int) -> OutboxMessage | _Row | None:
        """The message itself if it goes whole and without expiry, the row to send in parts or
        with its remaining expiry, or None if it was settled instead (expired: to delete; over
        a limit it can never fit: parked)."""
        remaining = None if message.expiry_s is None else message.remaining_expiry_s(now_ms)
        if remaining == 0:
            self._forget(message.id)
            self._settled.delete_ids.append(message.id)
            self.expired += 1
            return None
        parts = self._parts_for(message)
        if parts is None:
            limit = self.max_payload_for(message.topic, message.expiry_s is not None)
            self.refusals[Refusal.OVER_SIZE_LIMIT] += 1
            self._park(message.id, ParkKind.TOO_LARGE,
                       f"payload {len(message.payload)} bytes over the size limit {limit} "
                       f"({self._describe_limit()}) and not splittable to fit")
            return None
        if len(parts) > 1:
            self.split_rows += 1
        elif remaining is None and parts[0] is message.payload:
            return message
        return _Row(message, parts, remaining)

    def _parts_for(self, message: OutboxMessage) -> list[bytes] | None:
        """[payload] if it fits, the parts it splits into, or None if it can never fit."""
        if self._no_limits:
            return [message.payload]
        limit = self.max_payload_for(message.topic, message.expiry_s is not None)
        splitter = self._splitters.get(message.topic.rsplit("/", 1)[-1])
        if splitter is not None and self.learned_max_payload_bytes is not None:
            # A learned limit only bounds the broker's from above (the message that taught it
            # may have been many times over): split to what the broker is known to take, the
            # largest payload acknowledged, so the parts do not teach it again one step lower;
            # a quarter of the learned limit if nothing of a useful size was acknowledged yet.
            learned = self.learned_max_payload_bytes
            acked = self.largest_acked_payload_bytes
            target = min(learned, acked if acked >= MIN_LEARNED_PAYLOAD_BYTES else learned // 4)
            limit = min(target, limit or LEARNED_LIMIT_CAP)
        if limit is None or len(message.payload) <= limit:
            return [message.payload]
        if splitter is None or limit < 1:
            return None
        parts = splitter(message.payload, limit)
        if not parts or any(len(p) > limit for p in parts):
            return None
        return parts

    def _describe_limit(self) -> str:
        named = (("configured max_payload_bytes", self.max_payload_bytes),
                 ("the broker's Maximum Packet Size", self.broker_max_packet_bytes),
                 ("learned from dropped connections", self.learned_max_payload_bytes))
        return ", ".join(f"{name} {value}" for name, value in named if value is not None)

    # ---- acknowledgements ------------------------------------------------------------

    def on_puback(self, token: object, reason_code: int = 0, reason: str = "") -> None:
        """A PUBACK (or, for QoS 0, the client's word that it was written), in any order."""
        send = self._handed.pop(token, None)
        if send is None:
            return   # not ours (state messages), or sent before the last reconnect
        row_id = send.id
        if reason_code >= PUBACK_FAILURE_MIN:
            self.refusals[Refusal.PUBACK_FAILURE] += 1
            self._park(row_id, ParkKind.REFUSED, f"PUBACK 0x{reason_code:02X} {reason}".rstrip())
            return
        if self.isolating:
            self.isolating = False
            self._limits_changed()
        self.parts_published += 1
        size = len(send.payload)
        if size > self.largest_acked_payload_bytes:
            self.largest_acked_payload_bytes = size
        if isinstance(send, Send):
            row = send.row
            row.acked_parts += 1
            if row.acked_parts < len(row.parts):
                return
        message = self._rows.pop(row_id, None)
        if message is None:
            return   # settled already
        self._rows_bytes -= len(message.payload)
        self._settled.delete_ids.append(row_id)
        self.published += 1

    def _forget(self, row_id: int) -> None:
        message = self._rows.pop(row_id, None)
        if message is not None:
            self._rows_bytes -= len(message.payload)

    def _park(self, row_id: int, kind: ParkKind, reason: str) -> None:
        self._forget(row_id)
        handed = self._handed
        for token in [t for t, s in handed.items() if s.id == row_id]:
            del handed[token]
        queue = self._queue
        for entry in [e for e in queue
                      if (e.message.id if isinstance(e, _Row) else e.id) == row_id]:
            queue.remove(entry)
        self._settled.parks.append(Park(row_id, kind, reason))
        self.parked += 1

    # ---- settled rows out ------------------------------------------------------------

    def take_settled(self) -> Settled:
        """Rows to delete and to park in the outbox, in one transaction. If writing fails,
        give them back with `settle_failed`."""
        settled, self._settled = self._settled, Settled()
        return settled

    def settle_failed(self, settled: Settled) -> None:
        self._settled.delete_ids[:0] = settled.delete_ids
        self._settled.parks[:0] = settled.parks

    @property
    def settled_waiting(self) -> bool:
        return bool(self._settled)

    def reading_due(self) -> bool:
        """Whether to read more rows now: the read-ahead queue is half empty, and the outbox
        may hold more."""
        return (len(self._queue) <= self._read_low_rows and self.connected and not self.holding
                and not self._exhausted)

    def io_due(self) -> bool:
        """Whether the adapter has outbox writes to make now: a batch of settled rows, the
        last settled rows of a burst (nothing in flight: no more PUBACKs to batch them with),
        rows to park, or parked rows due a retry. Other settled rows wait for a timer."""
        delete_ids = self._settled.delete_ids
        return (
            len(delete_ids) >= SETTLE_BATCH_ROWS
            or (bool(delete_ids) and not self._handed)
            or bool(self._settled.parks)
            or self.parked_retry_due
        )

    def forget_rows(self) -> None:
        """Start over from the outbox alone (a publisher restart): everything read, queued
        and in flight is forgotten; counters and learned limits are kept."""
        self._rows.clear()
        self._rows_bytes = 0
        self._read_max_id = 0
        self._queue.clear()
        self._handed.clear()
        self._settled = Settled()
        self.cursor = 0
        self._exhausted = False
        self.connected = self.holding = self.isolating = False
        self.parked_retry_due = False
        self._fresh_start = True
        self._limits_changed()
