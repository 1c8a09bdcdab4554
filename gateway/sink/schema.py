"""The sink's tables and indexes in PostgreSQL (docs/sink.md describes each column).

Created on start, idempotently (`IF NOT EXISTS`), under a transaction-scoped advisory lock
so that the members of a group starting together do not race on the catalogue. `VERSION`
is recorded in `sink_schema`; a database written by a newer sink is refused, not guessed at.
"""

from __future__ import annotations

VERSION = 1
# pg_advisory_xact_lock key: any constant of our own ("dermtwin" in ASCII, as an int8)
DDL_LOCK_KEY = 0x6465726D7477696E

DDL = """
CREATE TABLE IF NOT EXISTS sink_schema (
    version     integer PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS samples (
    subject         text NOT NULL,
    boot            bigint NOT NULL,
    seq             bigint NOT NULL,
    property        text NOT NULL,
    utc_ms          bigint,
    raw             bigint NOT NULL,
    value           double precision NOT NULL,
    historical      boolean NOT NULL DEFAULT false,
    time_uncertain  boolean NOT NULL DEFAULT false,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, boot, seq)
);
CREATE INDEX IF NOT EXISTS samples_by_time ON samples (subject, property, utc_ms);
CREATE TABLE IF NOT EXISTS twin_history (
    subject    text NOT NULL,
    rev        bigint NOT NULL,
    sess       bigint NOT NULL,
    ts_ms      bigint NOT NULL,
    changed    jsonb NOT NULL,
    removed    jsonb NOT NULL,
    stored_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, rev)
);
CREATE INDEX IF NOT EXISTS twin_history_by_time ON twin_history (subject, ts_ms);
CREATE TABLE IF NOT EXISTS twin_snapshots (
    subject    text NOT NULL,
    rev        bigint NOT NULL,
    sess       bigint NOT NULL,
    ts_ms      bigint NOT NULL,
    state      jsonb NOT NULL,
    stored_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, rev)
);
CREATE INDEX IF NOT EXISTS twin_snapshots_by_time ON twin_snapshots (subject, ts_ms);
CREATE TABLE IF NOT EXISTS alerts (
    subject    text NOT NULL,
    ts_ms      bigint NOT NULL,
    kind       text NOT NULL,
    digest     text NOT NULL,
    active     boolean,
    body       jsonb NOT NULL,
    stored_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, ts_ms, kind, digest)
);
CREATE INDEX IF NOT EXISTS alerts_by_kind ON alerts (kind, ts_ms);
CREATE TABLE IF NOT EXISTS rejected_messages (
    digest       text PRIMARY KEY,
    topic        text NOT NULL,
    payload      bytea NOT NULL,
    reason       text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
"""

# One statement per table: the batch's columns as arrays, unnested into rows; a key already
# stored (a redelivered message) or repeated within the batch is skipped, and the statement's
# row count says how many were new.
INSERTS = {
    "samples": """
        INSERT INTO samples (subject, boot, seq, property, utc_ms, raw, value, historical,
                             time_uncertain)
        SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::text[], %s::bigint[],
                             %s::bigint[], %s::float8[], %s::boolean[], %s::boolean[])
        ON CONFLICT DO NOTHING""",
    "revisions": """
        INSERT INTO twin_history (subject, rev, sess, ts_ms, changed, removed)
        SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[],
                             %s::jsonb[], %s::jsonb[])
        ON CONFLICT DO NOTHING""",
    "snapshots": """
        INSERT INTO twin_snapshots (subject, rev, sess, ts_ms, state)
        SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[],
                             %s::jsonb[])
        ON CONFLICT DO NOTHING""",
    "alerts": """
        INSERT INTO alerts (subject, ts_ms, kind, digest, active, body)
        SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[], %s::boolean[],
                             %s::jsonb[])
        ON CONFLICT DO NOTHING""",
    "rejected": """
        INSERT INTO rejected_messages (digest, topic, payload, reason)
        SELECT * FROM unnest(%s::text[], %s::text[], %s::bytea[], %s::text[])
        ON CONFLICT DO NOTHING""",
}
