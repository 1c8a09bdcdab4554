"""The optional compressed form of `{subject}/samples` payloads (docs/mqtt.md), sans-I/O.

`dermtwin run --samples-format zlib` publishes each samples message compressed in the zlib
format (RFC 1950) when that makes it smaller, with the MQTT 5 Content Type `application/zlib`
(the registered media type, RFC 6713); the compressed bytes are the same JSON document.
Every other message, and a samples message compression would not shrink, is plain JSON and
carries no Content Type, as always.

zlib rather than gzip: 6 bytes of framing instead of 18 on messages of ~200 bytes (a live
flush), and every language has it (Python `zlib.decompress`, Node `zlib.inflateSync`, Java
`Inflater`). `application/zlib` rather than `application/json+zlib`: a subscriber testing
for a type that starts with `application/json` must not take compressed bytes for text.

The outbox stores payloads only, so the content type is read back from the bytes: every
JSON payload the gateway writes is an object (first byte `{`), while a zlib stream starts
with a CMF byte of 0x78 (deflate, 32 KB window) and a header that is a multiple of 31.
"""

from __future__ import annotations

import zlib

JSON = "json"
ZLIB = "zlib"
FORMATS = (JSON, ZLIB)
ZLIB_CONTENT_TYPE = "application/zlib"
JSON_CONTENT_TYPE = "application/json"
_ZLIB_CMF = 0x78


def encode(payload: bytes, samples_format: str) -> bytes:
    """A JSON payload in `samples_format`: compressed only when that is smaller."""
    if samples_format == JSON:
        return payload
    if samples_format != ZLIB:
        raise ValueError(f"samples format {samples_format!r} is not one of {', '.join(FORMATS)}")
    packed = zlib.compress(payload)
    return packed if len(packed) < len(payload) else payload


def content_type(payload: bytes) -> str | None:
    """The MQTT 5 Content Type a gateway payload goes out with: `application/zlib` for a
    compressed one, None (plain JSON, no property) otherwise."""
    if len(payload) >= 2 and payload[0] == _ZLIB_CMF and \
            int.from_bytes(payload[:2], "big") % 31 == 0:
        return ZLIB_CONTENT_TYPE
    return None


def json_bytes(payload: bytes, content_type_property: str | None) -> bytes:
    """A received payload as JSON text, by its Content Type (absent: JSON). Raises
    ValueError for a content type this version does not know or a damaged stream."""
    if content_type_property in (None, "", JSON_CONTENT_TYPE):
        return payload
    if content_type_property == ZLIB_CONTENT_TYPE:
        try:
            return zlib.decompress(payload)
        except zlib.error as e:
            raise ValueError(f"content type {ZLIB_CONTENT_TYPE}: {e}") from e
    raise ValueError(f"unknown content type {content_type_property!r}")
