"""The downsampled archive: raw samples become 15-minute aggregates before retention prunes them.

Per subject, device, property and 15-minute bucket (UTC-aligned) the archive keeps the count,
minimum, sum and maximum of the samples in SI units, and the time integral of the property
(each sample's value held until the next sample of its channel, at most `HOLD_MAX_S`: the
twin's rule for UV exposure), so the daily UV dose computed from the archive is the one
computed from the raw samples. Raw samples are archived and deleted in one transaction,
bucket-aligned, so a bucket is either all raw or all archived; a sample that arrives later
for an archived bucket (a late replay) is merged into it on the next prune.

Gap records (`gaps`, a few rows per day at most) are kept as long as the archive.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.model_registry import CHANNEL_SCALE
from gateway.store import Store
from gateway.twin import MAX_UV_GAP_S

log = logging.getLogger(__name__)

BUCKET_MS = 15 * 60_000
HOLD_MAX_S = MAX_UV_GAP_S          # a longer silence between samples counts as no data
DEFAULT_ARCHIVE_DAYS = 730.0
CHUNK_MS = 86_400_000              # samples archived per transaction: a day at most

ARCHIVE_SCHEMA = """
CREATE TABLE IF NOT EXISTS archive (
    subject     TEXT NOT NULL,      -- '' for samples of a device no longer paired
    device_id   TEXT NOT NULL,
    property    TEXT NOT NULL,      -- skin_temp_c, uv_index, capacitance_pf, battery_pct
    bucket_ms   INTEGER NOT NULL,   -- UTC start of the 15-minute bucket
    n           INTEGER NOT NULL,
    min         REAL NOT NULL,
    sum         REAL NOT NULL,
    max         REAL NOT NULL,
    integral    REAL NOT NULL,      -- Σ value × held seconds
    PRIMARY KEY (subject, device_id, property, bucket_ms)
) WITHOUT ROWID;
"""

# Integer wire value -> SI, per channel, as a CASE over the channel column.
_SCALE_SQL = "CASE channel " + " ".join(
    f"WHEN {int(channel)} THEN {scale!r}" for channel, (scale, _) in CHANNEL_SCALE.items()
) + " END"
_PROPERTY_SQL = "CASE channel " + " ".join(
    f"WHEN {int(channel)} THEN '{prop}'" for channel, (_, prop) in CHANNEL_SCALE.items()
) + " END"
# Seconds each sample's value is held: until the next sample of its device and channel,
# none if that is further than HOLD_MAX_S (or there is none yet).
HELD_S_SQL = (f"CASE WHEN next_ms IS NULL OR next_ms - utc_ms > {HOLD_MAX_S * 1000} THEN 0.0"
              " ELSE (next_ms - utc_ms) / 1000.0 END")


def samples_with_next_sql(where: str) -> str:
    """Samples (SI value, property, the UTC of the next sample of the same device and channel)
    restricted by `where`, which may use the samples' columns."""
    return (
        f"SELECT device_id, seq, boot_id, historical, utc_ms, {_PROPERTY_SQL} AS property,"
        f" value * {_SCALE_SQL} AS si,"
        " LEAD(utc_ms) OVER (PARTITION BY device_id, channel ORDER BY utc_ms, seq) AS next_ms"
        f" FROM samples WHERE utc_ms IS NOT NULL AND {where}")


@dataclass(frozen=True)
class PruneResult:
    archived_samples: int
    buckets_written: int
    samples_deleted: int
    archive_rows_deleted: int
    gaps_deleted: int


def archive_and_prune(store: Store, raw_cutoff_ms: int, archive_cutoff_ms: int) -> PruneResult:
    """Archive every sample before `raw_cutoff_ms` (rounded down to a bucket start), delete
    those samples, then delete archive rows and gap records before `archive_cutoff_ms`.
    At most a day of samples per transaction (a shortened retention must not hold the write
    lock for long); a failure leaves each day archived or raw, never both (StoreError)."""
    cut = raw_cutoff_ms - raw_cutoff_ms % BUCKET_MS
    with store.transaction() as conn:     # a failure here too is a StoreError
        conn.execute(ARCHIVE_SCHEMA)
    oldest = store.conn.execute(
        "SELECT MIN(utc_ms) FROM samples WHERE utc_ms IS NOT NULL").fetchone()[0]
    ends = [] if oldest is None or oldest >= cut else [
        *range(oldest - oldest % BUCKET_MS + CHUNK_MS, cut, CHUNK_MS), cut]
    archived = buckets = deleted = 0
    for end in ends:
        a, b, d = _archive_before(store, end)
        archived, buckets, deleted = archived + a, buckets + b, deleted + d
    with store.transaction() as conn:
        old_archive = conn.execute(
            "DELETE FROM archive WHERE bucket_ms < ?", (archive_cutoff_ms,)).rowcount
        old_gaps = conn.execute(
            "DELETE FROM gaps WHERE last_utc_ms IS NOT NULL AND last_utc_ms < ?",
            (archive_cutoff_ms,)).rowcount
    return PruneResult(archived, buckets, deleted, old_archive, old_gaps)


def _archive_before(store: Store, cut: int) -> tuple[int, int, int]:
    """One transaction: aggregate the samples before `cut` (a bucket start) into the archive,
    merging into buckets already there, and delete them."""
    with store.transaction() as conn:
        # The window reaches HOLD_MAX_S past the cutoff so the last archived sample of a
        # channel is held until the next one, as it is when computed from raw samples.
        rows = conn.execute(
            "SELECT COALESCE(d.subject, ''), s.device_id, s.property,"
            f" s.utc_ms / {BUCKET_MS} * {BUCKET_MS} AS bucket, COUNT(*), MIN(s.si), SUM(s.si),"
            f" MAX(s.si), SUM(s.si * {HELD_S_SQL})"
            f" FROM ({samples_with_next_sql('utc_ms < ?')}) AS s"
            " LEFT JOIN devices AS d ON d.device_id = s.device_id"
            " WHERE s.utc_ms < ? GROUP BY 1, 2, 3, 4",
            (cut + HOLD_MAX_S * 1000, cut)).fetchall()
        conn.executemany(
            "INSERT INTO archive(subject, device_id, property, bucket_ms, n, min, sum, max,"
            " integral) VALUES (?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(subject, device_id, property, bucket_ms) DO UPDATE SET"
            " n = n + excluded.n, min = MIN(min, excluded.min), sum = sum + excluded.sum,"
            " max = MAX(max, excluded.max), integral = integral + excluded.integral", rows)
        deleted = conn.execute(
            "DELETE FROM samples WHERE utc_ms IS NOT NULL AND utc_ms < ?", (cut,)).rowcount
    return sum(r[4] for r in rows), len(rows), deleted
