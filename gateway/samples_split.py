"""Split a `{subject}/samples` payload (docs/mqtt.md) into smaller ones of the same schema.

For the delivery policy, when a samples message is over the broker's size limit: the
message is decoded (gateway/samples_message.py) and its samples, in seq order, are shared
out as evenly as it takes for every part to fit, each part encoded again with the same
envelope (`boot`, `hist`, `time_uncertain`). A compressed payload (gateway/payload_encoding.py)
is split into compressed parts. Sans-I/O: bytes in, bytes out.
"""

from __future__ import annotations

import json
import math
import zlib

from gateway import payload_encoding, samples_message

# The last topic level of the messages this module splits (`{subject}/samples`).
SAMPLES_TOPIC_LEVEL = "samples"


def split_samples_payload(payload: bytes, max_bytes: int) -> list[bytes] | None:
    """Parts of at most `max_bytes` each, together carrying every sample once, in order; None
    if the payload is not a samples message or one sample alone is over `max_bytes`."""
    decoded = _decode(payload)
    if decoded is None:
        return None
    doc, samples = decoded
    if len(payload) <= max_bytes:
        return [payload]
    compressed = payload_encoding.content_type(payload) == payload_encoding.ZLIB_CONTENT_TYPE
    parts_count = max(2, math.ceil(len(payload) / max_bytes))
    while parts_count <= len(samples):
        parts = [_encode(doc, chunk, compressed)
                 for chunk in _even_chunks(samples, parts_count)]
        largest = max(map(len, parts))
        if largest <= max_bytes:
            return parts
        parts_count = max(parts_count + 1, math.ceil(parts_count * largest / max_bytes))
    return None


def _decode(payload: bytes) -> tuple[dict, list[samples_message.Sample]] | None:
    try:
        if payload_encoding.content_type(payload) == payload_encoding.ZLIB_CONTENT_TYPE:
            payload = zlib.decompress(payload)
        doc = json.loads(payload)
        if not isinstance(doc, dict) or "c" not in doc:
            return None
        return doc, samples_message.decode(doc)
    except (ValueError, KeyError, TypeError, zlib.error):
        return None


def _even_chunks(rows: list, count: int) -> list[list]:
    size, extra = divmod(len(rows), count)
    chunks, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        chunks.append(rows[start:end])
        start = end
    return chunks


def _encode(doc: dict, samples: list[samples_message.Sample], compressed: bool) -> bytes:
    part = samples_message.encode(
        doc["boot"], [s.seq for s in samples],
        [-1 if s.utc_ms is None else s.utc_ms for s in samples],
        [s.prop for s in samples], [s.raw for s in samples],
        historical=bool(doc.get("hist")), time_uncertain=bool(doc.get("time_uncertain")))
    # The same encoding as gateway.ingest.encode: compact, keys sorted.
    text = json.dumps(part, separators=(",", ":"), sort_keys=True).encode()
    return payload_encoding.encode(text, payload_encoding.ZLIB if compressed else
                                   payload_encoding.JSON)
