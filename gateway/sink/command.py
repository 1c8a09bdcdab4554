"""`dermtwin sink --db postgresql://… --broker mqtt://… --gateway-id gw1`: store samples,
twin history and alerts from the gateway's MQTT topics in PostgreSQL (docs/sink.md).

The loop: take messages from the broker (gateway/sink/mqtt_source.py), decode them into rows
(gateway/sink/rows.py), and when a batch is due commit its rows (gateway/sink/postgres.py),
then acknowledge its messages. A database that goes away is retried with backoff; the
messages wait unacknowledged meanwhile (the broker sends no more than `--receive-maximum`).
psycopg is imported only when the command runs: `dermtwin run` does not need it.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import socket
import time
from typing import TYPE_CHECKING

from gateway.sink.rows import (
    DEFAULT_MAX_MESSAGES,
    DEFAULT_MAX_WAIT_S,
    Batch,
    Batcher,
    MessageDecoder,
    Rows,
    rejected,
)

if TYPE_CHECKING:
    from gateway.sink.mqtt_source import MqttSource
    from gateway.sink.postgres import PostgresStore

log = logging.getLogger("gateway.sink")

DEFAULT_GROUP = "dermtwin-sink"
DEFAULT_SESSION_EXPIRY_S = 86_400
PROGRESS_EVERY_S = 10.0
IDLE_POLL_S = 0.2
DB_RETRY_FIRST_S = 1.0
DB_RETRY_MAX_S = 30.0
LEAVE_IDLE_S = 2.0          # --leave: the session's messages come at once; then this quiet


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sink", help="store samples, twin history and alerts from MQTT in "
                                    "PostgreSQL (one member of a consumer group)")
    p.add_argument("--db", metavar="URL", required=True,
                   help="postgresql://[user[:password]@]host[:port]/dbname (the password "
                        "may also come from PGPASSWORD or ~/.pgpass)")
    p.add_argument("--broker", metavar="URL", required=True, help="mqtt://… or mqtts://…")
    p.add_argument("--gateway-id", required=True, help="the gateway id in the topics")
    p.add_argument("--username")
    p.add_argument("--password-env", metavar="VAR",
                   help="read the MQTT password from this environment variable")
    p.add_argument("--password-file", metavar="FILE",
                   help="read the MQTT password from this file (first line)")
    p.add_argument("--ca-file")
    p.add_argument("--cert-file", help="client certificate (mqtts://)")
    p.add_argument("--key-file", help="its private key")
    p.add_argument("--group", default=DEFAULT_GROUP,
                   help=f"consumer group: the members share the messages ({DEFAULT_GROUP})")
    p.add_argument("--client-id", metavar="ID",
                   help="this member's MQTT client id, stable across restarts so the broker "
                        "keeps its session (default: dermtwin-sink-HOSTNAME; give each member "
                        "on one host its own)")
    p.add_argument("--session-expiry", type=int, default=DEFAULT_SESSION_EXPIRY_S,
                   metavar="S", help="how long the broker keeps this member's session and "
                                     "messages while it is away (86400; 0: none)")
    p.add_argument("--batch-messages", type=int, default=DEFAULT_MAX_MESSAGES, metavar="N",
                   help=f"commit after N messages ({DEFAULT_MAX_MESSAGES})")
    p.add_argument("--batch-wait", type=float, default=DEFAULT_MAX_WAIT_S, metavar="S",
                   help=f"commit at the latest S seconds after a batch began "
                        f"({DEFAULT_MAX_WAIT_S})")
    p.add_argument("--duration", type=float, metavar="S",
                   help="exit after S seconds (default: until SIGTERM or Ctrl-C)")
    p.add_argument("--leave", action="store_true",
                   help="retire this member: store what the broker kept for its session, "
                        "leave the group, end the session and exit (docs/sink.md)")


class Counters:
    def __init__(self) -> None:
        self.messages = 0
        self.redelivered = 0
        self.batches = 0
        self.offered = dict.fromkeys(Rows.TABLES, 0)
        self.inserted = dict.fromkeys(Rows.TABLES, 0)

    def summary(self) -> str:
        dup = sum(self.offered.values()) - sum(self.inserted.values())
        return (f"{self.messages} messages ({self.redelivered} redelivered) in {self.batches} "
                f"batches: stored {self.inserted['samples']} samples, "
                f"{self.inserted['revisions']} twin revisions, "
                f"{self.inserted['snapshots']} twin snapshots, {self.inserted['alerts']} "
                f"alerts, {self.inserted['rejected']} rejected messages; "
                f"{dup} rows already stored")


class Sink:
    """Wires source, decoder, batcher and store; `run()` until stopped."""

    def __init__(self, source: MqttSource, store: PostgresStore, batcher: Batcher):
        self.source = source
        self.store = store
        self.batcher = batcher
        self.decoder = MessageDecoder(source.root)
        self.counters = Counters()
        self.stopping = False
        self._db_down_since: float | None = None

    def run(self, deadline_s: float | None = None, idle_exit_s: float | None = None) -> bool:
        """Until stopped, past `deadline_s`, or `idle_exit_s` without a message (--leave).
        False if messages it took were left unstored (the database was away)."""
        next_progress = time.monotonic() + PROGRESS_EVERY_S
        last_message, seen = time.monotonic(), self.counters.messages
        reported = self.counters.messages
        while not self.stopping and self.source.fatal is None:
            now = time.monotonic()
            if deadline_s is not None and now >= deadline_s:
                break
            if self.counters.messages != seen:
                last_message, seen = now, self.counters.messages
            if idle_exit_s is not None and now - last_message >= idle_exit_s:
                break
            wait = self.batcher.seconds_until_due(now)
            self._receive(IDLE_POLL_S if wait is None else min(wait, IDLE_POLL_S))
            now = time.monotonic()
            if self.batcher.due(now):
                self._commit(self.batcher.take())
            if now >= next_progress:
                next_progress = now + PROGRESS_EVERY_S
                if self.counters.messages != reported:   # quiet while nothing comes
                    reported = self.counters.messages
                    log.info("sink: %s", self.counters.summary())
        if len(self.batcher):
            return self._commit(self.batcher.take(), retry=False)
        return True

    def _receive(self, timeout_s: float) -> None:
        try:
            message = self.source.messages.get(timeout=timeout_s)
        except queue.Empty:
            return
        debug = log.isEnabledFor(logging.DEBUG)
        while True:
            if debug:
                log.debug("sink: received %s%s", message.topic,
                          " (redelivered)" if message.redelivered else "")
            self.counters.messages += 1
            self.counters.redelivered += message.redelivered
            rows = self.decoder.decode(message.topic, message.payload, message.content_type)
            for r in rows.rejected:
                log.warning("sink: %s: %s (kept in rejected_messages)", r.topic, r.reason)
            self.batcher.add(rows, message.token, time.monotonic(), message.topic,
                             message.payload)
            if self.batcher.due(time.monotonic()):
                return
            try:
                message = self.source.messages.get_nowait()
            except queue.Empty:
                return

    def _commit(self, batch: Batch, retry: bool = True) -> bool:
        """Commit the batch's rows, then acknowledge its messages. A database that is away is
        retried with backoff (the messages wait unacknowledged); a batch the database refuses
        is written message by message, and a message it refuses goes to rejected_messages."""
        from gateway.sink.postgres import SinkDbError

        delay_s = DB_RETRY_FIRST_S
        while True:
            try:
                inserted = self._write(batch)
                break
            except SinkDbError as e:
                if not e.transient:
                    raise
                if self._db_down_since is None:
                    self._db_down_since = time.monotonic()
                    log.error("sink: %s; holding %d messages unacknowledged, retrying",
                              e, batch.messages)
                if not retry or self.stopping or self.source.fatal:
                    log.warning("sink: stopping with %d messages not stored: the broker sends "
                                "them again to this client id", batch.messages)
                    return False
                retry_at = time.monotonic() + delay_s
                while time.monotonic() < retry_at and not self.stopping:
                    time.sleep(IDLE_POLL_S)   # a SIGTERM ends the wait
                delay_s = min(DB_RETRY_MAX_S, delay_s * 2)
        if self._db_down_since is not None:
            log.info("sink: PostgreSQL is back after %.0f s", time.monotonic()
                     - self._db_down_since)
            self._db_down_since = None
        acked = self.source.ack(batch.tokens)
        self.counters.batches += 1
        for table, n in batch.rows.counts().items():
            self.counters.offered[table] += n
            self.counters.inserted[table] += inserted[table]
        log.debug("sink: batch committed: %d messages, %d acknowledged; new/offered: %s",
                  batch.messages, acked,
                  ", ".join(f"{t} {inserted[t]}/{n}" for t, n in batch.rows.counts().items()))
        return True

    def _write(self, batch: Batch) -> dict[str, int]:
        from gateway.sink.postgres import SinkDbError

        try:
            return self.store.write(batch.rows)
        except SinkDbError as e:
            if e.transient:
                raise
            log.warning("sink: %s; writing the batch message by message", e)
        total = dict.fromkeys(Rows.TABLES, 0)
        for rows, topic, payload in batch.parts:
            try:
                inserted = self.store.write(rows)
            except SinkDbError as e:
                if e.transient:
                    raise
                log.warning("sink: %s: %s (kept in rejected_messages)", topic, e)
                inserted = self.store.write(rejected(topic, payload, str(e)))
            for table, n in inserted.items():
                total[table] += n
        return total


def _client_id(args: argparse.Namespace) -> str:
    return args.client_id or f"dermtwin-sink-{socket.gethostname()}"


def cmd_sink(args: argparse.Namespace) -> int:
    from gateway.mqtt.config import MqttConfig
    from gateway.sink.mqtt_source import MqttSource
    from gateway.sink.postgres import PostgresStore

    if not args.verbose and not args.quiet:
        log.setLevel(logging.INFO)   # progress lines at the default verbosity
    if args.session_expiry < 0:
        raise ValueError(f"--session-expiry {args.session_expiry}: must be 0 or more")
    if args.batch_messages < 1 or args.batch_wait < 0:
        raise ValueError("--batch-messages must be 1 or more, --batch-wait 0 or more")
    config = MqttConfig.from_url(args.broker, username=args.username,
                                 password_env=args.password_env,
                                 password_file=args.password_file, gateway_id=args.gateway_id,
                                 ca_file=args.ca_file, cert_file=args.cert_file,
                                 key_file=args.key_file)
    store = PostgresStore(args.db)
    store.open()
    log.info("sink: PostgreSQL at %s: tables ready", store.where)
    # in flight to us at most twice a batch: the next batch arrives while one commits
    source = MqttSource(config, client_id=_client_id(args), group=args.group,
                        session_expiry_s=args.session_expiry,
                        receive_maximum=min(65535, 2 * args.batch_messages), leave=args.leave)
    sink = Sink(source, store, Batcher(args.batch_messages, max_wait_s=args.batch_wait))

    def stop(signum, frame) -> None:
        sink.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        source.start()
        log.info("sink: member %r of group %r on %s, %s (session %s, kept %d s)",
                 source.client_id, source.group, config.url, source.root,
                 "resumed" if source.session_present else "new", source.session_expiry_s)
        if args.leave and not source.session_present:
            log.warning("sink: --leave: the broker held no session for %r: nothing to take",
                        source.client_id)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        stored_all = sink.run(deadline, LEAVE_IDLE_S if args.leave else None)
        if args.leave and not stored_all:
            source.leave = False   # keep the session: what it holds is not stored yet
            raise RuntimeError(f"--leave: PostgreSQL at {store.where} is away, so the "
                               f"session of {source.client_id!r} is kept: run --leave again")
    finally:
        source.stop()
        store.close()
    if source.fatal:
        raise RuntimeError(source.fatal)
    if args.leave:
        log.info("sink: member %r left group %r; its session is ended", source.client_id,
                 source.group)
    log.info("sink: stopped (pid %d): %s", os.getpid(), sink.counters.summary())
    return 0
