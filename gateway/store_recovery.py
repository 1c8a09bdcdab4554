"""Open the gateway database checked: refuse a file that is not a database, move a damaged
one aside and start a fresh one that keeps what can be kept.

A damaged database (SQLite's quick_check fails, or SQLite reports SQLITE_CORRUPT while
running) is renamed to `<db>.corrupt-<UTC time>` with its -wal and -shm files, untouched, for
an operator to look at. The fresh database gets:
- the device registry from its own file (`<db>.registry.json`, store.registry_copy_path),
  written on every registry change, so pairing survives whatever part of the file is damaged;
- every table of the old file that can still be read in full (twins and their revs, the
  gateway session counter, the outbox, ...); a table that cannot be read is reported lost.
Samples the patches have not had acknowledged are still on the patches: they drain into the
fresh database on their next connection.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway import store as store_mod
from gateway.outbox import SCHEMA as OUTBOX_SCHEMA
from gateway.values import RegisteredDevice

log = logging.getLogger(__name__)

SQLITE_HEADER = b"SQLite format 3\x00"
# Tables worth carrying into a fresh database, most important first. `samples` and `gaps`
# come too when readable: they are the record; the patches hold only the unacknowledged rest.
SALVAGE_TABLES = ("gateway_meta", "twins", "desired_config", "anchors", "watermarks",
                  "outbox", "outbox_parked", "samples", "gaps")


class NotADatabase(ValueError):
    """The --db path holds something other than an SQLite database: never touched."""


@dataclass
class Recovery:
    """What happened to a damaged database (for the alarm and the log)."""

    reason: str
    moved_to: Path
    devices: int
    salvaged: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (f"database damaged ({self.reason}); moved to {self.moved_to.name}, started a "
                f"fresh one with {self.devices} registered patches"
                + (f", salvaged {', '.join(self.salvaged)}" if self.salvaged else "")
                + (f", lost {', '.join(self.lost)}" if self.lost else ""))


def check_is_database(path: Path) -> None:
    """Raise NotADatabase (one clear line) if `path` exists, is not empty and is not SQLite."""
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as e:
        raise NotADatabase(f"database {path}: cannot read it: {e}") from None
    if head and head != SQLITE_HEADER:
        raise NotADatabase(
            f"database {path}: not an SQLite database (it starts with {head[:8]!r}); left "
            "untouched: move it away or give another --db")


def quick_check(conn: sqlite3.Connection) -> str | None:
    """SQLite's quick_check: None when sound, else its first finding."""
    rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
    if rows == ["ok"]:
        return None
    finding = " ".join(" ".join(rows).split())   # one line, for the log and the alarm
    return finding if len(finding) <= 160 else finding[:157] + "..."


def open_checked(path: Path, damaged: str | None = None
                 ) -> tuple[sqlite3.Connection, Recovery | None]:
    """Open `path` (created if missing). `damaged`: SQLite already reported this file damaged
    while running (recover without asking quick_check)."""
    check_is_database(path)
    reason = damaged
    if reason is None:
        conn: sqlite3.Connection | None = None
        try:
            conn = store_mod.connect(path)
            reason = quick_check(conn)
            if reason is None:
                store_mod.Store(conn).refresh_registry_copy()
                return conn, None
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and not store_mod.is_corruption(e):
                raise   # locked, unwritable directory, disk I/O: not a damaged file
            reason = str(e)
        if conn is not None:
            conn.close()
    return recover(path, reason or "damaged")


def recover(path: Path, reason: str) -> tuple[sqlite3.Connection, Recovery]:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved_to = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while moved_to.exists():
        n += 1
        moved_to = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm"):
        part = Path(str(path) + suffix)
        if part.exists():
            part.rename(Path(str(moved_to) + suffix))
    conn = store_mod.connect(path)
    for statement in OUTBOX_SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    salvaged, lost = _salvage(conn, moved_to)
    devices = _restore_registry(conn, path, moved_to)
    store_mod.Store(conn).refresh_registry_copy()
    recovery = Recovery(reason, moved_to, devices, salvaged, lost)
    log.error("%s", recovery.describe())
    return conn, recovery


def _salvage(conn: sqlite3.Connection, old: Path) -> tuple[list[str], list[str]]:
    salvaged: list[str] = []
    lost: list[str] = []
    try:
        conn.execute("ATTACH DATABASE ? AS old", (f"file:{old}?mode=ro",))
    except sqlite3.DatabaseError as e:
        log.error("cannot open the damaged database to salvage from it: %s", e)
        return salvaged, list(SALVAGE_TABLES)
    try:
        for table in SALVAGE_TABLES:
            try:
                main_columns = {r[1] for r in conn.execute(f"PRAGMA main.table_info({table})")}
                columns = ", ".join(r[1] for r in conn.execute(f"PRAGMA old.table_info({table})")
                                    if r[1] in main_columns)
                if not columns:
                    raise sqlite3.DatabaseError(f"no table {table}")
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(f"INSERT OR IGNORE INTO main.{table} ({columns})"
                             f" SELECT {columns} FROM old.{table}")
                conn.execute("COMMIT")
                salvaged.append(table)
            except sqlite3.DatabaseError as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                lost.append(table)
                log.warning("salvage: table %s unreadable in the damaged database: %s",
                            table, e)
    finally:
        conn.execute("DETACH DATABASE old")
    return salvaged, lost


def _restore_registry(conn: sqlite3.Connection, path: Path, old: Path) -> int:
    """The registry from its own file, completed by whatever of `devices` the old file still
    yields (a pairing whose copy was not written). Returns the number of devices registered."""
    copy = store_mod.registry_copy_path(path)
    store = store_mod.Store(conn)
    try:
        devices = json.loads(copy.read_text())["devices"]
    except (OSError, ValueError, KeyError) as e:
        log.error("registry copy %s unreadable (%s); trying the damaged database's devices",
                  copy, e)
        devices = []
    with store.transaction():
        for d in devices:
            store.register(RegisteredDevice(
                d["device_id"], bytes.fromhex(d["key"]), d["subject"], int(d["skin_type"]),
                d.get("address"), d.get("config", {})), int(d.get("paired_at_ms", 0)))
    try:
        conn.execute("ATTACH DATABASE ? AS old", (f"file:{old}?mode=ro",))
        try:
            conn.execute("INSERT OR IGNORE INTO main.devices SELECT * FROM old.devices")
        finally:
            conn.execute("DETACH DATABASE old")
    except sqlite3.DatabaseError as e:
        if not devices:
            log.error("devices unreadable in the damaged database too (%s): pair the patches "
                      "again", e)
    return len(store.devices())
