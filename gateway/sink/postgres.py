"""The sink's PostgreSQL adapter (psycopg 3): tables on start, one transaction per batch.

`PostgresStore(url).open()` connects and creates the tables (gateway/sink/schema.py);
`write(rows)` inserts a batch's rows, one `INSERT … SELECT FROM unnest(…) ON CONFLICT DO
NOTHING` per table, commits, and returns how many rows of each table were new. Errors come
out as `SinkDbError` with one line naming the problem; `transient` says whether retrying
later can help (the server went away) or not (a row the database refuses).
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import conninfo

from gateway.sink import schema
from gateway.sink.rows import Rows

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
URL_SCHEMES = ("postgresql://", "postgres://")


class SinkDbError(RuntimeError):
    def __init__(self, message: str, *, transient: bool):
        super().__init__(message)
        self.transient = transient


def describe(url: str) -> str:
    """The URL without its password (safe to log); the URL itself if it does not parse."""
    try:
        parts = conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "the --db URL"
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname') or ''}"


def check_url(url: str) -> None:
    """ValueError naming the problem with a --db URL, before any connection attempt."""
    if not url.startswith(URL_SCHEMES):
        raise ValueError(f"--db {url.split('@')[-1]!r}: give a PostgreSQL URL, "
                         "postgresql://[user[:password]@]host[:port]/dbname")
    try:
        parts = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as e:
        raise ValueError(f"--db: not a valid PostgreSQL URL ({_first_line(e)})") from None
    port = str(parts.get("port") or "5432")
    if not all(p.isdigit() and 0 < int(p) < 65536 for p in port.split(",")):
        raise ValueError(f"--db {describe(url)!r}: port {port!r} is not a number 1..65535")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _explain_connect(error: psycopg.Error, where: str) -> str:
    text = _first_line(error)
    lowered = str(error).lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        hint = ("the server refused the credentials: check the user and password (in the URL, "
                "PGPASSWORD or ~/.pgpass)")
    elif "does not exist" in lowered and "database" in lowered:
        hint = "create the database first (createdb NAME) or name an existing one"
    elif "connection refused" in lowered or "could not connect" in lowered:
        hint = "is the server running, are host and port right?"
    elif "timeout" in lowered:
        hint = f"no answer within {CONNECT_TIMEOUT_S} s: is the host reachable?"
    else:
        hint = ""
    return f"cannot connect to PostgreSQL at {where}: {text}" + (f" ({hint})" if hint else "")


class PostgresStore:
    def __init__(self, url: str):
        check_url(url)
        self.url = url
        self.where = describe(url)
        self._conn: psycopg.Connection | None = None

    def open(self) -> None:
        """Connect and make sure the tables exist. SinkDbError if either fails."""
        self.close()
        try:
            conn = psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S,
                                   application_name="dermtwin-sink")
        except psycopg.Error as e:
            raise SinkDbError(_explain_connect(e, self.where), transient=True) from None
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (schema.DDL_LOCK_KEY,))
                conn.execute(schema.DDL)
                newest = conn.execute("SELECT max(version) FROM sink_schema").fetchone()
                if newest is not None and newest[0] is not None and newest[0] > schema.VERSION:
                    raise SinkDbError(
                        f"{self.where} holds sink tables of version {newest[0]}; this dermtwin "
                        f"writes version {schema.VERSION}: upgrade dermtwin", transient=False)
                conn.execute("INSERT INTO sink_schema (version) VALUES (%s) "
                             "ON CONFLICT DO NOTHING", (schema.VERSION,))
        except psycopg.OperationalError as e:
            conn.close()
            raise SinkDbError(f"PostgreSQL at {self.where}: {_first_line(e)}",
                              transient=True) from None
        except psycopg.Error as e:
            conn.close()
            raise SinkDbError(f"cannot create the sink's tables in {self.where}: "
                              f"{_first_line(e)} (may this user CREATE in the schema?)",
                              transient=False) from None
        except SinkDbError:
            conn.close()
            raise
        self._conn = conn

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def write(self, rows: Rows) -> dict[str, int]:
        """Insert `rows` in one transaction; the new rows per table (duplicates skipped)."""
        inserted = dict.fromkeys(Rows.TABLES, 0)
        if not len(rows):
            return inserted   # meta, state and the like: nothing to store
        if not self.connected:
            self.open()
        conn = self._conn
        assert conn is not None
        try:
            with conn.transaction(), conn.cursor() as cur:
                for table in Rows.TABLES:
                    records = getattr(rows, table)
                    if not records:
                        continue
                    cur.execute(schema.INSERTS[table], [list(c) for c in zip(*records,
                                                                             strict=True)])
                    inserted[table] = max(cur.rowcount, 0)
        except psycopg.OperationalError as e:
            self.close()
            raise SinkDbError(f"PostgreSQL at {self.where}: {_first_line(e)}",
                              transient=True) from None
        except psycopg.Error as e:
            if conn.closed or conn.broken:
                self.close()
                raise SinkDbError(f"PostgreSQL at {self.where}: {_first_line(e)}",
                                  transient=True) from None
            raise SinkDbError(f"PostgreSQL refused a row: {_first_line(e)}",
                              transient=False) from None
        return inserted

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            conn.close()
