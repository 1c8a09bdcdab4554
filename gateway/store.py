"""The gateway's durable store: one SQLite database in WAL mode.

Tables: `devices` (the registry of paired patches), `samples` (every sample once, keyed by
device and seq), `gaps` (samples a patch reported it could not log: protocol.md §4.1), `twins` (per-subject revision and last published state), `gateway_meta`
(the gateway session counter), `desired_config` (the latest sampling configuration accepted
from `{subject}/desired` per device, and the version last applied to the patch). The outbox lives in the same file (gateway/outbox.py), so a
batch of samples, the twin revisions it causes and the MQTT messages announcing them commit
in one transaction.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gateway.protocol.constants import ConfigKey
from gateway.values import DesiredConfig, LostSamples, RegisteredDevice, SampleBatch

log = logging.getLogger(__name__)

DB_FILE_MODE = 0o600   # the database holds the device keys
DB_DIR_MODE = 0o700    # a directory the database creates

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id     TEXT PRIMARY KEY,
    key           BLOB NOT NULL,
    subject       TEXT NOT NULL UNIQUE,
    skin_type     INTEGER NOT NULL DEFAULT 3,
    address       TEXT,
    config_json   TEXT NOT NULL DEFAULT '{}',
    paired_at_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    device_id  TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    boot_id    INTEGER NOT NULL,
    tick       INTEGER NOT NULL,
    utc_ms     INTEGER,
    channel    INTEGER NOT NULL,
    value      INTEGER NOT NULL,
    historical INTEGER NOT NULL DEFAULT 0,
    time_uncertain INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gaps (
    device_id     TEXT NOT NULL,
    boot_id       INTEGER NOT NULL,
    seq_at        INTEGER NOT NULL,
    first_tick    INTEGER NOT NULL,
    last_tick     INTEGER NOT NULL,
    first_utc_ms  INTEGER,
    last_utc_ms   INTEGER,
    n_temperature INTEGER NOT NULL,
    n_uv          INTEGER NOT NULL,
    n_hydration   INTEGER NOT NULL,
    n_battery     INTEGER NOT NULL,
    PRIMARY KEY (device_id, boot_id, seq_at)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS watermarks (
    device_id      TEXT PRIMARY KEY,
    committed_seq  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS anchors (
    device_id  TEXT NOT NULL,
    boot_id    INTEGER NOT NULL,
    tick       INTEGER NOT NULL,
    utc_ms     REAL NOT NULL,
    PRIMARY KEY (device_id, boot_id)
);
CREATE TABLE IF NOT EXISTS twins (
    subject     TEXT PRIMARY KEY,
    rev         INTEGER NOT NULL,
    state_json  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS desired_config (
    device_id    TEXT PRIMARY KEY,
    ver          INTEGER NOT NULL,
    cfg_json     TEXT NOT NULL,
    applied_ver  INTEGER,
    applied_cfg_json TEXT NOT NULL DEFAULT '{}',
    updated_ms   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS gateway_meta (
    name   TEXT PRIMARY KEY,
    value  INTEGER NOT NULL
);
"""


class StoreError(RuntimeError):
    pass


class DiskFullError(StoreError):
    """SQLite could not write (disk or quota full): stop acknowledging, keep what is stored."""


class DatabaseCorrupt(StoreError):
    """SQLite found the database file damaged (SQLITE_CORRUPT / SQLITE_NOTADB): the file must
    be moved aside and a fresh one started (gateway/store_recovery.py)."""


def is_corruption(error: BaseException) -> bool:
    """True for SQLite's "the file is damaged" errors, not for busy, full or misuse."""
    if not isinstance(error, sqlite3.DatabaseError) or isinstance(
            error, sqlite3.OperationalError | sqlite3.IntegrityError | sqlite3.ProgrammingError):
        return False
    name = getattr(error, "sqlite_errorname", "") or ""
    text = str(error).lower()
    return (name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
            or "malformed" in text or "not a database" in text)


REGISTRY_COPY_SUFFIX = ".registry.json"


def registry_copy_path(db_path: str | Path) -> Path:
    """The registry's own file beside the database: what a fresh database recovers from."""
    return Path(str(db_path) + REGISTRY_COPY_SUFFIX)


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (and create) the gateway database with the durability settings we rely on.

    It holds the device keys: created 0600 (SQLite gives its -wal and -shm files the same
    mode) in a directory created 0700; an existing database readable by others is made
    0600, with a warning."""
    _create_private(Path(path))
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.executescript(SCHEMA)
    columns = {r[1] for r in conn.execute("PRAGMA table_info(samples)")}
    if "time_uncertain" not in columns:   # a database from before the column
        conn.execute("ALTER TABLE samples ADD COLUMN time_uncertain INTEGER NOT NULL DEFAULT 0")
    _tighten(Path(path))   # only a file that opened as a database
    return conn


def _create_private(path: Path) -> None:
    path.parent.mkdir(mode=DB_DIR_MODE, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, DB_FILE_MODE))


def _tighten(path: Path) -> None:
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & ~DB_FILE_MODE:
            log.warning("%s was readable by others (mode %o): holds device keys, now 600",
                        file, mode)
            file.chmod(DB_FILE_MODE)


class Store:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self._registry_dirty = False
        row = conn.execute("PRAGMA database_list").fetchone()
        self.path: Path | None = Path(row[2]) if row is not None and row[2] else None

    # -- registry copy (kept in its own file so a corrupt database loses no pairing) ------
    def write_registry_copy(self) -> None:
        """Write the registry to `registry_copy_path` atomically, readable by the owner only
        (it holds the device keys, as the database does)."""
        if self.path is None:
            return
        rows = self.conn.execute(
            "SELECT device_id, key, subject, skin_type, address, config_json, paired_at_ms"
            " FROM devices ORDER BY device_id").fetchall()
        payload = {"schema": 1, "devices": [
            {"device_id": r[0], "key": bytes(r[1]).hex(), "subject": r[2], "skin_type": r[3],
             "address": r[4], "config": json.loads(r[5]), "paired_at_ms": r[6]} for r in rows]}
        target = registry_copy_path(self.path)
        tmp = target.with_name(target.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        self._registry_dirty = False

    def refresh_registry_copy(self) -> bool:
        """write_registry_copy, logging (not raising) a failure: the registry itself is
        committed; only its spare copy is stale. True if written."""
        try:
            self.write_registry_copy()
        except OSError as e:
            log.error("registry copy %s not written (%s): a damaged database would lose the "
                      "pairings made since", registry_copy_path(self.path or ""), e)
            return False
        return True

    def _registry_changed(self) -> None:
        self._registry_dirty = True
        if not self.conn.in_transaction:
            self.refresh_registry_copy()

    def _after_commit(self) -> None:
        if self._registry_dirty:
            self.refresh_registry_copy()

    # -- registry --------------------------------------------------------------
    def register(self, device: RegisteredDevice, paired_at_ms: int) -> None:
        self.conn.execute(
            "INSERT INTO devices(device_id, key, subject, skin_type, address, config_json,"
            " paired_at_ms) VALUES (?,?,?,?,?,?,?)"
            " ON CONFLICT(device_id) DO UPDATE SET key=excluded.key, subject=excluded.subject,"
            " skin_type=excluded.skin_type, address=excluded.address,"
            " config_json=excluded.config_json",
            (device.device_id, device.key, device.subject, device.skin_type, device.address,
             json.dumps(device.config, sort_keys=True), paired_at_ms),
        )
        self._registry_changed()

    def unregister(self, device_id: str) -> bool:
        self.conn.execute("DELETE FROM desired_config WHERE device_id=?", (device_id,))
        removed = self.conn.execute(
            "DELETE FROM devices WHERE device_id=?", (device_id,)).rowcount > 0
        self._registry_changed()
        return removed

    def devices(self) -> list[RegisteredDevice]:
        rows = self.conn.execute(
            "SELECT device_id, key, subject, skin_type, address, config_json FROM devices"
            " ORDER BY device_id").fetchall()
        return [RegisteredDevice(r[0], bytes(r[1]), r[2], r[3], r[4], json.loads(r[5]))
                for r in rows]

    def device(self, device_id: str) -> RegisteredDevice | None:
        for dev in self.devices():
            if dev.device_id == device_id:
                return dev
        return None

    # -- samples ---------------------------------------------------------------
    def committed_seq(self, device_id: str) -> int:
        """Every seq up to this one has been committed (the session keeps commits gap-free);
        -1 when none. Kept as a watermark so pruning old samples cannot move it back."""
        row = self.conn.execute(
            "SELECT committed_seq FROM watermarks WHERE device_id=?", (device_id,)).fetchone()
        return -1 if row is None else int(row[0])

    def insert_samples(self, batches: Iterable[SampleBatch]) -> int:
        """Insert inside the caller's transaction; duplicates by (device, seq) are ignored.
        Returns the number of new rows.

        Shaped for a backlog drain (docs/performance.md, "Drain"): the batches of one device,
        boot and kind (live or backfill) go together, SAMPLE_ROWS_PER_INSERT rows to a
        statement, with the columns they share written into it. One row per `executemany`
        step cost ~1.9 µs of CPU per sample here; this ~0.9 µs.
        """
        groups: dict[tuple[str, int, bool, bool], list[SampleBatch]] = {}
        highest: dict[str, int] = {}
        for batch in batches:
            if not len(batch):
                continue
            key = (batch.device_id, batch.boot_id, batch.historical, batch.time_uncertain)
            groups.setdefault(key, []).append(batch)
            highest[batch.device_id] = max(highest.get(batch.device_id, -1),
                                           int(batch.seq[-1]))
        rows_per_insert = min(SAMPLE_ROWS_PER_INSERT, self.conn.getlimit(
            sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // _SAMPLE_PARAMETERS)
        inserted = 0
        for (device_id, boot_id, historical, time_uncertain), group in groups.items():
            columns = np.concatenate([   # int64 each first: a uint64 beside int64 stacks as float
                np.stack([c.astype(np.int64, copy=False)
                          for c in (b.seq, b.tick, b.utc_ms, b.channel, b.value)], axis=1)
                for b in group])
            values: list[Any] = columns.ravel().tolist()
            if columns[:, _UTC_COLUMN].min() < 0:   # time not known: stored as NULL
                values[_UTC_COLUMN::_SAMPLE_PARAMETERS] = [
                    None if u < 0 else u for u in columns[:, _UTC_COLUMN].tolist()]
            for first in range(0, len(columns), rows_per_insert):
                part = values[first * _SAMPLE_PARAMETERS:
                              (first + rows_per_insert) * _SAMPLE_PARAMETERS]
                inserted += self.conn.execute(
                    _insert_samples_sql(device_id, boot_id, historical, time_uncertain,
                                        len(part) // _SAMPLE_PARAMETERS), part).rowcount
        for device_id, last in highest.items():
            self.conn.execute(
                "INSERT INTO watermarks(device_id, committed_seq) VALUES (?, ?)"
                " ON CONFLICT(device_id) DO UPDATE SET committed_seq ="
                " MAX(committed_seq, excluded.committed_seq)", (device_id, last))
        return inserted

    def insert_gaps(self, batches: Iterable[SampleBatch]) -> list[tuple[str, LostSamples]]:
        """Insert the batches' gaps inside the caller's transaction; a gap already stored
        (same device, boot and seq_at: a replayed notice) is ignored. Returns the new ones."""
        new: list[tuple[str, LostSamples]] = []
        for batch in batches:
            for gap in batch.gaps:
                if self.conn.execute(
                        "INSERT OR IGNORE INTO gaps(device_id, boot_id, seq_at, first_tick,"
                        " last_tick, first_utc_ms, last_utc_ms, n_temperature, n_uv,"
                        " n_hydration, n_battery) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (batch.device_id, gap.boot_id, gap.seq_at, gap.first_tick,
                         gap.last_tick, gap.first_utc_ms, gap.last_utc_ms, *gap.counts),
                ).rowcount:
                    new.append((batch.device_id, gap))
        return new

    def gaps(self, device_id: str) -> list[LostSamples]:
        rows = self.conn.execute(
            "SELECT boot_id, seq_at, first_tick, last_tick, first_utc_ms, last_utc_ms,"
            " n_temperature, n_uv, n_hydration, n_battery FROM gaps WHERE device_id=?"
            " ORDER BY seq_at, boot_id", (device_id,))
        return [LostSamples(r[0], r[1], r[2], r[3], r[4], r[5], (r[6], r[7], r[8], r[9]))
                for r in rows]

    def prune_samples(self, older_than_utc_ms: int) -> int:
        """Retention: delete samples (and gap records) from before the cutoff (watermarks
        stay). Returns the samples deleted."""
        with self.transaction():
            self.conn.execute(
                "DELETE FROM gaps WHERE last_utc_ms IS NOT NULL AND last_utc_ms < ?",
                (older_than_utc_ms,))
            return self.conn.execute(
                "DELETE FROM samples WHERE utc_ms IS NOT NULL AND utc_ms < ?",
                (older_than_utc_ms,)).rowcount

    def sample_count(self, device_id: str | None = None) -> int:
        if device_id is None:
            return self.conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        return self.conn.execute(
            "SELECT COUNT(*) FROM samples WHERE device_id=?", (device_id,)).fetchone()[0]

    def sample_seqs(self, device_id: str) -> list[int]:
        return [r[0] for r in self.conn.execute(
            "SELECT seq FROM samples WHERE device_id=? ORDER BY seq", (device_id,))]

    # -- clock anchors -----------------------------------------------------------
    def save_anchor(self, device_id: str, boot_id: int, tick: int, utc_ms: float) -> None:
        """SET_TIME's pairing of a boot's tick with UTC (the latest one per boot wins)."""
        with self.transaction():
            self.conn.execute(
                "INSERT INTO anchors(device_id, boot_id, tick, utc_ms) VALUES (?,?,?,?)"
                " ON CONFLICT(device_id, boot_id) DO UPDATE SET tick=excluded.tick,"
                " utc_ms=excluded.utc_ms", (device_id, boot_id, tick, utc_ms))

    def anchors(self, device_id: str) -> dict[int, tuple[int, float]]:
        return {r[0]: (r[1], r[2]) for r in self.conn.execute(
            "SELECT boot_id, tick, utc_ms FROM anchors WHERE device_id=?", (device_id,))}

    # -- desired configuration (docs/mqtt.md, `{subject}/desired`) ---------------
    def save_desired(self, device_id: str, ver: int, cfg: Mapping[ConfigKey, int],
                     now_ms: int) -> None:
        """Inside the caller's transaction; the version applied before is kept."""
        self.conn.execute(
            "INSERT INTO desired_config(device_id, ver, cfg_json, applied_ver, updated_ms)"
            " VALUES (?,?,?,NULL,?) ON CONFLICT(device_id) DO UPDATE SET ver=excluded.ver,"
            " cfg_json=excluded.cfg_json, updated_ms=excluded.updated_ms",
            (device_id, ver, _cfg_json(cfg), now_ms))

    def mark_config_applied(self, device_id: str, ver: int, cfg: Mapping[ConfigKey, int]) -> None:
        """Inside the caller's transaction."""
        self.conn.execute(
            "UPDATE desired_config SET applied_ver=?, applied_cfg_json=? WHERE device_id=?",
            (ver, _cfg_json(cfg), device_id))

    def forget_desired(self, device_id: str) -> DesiredConfig | None:
        """Inside the caller's transaction: drop the accepted desired version (a clinic's
        `reset_config`), so any `ver` is newer again. Returns what was forgotten."""
        forgotten = self.desired(device_id)
        self.conn.execute("DELETE FROM desired_config WHERE device_id=?", (device_id,))
        return forgotten

    def desired(self, device_id: str) -> DesiredConfig | None:
        row = self.conn.execute(
            "SELECT ver, cfg_json, applied_ver, applied_cfg_json FROM desired_config"
            " WHERE device_id=?", (device_id,)).fetchone()
        if row is None:
            return None
        return DesiredConfig(row[0], _cfg_of(row[1]), row[2], _cfg_of(row[3]))

    # -- twins -----------------------------------------------------------------
    def load_twins(self) -> dict[str, tuple[int, dict]]:
        return {r[0]: (r[1], json.loads(r[2])) for r in self.conn.execute(
            "SELECT subject, rev, state_json FROM twins")}

    def save_twin(self, subject: str, rev: int, state: dict) -> None:
        self.conn.execute(
            "INSERT INTO twins(subject, rev, state_json) VALUES (?,?,?)"
            " ON CONFLICT(subject) DO UPDATE SET rev=excluded.rev, state_json=excluded.state_json",
            (subject, rev, json.dumps(state, sort_keys=True)))

    # -- gateway session counter -------------------------------------------------
    def next_gateway_session(self) -> int:
        with self.transaction():
            row = self.conn.execute(
                "SELECT value FROM gateway_meta WHERE name='sess'").fetchone()
            sess = 1 if row is None else row[0] + 1
            self.conn.execute(
                "INSERT INTO gateway_meta(name, value) VALUES ('sess', ?)"
                " ON CONFLICT(name) DO UPDATE SET value=excluded.value", (sess,))
        return sess

    # -- transactions ----------------------------------------------------------
    def transaction(self) -> _Transaction:
        return _Transaction(self.conn, self._after_commit)


class _Transaction:
    def __init__(self, conn: sqlite3.Connection, after_commit=None):
        self.conn = conn
        self.after_commit = after_commit

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.DatabaseError as e:
                self._rollback()
                raise _classify(e) from e
            if self.after_commit is not None:
                self.after_commit()
            return
        self._rollback()
        if isinstance(exc, sqlite3.OperationalError) or is_corruption(exc):
            raise _classify(exc) from exc

    def _rollback(self) -> None:
        # SQLite has already rolled back by itself after some errors (SQLITE_FULL).
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.DatabaseError:
                pass   # the error being raised says what went wrong; a damaged file may refuse


# Rows per INSERT statement of insert_samples (500 was the fastest of 100-3,000 here).
SAMPLE_ROWS_PER_INSERT = 500
_SAMPLE_PARAMETERS = 5   # seq, tick, utc_ms, channel, value
_UTC_COLUMN = 2


@functools.lru_cache(maxsize=64)
def _insert_samples_sql(device_id: str, boot_id: int, historical: bool, time_uncertain: bool,
                        rows: int) -> str:
    """INSERT OR IGNORE of `rows` samples sharing device, boot and kind (written in)."""
    row = (f"({_sql_text(device_id)},?,{int(boot_id)},?,?,?,?,{int(historical)},"
           f"{int(time_uncertain)})")
    return ("INSERT OR IGNORE INTO samples(device_id, seq, boot_id, tick, utc_ms, channel,"
            " value, historical, time_uncertain) VALUES " + ",".join([row] * rows))


def _sql_text(text: str) -> str:
    """A string as an SQL literal (for a statement that inlines a value shared by its rows)."""
    return "'" + text.replace("'", "''") + "'"


def _cfg_json(cfg: Mapping[ConfigKey, int]) -> str:
    return json.dumps({str(int(k)): int(v) for k, v in cfg.items()}, sort_keys=True)


def _cfg_of(text: str) -> dict[int, int]:
    return {int(k): int(v) for k, v in json.loads(text).items()}


def _classify(e: sqlite3.DatabaseError) -> StoreError:
    if is_corruption(e):
        return DatabaseCorrupt(f"database damaged: {e}")
    text = str(e).lower()
    if "full" in text or "disk i/o" in text:
        return DiskFullError(f"database write failed: {e}")
    return StoreError(f"database write failed: {e}")
