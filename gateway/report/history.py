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
from gateway.report.errors import HistoryError

PROPERTIES = tuple(prop for _, prop in CHANNEL_SCALE.values())


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
class History:
    subject: str
    from_ms: int
    to_ms: int
    skin_type: int | None
    series: dict[str, Series] = field(default_factory=dict)
    gaps: list[GapRecord] = field(default_factory=list)
    samples_without_utc: int = 0
    # per property, for exports: (seq, boot id, historical) of the raw samples, in the order
    # of the series' raw (not archived) points
    raw_ids: dict[str, tuple[np.ndarray, ...]] = field(default_factory=dict)

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
    raw: dict[str, tuple[np.ndarray, ...]] = {}
    if devices:
        where = f"device_id IN ({marks}) AND channel = ? AND utc_ms >= ? AND utc_ms < ?"
        for channel, (_, prop) in CHANNEL_SCALE.items():
            # one channel at a time: the window's order is the series' order (one device
            # per subject at a time: the registry's subjects are unique)
            rows = conn.execute(
                f"SELECT utc_ms, si, {HELD_S_SQL}, seq, boot_id, historical"
                f" FROM ({samples_with_next_sql(where)}) WHERE utc_ms < ?",
                (*devices, int(channel), from_ms, to_ms + HOLD_MAX_S * 1000, to_ms)).fetchall()
            columns = list(zip(*rows, strict=True)) if rows else [()] * 6
            t, value, held_s, seq, boot, historical = (np.asarray(c) for c in columns)
            raw[prop] = (t.astype(np.int64), value.astype(float), held_s.astype(float))
            if with_raw:
                history.raw_ids[prop] = (seq.astype(np.int64), boot.astype(np.int64),
                                         historical.astype(bool))
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
        raw_buckets = {(p, int(b)) for p, columns in raw.items()
                       for b in np.unique(columns[0] // BUCKET_MS * BUCKET_MS)}
        for row in conn.execute(
                "SELECT property, bucket_ms, SUM(n), MIN(min), SUM(sum), MAX(max), SUM(integral)"
                " FROM archive WHERE subject=? AND bucket_ms >= ? AND bucket_ms < ?"
                " GROUP BY property, bucket_ms ORDER BY bucket_ms",
                (subject, from_ms - from_ms % BUCKET_MS, to_ms)):
            if row[0] in archived and (row[0], row[1]) not in raw_buckets:
                archived[row[0]].append(row)
    for prop in PROPERTIES:
        history.series[prop] = _series(raw.get(prop), archived[prop])
    return history


def _series(raw: tuple[np.ndarray, ...] | None, archived: list[tuple]) -> Series:
    """Raw samples (time, value, held seconds; in time order) and archive rows (property,
    bucket, n, min, sum, max, integral) as one series in time order."""
    t, value, held_s = raw if raw is not None else (np.zeros(0, np.int64), np.zeros(0),
                                                     np.zeros(0))
    if not archived:
        ones = np.ones(t.shape[0], np.int64)
        return Series(t, value, value, value, ones, value * held_s, np.zeros(t.shape[0], bool))
    a = np.asarray([row[1:] for row in archived], dtype=float)
    a_t = a[:, 0].astype(np.int64)
    order = np.argsort(np.concatenate([t, a_t]), kind="stable")
    return Series(
        np.concatenate([t, a_t])[order],
        np.concatenate([value, a[:, 3] / a[:, 1]])[order],
        np.concatenate([value, a[:, 2]])[order],
        np.concatenate([value, a[:, 4]])[order],
        np.concatenate([np.ones(t.shape[0], np.int64), a[:, 1].astype(np.int64)])[order],
        np.concatenate([value * held_s, a[:, 5]])[order],
        np.concatenate([np.zeros(t.shape[0], bool), np.ones(a.shape[0], bool)])[order])
