"""`dermtwin report SUBJECT` and `dermtwin export SUBJECT`: a subject's stored history as a
self-contained HTML report for a clinician, or as CSV/Parquet for a researcher."""

from __future__ import annotations

import argparse
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.cli_args import location
from gateway.report.errors import HistoryError

DEFAULT_DB = Path(os.environ.get("DERMTWIN_DB", "var/gateway.sqlite3"))
DEFAULT_DAYS = 7
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_time(text: str, option: str, *, end_of_day: bool = False) -> int:
    """UTC ms from `YYYY-MM-DD` (a --to date includes that whole day) or an ISO 8601 time
    (UTC unless it carries an offset)."""
    try:
        if _DATE.fullmatch(text):
            day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
            return int(((day + timedelta(days=1)) if end_of_day else day).timestamp() * 1000)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise HistoryError(f"{option} {text!r}: use a date (2026-12-01) or a UTC time "
                           "(2026-12-01T08:30)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def time_range(args: argparse.Namespace) -> tuple[int, int]:
    to_ms = (parse_time(args.to_time, "--to", end_of_day=True) if args.to_time
             else int(time.time() * 1000))
    from_ms = (parse_time(args.from_time, "--from") if args.from_time
               else to_ms - DEFAULT_DAYS * 86_400_000)
    if from_ms >= to_ms:
        raise HistoryError(f"--from {args.from_time or '(default)'} is not before --to "
                           f"{args.to_time or '(now)'}")
    return from_ms, to_ms


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("subject", help="pseudonymous subject id (as paired)")
    parser.add_argument("--from", dest="from_time", metavar="DATE",
                        help=f"start: 2026-12-01 or 2026-12-01T08:00 (UTC); default {DEFAULT_DAYS}"
                             " days before --to")
    parser.add_argument("--to", dest="to_time", metavar="DATE",
                        help="end: a date includes that whole day (UTC); default now")
    # None: the config file's [gateway] db, else DEFAULT_DB (gateway/cli.py fills it in)
    parser.add_argument("--db", type=Path, help=f"database ([gateway] db; {DEFAULT_DB})")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="a self-contained HTML report of one subject for a "
                                           "clinician (UV dose, hydration, temperature, battery,"
                                           " gaps)")
    _common(report)
    report.add_argument("--out", type=Path, required=True, metavar="FILE.html")
    report.add_argument("--location", type=location, metavar="LAT,LON",
                        help="the gateway's latitude,longitude: UV doses per local solar day, "
                             "as the twin counts them ([gateway] location; default: UTC days)")
    report.add_argument("--models-dir", type=Path,
                        help="the twin's models (default: those shipped with the gateway)")
    export = sub.add_parser("export", help="one subject's samples in SI units as CSV or Parquet")
    _common(export)
    export.add_argument("--format", choices=("csv", "parquet"), default=None,
                        help="default: from the --out file's extension")
    export.add_argument("--out", type=Path, required=True, metavar="FILE")


def cmd_report(args: argparse.Namespace) -> int:
    from gateway.inference import load_models
    from gateway.report.analysis import analyse
    from gateway.report.history import load_history, open_readonly
    from gateway.report.page import render

    from_ms, to_ms = time_range(args)
    _check_out(args.out)
    conn = open_readonly(args.db or DEFAULT_DB)
    try:
        history = load_history(conn, args.subject, from_ms, to_ms)
    finally:
        conn.close()
    models = load_models(args.models_dir, names=("hydration",))
    settings = getattr(args, "settings", None)       # the config file (gateway/cli.py)
    location = args.location or getattr(settings, "location", None)
    data = analyse(history, lambda name, inputs: models[name].run(inputs), location)
    html = render(data, int(time.time() * 1000))
    _write_atomically(args.out, html.encode())
    print(f"report for {args.subject}: {history.raw_points:,} samples"
          + (f", {history.archived_points:,} archived summaries" if history.archived_points
             else "") + f" -> {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from gateway.report.export import rows_of, write
    from gateway.report.history import load_history, open_readonly

    fmt = args.format or {".csv": "csv", ".parquet": "parquet"}.get(args.out.suffix.lower())
    if fmt is None:
        raise HistoryError(f"--out {args.out}: name it .csv or .parquet, or give --format")
    from_ms, to_ms = time_range(args)
    _check_out(args.out)
    conn = open_readonly(args.db or DEFAULT_DB)
    try:
        history = load_history(conn, args.subject, from_ms, to_ms, with_raw=True)
    finally:
        conn.close()
    rows = rows_of(history)
    tmp = args.out.with_name(args.out.name + ".part")
    try:
        write(rows, tmp, fmt)
        tmp.replace(args.out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"exported {len(rows):,} rows for {args.subject} ({fmt}) -> {args.out}")
    return 0


def _check_out(path: Path) -> None:
    if not path.parent.is_dir():
        raise HistoryError(f"--out {path}: no directory {path.parent}")


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
