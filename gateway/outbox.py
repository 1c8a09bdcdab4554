"""Durable outbox: every MQTT message is a row in SQLite before it is published.

Sans-I/O over a caller's `sqlite3.Connection`: no threads, no network, and no
method commits. The gateway writes samples and their outbox rows in one
transaction and commits once; the publisher deletes a row only after the
broker's PUBACK and commits its own deletions. So a message exists exactly
as long as it is undelivered, across broker outages and process restarts.

Row ids come from AUTOINCREMENT and are never reused, so "everything after
id N" is a stable cursor. SQLite admits one writer at a time, so ids become
visible in increasing order.

Messages the delivery policy could not deliver (a PUBACK failure code, over a
size limit, a message the broker drops the connection over) are moved to the
`outbox_parked` table with a kind and a reason, for an operator to inspect;
the policy (gateway/mqtt/delivery.py) decides by kind when to `unpark` one,
which puts it back with its own id.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

from gateway.clock import now_ms
from gateway.outbox_message import OutboxMessage

__all__ = ["NewMessage", "Outbox", "OutboxError", "OutboxMessage", "ParkedMessage"]

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
    reason       TEXT    NOT NULL,
    kind         TEXT    NOT NULL DEFAULT 'refused'
);
"""
# The columns `pending` reads are OutboxMessage's fields, in order (a row becomes one as is).
PENDING_SELECT = (f"SELECT {', '.join(OutboxMessage._fields)} FROM outbox"
                  " WHERE id > ? ORDER BY id LIMIT ?")
_outbox_message = partial(tuple.__new__, OutboxMessage)
# Columns added since the first schema: (table, column, definition), added when missing.
MIGRATIONS = (("outbox_parked", "kind", "TEXT NOT NULL DEFAULT 'refused'"),)
DEFAULT_PARK_KIND = "refused"


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
class ParkedMessage:
    message: OutboxMessage
    parked_ms: int
    reason: str
    kind: str = DEFAULT_PARK_KIND


class Outbox:
    """The `outbox` table on a caller's connection. Never commits."""

    def __init__(self, conn: sqlite3.Connection, *, clock_ms=now_ms) -> None:
        self._conn = conn
        self._clock_ms = clock_ms
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        for table, column, definition in MIGRATIONS:
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in columns:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

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
            PENDING_SELECT, (after_id if after_id is not None else 0, limit)
        ).fetchall()
        # The publisher's hot path: SQLite's types as they come (retain is 0 or 1), each row
        # made an OutboxMessage without _make's Python-level call.
        return list(map(_outbox_message, rows))

    def delete(self, ids: Iterable[int]) -> int:
        """Delete messages by id; returns how many existed. Runs of consecutive ids (the
        usual case: PUBACKs of rows published in order) take one range each."""
        singles: list[int] = []
        deleted = 0
        for first, last in _runs(sorted(set(ids))):
            if last - first >= 2:
                deleted += self._conn.execute(
                    "DELETE FROM outbox WHERE id BETWEEN ? AND ?", (first, last)
                ).rowcount
            else:
                singles.extend(range(first, last + 1))
        for start in range(0, len(singles), DELETE_CHUNK_ROWS):
            chunk = singles[start : start + DELETE_CHUNK_ROWS]
            marks = ",".join("?" * len(chunk))
            deleted += self._conn.execute(
                f"DELETE FROM outbox WHERE id IN ({marks})", chunk
            ).rowcount
        return deleted

    def park(self, message_id: int, reason: str, kind: str = DEFAULT_PARK_KIND) -> bool:
        """Move a message to `outbox_parked` with a reason and a kind (what decides when it
        is tried again); False if it was not pending."""
        moved = self._conn.execute(
            "INSERT OR REPLACE INTO outbox_parked"
            " (id, topic, payload, qos, retain, expiry_s, created_ms, parked_ms, reason, kind)"
            " SELECT id, topic, payload, qos, retain, expiry_s, created_ms, ?, ?, ?"
            " FROM outbox WHERE id = ?",
            (self._clock_ms(), reason, kind, message_id),
        ).rowcount
        self._conn.execute("DELETE FROM outbox WHERE id = ?", (message_id,))
        return moved > 0

    def unpark(self, ids: Iterable[int]) -> list[int]:
        """Put parked messages back into the outbox with their own ids (so their place in
        id order is kept); returns the ids moved."""
        moved = []
        for message_id in ids:
            inserted = self._conn.execute(
                "INSERT OR IGNORE INTO outbox"
                " (id, topic, payload, qos, retain, expiry_s, created_ms)"
                " SELECT id, topic, payload, qos, retain, expiry_s, created_ms"
                " FROM outbox_parked WHERE id = ?",
                (message_id,),
            ).rowcount
            self._conn.execute("DELETE FROM outbox_parked WHERE id = ?", (message_id,))
            if inserted:
                moved.append(message_id)
        return moved

    def parked(self, limit: int = 100) -> list[ParkedMessage]:
        rows = self._conn.execute(
            "SELECT id, topic, payload, qos, retain, expiry_s, created_ms, parked_ms, reason,"
            " kind FROM outbox_parked ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
        return [ParkedMessage(_message(row[:7]), row[7], row[8], row[9]) for row in rows]

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


def _runs(ids: Sequence[int]) -> Iterable[tuple[int, int]]:
    """(first, last) of each run of consecutive integers in sorted `ids`."""
    if not ids:
        return
    first = last = ids[0]
    for i in ids[1:]:
        if i != last + 1:
            yield first, last
            first = i
        last = i
    yield first, last


def _message(row: Sequence) -> OutboxMessage:
    id_, topic, payload, qos, retain, expiry_s, created_ms = row
    return OutboxMessage(id_, topic, bytes(payload), qos, bool(retain), expiry_s, created_ms)
