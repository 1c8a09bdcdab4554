"""Sample frames (docs/protocol.md §4), gateway side: a sans-I/O decoder and a reference encoder.

`decode_frame(data, key)` authenticates and decodes one Samples notification, version 2 (what
patches send: one-byte records at each channel's stride) or version 1 (older firmware,
§4.2): a sample frame into numpy arrays (DecodedFrame), a gap notice (§4.1) into a
DecodedGap, or raises FrameError with the first §4 error code that applies (checked in the
order of the table). The record walk is a short Python loop over at most 244 bytes; the
value and tick checks run on the columns.

`encode_frame(...)` and `encode_gap_frame(...)` are plain reference encoders (either
version) for tests and simulation; the patch's own encoder is firmware/frame_encoder.py and
the two share only the golden vectors.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .constants import (
    CHANNEL_COUNT,
    CHANNEL_MAX,
    CHANNEL_MIN,
    CODE_SHORT_END,
    CODE_SHORT_MINUS_END,
    CODE_SHORT_PLUS_END,
    DEVICE_KEY_LEN,
    DT_ESCAPE,
    FRAME_FLAG_GAP,
    FRAME_FLAG_GAPS_BEFORE,
    FRAME_FLAG_HISTORICAL,
    FRAME_FLAGS_RESERVED,
    FRAME_HEADER_LEN,
    FRAME_MIN_BYTES,
    FRAME_V1_MIN_BYTES,
    FRAME_VERSION,
    FRAME_VERSION_1,
    GAP_FRAME_VARINTS,
    TAG_LEN,
    VARINT_MAX_BYTES,
    Channel,
    FrameErrorCode,
)

__all__ = [
    "DecodedFrame",
    "DecodedGap",
    "FrameError",
    "FrameErrorCode",
    "decode_frame",
    "encode_frame",
    "encode_gap_frame",
]

_HEADER = struct.Struct("<BBHII")
_U32_MAX = 0xFFFFFFFF
_CH_LO = tuple(CHANNEL_MIN)
_CH_HI = tuple(CHANNEL_MAX)
_CH_LO_ARR = np.array(CHANNEL_MIN, dtype=np.int64)
_CH_HI_ARR = np.array(CHANNEL_MAX, dtype=np.int64)


class FrameError(ValueError):
    """A frame was rejected; `.code` says why (a FrameErrorCode), the message gives detail."""

    def __init__(self, code: FrameErrorCode, message: str):
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.detail = message


@dataclass(frozen=True, slots=True, eq=False)
class DecodedFrame:
    """One authenticated frame; the arrays hold one entry per sample, in record order."""

    version: int
    flags: int
    boot_id: int
    first_seq: int
    base_tick: int
    seq: np.ndarray  # int64
    channel: np.ndarray  # uint8
    tick: np.ndarray  # int64
    value: np.ndarray  # int32

    @property
    def historical(self) -> bool:
        return bool(self.flags & FRAME_FLAG_HISTORICAL)

    @property
    def gaps_before(self) -> bool:
        """The patch sent gap notices for this frame's position just before it (§4.1)."""
        return bool(self.flags & FRAME_FLAG_GAPS_BEFORE)

    def __len__(self) -> int:
        return len(self.seq)

    def samples(self) -> list[tuple[int, int, int, int]]:
        """(seq, channel, tick, value) per sample as Python ints (handy in tests and logs)."""
        return list(
            zip(
                self.seq.tolist(),
                self.channel.tolist(),
                self.tick.tolist(),
                self.value.tolist(),
                strict=True,
            )
        )


@dataclass(frozen=True, slots=True)
class DecodedGap:
    """One authenticated gap notice (§4.1): samples the patch could not log. They would have
    come just before the sample `seq_at` (a gap takes no seq); ticks are of boot `boot_id`."""

    flags: int
    boot_id: int
    seq_at: int
    first_tick: int
    last_tick: int
    counts: tuple[int, int, int, int]  # per channel, in channel order

    @property
    def historical(self) -> bool:
        return bool(self.flags & FRAME_FLAG_HISTORICAL)

    @property
    def count(self) -> int:
        return sum(self.counts)


def check_device_key(key: bytes) -> bytes:
    """The key as bytes, or TypeError/ValueError naming what is wrong with it."""
    if not isinstance(key, bytes | bytearray | memoryview):
        raise TypeError(f"device key must be bytes, not {type(key).__name__}")
    key = bytes(key)
    if len(key) != DEVICE_KEY_LEN:
        raise ValueError(f"device key must be {DEVICE_KEY_LEN} bytes, got {len(key)}")
    return key


def frame_tag(key: bytes, body: bytes) -> bytes:
    """HMAC-SHA256(key, body)[:8]."""
    return hmac.new(key, body, hashlib.sha256).digest()[:TAG_LEN]


def decode_frame(data: bytes, key: bytes) -> DecodedFrame | DecodedGap:
    """Authenticate and decode one frame or gap notice, of either version (§4, §4.2).
    Raises FrameError (see FrameErrorCode)."""
    key = check_device_key(key)
    data = bytes(data)
    n = len(data)
    if n < FRAME_MIN_BYTES:
        raise FrameError(
            FrameErrorCode.TRUNCATED, f"frame is {n} bytes, the minimum is {FRAME_MIN_BYTES}"
        )
    version, flags, boot_id, first_seq, base_tick = _HEADER.unpack_from(data)
    if version != FRAME_VERSION and version != FRAME_VERSION_1:
        raise FrameError(FrameErrorCode.BAD_VERSION,
                         f"version {version}, expected {FRAME_VERSION} or {FRAME_VERSION_1}")
    if version == FRAME_VERSION_1 and n < FRAME_V1_MIN_BYTES:
        raise FrameError(FrameErrorCode.TRUNCATED,
                         f"version-1 frame is {n} bytes, the minimum is {FRAME_V1_MIN_BYTES}")
    if flags & FRAME_FLAGS_RESERVED:
        raise FrameError(FrameErrorCode.RESERVED_FLAGS, f"flags 0x{flags:02x} set reserved bits")
    if flags & FRAME_FLAG_GAP and flags & FRAME_FLAG_GAPS_BEFORE:
        raise FrameError(FrameErrorCode.RESERVED_FLAGS,
                         f"flags 0x{flags:02x}: GAPS_BEFORE is for sample frames, not GAP")
    end = n - TAG_LEN
    if not hmac.compare_digest(frame_tag(key, data[:end]), data[end:]):
        raise FrameError(FrameErrorCode.BAD_TAG, "tag does not match the device key")
    if flags & FRAME_FLAG_GAP:
        return _decode_gap(data, end, flags, boot_id, first_seq, base_tick)
    walk = _records_v2 if version == FRAME_VERSION else _records_v1
    channels, ticks, values = walk(data, end, base_tick)
    count = len(channels)
    # Range and order checks on whole columns; the record-by-record search only to name the
    # first bad record. (Sums of at most 244 five-byte varints fit an int64.)
    channel_arr = np.frombuffer(channels, dtype=np.uint8)
    tick_arr = np.frombuffer(ticks, dtype=np.int64)
    value_arr = np.frombuffer(values, dtype=np.int64)
    if (ticks[0] < base_tick or ticks[-1] > _U32_MAX or (tick_arr[1:] < tick_arr[:-1]).any()
            or (value_arr < _CH_LO_ARR.take(channel_arr)).any()
            or (value_arr > _CH_HI_ARR.take(channel_arr)).any()):
        _raise_first_bad_value(channels, ticks, values, base_tick)
    if first_seq + count - 1 > _U32_MAX:
        raise FrameError(
            FrameErrorCode.SEQ_OVERFLOW,
            f"first_seq {first_seq} + {count} records passes 0xFFFFFFFF",
        )
    return DecodedFrame(
        version=version,
        flags=flags,
        boot_id=boot_id,
        first_seq=first_seq,
        base_tick=base_tick,
        seq=first_seq + np.arange(count, dtype=np.int64),
        channel=channel_arr,
        tick=tick_arr,
        value=value_arr.astype(np.int32),
    )


def _truncated(count: int, rec_start: int, end: int) -> FrameError:
    return FrameError(FrameErrorCode.TRUNCATED_RECORD,
                      f"record {count} at byte {rec_start} runs into the tag at byte {end}")


def _too_long(rec_start: int) -> FrameError:
    return FrameError(FrameErrorCode.VARINT_TOO_LONG,
                      f"record at byte {rec_start} has a varint longer than {VARINT_MAX_BYTES} "
                      "bytes")


def _varint_at(data: bytes, i: int, end: int) -> tuple[int, int, int]:
    """(value, index after it, its length), or (-1, -1, 0) when it runs into the tag at end.
    A varint longer than VARINT_MAX_BYTES reads as 0 (the frame is refused for it anyway;
    its value must not overflow the int64 columns first)."""
    u = 0
    shift = 0
    start = i
    while i < end:
        b = data[i]
        i += 1
        u |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return (u if i - start <= VARINT_MAX_BYTES else 0), i, i - start
    return -1, -1, 0


def _short_record(head: int) -> tuple[int, int, int] | None:
    """(channel, tick adjustment against next(c), value delta) of a one-byte version-2
    record, or None for the head of a long one (§4)."""
    code = head & 0x3F
    if code >= CODE_SHORT_MINUS_END:
        return None
    if code < CODE_SHORT_END:
        adjust, u = 0, code
    elif code < CODE_SHORT_PLUS_END:
        adjust, u = 1, code - CODE_SHORT_END
    else:
        adjust, u = -1, code - CODE_SHORT_PLUS_END
    return head >> 6, adjust, (u >> 1) ^ -(u & 1)


_SHORT_RECORDS = tuple(_short_record(head) for head in range(256))


Columns = tuple[bytearray, "array[int]", "array[int]"]  # channel u8, tick and value int64


def _columns() -> Columns:
    return bytearray(), array("q"), array("q")


def _records_v2(data: bytes, end: int, base_tick: int) -> Columns:
    """Walk version-2 records (§4) once, in plain Python: frames hold ~200 records, too few
    for numpy to pay per frame (bench/bench_codec.py). Structural problems: the first
    TRUNCATED_RECORD wins over any VARINT_TOO_LONG (table order); value checks come after.
    The columns are appended to as C arrays, which numpy then reads without a copy."""
    channels, ticks, values = _columns()
    add_channel, add_tick, add_value = channels.append, ticks.append, values.append
    short_records = _SHORT_RECORDS
    # per channel next(c) = last(c) + step(c), kept ready: the common record reads it alone
    nxt = [base_tick] * CHANNEL_COUNT
    step = [0] * CHANNEL_COUNT
    prev = [0] * CHANNEL_COUNT
    tick = base_tick
    too_long_at = -1
    i = FRAME_HEADER_LEN
    while i < end:
        head = data[i]
        i += 1
        short = short_records[head]
        if short is not None:
            # The common record: one byte, at the channel's stride, a small change.
            ch, adjust, delta = short
            if adjust:
                tick = nxt[ch] + adjust
                s = step[ch] + adjust
                step[ch] = s
                nxt[ch] = tick + s
            else:
                tick = nxt[ch]
                nxt[ch] = tick + step[ch]
            value = prev[ch] + delta
        else:
            ch = head >> 6
            code = head & 0x3F
            rec_start = i - 1
            if code == DT_ESCAPE:
                dt, i, length = _varint_at(data, i, end)
                if i < 0:
                    raise _truncated(len(channels), rec_start, end)
                if length > VARINT_MAX_BYTES and too_long_at < 0:
                    too_long_at = rec_start
            else:
                dt = code - CODE_SHORT_MINUS_END
            if i < end and data[i] < 0x80:
                u = data[i]
                i += 1
            else:
                u, i, length = _varint_at(data, i, end)
                if i < 0:
                    raise _truncated(len(channels), rec_start, end)
                if length > VARINT_MAX_BYTES and too_long_at < 0:
                    too_long_at = rec_start
            tick += dt
            s = tick - (nxt[ch] - step[ch])   # step(c) = tick - last(c)
            step[ch] = s
            nxt[ch] = tick + s
            value = prev[ch] + ((u >> 1) ^ -(u & 1))
        prev[ch] = value
        add_channel(ch)
        add_tick(tick)
        add_value(value)
    if too_long_at >= 0:
        raise _too_long(too_long_at)
    return channels, ticks, values


def _records_v1(data: bytes, end: int, base_tick: int) -> Columns:
    """Walk version-1 records (§4.2): a head with the dt since the previous record, then
    always a value varint."""
    channels, ticks, values = _columns()
    prev = [0, 0, 0, 0]
    tick = base_tick
    too_long_at = -1
    i = FRAME_HEADER_LEN
    while i < end:
        rec_start = i
        head = data[i]
        i += 1
        dt = head & 0x3F
        channel = head >> 6
        if dt == DT_ESCAPE:
            dt, i, length = _varint_at(data, i, end)
            if i < 0:
                raise _truncated(len(channels), rec_start, end)
            if length > VARINT_MAX_BYTES and too_long_at < 0:
                too_long_at = rec_start
        if i < end and data[i] < 0x80:
            u = data[i]
            i += 1
        else:
            u, i, length = _varint_at(data, i, end)
            if i < 0:
                raise _truncated(len(channels), rec_start, end)
            if length > VARINT_MAX_BYTES and too_long_at < 0:
                too_long_at = rec_start
        value = prev[channel] + ((u >> 1) ^ -(u & 1))
        prev[channel] = value
        tick += dt
        channels.append(channel)
        ticks.append(tick)
        values.append(value)
    if too_long_at >= 0:
        raise _too_long(too_long_at)
    return channels, ticks, values


def _raise_first_bad_value(channels: Sequence[int], ticks: Sequence[int],
                           values: Sequence[int], base_tick: int) -> None:
    before = base_tick
    for j, (ch, tick, value) in enumerate(zip(channels, ticks, values, strict=True)):
        if not _CH_LO[ch] <= value <= _CH_HI[ch]:
            raise FrameError(
                FrameErrorCode.BAD_VALUE,
                f"record {j}: {Channel(ch).name.lower()} value {value} outside "
                f"{CHANNEL_MIN[ch]}..{CHANNEL_MAX[ch]}",
            )
        if tick > _U32_MAX:
            raise FrameError(FrameErrorCode.BAD_VALUE, f"record {j}: tick {tick} is beyond a u32")
        if tick < before:
            raise FrameError(FrameErrorCode.BAD_VALUE,
                             f"record {j}: tick {tick} is before the previous record's {before}")
        before = tick
    raise FrameError(FrameErrorCode.BAD_VALUE, "a value or tick is out of range")  # unreachable


def _decode_gap(data: bytes, end: int, flags: int, boot_id: int, seq_at: int,
                first_tick: int) -> DecodedGap:
    fields: list[int] = []
    too_long = False
    i = FRAME_HEADER_LEN
    while len(fields) < GAP_FRAME_VARINTS:
        u = 0
        shift = 0
        length = 0
        while True:
            if i >= end:
                raise FrameError(
                    FrameErrorCode.TRUNCATED_RECORD,
                    f"gap notice: varint {len(fields)} runs into the tag at byte {end}")
            b = data[i]
            i += 1
            length += 1
            u |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        too_long = too_long or length > VARINT_MAX_BYTES
        fields.append(u)
    if too_long:
        raise FrameError(FrameErrorCode.VARINT_TOO_LONG,
                         f"gap notice: a varint longer than {VARINT_MAX_BYTES} bytes")
    span, *counts = fields
    if i != end:
        raise FrameError(FrameErrorCode.BAD_GAP,
                         f"gap notice: {end - i} bytes after its {GAP_FRAME_VARINTS} varints")
    if first_tick + span > _U32_MAX:
        raise FrameError(FrameErrorCode.BAD_GAP,
                         f"gap notice: last tick {first_tick + span} is beyond a u32")
    if max(counts) > _U32_MAX:
        raise FrameError(FrameErrorCode.BAD_GAP, f"gap notice: count {max(counts)} is not a u32")
    if not any(counts):
        raise FrameError(FrameErrorCode.BAD_GAP, "gap notice: every count is 0")
    return DecodedGap(flags=flags, boot_id=boot_id, seq_at=seq_at, first_tick=first_tick,
                      last_tick=first_tick + span, counts=tuple(counts))  # type: ignore[arg-type]


def _varint(u: int) -> bytes:
    out = bytearray()
    while u > 0x7F:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def encode_frame(
    key: bytes,
    boot_id: int,
    first_seq: int,
    base_tick: int,
    samples: Iterable[tuple[int, int, int]],
    historical: bool = False,
    gaps_before: bool = False,
    version: int = FRAME_VERSION,
) -> bytes:
    """Reference encoder: samples are (channel, tick, value) in seq order from first_seq.
    `version` 1 writes the older record grammar (§4.2), as firmware before version 2 does.

    No size limit is applied; split samples yourself to respect an MTU.
    """
    key = check_device_key(key)
    if version not in (FRAME_VERSION, FRAME_VERSION_1):
        raise ValueError(f"frame version {version} is neither {FRAME_VERSION} nor 1")
    if not 0 <= boot_id <= 0xFFFF:
        raise ValueError(f"boot_id {boot_id} is not a u16")
    if not 0 <= first_seq <= _U32_MAX or not 0 <= base_tick <= _U32_MAX:
        raise ValueError("first_seq and base_tick must be u32")
    flags = (FRAME_FLAG_HISTORICAL if historical else 0) | (
        FRAME_FLAG_GAPS_BEFORE if gaps_before else 0)
    body = bytearray(_HEADER.pack(version, flags, boot_id, first_seq, base_tick))
    prev = [0] * CHANNEL_COUNT
    last = [base_tick] * CHANNEL_COUNT  # tick of each channel's previous record
    step = [0] * CHANNEL_COUNT
    last_tick = base_tick
    count = 0
    for ch, tick, value in samples:
        if not 0 <= ch < CHANNEL_COUNT:
            raise ValueError(f"channel {ch} is not 0..3")
        if not CHANNEL_MIN[ch] <= value <= CHANNEL_MAX[ch]:
            raise ValueError(f"{Channel(ch).name.lower()} value {value} out of range")
        if not 0 <= tick <= _U32_MAX:
            raise ValueError(f"tick {tick} is not a u32")
        dt = tick - last_tick
        if dt < 0:
            raise ValueError(f"tick {tick} is before the previous tick {last_tick}")
        d = value - prev[ch]
        if version == FRAME_VERSION_1:
            body += _head_v1(ch, dt)
            body += _varint(((d << 1) ^ (d >> 31)) & _U32_MAX)
        else:
            body += _record_v2(ch, dt, tick - last[ch] - step[ch], d)
            step[ch] = tick - last[ch]
            last[ch] = tick
        prev[ch] = value
        last_tick = tick
        count += 1
    if count == 0:
        raise ValueError("a frame needs at least one sample")
    if first_seq + count - 1 > _U32_MAX:
        raise ValueError("seq passes 0xFFFFFFFF")
    return bytes(body) + frame_tag(key, bytes(body))


def _head_v1(ch: int, dt: int) -> bytes:
    if dt >= DT_ESCAPE:
        return bytes([(ch << 6) | DT_ESCAPE]) + _varint(dt)
    return bytes([(ch << 6) | dt])


def _record_v2(ch: int, dt: int, adjust: int, delta: int) -> bytes:
    """One version-2 record in its canonical form (§4): adjust = tick - next(c)."""
    zz = ((delta << 1) ^ (delta >> 31)) & _U32_MAX
    if adjust == 0 and -16 <= delta <= 15:
        return bytes([(ch << 6) | zz])
    if adjust == 1 and -4 <= delta <= 3:
        return bytes([(ch << 6) | (CODE_SHORT_END + zz)])
    if adjust == -1 and -4 <= delta <= 3:
        return bytes([(ch << 6) | (CODE_SHORT_PLUS_END + zz)])
    if dt < DT_ESCAPE - CODE_SHORT_MINUS_END:
        return bytes([(ch << 6) | (CODE_SHORT_MINUS_END + dt)]) + _varint(zz)
    return bytes([(ch << 6) | DT_ESCAPE]) + _varint(dt) + _varint(zz)


def encode_gap_frame(
    key: bytes,
    boot_id: int,
    seq_at: int,
    first_tick: int,
    last_tick: int,
    counts: Iterable[int],
    historical: bool = False,
    version: int = FRAME_VERSION,
) -> bytes:
    """Reference encoder of a gap notice (§4.1); the same body in versions 1 and 2."""
    key = check_device_key(key)
    if version not in (FRAME_VERSION, FRAME_VERSION_1):
        raise ValueError(f"frame version {version} is neither {FRAME_VERSION} nor 1")
    counts = list(counts)
    if len(counts) != CHANNEL_COUNT or min(counts) < 0 or max(counts) > _U32_MAX:
        raise ValueError(f"counts must be {CHANNEL_COUNT} u32, got {counts}")
    if not any(counts):
        raise ValueError("a gap needs at least one missing sample")
    if not 0 <= first_tick <= last_tick <= _U32_MAX:
        raise ValueError(f"ticks {first_tick}..{last_tick} are not an ordered u32 range")
    if not 0 <= boot_id <= 0xFFFF or not 0 <= seq_at <= _U32_MAX:
        raise ValueError("boot_id must be u16 and seq_at u32")
    flags = FRAME_FLAG_GAP | (FRAME_FLAG_HISTORICAL if historical else 0)
    body = _HEADER.pack(version, flags, boot_id, seq_at, first_tick)
    body += _varint(last_tick - first_tick) + b"".join(_varint(c) for c in counts)
    return body + frame_tag(key, body)
