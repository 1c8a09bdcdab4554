"""Every failure the CLI can meet, as one line that says what to do (never a traceback;
`dermtwin -vv COMMAND` logs the traceback for a bug report)."""

from __future__ import annotations

import argparse
import sqlite3

from gateway.serial_repl import BoardError


def _db(args: argparse.Namespace) -> str:
    return str(getattr(args, "db", None) or "the database")


def explain_sqlite(error: sqlite3.Error, db: str) -> str:
    text = str(error)
    lowered = text.lower()
    if "locked" in lowered or "busy" in lowered:
        return (f"{db} is locked by another process ({text}): stop the other dermtwin (e.g. "
                "`sudo systemctl stop dermtwin`) or wait and retry")
    if "not a database" in lowered or "malformed" in lowered:
        return (f"{db} is not a usable dermtwin database ({text}): point --db at the gateway's "
                "database, or restore it from a backup (docs/operator.md)")
    if "unable to open" in lowered:
        return (f"cannot open {db} ({text}): check that its directory exists and that this "
                "user may write there (the service runs as user dermtwin)")
    if "readonly" in lowered or "read-only" in lowered:
        return (f"{db} is read-only for this user ({text}): run as its owner (sudo -u dermtwin "
                "dermtwin ...) or fix its permissions")
    if "full" in lowered or "disk i/o" in lowered:
        return f"{db}: the disk is full or failing ({text}): free space, then retry"
    return f"database {db}: {text}"


def explain(error: BaseException, args: argparse.Namespace) -> str:
    if isinstance(error, sqlite3.Error):
        return explain_sqlite(error, _db(args))
    if isinstance(error, BoardError):
        return f"the board at {error.port} raised {error.exception_line}"
    if isinstance(error, PermissionError):
        where = error.filename or "a file"
        return (f"permission denied on {where}: run as the user that owns it (the service "
                "runs as dermtwin: sudo -u dermtwin dermtwin ...) or fix its permissions")
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"{error.filename}: no such file or directory"
    if isinstance(error, (ValueError, RuntimeError, OSError)):
        # Config, model, broker, store and radio errors name their field and their fix.
        text = str(error) or type(error).__name__
    else:
        text = (f"unexpected {type(error).__name__}: {error} (a bug: rerun with -vv for the "
                "traceback and report it)")
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())
