"""Export a subject's history as a table, for researchers: CSV, or Parquet through pyarrow.

One row per reading in SI units (skin_temp_c °C, uv_index, capacitance_pf pF, battery_pct %):
`subject, utc, property, value, seq, boot, historical` (the sample's own columns), then
`source`: `sample`, `archive_15min` (past raw retention: value is the bucket mean, with
`count`, `min`, `max` and `utc_end`), or `data_loss` (samples the patch reported it could not
log: value is their count for that property, from `utc` to `utc_end`). The twin's derived
values and its alerts other than data loss are published over MQTT and not kept at the
gateway, so they are not exported here.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gateway.report.archive import BUCKET_MS
from gateway.report.errors import HistoryError
from gateway.report.history import History

COLUMNS = ("subject", "utc", "property", "value", "seq", "boot", "historical", "source",
           "count", "min", "max", "utc_end")
FORMATS = ("csv", "parquet")


@dataclass(frozen=True)
class Row:
    subject: str
    utc_ms: int
    prop: str
    value: float
    seq: int | None
    boot: int | None
    historical: bool | None
    source: str
    count: int | None
    lo: float | None
    hi: float | None
    end_ms: int | None


def rows_of(history: History) -> list[Row]:
    subject = history.subject
    rows = []
    for prop, (seq, boot, historical) in history.raw_ids.items():
        series = history.series[prop]
        raw = ~series.archived
        for t, v, q, b, h in zip(series.t_ms[raw].tolist(), series.value[raw].tolist(),
                                 seq.tolist(), boot.tolist(), historical.tolist(), strict=True):
            rows.append(Row(subject, t, prop, v, q, b, h, "sample", 1, v, v, None))
    for prop, series in history.series.items():
        archived = series.archived
        for t, v, lo, hi, n in zip(series.t_ms[archived].tolist(), series.value[archived].tolist(),
                                   series.lo[archived].tolist(), series.hi[archived].tolist(),
                                   series.n[archived].tolist(), strict=True):
            rows.append(Row(subject, t, prop, v, None, None, None, "archive_15min", n, lo, hi,
                            t + BUCKET_MS))
    for gap in history.gaps:
        start = gap.from_ms if gap.from_ms is not None else gap.to_ms
        if start is None:
            continue
        for prop, n in gap.lost.items():
            if n:
                rows.append(Row(subject, start, prop, float(n), None, None, None, "data_loss",
                                n, None, None, gap.to_ms))
    rows.sort(key=lambda r: (r.utc_ms, r.prop, r.seq if r.seq is not None else -1))
    return rows


def iso_utc(t_ms: int | None) -> str | None:
    if t_ms is None:
        return None
    return datetime.fromtimestamp(t_ms / 1000, UTC).isoformat(timespec="milliseconds"
                                                              ).replace("+00:00", "Z")


def _values(row: Row) -> tuple:
    return (row.subject, iso_utc(row.utc_ms), row.prop, row.value, row.seq, row.boot,
            row.historical, row.source, row.count, row.lo, row.hi, iso_utc(row.end_ms))


def write(rows: list[Row], path: Path, fmt: str) -> None:
    if fmt == "csv":
        with path.open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(COLUMNS)
            for row in rows:
                out.writerow(["" if v is None else int(v) if isinstance(v, bool) else v
                              for v in _values(row)])
        return
    if fmt != "parquet":
        raise HistoryError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise HistoryError("--format parquet needs pyarrow: pip install 'dermtwin[export]' "
                           "(or pip install pyarrow), or use --format csv") from e
    types = (pa.string(), pa.timestamp("ms", tz="UTC"), pa.string(), pa.float64(), pa.int64(),
             pa.int64(), pa.bool_(), pa.string(), pa.int64(), pa.float64(), pa.float64(),
             pa.timestamp("ms", tz="UTC"))
    columns = list(zip(*[(r.subject, r.utc_ms, r.prop, r.value, r.seq, r.boot, r.historical,
                          r.source, r.count, r.lo, r.hi, r.end_ms) for r in rows], strict=True)
                   ) if rows else [()] * len(COLUMNS)
    table = pa.table({name: pa.array(list(col), type=t)
                      for name, col, t in zip(COLUMNS, columns, types, strict=True)})
    pq.write_table(table, path)
