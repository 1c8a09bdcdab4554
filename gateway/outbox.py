"""Durable outbox: every MQTT message is a row in SQLite before it is published.

Sans-I/O over a caller's `sqlite3.Connection`: no threads, no network, and no
method commits. The gateway writes samples and their outbox rows in one
transaction and commits once; the publisher deletes a row only after the
broker's PUBACK and commits its own deletions. So a message exists exactly
as long as it is undelivered, across broker outages and process restarts.

Row ids come from AUTOINCREMENT and are never reused, so "everything after
id N" is a stable cursor. SQLite admits one writer at a time, so ids become
visible in increasing order.

Messages the broker refused (a PUBACK failure reason code) are moved to the
`outbox_parked` table with the reason, for an operator to inspect; they are
not retried automatically.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from gateway.clock import now_ms

MAX_TOPIC_BYTES = 65535  # MQTT UTF-8 string length prefix is 16 bits
SUPPORTED_QOS = (0, 1)
# SQLite's default SQLITE_MAX_VARIABLE_NUMBER is 999 on older builds; stay under it.
DELETE_CHUNK_ROWS = 500

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    topic       TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    qos         INTEGER NOT NULL,
    retain      INTEGER NOT NULL,
    expiry_s    INTEGER,
    created_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_parked (
    id           INTEGER PRIMARY KEY,
    topic        TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    qos          INTEGER NOT NULL,
    retain       INTEGER NOT NULL,
    expiry_s     INTEGER,
    created_ms   INTEGER NOT NULL,
    parked_ms    INTEGER NOT NULL,
    reason       TEXT    NOT NULL
);
"""


class OutboxError(ValueError):
    """A message cannot go into the outbox; the message names the field."""


class NewMessage(NamedTuple):
    """A message to put, for `Outbox.put_many`."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    expiry_s: int | None = None


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    expiry_s: int | None
    created_ms: int

    def remaining_expiry_s(self, now_ms: int) -> int | None:
        """Message Expiry Interval left at `now_ms`: None if the message never
        expires, 0 if it has expired. Time spent in the outbox counts, as it
        would in a broker. A clock that went backwards counts as no time spent.
        """
        if self.expiry_s is None:
            return None
        waited_s = max(0, now_ms - self.created_ms) // 1000
        return max(0, self.expiry_s - waited_s)


@dataclass(frozen=True)
class ParkedMessage:
    message: OutboxMessage
    parked_ms: int
    reason: str


class Outbox:
    """The `outbox` table on a caller's connection. Never commits."""

    def __init__(self, conn: sqlite3.Connection, *, clock_ms=now_ms) -> None:
        self._conn = conn
        self._clock_ms = clock_ms
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)

    def put(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        expiry_s: int | None = None,
    ) -> int:
        """Add one message; returns its id. Joins (or implicitly opens) the
        caller's transaction: the row is visible to the publisher only once the
        caller commits."""
        row = _validated(NewMessage(topic, payload, qos, retain, expiry_s))
        cursor = self._conn.execute(
            "INSERT INTO outbox (topic, payload, qos, retain, expiry_s, created_ms)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (*row, self._clock_ms()),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def put_many(self, messages: Iterable[NewMessage | tuple]) -> list[int]:
        """Add several messages in order; returns their ids. Validates all
        before inserting any, so a bad message leaves nothing half-written."""
        rows = [_validated(NewMessage(*m)) for m in messages]
        created_ms = self._clock_ms()
        ids = []
        for row in rows:
            cursor = self._conn.execute(
                "INSERT INTO outbox (topic, payload, qos, retain, expiry_s, created_ms)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (*row, created_ms),
            )
            assert cursor.lastrowid is not None
            ids.append(cursor.lastrowid)
        return ids

    def pending(self, limit: int, after_id: int | None = None) -> list[OutboxMessage]:
        """Up to `limit` messages in insertion order, with id > `after_id` if given."""
        if limit <= 0:
            return []
        rows = self._conn.execute(
            "SELECT id, topic, payload, qos, retain, expiry_s, created_ms FROM outbox"
            " WHERE id > ? ORDER BY id LIMIT ?",
            (after_id if after_id is not None else 0, limit),
        ).fetchall()
        return [_message(row) for row in rows]

    def delete(self, ids: Iterable[int]) -> int:
        """Delete messages by id; returns how many existed."""
        ids = list(ids)
        deleted = 0
        for start in range(0, len(ids), DELETE_CHUNK_ROWS):
            chunk = ids[start : start + DELETE_CHUNK_ROWS]
            marks = ",".join("?" * len(chunk))
            deleted += self._conn.execute(
                f"DELETE FROM outbox WHERE id IN ({marks})", chunk
            ).rowcount
        return deleted

    def park(self, message_id: int, reason: str) -> bool:
        """Move a message to `outbox_parked` with a reason; False if it was not pending."""
        moved = self._conn.execute(
            "INSERT OR REPLACE INTO outbox_parked"
            " (id, topic, payload, qos, retain, expiry_s, created_ms, parked_ms, reason)"
            " SELECT id, topic, payload, qos, retain, expiry_s, created_ms, ?, ?"
            " FROM outbox WHERE id = ?",
            (self._clock_ms(), reason, message_id),
        ).rowcount
        self._conn.execute("DELETE FROM outbox WHERE id = ?", (message_id,))
        return moved > 0

    def parked(self, limit: int = 100) -> list[ParkedMessage]:
        rows = self._conn.execute(
            "SELECT id, topic, payload, qos, retain, expiry_s, created_ms, parked_ms, reason"
            " FROM outbox_parked ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        return [ParkedMessage(_message(row[:7]), row[7], row[8]) for row in rows]

    def count(self) -> int:
        return self._conn.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def parked_count(self) -> int:
        return self._conn.execute("SELECT count(*) FROM outbox_parked").fetchone()[0]


def _validated(message: NewMessage) -> tuple[str, bytes, int, int, int | None]:
    topic, payload, qos, retain, expiry_s = message
    if not isinstance(topic, str) or not topic:
        raise OutboxError(f"topic {topic!r}: must be a non-empty string")
    if any(ch in topic for ch in "+#\0"):
        raise OutboxError(f"topic {topic!r}: must not contain wildcards '+', '#' or NUL")
    if len(topic.encode()) > MAX_TOPIC_BYTES:
        raise OutboxError(
            f"topic: {len(topic.encode())} bytes, over the MQTT limit {MAX_TOPIC_BYTES}"
        )
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise OutboxError(f"payload for {topic!r}: must be bytes, got {type(payload).__name__}")
    if qos not in SUPPORTED_QOS:
        raise OutboxError(f"qos {qos!r} for {topic!r}: outbox publishes at QoS 0 or 1")
    if expiry_s is not None and (
        isinstance(expiry_s, bool)
        or not isinstance(expiry_s, int)
        or not 1 <= expiry_s <= 0xFFFFFFFF
    ):
        raise OutboxError(
            f"expiry_s {expiry_s!r} for {topic!r}: must be 1..4294967295 seconds or None"
        )
    return topic, bytes(payload), qos, int(bool(retain)), expiry_s


def _message(row: Sequence) -> OutboxMessage:
    id_, topic, payload, qos, retain, expiry_s, created_ms = row
    return OutboxMessage(id_, topic, bytes(payload), qos, bool(retain), expiry_s, created_ms)
