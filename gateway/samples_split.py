"""Split a `{subject}/samples` payload (docs/mqtt.md) into smaller ones of the same schema.

For the delivery policy, when a samples message is over the broker's size limit: the parts
keep the envelope (`schema`, `boot`, `historical`) and share out the sample records, in
order, as evenly as it takes for every part to fit. Sans-I/O: bytes in, bytes out.
"""

from __future__ import annotations

import json
import math

# The last topic level of the messages this module splits (`{subject}/samples`).
SAMPLES_TOPIC_LEVEL = "samples"
COLUMNS = ("seq", "t", "v")


def split_samples_payload(payload: bytes, max_bytes: int) -> list[bytes] | None:
    """Parts of at most `max_bytes` each, together carrying every sample once, in order; None
    if the payload is not a samples message or one sample alone is over `max_bytes`."""
    records = _records(payload)
    if records is None:
        return None
    envelope, rows = records
    if len(payload) <= max_bytes:
        return [payload]
    parts_count = max(2, math.ceil(len(payload) / max_bytes))
    while parts_count <= len(rows):
        parts = [_encode(envelope, chunk) for chunk in _even_chunks(rows, parts_count)]
        largest = max(map(len, parts))
        if largest <= max_bytes:
            return parts
        parts_count = max(parts_count + 1, math.ceil(parts_count * largest / max_bytes))
    return None


def _records(payload: bytes) -> tuple[dict, list[tuple[str, object, object, object]]] | None:
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("samples"), dict):
        return None
    rows: list[tuple[str, object, object, object]] = []
    for prop, columns in doc["samples"].items():
        if not isinstance(columns, dict) or set(columns) != set(COLUMNS):
            return None
        seq, t, v = (columns[c] for c in COLUMNS)
        if not all(isinstance(c, list) for c in (seq, t, v)) or not len(seq) == len(t) == len(v):
            return None
        rows.extend(zip([prop] * len(seq), seq, t, v, strict=True))
    envelope = {k: value for k, value in doc.items() if k != "samples"}
    return envelope, rows


def _even_chunks(rows: list, count: int) -> list[list]:
    size, extra = divmod(len(rows), count)
    chunks, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        chunks.append(rows[start:end])
        start = end
    return chunks


def _encode(envelope: dict, rows: list[tuple[str, object, object, object]]) -> bytes:
    samples: dict[str, dict[str, list]] = {}
    for prop, seq, t, v in rows:
        columns = samples.setdefault(prop, {"seq": [], "t": [], "v": []})
        columns["seq"].append(seq)
        columns["t"].append(t)
        columns["v"].append(v)
    # The same encoding as gateway.ingest.encode: compact, keys sorted.
    return json.dumps({**envelope, "samples": samples}, separators=(",", ":"),
                      sort_keys=True).encode()
