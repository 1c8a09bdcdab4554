"""Write the golden vectors tests/vectors/frames.json and control.json (docs/protocol.md).

Every case is specified here by hand: its meaning (samples, operands) AND, for the small
cases, its record/operand bytes written out literally. A third, deliberately naive
encoder below (`_records`) checks that the hand-written bytes match the meaning, so a
mistake in either is caught here and not copied into both codecs. Only the HMAC tags are
computed. Neither codec is imported.

    .venv/bin/python tests/vectors/make_vectors.py          # rewrite the JSON files
    .venv/bin/python tests/vectors/make_vectors.py --check  # fail if they are stale
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

K1 = bytes(range(32))  # 000102...1f
K2 = hashlib.sha256(b"dermtwin test key 2").digest()


# fmt: off
# (the case tables below are laid out by hand, one case per call)

# --- naive helpers (independent of firmware/ and gateway/) ---------------------------------


def _tag(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()[:8]


def _leb(u: int) -> bytes:
    out = b""
    while True:
        if u < 128:
            return out + bytes([u])
        out += bytes([128 + u % 128])
        u //= 128


def _zigzag(v: int) -> int:
    return 2 * v if v >= 0 else -2 * v - 1


def _records_v1(base_tick: int, samples: list[tuple[int, int, int]]) -> bytes:
    """Version 1 (§4.2): head = channel and dt since the previous record, then the value."""
    out = b""
    last = base_tick
    prev = {0: 0, 1: 0, 2: 0, 3: 0}
    for ch, tick, value in samples:
        dt = tick - last
        out += bytes([ch * 64 + min(dt, 63)])
        if dt >= 63:
            out += _leb(dt)
        out += _leb(_zigzag(value - prev[ch]))
        prev[ch] = value
        last = tick
    return out


def _records_v2(base_tick: int, samples: list[tuple[int, int, int]]) -> bytes:
    """Version 2 (§4), spelled out: a one-byte record when the tick is the channel's
    predicted one (its last tick plus its last step), give or take one, and the value
    change is small; else a head with dt since the previous record, then the value."""
    out = b""
    previous_record_tick = base_tick
    channel_tick = {0: base_tick, 1: base_tick, 2: base_tick, 3: base_tick}
    channel_step = {0: 0, 1: 0, 2: 0, 3: 0}
    prev = {0: 0, 1: 0, 2: 0, 3: 0}
    for ch, tick, value in samples:
        predicted = channel_tick[ch] + channel_step[ch]
        change = value - prev[ch]
        if tick == predicted and -16 <= change <= 15:
            out += bytes([ch * 64 + _zigzag(change)])
        elif tick == predicted + 1 and -4 <= change <= 3:
            out += bytes([ch * 64 + 32 + _zigzag(change)])
        elif tick == predicted - 1 and -4 <= change <= 3:
            out += bytes([ch * 64 + 40 + _zigzag(change)])
        else:
            dt = tick - previous_record_tick
            if dt <= 14:
                out += bytes([ch * 64 + 48 + dt])
            else:
                out += bytes([ch * 64 + 63]) + _leb(dt)
            out += _leb(_zigzag(change))
        channel_step[ch] = tick - channel_tick[ch]
        channel_tick[ch] = tick
        prev[ch] = value
        previous_record_tick = tick
    return out


def _records(base_tick: int, samples: list[tuple[int, int, int]], version: int = 2) -> bytes:
    return (_records_v2 if version == 2 else _records_v1)(base_tick, samples)


def _hex(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", ""))


def _frame(key, boot_id, first_seq, base_tick, records: bytes, *, version=2, flags=0) -> bytes:
    body = struct.pack("<BBHII", version, flags, boot_id, first_seq, base_tick) + records
    return body + _tag(key, body)


# --- frames --------------------------------------------------------------------------------

VALID: list[dict] = []
VALID_V1: list[dict] = []
INVALID: list[dict] = []


def valid(name, description, key, boot_id, first_seq, base_tick, samples, records_hex=None,
          historical=False, max_frame_bytes=244, gaps_before=False, version=2):
    records = _records(base_tick, samples, version)
    if records_hex is not None:
        assert records == _hex(records_hex), (name, records.hex(" "), records_hex)
    flags = (1 if historical else 0) + (4 if gaps_before else 0)
    frame = _frame(key, boot_id, first_seq, base_tick, records, flags=flags, version=version)
    assert len(frame) <= max_frame_bytes, (name, len(frame))
    (VALID if version == 2 else VALID_V1).append({
        "name": name,
        "description": description,
        "key": key.hex(),
        "boot_id": boot_id,
        "first_seq": first_seq,
        "base_tick": base_tick,
        "historical": historical,
        "gaps_before": gaps_before,
        "max_frame_bytes": max_frame_bytes,
        "samples": [[first_seq + i, ch, t, v] for i, (ch, t, v) in enumerate(samples)],
        "frame": frame.hex(),
    })
    return frame


GAPS: list[dict] = []
GAPS_V1: list[dict] = []


def gap_notice(name, description, key, boot_id, seq_at, first_tick, last_tick, counts, body_hex,
        historical=False, version=2):
    body = _leb(last_tick - first_tick) + b"".join(_leb(c) for c in counts)
    assert body == _hex(body_hex), (name, body.hex(" "), body_hex)
    frame = _frame(key, boot_id, seq_at, first_tick, body, flags=2 + (1 if historical else 0),
                   version=version)
    (GAPS if version == 2 else GAPS_V1).append({
        "name": name, "description": description, "key": key.hex(), "boot_id": boot_id,
        "seq_at": seq_at, "first_tick": first_tick, "last_tick": last_tick,
        "counts": list(counts), "historical": historical, "frame": frame.hex(),
    })
    return frame


def invalid(name, description, key, frame: bytes, error: str):
    INVALID.append({
        "name": name, "description": description, "key": key.hex(),
        "frame": frame.hex(), "error": error,
    })


def _frame_v1(*args, **kwargs) -> bytes:
    return _frame(*args, version=1, **kwargs)


def frames_v1() -> None:
    """Version-1 frames (§4.2): what firmware before version 2 sends; decoded, not sent."""

    def valid1(*args, **kwargs):
        return valid(*args, version=1, **kwargs)

    single = valid1(
        "single_sample", "one UV sample (UVI 0.25) at base_tick: the minimal 22-byte frame",
        K1, 1, 0, 100, [(1, 100, 25)], "40 32")
    valid1("single_temperature", "one skin temperature 33.0 degC (raw 4224), 2-byte varint",
          K1, 1, 1, 100, [(0, 100, 4224)], "00 80 42")
    valid1(
        "four_channels_negative_deltas",
        "all four channels, first of each against 0, then negative deltas; dt 50 and dt 0",
        K1, 7, 1000, 5000,
        [(0, 5000, 4224), (1, 5000, 350), (2, 5000, 45000), (3, 5000, 20480),
         (1, 5050, 340), (0, 5100, 4220), (1, 5100, 300), (2, 5100, 44900), (3, 5100, 20479)],
        "00 80 42  40 BC 05  80 90 BF 05  C0 80 C0 02  72 13  32 07  40 4F  80 C7 01  C0 01")
    valid1(
        "dt_escape_and_zero",
        "record 0 is 3 ticks after base_tick; dt 62 (largest in head), 63 and 200 (escape), "
        "dt 0, and one hour (36000 ticks, 3-byte dt_ext)",
        K1, 2, 50, 0,
        [(1, 3, 0), (1, 65, 0), (1, 128, 1), (1, 328, 1), (0, 328, -100), (0, 36328, -100)],
        "43 00  7E 00  7F 3F 02  7F C8 01 00  00 C7 01  3F A0 99 02 00")
    valid1(
        "multibyte_varints",
        "5-byte value varints (hydration 2^31-1 then 0), temperature extremes, a 5-byte dt_ext "
        "(2^32-1 ticks), UV and battery maxima",
        K2, 0xFFFF, 0xFFFFFF00, 0,
        [(2, 0, 2147483647), (2, 0, 0), (0, 0, -32768), (0, 0, 32767),
         (3, 4294967295, 65535), (1, 4294967295, 65535)],
        "80 FE FF FF FF 0F  80 FD FF FF FF 0F  00 FF FF 03  00 FE FF 07  "
        "FF FF FF FF FF 0F FE FF 07  40 FE FF 07")
    valid1("historical", "HISTORICAL flag set (sent because of REPLAY)", K2, 3, 77, 1234,
          [(1, 1234, 120), (1, 1284, 118)], "40 F0 01  72 03", historical=True)
    valid1("seq_max", "first_seq 0xFFFFFFFF with one record: the last seq there is", K1, 9,
          0xFFFFFFFF, 10, [(3, 10, 100)], "C0 C8 01")
    valid1("gaps_before", "GAPS_BEFORE set: gap notices for seq 4000 were sent just before",
          K1, 5, 4000, 7200, [(0, 7200, 4300)], "00 98 43", gaps_before=True)
    valid1("historical_gaps_before", "HISTORICAL + GAPS_BEFORE (a replayed position after a "
          "gap)", K2, 5, 4000, 7200, [(1, 7200, 0), (1, 7250, 5)], "40 00  72 0A",
          historical=True, gaps_before=True)

    gap_notice("gap_uv_only_v1", "gap_uv_only as version-1 firmware sends it (the same body)",
        K1, 5, 4000, 7000, 7600, [0, 12, 0, 0], "D8 04 00 0C 00 00", version=1)

    # A full 244-byte frame at the default rates (UV every 5 s, temperature every 10 s,
    # hydration every 60 s, battery every 300 s), slow-changing values; records are added
    # until the frame is exactly 244 bytes (the last record's value is chosen to fill it).
    base = 864000  # one day after boot
    stream = []
    temp, uv, hyd, bat = 4224, 350, 45000, 20480
    for s in range(0, 10_000, 5):
        t = base + s * 10
        if s % 300 == 0:
            bat -= 3
            stream.append((3, t, bat))
        if s % 60 == 0:
            hyd += (s // 60) % 3 - 1
            stream.append((2, t, hyd))
        if s % 10 == 0:
            temp += (s // 10) % 5 - 2
            stream.append((0, t, temp))
        uv += (s // 5) % 7 - 3
        stream.append((1, t, uv))
    room = 244 - 20
    chosen = []
    for smp in stream:
        if len(_records_v1(base, chosen + [smp])) > room:
            break
        chosen.append(smp)
    gap = room - len(_records_v1(base, chosen))
    # widen the last UV record's delta until the records fill the frame exactly
    ch, t, v = chosen[-1]
    assert ch == 1
    prev_uv = [x[2] for x in chosen[:-1] if x[0] == 1][-1]
    for delta in range(0, 40000):
        trial = chosen[:-1] + [(1, t, prev_uv + delta)]
        if len(_records_v1(base, trial)) == room:
            chosen = trial
            break
    else:
        raise AssertionError(f"cannot fill the gap of {gap}")
    full = valid1(
        "full_244",
        "a full 244-byte frame (MTU 247) at default rates; the last UV value is chosen so the "
        "records fill it exactly; any further sample does not fit",
        K2, 300, 123456, base, chosen)
    assert len(full) == 244, len(full)

    # --- invalid: each has a valid tag unless the tag is the point ---
    invalid("v1_truncated_21", "single_sample minus its last byte (21 bytes)", K1, single[:-1],
            "TRUNCATED")
    invalid("v1_reserved_flag", "flags 0x08 (reserved), tag valid", K1,
            _frame_v1(K1, 1, 0, 100, _hex("40 32"), flags=0x08), "RESERVED_FLAGS")
    invalid("v1_reserved_flag_high", "flags 0x81 (HISTORICAL + reserved bit 7), tag valid", K1,
            _frame_v1(K1, 1, 0, 100, _hex("40 32"), flags=0x81), "RESERVED_FLAGS")
    invalid("v1_bad_tag_flipped", "single_sample with the last tag bit flipped", K1,
            single[:-1] + bytes([single[-1] ^ 0x01]), "BAD_TAG")
    invalid("v1_bad_tag_wrong_key", "single_sample tagged with another device's key", K2, single,
            "BAD_TAG")
    invalid("v1_bad_tag_body_changed", "single_sample with its value byte changed after tagging",
            K1, single[:13] + b"\x34" + single[14:], "BAD_TAG")
    invalid("v1_truncated_record_head_only", "last record is a head with no value", K1,
            _frame_v1(K1, 1, 0, 100, _hex("40 32 40")), "TRUNCATED_RECORD")
    invalid("v1_truncated_record_varint", "last value varint has its continuation bit set at the tag",
            K1, _frame_v1(K1, 1, 0, 100, _hex("40 32 40 80")), "TRUNCATED_RECORD")
    invalid("v1_truncated_record_dt_ext", "dt escape with nothing after the head", K1,
            _frame_v1(K1, 1, 0, 100, _hex("40 32 7F")), "TRUNCATED_RECORD")
    invalid("v1_truncated_record_before_too_long",
            "record 0 has a 6-byte varint and the last record is cut: TRUNCATED_RECORD comes "
            "first in the table", K1,
            _frame_v1(K1, 1, 0, 100, _hex("40 80 80 80 80 80 00 40")), "TRUNCATED_RECORD")
    invalid("v1_varint_too_long_value", "a 6-byte value varint (of 0)", K1,
            _frame_v1(K1, 1, 0, 100, _hex("40 80 80 80 80 80 00")), "VARINT_TOO_LONG")
    invalid("v1_varint_too_long_huge", "a 12-byte value varint (beyond any int64)", K1,
            _frame_v1(K1, 1, 0, 100, _hex("40" + " FF" * 11 + " 7F  40 00")), "VARINT_TOO_LONG")
    invalid("v1_varint_too_long_dt_ext", "a 6-byte dt_ext varint", K1,
            _frame_v1(K1, 1, 0, 100, _hex("7F 80 80 80 80 80 01 00")), "VARINT_TOO_LONG")
    invalid("v1_varint_too_long_before_bad_value",
            "record 0 is out of range (UV -1) and record 1 has a 6-byte varint", K1,
            _frame_v1(K1, 1, 0, 100, _hex("40 01 40 80 80 80 80 80 00")), "VARINT_TOO_LONG")
    invalid("v1_bad_value_temperature", "temperature 32768 (out of int16)", K1,
            _frame_v1(K1, 1, 0, 100, _hex("00 80 80 04")), "BAD_VALUE")
    invalid("v1_bad_value_temperature_delta", "temperature 32767 then +1", K1,
            _frame_v1(K1, 1, 0, 100, _hex("00 FE FF 03 00 02")), "BAD_VALUE")
    invalid("v1_bad_value_uv_negative", "UV index -1", K1,
            _frame_v1(K1, 1, 0, 100, _hex("40 01")), "BAD_VALUE")
    invalid("v1_bad_value_hydration_2p31", "hydration 2^31 (zigzag 2^32, a 5-byte varint)", K1,
            _frame_v1(K1, 1, 0, 100, _hex("80 80 80 80 80 10")), "BAD_VALUE")
    invalid("v1_bad_value_battery", "battery 65536", K1,
            _frame_v1(K1, 1, 0, 100, _hex("C0 80 80 08")), "BAD_VALUE")
    invalid("v1_bad_value_tick_overflow", "base_tick 0xFFFFFFF0 + dt 16: a tick beyond u32", K1,
            _frame_v1(K1, 1, 0, 0xFFFFFFF0, _hex("40 32 50 00")), "BAD_VALUE")
    invalid("v1_seq_overflow", "first_seq 0xFFFFFFFF with two records", K1,
            _frame_v1(K1, 1, 0xFFFFFFFF, 100, _hex("40 32 40 00")), "SEQ_OVERFLOW")
    invalid("v1_seq_overflow_far", "first_seq 0xFFFFFFF0 with 17 records", K1,
            _frame_v1(K1, 1, 0xFFFFFFF0, 100, _hex("40 00" * 17)), "SEQ_OVERFLOW")
    invalid("v1_bad_value_before_seq_overflow", "seq overflows and a value is out of range", K1,
            _frame_v1(K1, 1, 0xFFFFFFFF, 100, _hex("40 32 40 01 40 81 80 08")), "BAD_VALUE")


def frames() -> None:
    """Version-2 frames (§4): what the patch sends."""
    single = valid(
        "single_sample", "one UV sample (UVI 0.25) at base_tick: a long record, dt 0 in the head",
        K1, 1, 0, 100, [(1, 100, 25)], "70 32")
    minimal = valid(
        "minimal_21", "one UV sample of 0 at base_tick: one short record, the minimal 21-byte "
        "frame", K1, 1, 0, 100, [(1, 100, 0)], "40")
    assert len(minimal) == 21
    valid("single_temperature", "one skin temperature 33.0 degC (raw 4224), 2-byte varint",
          K1, 1, 1, 100, [(0, 100, 4224)], "30 80 42")
    valid(
        "stride_and_jitter",
        "UV every 50 ticks: the stride is learnt from the channel's last step; +1 and -1 "
        "tick around it are still one byte, a step of 49 is a long record",
        K1, 4, 500, 100,
        [(1, 100, 0), (1, 150, 0), (1, 200, 0), (1, 251, 1), (1, 300, 1), (1, 350, 1),
         (1, 400, 3), (1, 449, 0)],
        "40  7F 32 00  40  62  7F 31 00  60  44  6D")
    valid(
        "short_delta_edges",
        "UV every 10 ticks: deltas +15 and -16 at the stride are one byte, +16 is not; at "
        "+1/-1 tick, +3 and -4 are one byte, +4 is not",
        K2, 4, 600, 0,
        [(1, 0, 100), (1, 10, 100), (1, 20, 115), (1, 30, 99), (1, 40, 115), (1, 51, 118),
         (1, 61, 114), (1, 72, 118), (1, 82, 118)],
        "70 C8 01  7A 00  5E  5F  7A 20  66  6F  7B 08  68")
    valid(
        "four_channels_negative_deltas",
        "all four channels, first of each against 0, then negative deltas; dt 50 and dt 0",
        K1, 7, 1000, 5000,
        [(0, 5000, 4224), (1, 5000, 350), (2, 5000, 45000), (3, 5000, 20480),
         (1, 5050, 340), (0, 5100, 4220), (1, 5100, 300), (2, 5100, 44900), (3, 5100, 20479)],
        "30 80 42  70 BC 05  B0 90 BF 05  F0 80 C0 02  7F 32 13  3F 32 07  70 4F  B0 C7 01  "
        "F0 01")
    valid(
        "dt_escape_and_zero",
        "record 0 is 3 ticks after base_tick; dt 62, +1 around the stride, 200 (escape), dt 0, "
        "and one hour (36000 ticks, 3-byte dt_ext); negative temperatures",
        K1, 2, 50, 0,
        [(1, 3, 0), (1, 65, 0), (1, 128, 1), (1, 328, 1), (0, 328, -100), (0, 36328, -100)],
        "73 00  7F 3E 00  62  7F C8 01 00  30 C7 01  3F A0 99 02 00")
    valid("dt_boundaries", "dt 14, the largest in a long head, and 15, the smallest dt_ext",
          K1, 2, 60, 0, [(1, 14, 0), (0, 29, 0)], "7E 00  3F 0F 00")
    valid(
        "multibyte_varints",
        "5-byte value varints (hydration 2^31-1 then 0), temperature extremes, a 5-byte dt_ext "
        "(2^32-1 ticks), UV and battery maxima",
        K2, 0xFFFF, 0xFFFFFF00, 0,
        [(2, 0, 2147483647), (2, 0, 0), (0, 0, -32768), (0, 0, 32767),
         (3, 4294967295, 65535), (1, 4294967295, 65535)],
        "B0 FE FF FF FF 0F  B0 FD FF FF FF 0F  30 FF FF 03  30 FE FF 07  "
        "FF FF FF FF FF 0F FE FF 07  70 FE FF 07")
    valid("historical", "HISTORICAL flag set (sent because of REPLAY)", K2, 3, 77, 1234,
          [(1, 1234, 120), (1, 1284, 118)], "70 F0 01  7F 32 03", historical=True)
    valid("seq_max", "first_seq 0xFFFFFFFF with one record: the last seq there is", K1, 9,
          0xFFFFFFFF, 10, [(3, 10, 100)], "F0 C8 01")
    valid("gaps_before", "GAPS_BEFORE set: gap notices for seq 4000 were sent just before",
          K1, 5, 4000, 7200, [(0, 7200, 4300)], "30 98 43", gaps_before=True)
    valid("historical_gaps_before", "HISTORICAL + GAPS_BEFORE (a replayed position after a "
          "gap)", K2, 5, 4000, 7200, [(1, 7200, 0), (1, 7250, 5)], "40  7F 32 0A",
          historical=True, gaps_before=True)

    # --- gap notices (§4.1) ---
    gap_notice("gap_uv_only", "12 UV samples not logged over one minute (ticks 7000..7600), before "
        "seq 4000", K1, 5, 4000, 7000, 7600, [0, 12, 0, 0], "D8 04 00 0C 00 00")
    gap_hour = gap_notice(
        "gap_all_channels", "one hour at reduced rate: 360 temperature, 720 UV, 60 hydration, "
        "12 battery samples not logged", K2, 0xBEEF, 123456, 36000, 72000,
        [360, 720, 60, 12], "A0 99 02  E8 02  D0 05  3C  0C")
    gap_notice("gap_historical_single_tick", "HISTORICAL (replayed); one battery sample at one tick",
        K1, 1, 0, 99, 99, [0, 0, 0, 1], "00 00 00 00 01", historical=True)
    gap_notice("gap_max", "largest values: 5-byte varints, last tick 0xFFFFFFFF, seq_at 0xFFFFFFFF",
        K1, 0xFFFF, 0xFFFFFFFF, 0, 0xFFFFFFFF, [0xFFFFFFFF] * 4,
        "FF FF FF FF 0F" * 5)

    # A full 244-byte frame at the default rates while UV is above 0.5 (UV every second,
    # temperature every 10 s, hydration every 60 s, battery every 300 s), slow-changing
    # values and a sampling loop that runs a tick late now and then; records are added until
    # the frame is exactly 244 bytes (the last record's value is chosen to fill it).
    base = 864000  # one day after boot
    stream = []
    temp, uv, hyd, bat = 4224, 650, 12500, 20480
    late = 0
    for s in range(0, 2000):
        late += 1 if s % 37 == 36 else 0   # the loop's lateness piles up: a tick now and then
        t = base + s * 10 + late
        if s % 300 == 0:
            bat -= 7
            stream.append((3, t, bat))
        if s % 60 == 0:
            hyd += (s // 60) % 5 - 2
            stream.append((2, t, hyd))
        if s % 10 == 0:
            temp += (s // 10) % 3 - 1
            stream.append((0, t, temp))
        uv += (s % 7) // 3 - 1
        stream.append((1, t, uv))
    room = 244 - 20
    chosen = []
    for smp in stream:
        if len(_records(base, chosen + [smp])) > room:
            break
        chosen.append(smp)
    gap = room - len(_records(base, chosen))
    # widen the last UV record's delta until the records fill the frame exactly
    ch, t, v = chosen[-1]
    assert ch == 1
    prev_uv = [x[2] for x in chosen[:-1] if x[0] == 1][-1]
    for delta in range(0, 40000):
        trial = chosen[:-1] + [(1, t, prev_uv + delta)]
        if len(_records(base, trial)) == room:
            chosen = trial
            break
    else:
        raise AssertionError(f"cannot fill the gap of {gap}")
    full = valid(
        "full_244",
        "a full 244-byte frame (MTU 247) at default rates with UV at 1 s; the last UV value is "
        "chosen so the records fill it exactly; any further sample does not fit",
        K2, 300, 123456, base, chosen)
    assert len(full) == 244 and len(chosen) > 180, (len(full), len(chosen))

    # --- invalid: each has a valid tag unless the tag is the point ---
    invalid("empty", "zero bytes", K1, b"", "TRUNCATED")
    invalid("bad_version_3", "version 3, tag valid", K1,
            _frame(K1, 1, 0, 100, _hex("40 32"), version=3), "BAD_VERSION")
    invalid("bad_version_0", "version 0, tag valid", K1,
            _frame(K1, 1, 0, 100, _hex("40 32"), version=0), "BAD_VERSION")
    invalid("bad_version_before_tag", "version 3 and a wrong tag: version is checked first", K1,
            _frame(K2, 1, 0, 100, _hex("40 32"), version=3), "BAD_VERSION")
    invalid("gap_trailing_byte", "gap notice with a byte after its five varints", K1,
            _frame(K1, 1, 10, 100, _hex("05 01 00 00 00 00"), flags=2), "BAD_GAP")
    invalid("gap_zero_counts", "gap notice whose four counts are all 0", K1,
            _frame(K1, 1, 10, 100, _hex("05 00 00 00 00"), flags=2), "BAD_GAP")
    invalid("gap_tick_overflow", "gap notice: first tick 0xFFFFFFF0 + span 16", K1,
            _frame(K1, 1, 10, 0xFFFFFFF0, _hex("10 01 00 00 00"), flags=2), "BAD_GAP")
    invalid("gap_count_overflow", "gap notice: a count of 2^32", K1,
            _frame(K1, 1, 10, 100, _hex("00 80 80 80 80 10 00 00 00"), flags=2), "BAD_GAP")
    invalid("gap_truncated", "gap notice with four varints", K1,
            _frame(K1, 1, 10, 100, _hex("05 01 00 00"), flags=2), "TRUNCATED_RECORD")
    invalid("gap_varint_too_long", "gap notice with a 6-byte span varint", K1,
            _frame(K1, 1, 10, 100, _hex("80 80 80 80 80 00 01 00 00 00"), flags=2),
            "VARINT_TOO_LONG")
    invalid("gap_with_gaps_before", "GAP and GAPS_BEFORE together (flags 0x06)", K1,
            _frame(K1, 1, 10, 100, _hex("05 01 00 00 00"), flags=6), "RESERVED_FLAGS")
    invalid("gap_bad_tag", "gap_all_channels with its last count changed after tagging", K2,
            gap_hour[:-9] + b"\x0d" + gap_hour[-8:], "BAD_TAG")
    invalid("truncated_20", "minimal_21 minus its last byte (20 bytes)", K1, minimal[:-1],
            "TRUNCATED")
    invalid("reserved_flag", "flags 0x08 (reserved), tag valid", K1,
            _frame(K1, 1, 0, 100, _hex("40"), flags=0x08), "RESERVED_FLAGS")
    invalid("bad_tag_flipped", "single_sample with the last tag bit flipped", K1,
            single[:-1] + bytes([single[-1] ^ 0x01]), "BAD_TAG")
    invalid("bad_tag_body_changed", "minimal_21 with its record changed after tagging", K1,
            minimal[:12] + b"\x41" + minimal[13:], "BAD_TAG")
    invalid("truncated_record_long_head", "last record is a long head with no value", K1,
            _frame(K1, 1, 0, 100, _hex("40 70")), "TRUNCATED_RECORD")
    invalid("truncated_record_varint", "last value varint has its continuation bit set at the tag",
            K1, _frame(K1, 1, 0, 100, _hex("40 70 80")), "TRUNCATED_RECORD")
    invalid("truncated_record_dt_ext", "dt escape with nothing after the head", K1,
            _frame(K1, 1, 0, 100, _hex("40 7F")), "TRUNCATED_RECORD")
    invalid("truncated_record_after_dt_ext", "dt escape and dt_ext, then no value", K1,
            _frame(K1, 1, 0, 100, _hex("40 7F 32")), "TRUNCATED_RECORD")
    invalid("truncated_record_before_too_long",
            "record 0 has a 6-byte varint and the last record is cut: TRUNCATED_RECORD comes "
            "first in the table", K1,
            _frame(K1, 1, 0, 100, _hex("70 80 80 80 80 80 00 70")), "TRUNCATED_RECORD")
    invalid("varint_too_long_value", "a 6-byte value varint (of 0)", K1,
            _frame(K1, 1, 0, 100, _hex("70 80 80 80 80 80 00")), "VARINT_TOO_LONG")
    invalid("varint_too_long_dt_ext", "a 6-byte dt_ext varint", K1,
            _frame(K1, 1, 0, 100, _hex("7F 80 80 80 80 80 01 00")), "VARINT_TOO_LONG")
    invalid("varint_too_long_huge", "a 12-byte value varint (2^77 and more: beyond any int64)",
            K1, _frame(K1, 1, 0, 100, _hex("70" + " FF" * 11 + " 7F  40")), "VARINT_TOO_LONG")
    invalid("varint_too_long_huge_dt_ext", "a 12-byte dt_ext varint", K1,
            _frame(K1, 1, 0, 100, _hex("7F" + " FF" * 11 + " 7F 00  40")), "VARINT_TOO_LONG")
    invalid("varint_too_long_before_bad_value",
            "record 0 is out of range (UV -1, a short record) and record 1 has a 6-byte varint",
            K1, _frame(K1, 1, 0, 100, _hex("41 70 80 80 80 80 80 00")), "VARINT_TOO_LONG")
    invalid("bad_value_uv_negative", "UV index -1 in a short record", K1,
            _frame(K1, 1, 0, 100, _hex("41")), "BAD_VALUE")
    invalid("bad_value_temperature", "temperature 32768 (out of int16)", K1,
            _frame(K1, 1, 0, 100, _hex("30 80 80 04")), "BAD_VALUE")
    invalid("bad_value_temperature_short", "temperature 32767 then a short record of +1", K1,
            _frame(K1, 1, 0, 100, _hex("30 FE FF 03  02")), "BAD_VALUE")
    invalid("bad_value_hydration_2p31", "hydration 2^31 (zigzag 2^32, a 5-byte varint)", K1,
            _frame(K1, 1, 0, 100, _hex("B0 80 80 80 80 10")), "BAD_VALUE")
    invalid("bad_value_battery", "battery 65536", K1,
            _frame(K1, 1, 0, 100, _hex("F0 80 80 08")), "BAD_VALUE")
    invalid("bad_value_tick_overflow", "base_tick 0xFFFFFFF0 + dt 16: a tick beyond u32", K1,
            _frame(K1, 1, 0, 0xFFFFFFF0, _hex("7F 10 00")), "BAD_VALUE")
    invalid("bad_value_tick_overflow_stride",
            "base_tick 0xFFFFFFF0, UV at dt 14, then a short record one stride (14) later: "
            "a tick beyond u32", K1,
            _frame(K1, 1, 0, 0xFFFFFFF0, _hex("7E 00  40")), "BAD_VALUE")
    invalid("bad_value_tick_backwards",
            "temperature at base_tick, UV 3 ticks later, then temperature one tick before its "
            "stride (tick 99): ticks must not decrease", K1,
            _frame(K1, 1, 0, 100, _hex("30 00  73 00  28")), "BAD_VALUE")
    invalid("bad_value_tick_before_base", "record 0 one tick before base_tick", K1,
            _frame(K1, 1, 0, 100, _hex("28")), "BAD_VALUE")
    invalid("seq_overflow", "first_seq 0xFFFFFFFF with two records", K1,
            _frame(K1, 1, 0xFFFFFFFF, 100, _hex("40 40")), "SEQ_OVERFLOW")
    invalid("seq_overflow_far", "first_seq 0xFFFFFFF0 with 17 records", K1,
            _frame(K1, 1, 0xFFFFFFF0, 100, _hex("40" * 17)), "SEQ_OVERFLOW")
    invalid("bad_value_before_seq_overflow", "seq overflows and a value is out of range", K1,
            _frame(K1, 1, 0xFFFFFFFF, 100, _hex("40 41")), "BAD_VALUE")


# --- control -------------------------------------------------------------------------------

CP_KEY = K1
CP_BOOT = 0x1234          # boot_id: the short boot number in frames and Status
CP_NONCE = 0x9E3779B9     # boot_nonce: above 2**30, a long int on a MicroPython board
CP_COUNTER = 41           # the patch's next_counter in most cases


def _request(opcode: int, operands: bytes, *, counter=CP_COUNTER, key=CP_KEY,
             nonce=CP_NONCE) -> bytes:
    body = bytes([opcode]) + struct.pack("<I", counter) + operands
    return body + _tag(key, b"dtcp" + struct.pack("<I", nonce) + body)


def _bound(request: bytes) -> bytes:
    """The request tag a response is bound to (8 zero bytes for a write under 13 bytes)."""
    return request[-8:] if len(request) >= 13 else bytes(8)


def _response(request: bytes, opcode: int, status: int, payload: bytes = b"", *,
              key=CP_KEY, nonce=CP_NONCE) -> bytes:
    body = bytes([0x80, opcode, status]) + payload
    if key is None:   # an unprovisioned patch: it has no key to tag with
        return body + bytes(8)
    return body + _tag(key, b"dtcr" + struct.pack("<I", nonce) + _bound(request) + body)


def control() -> dict:
    requests = []

    def req(name, description, data: bytes, opcode, status, operand, operands_hex=None, *,
            next_counter=CP_COUNTER, next_counter_after=None, key=CP_KEY):
        if operands_hex is not None:
            assert data[5:-8] == _hex(operands_hex), (name, data[5:-8].hex(" "))
        if next_counter_after is None:   # a fresh authenticated request uses up its counter
            fresh = status not in (2, 4, 6, 7) or (status == 2 and len(data) >= 13
                                                   and _request_ok(data))
            next_counter_after = struct.unpack_from("<I", data, 1)[0] + 1 if fresh else next_counter
        requests.append({
            "name": name, "description": description, "request": data.hex(),
            "next_counter": next_counter, "opcode": opcode, "status": status,
            "operand": operand, "next_counter_after": next_counter_after,
            # what the patch indicates when status is not SUCCESS (SUCCESS payloads depend
            # on the patch's state; see "responses")
            "response": None if status == 0 else _response(data, opcode, status, key=key).hex(),
        })

    def _request_ok(data: bytes) -> bool:
        body = data[:-8]
        return _tag(CP_KEY, b"dtcp" + struct.pack("<I", CP_NONCE) + body) == data[-8:]

    utc = 1764201600000  # 2025-11-27T00:00:00Z
    req("set_time", "SET_TIME utc_ms 1764201600000 (2025-11-27T00:00Z), counter 41",
        _request(1, struct.pack("<Q", utc)), 1, 0, utc, "00 14 9C C2 9A 01 00 00")
    ack = _request(2, struct.pack("<I", 123456))
    assert ack[:5] == _hex("02 29000000")   # opcode, counter 41
    req("ack", "ACK seq 123456", ack, 2, 0, 123456, "40 E2 01 00")
    req("replay", "REPLAY from_seq 0", _request(3, b"\0\0\0\0"), 3, 0, 0, "00 00 00 00")
    req("replay_max", "REPLAY from_seq 0xFFFFFFFF", _request(3, b"\xff" * 4), 3, 0, 0xFFFFFFFF)
    req("set_config", "SET_CONFIG key 2 (UV period) = 5 s",
        _request(4, struct.pack("<BI", 2, 5)), 4, 0, [2, 5], "02 05 00 00 00")
    req("set_config_max", "SET_CONFIG key 6 (flush interval) = 65535 s",
        _request(4, struct.pack("<BI", 6, 65535)), 4, 0, [6, 65535], "06 FF FF 00 00")
    req("get_status", "GET_STATUS", _request(5, b""), 5, 0, None, "")
    req("identify", "IDENTIFY 3 s", _request(6, b"\x03"), 6, 0, 3, "03")
    req("counter_ahead", "ACK with counter 1000 while the patch expects 41: accepted, the "
        "patch then expects 1001", _request(2, struct.pack("<I", 7), counter=1000), 2, 0, 7)
    req("counter_max", "GET_STATUS with counter 0xFFFFFFFE, the last one a boot accepts",
        _request(5, b"", counter=0xFFFFFFFE), 5, 0, None, next_counter=0xFFFFFFFE)

    # --- refused: replays, tags ---
    req("replayed", "the ACK above written again after it was run (the patch expects 42)",
        ack, 2, 7, None, next_counter=42)
    req("stale_counter", "ACK with counter 40 while the patch expects 41",
        _request(2, struct.pack("<I", 123456), counter=40), 2, 7, None)
    req("counter_spent", "GET_STATUS with counter 0xFFFFFFFF: never accepted",
        _request(5, b"", counter=0xFFFFFFFF), 5, 7, None)
    req("bad_tag", "ACK with the last tag bit flipped", ack[:-1] + bytes([ack[-1] ^ 1]),
        2, 6, None)
    req("wrong_boot_nonce", "ACK tagged for another boot's nonce (captured in another boot)",
        _request(2, struct.pack("<I", 123456), nonce=CP_NONCE ^ 1), 2, 6, None)
    req("wrong_key", "ACK tagged with another key", _request(2, b"\0\0\0\0", key=K2), 2, 6,
        None)
    req("bad_tag_stale_counter", "a stale counter and a bad tag: the tag is checked first",
        _request(2, b"\0\0\0\0", counter=3, key=K2), 2, 6, None)
    req("bad_tag_unknown_opcode", "unknown opcode 0x07 and a bad tag: the tag is checked first",
        _request(7, b"", key=K2), 7, 6, None)

    # --- authenticated and fresh, but wrong: the counter is used up all the same ---
    req("unknown_opcode", "opcode 0x07, tag valid", _request(7, b""), 7, 1, None)
    req("opcode_zero", "opcode 0x00, tag valid", _request(0, b""), 0, 1, None)
    req("response_opcode", "opcode 0x80 written to the Control Point, tag valid",
        _request(0x80, b"\0\0\0"), 0x80, 1, None)
    req("ack_short", "ACK with a 3-byte operand, tag valid", _request(2, b"\1\2\3"), 2, 2, None)
    req("set_time_long", "SET_TIME with a 9-byte operand, tag valid", _request(1, bytes(9)),
        1, 2, None)
    req("get_status_operand", "GET_STATUS with a 1-byte operand, tag valid",
        _request(5, b"\0"), 5, 2, None)
    req("identify_empty", "IDENTIFY with no operand, tag valid", _request(6, b""), 6, 2, None)
    req("set_config_unknown_key", "SET_CONFIG key 7, tag valid",
        _request(4, struct.pack("<BI", 7, 10)), 4, 2, None)
    req("set_config_key_zero", "SET_CONFIG key 0, tag valid",
        _request(4, struct.pack("<BI", 0, 10)), 4, 2, None)
    req("set_config_zero", "SET_CONFIG key 1 = 0 s, tag valid",
        _request(4, struct.pack("<BI", 1, 0)), 4, 2, None)
    req("set_config_too_big", "SET_CONFIG key 1 = 65536 s (not a u16 period), tag valid",
        _request(4, struct.pack("<BI", 1, 65536)), 4, 2, None)

    # --- too short to be a request: answered, bound to 8 zero bytes ---
    req("too_short", "12 bytes: no room for opcode + counter + tag", ack[:12], 2, 2, None)
    req("old_format", "a version-1 request (opcode, operands, tag: no counter), 9 bytes",
        ack[:1] + ack[-8:], 2, 2, None)
    req("tag_only_length", "8 bytes: a tag without its opcode", ack[-8:], ack[-8], 2, None)
    req("empty", "empty write", b"", 0, 2, None)
    req("not_provisioned", "the ACK above to a patch without a key: answered with a zero tag",
        ack, 2, 4, None, key=None)

    status_rec = _hex("02 010203 3412 E8030000 D2040000 407E0500 1200 0A00 0500 0100 3C00 2C01 57"
                      " 3C00 B979379E 2A000000")
    assert status_rec == struct.pack("<BBBBHIIIHHHHHHBHII", 2, 1, 2, 3, 0x1234, 1000, 1234,
                                     360000, 0x12, 10, 5, 1, 60, 300, 87, 60, CP_NONCE, 42)
    status = {
        "name": "status", "record": status_rec.hex(),
        "fw": [1, 2, 3], "boot_id": CP_BOOT, "oldest_seq": 1000, "next_seq": 1234,
        "tick": 360000, "error_flags": 0x12, "periods": [10, 5, 1, 60, 300, 60], "battery_pct": 87,
        "boot_nonce": CP_NONCE, "next_counter": 42,
        "description": "fw 1.2.3, 234 unacked samples, clock not set + UV sensor fault, "
                       "default periods with UV fast 1 s, battery 87 %, flush interval 60 s "
                       "('periods' holds config keys 1..6 in order); the GET_STATUS "
                       "request (counter 41) was the last one run",
    }

    responses = []

    def resp(name, description, request: bytes, hex_, opcode, status_, payload_hex, result=None):
        data = _hex(hex_)
        assert data[:3] == bytes([0x80, opcode, status_]) and data[3:] == _hex(payload_hex)
        full = _response(request, opcode, status_, data[3:])
        responses.append({
            "name": name, "description": description, "request": request.hex(),
            "response": full.hex(), "opcode": opcode, "status": status_,
            "payload": _hex(payload_hex).hex(), "result": result,
        })
        return full

    get_status = _request(5, b"")
    replay_req = _request(3, struct.pack("<I", 100))
    set_time_req = _request(1, struct.pack("<Q", utc))
    set_time_ok = resp("set_time_ok", "SET_TIME success: boot 0x1234, tick 360000", set_time_req,
                       "80 01 00 3412 407E0500", 1, 0, "3412 407E0500",
                       {"boot_id": 0x1234, "tick": 360000})
    ack_ok = resp("ack_ok", "ACK success", ack, "80 02 00", 2, 0, "")
    replay_ok = resp("replay_ok", "REPLAY from 100 answered: oldest 100, next 1234", replay_req,
                     "80 03 00 64000000 D2040000", 3, 0, "64000000 D2040000",
                     {"oldest_seq": 100, "next_seq": 1234})
    resp("set_config_invalid", "SET_CONFIG answered INVALID_OPERAND",
         _request(4, struct.pack("<BI", 7, 10)), "80 04 02", 4, 2, "")
    resp("get_status_ok", "GET_STATUS success with the status record", get_status,
         "80 05 00 " + status_rec.hex(), 5, 0, status_rec.hex())
    resp("identify_ok", "IDENTIFY success", _request(6, b"\x03"), "80 06 00", 6, 0, "")
    resp("ack_stale", "the ACK replayed, answered STALE_REQUEST", ack, "80 02 07", 2, 7, "")
    resp("busy", "REPLAY answered BUSY", replay_req, "80 03 05", 3, 5, "")

    def rebind(full: bytes, body: bytes) -> bytes:
        """body tagged as the answer to the request `full` answered."""
        req_of = {r["response"]: bytes.fromhex(r["request"]) for r in responses}[full.hex()]
        return body + _tag(CP_KEY, b"dtcr" + struct.pack("<I", CP_NONCE) + req_of[-8:] + body)

    bad_responses = []

    def bad(name, why, request: bytes, data: bytes, error: str):
        assert error in ("tag", "malformed")
        bad_responses.append({"name": name, "why": why, "request": request.hex(),
                              "response": data.hex(), "error": error})

    bad("replay_oldest_rewritten", "replay_ok with oldest_seq rewritten 100 -> 1000 in flight "
        "(issue 11: the gateway skipped 900 seqs and acknowledged them)", replay_req,
        replay_ok[:3] + struct.pack("<I", 1000) + replay_ok[7:], "tag")
    bad("untagged", "a version-1 response: 0x80, opcode, status, no tag", ack, _hex("80 02 00"),
        "tag")
    bad("untagged_with_payload", "replay_ok without its tag (11 bytes: the payload is read as "
        "the tag)", replay_req, replay_ok[:-8], "tag")
    bad("other_request", "ack_ok answering an ACK with counter 42 instead of 41",
        _request(2, struct.pack("<I", 123456), counter=42), ack_ok, "tag")
    bad("other_boot", "ack_ok tagged under another boot nonce", ack,
        _response(ack, 2, 0, nonce=CP_NONCE ^ 1), "tag")
    bad("other_key", "ack_ok tagged with another key", ack, _response(ack, 2, 0, key=K2), "tag")
    bad("tag_flipped", "set_time_ok with the last tag bit flipped", set_time_req,
        set_time_ok[:-1] + bytes([set_time_ok[-1] ^ 1]), "tag")
    bad("zero_tag", "NOT_PROVISIONED with the zero tag of a patch without a key", ack,
        _response(ack, 2, 4, key=None), "tag")
    bad("short", "fewer than 11 bytes", ack, _hex("8002"), "tag")
    # tagged correctly, malformed all the same
    bad("not_response", "first byte 0x01, tag valid", ack, rebind(ack_ok, _hex("01 02 00")),
        "malformed")
    bad("unknown_status", "status 0x08 is undefined, tag valid", ack,
        rebind(ack_ok, _hex("80 02 08")), "malformed")
    bad("set_time_short_payload", "payload 2 != 6, tag valid", set_time_req,
        rebind(set_time_ok, _hex("80 01 00 3412")), "malformed")
    bad("ack_with_payload", "ACK success has no payload, tag valid", ack,
        rebind(ack_ok, _hex("80 02 00 00")), "malformed")
    bad("error_with_payload", "BUSY carries no payload, tag valid", replay_req,
        rebind(replay_ok, _hex("80 03 05 01")), "malformed")
    bad("other_opcode", "a REPLAY success tagged as the answer to an ACK", ack,
        rebind(ack_ok, replay_ok[:-8]), "malformed")

    manufacturer = [
        {"name": "provisioned", "fw": [1, 2, 3], "battery_pct": 87, "unacked_samples": 234,
         "provisioned": True, "log_full": False, "data": "01020357ea0001"},
        {"name": "saturated_log_full", "fw": [0, 9, 255], "battery_pct": 5,
         "unacked_samples": 70000, "provisioned": True, "log_full": True,
         "data": "0009ff05ffff03", "unacked_advertised": 65535},
        {"name": "unprovisioned", "fw": [1, 0, 0], "battery_pct": 100, "unacked_samples": 0,
         "provisioned": False, "log_full": False, "data": "01000064000000"},
    ]
    names = [
        {"device_id": "3f2a0c11d4e59b07", "name": "DT-9B07"},
        {"device_id": "0000000000000000", "name": "DT-0000"},
        {"device_id": "ffffffffffffabcd", "name": "DT-ABCD"},
    ]
    return {
        "description": "Control Point, Status and advertising vectors (docs/protocol.md §2, §5, §6). "
                       "Requests are tagged with 'key' for 'boot_nonce'; each request case gives "
                       "the patch's next_counter before it, what the patch answers (status, "
                       "and the whole tagged response unless SUCCESS), the operand it decodes "
                       "on SUCCESS and its next_counter after. Responses: the request each "
                       "answers and the tagged indication. Bad responses: 'tag' = refused as "
                       "unauthenticated, 'malformed' = tag valid, content not.",
        "key": CP_KEY.hex(),
        "boot_nonce": CP_NONCE,
        "boot_id": CP_BOOT,
        "requests": requests,
        "responses": responses,
        "bad_responses": bad_responses,
        "status": status,
        "manufacturer_data": manufacturer,
        "device_names": names,
    }


def advertising() -> dict:
    """protocol.md §2: the advertising data and scan response bytes, written out literally
    and checked against a naive AD-structure builder."""
    stream_le = bytes.fromhex("d7000001-5345-4c50-834d-247ec90e2b93".replace("-", ""))[::-1]
    resp = _hex("11 07") + stream_le

    def naive(name: str, fw, battery, unacked, provisioned, log_full) -> bytes:
        def ad(ad_type: int, value: bytes) -> bytes:
            return bytes([len(value) + 1, ad_type]) + value
        flags = (1 if provisioned else 0) | (2 if log_full else 0)
        mfr = struct.pack("<HBBBBHB", 0xFFFF, *fw, battery, min(unacked, 0xFFFF), flags)
        return ad(0x01, b"\x06") + ad(0x09, name.encode()) + ad(0xFF, mfr)

    cases = []

    def case(name, description, device_id, fw, battery, unacked, provisioned, log_full, adv_hex):
        adv = _hex(adv_hex)
        advertised = "DT-" + device_id[-4:].upper()
        assert adv == naive(advertised, fw, battery, unacked, provisioned, log_full), name
        assert len(adv) <= 31 and len(resp) <= 31
        cases.append({
            "name": name, "description": description, "device_id": device_id, "fw": fw,
            "battery_pct": battery, "unacked_samples": unacked, "provisioned": provisioned,
            "log_full": log_full, "adv_data": adv.hex(), "scan_response": resp.hex()})

    case("provisioned", "fw 0.1.0, battery 87 %, 234 samples unacknowledged",
         "3f2a0c11d4e59b07", [0, 1, 0], 87, 234, True, False,
         "02 01 06  08 09 44542D39423037  0A FF FFFF 000100 57 EA00 01")
    case("saturated_log_full", "70000 unacknowledged saturate at 65535; log full",
         "ffffffffffffabcd", [1, 2, 3], 5, 70000, True, True,
         "02 01 06  08 09 44542D41424344  0A FF FFFF 010203 05 FFFF 03")
    case("unprovisioned", "fresh from the factory: no key, nothing logged",
         "0000000000000000", [0, 1, 0], 100, 0, False, False,
         "02 01 06  08 09 44542D30303030  0A FF FFFF 000100 64 0000 00")
    return {
        "description": "Advertising data and scan response (docs/protocol.md §2): Flags, "
                       "Complete Local Name and Manufacturer Specific Data in the "
                       "advertisement (a passive scanner sees them); the 128-bit Stream "
                       "Service UUID in the scan response.",
        "cases": cases,
    }


# fmt: on


def build() -> dict[str, str]:
    for cases in (VALID, VALID_V1, INVALID, GAPS, GAPS_V1):
        cases.clear()
    frames_v1()
    frames()
    frames_doc = {
        "description": "Sample frame vectors (docs/protocol.md §4). Valid: encoder inputs "
        "(start + samples as [seq, channel, tick, value]) and the exact version-2 frame. "
        "Gaps: gap notices (§4.1), their fields and the exact frame. "
        "valid_v1 and gaps_v1: the same for version-1 frames (§4.2, older firmware), which "
        "the gateway still decodes. "
        "Invalid: the frame and the decoder's error code under 'key'.",
        "valid": VALID,
        "gaps": GAPS,
        "valid_v1": VALID_V1,
        "gaps_v1": GAPS_V1,
        "invalid": INVALID,
    }
    return {"frames.json": _dump(frames_doc) + "\n", "control.json": _dump(control()) + "\n",
            "advertising.json": _dump(advertising()) + "\n"}


def _dump(obj, level: int = 0) -> str:
    """Stable pretty JSON with lists of scalars (a sample, a version) kept on one line."""
    pad = "  " * (level + 1)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {_dump(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * level + "}"
    if isinstance(obj, list) and any(isinstance(x, dict | list) for x in obj):
        items = [pad + _dump(x, level + 1) for x in obj]
        return "[\n" + ",\n".join(items) + "\n" + "  " * level + "]"
    return json.dumps(obj, ensure_ascii=False)


def main(argv: list[str]) -> int:
    outputs = build()
    if "--check" in argv:
        stale = [n for n, text in outputs.items() if (HERE / n).read_text() != text]
        if stale:
            print("stale:", ", ".join(stale), "- run tests/vectors/make_vectors.py")
            return 1
        return 0
    for name, text in outputs.items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
