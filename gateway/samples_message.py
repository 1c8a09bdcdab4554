"""The `{subject}/samples` payload (docs/mqtt.md, docs/schemas/samples.schema.json): committed
samples for research pipelines, columnar and delta-coded, still JSON. Sans-I/O: columns in,
a dict out (`encode`), and back (`decode`).

    {"schema": 3, "boot": 7, "seq": 1200, "t": 1764262800000, "tu": 5000,
     "c": "011011021101", "dt": [[0, 2], [0, 1], [4]], "v": [[4290, 3, -1], [12], [250017]]}

- `c`: one character per sample, in seq order: the index of its property in meta's
  `samples.properties` (`skin_temp_c`, `uv_index`, `capacitance_pf`, `battery_pct`).
- sample i has seq `seq + i`, plus the seqs skipped before it: `skip` (when present) lists
  `[i, n]`, n seqs not in this message before sample i (sent before, or lost: `data_loss`).
- `t`: UTC ms of the first sample, or null while the boot's time is unknown (then no `dt`).
  `dt[k]` holds property k's times in units of `tu` ms (default 100, the patch's tick): the
  first as an offset from `t`, then the differences.
- `v[k]`: property k's values as integers (wire units; SI = v × `samples.scale[k]` in meta):
  the first, then the differences.
- A column shorter than its property's sample count repeats its last difference (0 if it
  has none): `[0, 2]` is 0, 2, 4, 6, …; `[12]` is 12, 12, 12, ….
- `hist`: true for backfill the patch sent because of a replay; absent otherwise.

Any contiguous slice of a batch encodes on its own (an oversize message splits by rows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gateway.model_registry import CHANNEL_SCALE
from gateway.mqtt.topics import SCHEMA_VERSION

if TYPE_CHECKING:
    from gateway.values import SampleBatch

DEFAULT_TIME_UNIT_MS = 100
# property k of a message = channel k of the protocol (docs/protocol.md §4)
PROPERTIES = tuple(prop for _, (_, prop) in sorted(CHANNEL_SCALE.items()))
SCALES = tuple(scale for _, (scale, _) in sorted(CHANNEL_SCALE.items()))


def meta_columns() -> dict:
    """What `{subject}/meta` says about samples messages: property order and scales."""
    return {"properties": list(PROPERTIES), "scale": list(SCALES)}


@dataclass(frozen=True)
class Sample:
    seq: int
    prop: int          # index into PROPERTIES
    utc_ms: int | None
    raw: int           # integer wire value


def _column(values: Sequence[int]) -> list[int]:
    """First value, then differences; trailing repeats of the last difference dropped."""
    if not values:
        return []
    diffs = [b - a for a, b in zip(values, values[1:], strict=False)]
    while len(diffs) >= 2 and diffs[-1] == diffs[-2]:
        diffs.pop()
    if len(diffs) == 1 and diffs[0] == 0:
        diffs.pop()
    return [values[0], *diffs]


def _expand(column: Sequence[int], n: int, name: str) -> list[int]:
    if n == 0:
        if column:
            raise ValueError(f"{name}: {len(column)} entries for a property without samples")
        return []
    if not column:
        raise ValueError(f"{name}: empty for {n} samples")
    if len(column) > n:
        raise ValueError(f"{name}: {len(column)} entries for {n} samples")
    out = [int(column[0])]
    last = int(column[-1]) if len(column) >= 2 else 0
    for i in range(1, n):
        out.append(out[-1] + (int(column[i]) if i < len(column) else last))
    return out


def encode(boot_id: int, seq: Sequence[int], utc_ms: Sequence[int], channel: Sequence[int],
           value: Sequence[int], historical: bool = False, time_uncertain: bool = False) -> dict:
    """One message for samples in seq order (any contiguous slice of a batch)."""
    seq, utc, ch, val = (list(map(int, c)) for c in (seq, utc_ms, channel, value))
    if not seq:
        raise ValueError("no samples to encode")
    doc: dict = {"schema": SCHEMA_VERSION, "boot": int(boot_id), "seq": seq[0]}
    skips = [[i, b - a - 1] for i, (a, b) in enumerate(zip(seq, seq[1:], strict=False), 1)
             if b != a + 1]
    if any(n < 0 for _, n in skips):
        raise ValueError("seq: samples must be in increasing seq order")
    known = all(u >= 0 for u in utc)
    doc["t"] = utc[0] if known else None
    doc["c"] = "".join(str(c) for c in ch)
    n_props = max(ch) + 1
    if known:
        unit = 0
        for u in utc:
            unit = math.gcd(unit, u - utc[0])
        unit = unit or DEFAULT_TIME_UNIT_MS
        if unit != DEFAULT_TIME_UNIT_MS:
            doc["tu"] = unit
        doc["dt"] = [_column([(u - utc[0]) // unit for u, c in zip(utc, ch, strict=True)
                              if c == k]) for k in range(n_props)]
    doc["v"] = [_column([v for v, c in zip(val, ch, strict=True) if c == k])
                for k in range(n_props)]
    if skips:
        doc["skip"] = skips
    if historical:
        doc["hist"] = True
    if time_uncertain:   # times from before a gateway wall-clock step (docs/mqtt.md)
        doc["time_uncertain"] = True
    return doc


def encode_runs(boot_id: int, seq: Sequence[int], utc_ms: Sequence[int],
                channel: Sequence[int], value: Sequence[int],
                historical: bool = False, time_uncertain: bool = False) -> list[dict]:
    """Messages for samples in seq order: one, or one per run of samples whose time is
    known (or unknown) throughout."""
    utc = [int(u) for u in utc_ms]
    cuts = [0] + [i for i in range(1, len(utc)) if (utc[i] < 0) != (utc[i - 1] < 0)]
    cuts.append(len(utc))
    return [encode(boot_id, seq[a:b], utc[a:b], channel[a:b], value[a:b], historical,
                   time_uncertain)
            for a, b in zip(cuts, cuts[1:], strict=False)]


def to_si(sample: Sample, scales: Sequence[float] = SCALES) -> float:
    """A sample's value in SI units (meta's `samples.scale`)."""
    return sample.raw * scales[sample.prop]


def decode(doc: dict) -> list[Sample]:
    """The samples of one message, in seq order. ValueError naming the field if malformed."""
    chars = doc["c"]
    props = [int(c) for c in chars]
    n = len(props)
    seqs, skip_at = [], {int(i): int(k) for i, k in doc.get("skip", [])}
    s = int(doc["seq"])
    for i in range(n):
        s += skip_at.get(i, 0)
        seqs.append(s)
        s += 1
    counts = [props.count(k) for k in range(max(props, default=-1) + 1)]
    values = [_expand(col, counts[k] if k < len(counts) else 0, f"v[{k}]")
              for k, col in enumerate(doc["v"])]
    if len(values) < len(counts):
        raise ValueError(f"v: {len(values)} columns for {len(counts)} properties")
    times: list[list[int]] | None = None
    if doc.get("t") is not None:
        unit = int(doc.get("tu", DEFAULT_TIME_UNIT_MS))
        times = [[doc["t"] + unit * d for d in _expand(col, counts[k] if k < len(counts) else 0,
                                                       f"dt[{k}]")]
                 for k, col in enumerate(doc["dt"])]
    taken = [0] * len(counts)
    out = []
    for seq, k in zip(seqs, props, strict=True):
        j = taken[k]
        taken[k] += 1
        out.append(Sample(seq, k, times[k][j] if times is not None else None, values[k][j]))
    return out


def samples_payload(batch: SampleBatch, fresh: np.ndarray) -> dict | None:
    """The payload for the samples of batch selected by the boolean mask fresh (those not
    published before), or None if there are none."""
    if not fresh.any():
        return None
    return encode(batch.boot_id, batch.seq[fresh].tolist(), batch.utc_ms[fresh].tolist(),
                  batch.channel[fresh].tolist(), batch.value[fresh].tolist(), batch.historical,
                  batch.time_uncertain)


# --- the same messages from numpy columns (the ingest cycle's path) --------------------------
# `encode` above is the reference: readable, one sample at a time. A backlog drain encodes
# ~200k samples a minute of radio time, where that loop cost ~1.5 µs per sample; these do the
# same with array operations and must give identical messages (tests/test_samples_arrays.py).

def _column_array(values: np.ndarray) -> list[int]:
    """`_column` of an int64 array."""
    if not len(values):
        return []
    diffs = np.diff(values)
    if len(diffs) >= 2:
        changes = np.flatnonzero(diffs[1:] != diffs[:-1])
        diffs = diffs[:changes[-1] + 2] if len(changes) else diffs[:1]
    if len(diffs) == 1 and diffs[0] == 0:
        diffs = diffs[:0]
    return [int(values[0]), *diffs.tolist()]


def encode_arrays(boot_id: int, seq: np.ndarray, utc_ms: np.ndarray, channel: np.ndarray,
                  value: np.ndarray, historical: bool = False,
                  time_uncertain: bool = False) -> dict:
    """`encode` for int64 numpy columns (any integer dtype is widened)."""
    seq, utc, ch, val = (np.asarray(c, dtype=np.int64) for c in (seq, utc_ms, channel, value))
    if not len(seq):
        raise ValueError("no samples to encode")
    if ch.min() < 0 or ch.max() > 9:   # one character per sample only for 0..9
        return encode(boot_id, seq.tolist(), utc.tolist(), ch.tolist(), val.tolist(),
                      historical, time_uncertain)
    doc: dict = {"schema": SCHEMA_VERSION, "boot": int(boot_id), "seq": int(seq[0])}
    steps = np.diff(seq)
    if len(steps) and steps.min() < 1:
        raise ValueError("seq: samples must be in increasing seq order")
    jumps = np.flatnonzero(steps != 1)
    skips = np.stack([jumps + 1, steps[jumps] - 1], axis=1).tolist() if len(jumps) else []
    known = bool(utc.min() >= 0)
    doc["t"] = int(utc[0]) if known else None
    doc["c"] = (ch.astype(np.uint8) + ord("0")).tobytes().decode("ascii")
    n_props = int(ch.max()) + 1
    masks = [ch == k for k in range(n_props)]
    if known:
        offsets = utc - utc[0]
        unit = int(np.gcd.reduce(offsets)) or DEFAULT_TIME_UNIT_MS
        if unit != DEFAULT_TIME_UNIT_MS:
            doc["tu"] = unit
        ticks = offsets // unit
        doc["dt"] = [_column_array(ticks[m]) for m in masks]
    doc["v"] = [_column_array(val[m]) for m in masks]
    if skips:
        doc["skip"] = skips
    if historical:
        doc["hist"] = True
    if time_uncertain:
        doc["time_uncertain"] = True
    return doc


def encode_runs_arrays(boot_id: int, seq: np.ndarray, utc_ms: np.ndarray, channel: np.ndarray,
                       value: np.ndarray, historical: bool = False,
                       time_uncertain: bool = False) -> list[dict]:
    """`encode_runs` for numpy columns."""
    unknown = np.asarray(utc_ms) < 0
    cuts = [0, *(np.flatnonzero(unknown[1:] != unknown[:-1]) + 1).tolist(), len(unknown)]
    return [encode_arrays(boot_id, seq[a:b], utc_ms[a:b], channel[a:b], value[a:b],
                          historical, time_uncertain)
            for a, b in zip(cuts, cuts[1:], strict=False)]
