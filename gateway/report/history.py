"""A subject's stored history for a time range: raw samples where they are still kept, the
15-minute archive where they have been pruned, and the patch's gap records (an SQLite reader).

Reads only; opens the database read-only so a report never changes what the gateway keeps.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gateway.model_contracts import MED_SED_BY_FITZPATRICK
from gateway.model_registry import CHANNEL_SCALE
from gateway.report.archive import BUCKET_MS, HELD_S_SQL, HOLD_MAX_S, samples_with_next_sql

PROPERTIES = tuple(prop for _, prop in CHANNEL_SCALE.values())


class HistoryError(ValueError):
    """Bad input for a report or export (unknown subject, unreadable database): user-facing."""


@dataclass
class Series:
    """One property over time. Raw samples have n == 1 and lo == hi == value; archive
    buckets (t = bucket start) carry their mean, min, max and count."""

    t_ms: np.ndarray
    value: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n: np.ndarray
    integral: np.ndarray        # value × held seconds (archive.py)
    archived: np.ndarray        # bool: from the archive

    def __len__(self) -> int:
        return int(self.t_ms.shape[0])

    @classmethod
    def empty(cls) -> Series:
        f = np.zeros(0)
        return cls(np.zeros(0, np.int64), f, f, f, np.zeros(0, np.int64), f,
                   np.zeros(0, bool))


@dataclass(frozen=True)
class GapRecord:
    """Samples the patch could not log (protocol.md §4.1), per property."""

    from_ms: int | None
    to_ms: int | None
    lost: dict[str, int]


@dataclass
class RawSample:
    utc_ms: int
    prop: str
    value: float
    seq: int
    boot_id: int
    historical: bool


@dataclass
class History:
    subject: str
    from_ms: int
    to_ms: int
    skin_type: int | None
    series: dict[str, Series] = field(default_factory=dict)
    gaps: list[GapRecord] = field(default_factory=list)
    samples_without_utc: int = 0
    raw: list[RawSample] = field(default_factory=list)     # filled for exports only

    @property
    def med_sed(self) -> float | None:
        return None if self.skin_type is None else MED_SED_BY_FITZPATRICK[self.skin_type]

    @property
    def archived_points(self) -> int:
        return sum(int(s.archived.sum()) for s in self.series.values())

    @property
    def raw_points(self) -> int:
        return sum(int((~s.archived).sum()) for s in self.series.values())


def open_readonly(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise HistoryError(f"--db {path}: no such database (the gateway's, e.g. "
                           "var/gateway.sqlite3)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.execute("SELECT COUNT(*) FROM samples").fetchone()
    except sqlite3.DatabaseError as e:
        raise HistoryError(f"--db {path}: not a dermtwin gateway database ({e})") from e
    return conn


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                        (name,)).fetchone() is not None


def load_history(conn: sqlite3.Connection, subject: str, from_ms: int, to_ms: int,
                 *, with_raw: bool = False) -> History:
    """`from_ms` inclusive, `to_ms` exclusive. Raises HistoryError for an unknown subject."""
    devices = [r[0] for r in conn.execute(
        "SELECT device_id FROM devices WHERE subject=?", (subject,))]
    skin = conn.execute("SELECT skin_type FROM devices WHERE subject=?", (subject,)).fetchone()
    has_archive = _has_table(conn, "archive")
    if not devices and not (has_archive and conn.execute(
            "SELECT 1 FROM archive WHERE subject=? LIMIT 1", (subject,)).fetchone()):
        known = sorted({r[0] for r in conn.execute("SELECT subject FROM devices")})
        raise HistoryError(f"subject {subject!r}: not paired and not in the archive"
                           + (f" (known: {', '.join(known)})" if known else ""))
    history = History(subject, from_ms, to_ms, None if skin is None else int(skin[0]))
    marks = ",".join("?" * len(devices))
    raw: dict[str, list[tuple]] = {p: [] for p in PROPERTIES}
    if devices:
        where = f"device_id IN ({marks}) AND utc_ms >= ? AND utc_ms < ?"
        params = (*devices, from_ms, to_ms + HOLD_MAX_S * 1000)
        for row in conn.execute(
                f"SELECT utc_ms, property, si, {HELD_S_SQL}, seq, boot_id, historical"
                f" FROM ({samples_with_next_sql(where)}) WHERE utc_ms < ? ORDER BY utc_ms, seq",
                (*params, to_ms)):
            raw[row[1]].append(row)
            if with_raw:
                history.raw.append(RawSample(row[0], row[1], row[2], row[4], row[5],
                                             bool(row[6])))
        history.samples_without_utc = conn.execute(
            f"SELECT COUNT(*) FROM samples WHERE device_id IN ({marks}) AND utc_ms IS NULL",
            devices).fetchone()[0]
        for row in conn.execute(
                "SELECT first_utc_ms, last_utc_ms, n_temperature, n_uv, n_hydration, n_battery"
                f" FROM gaps WHERE device_id IN ({marks}) AND COALESCE(last_utc_ms, ?) >= ?"
                " AND COALESCE(first_utc_ms, ?) < ? ORDER BY first_utc_ms",
                (*devices, from_ms, from_ms, from_ms, to_ms)):
            history.gaps.append(GapRecord(row[0], row[1], dict(zip(PROPERTIES, row[2:],
                                                                   strict=True))))
    archived: dict[str, list[tuple]] = {p: [] for p in PROPERTIES}
    if has_archive:
        # Merged across devices (a patch swap within a bucket); buckets with raw samples
        # of their own win (they are never both, but a report must not count twice).
        raw_buckets = {(p, r[0] // BUCKET_MS * BUCKET_MS) for p, rows in raw.items()
                       for r in rows}
        for row in conn.execute(
                "SELECT property, bucket_ms, SUM(n), MIN(min), SUM(sum), MAX(max), SUM(integral)"
                " FROM archive WHERE subject=? AND bucket_ms >= ? AND bucket_ms < ?"
                " GROUP BY property, bucket_ms ORDER BY bucket_ms",
                (subject, from_ms - from_ms % BUCKET_MS, to_ms)):
            if row[0] in archived and (row[0], row[1]) not in raw_buckets:
                archived[row[0]].append(row)
    for prop in PROPERTIES:
        history.series[prop] = _series(raw[prop], archived[prop])
    return history


def _series(raw: list[tuple], archived: list[tuple]) -> Series:
    if not raw and not archived:
        return Series.empty()
    t = [r[0] for r in raw] + [a[1] for a in archived]
    value = [r[2] for r in raw] + [a[4] / a[2] for a in archived]
    lo = [r[2] for r in raw] + [a[3] for a in archived]
    hi = [r[2] for r in raw] + [a[5] for a in archived]
    n = [1] * len(raw) + [a[2] for a in archived]
    integral = [r[2] * r[3] for r in raw] + [a[6] for a in archived]
    flag = [False] * len(raw) + [True] * len(archived)
    order = np.argsort(np.asarray(t, np.int64), kind="stable")
    return Series(np.asarray(t, np.int64)[order], np.asarray(value, float)[order],
                  np.asarray(lo, float)[order], np.asarray(hi, float)[order],
                  np.asarray(n, np.int64)[order], np.asarray(integral, float)[order],
                  np.asarray(flag, bool)[order])
