"""Protocol codecs (docs/protocol.md) under CPython, against the golden vectors.

Gateway decoder/encoder (gateway/protocol) and the firmware encoder/control codec
(firmware/, run here on CPython through its const() fallback) are checked against
tests/vectors/*.json and against each other. The same firmware is run under the real
MicroPython VM in test_codec_micropython.py.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import firmware.protocol_ids as fw_ids
from firmware import control_codec as fw_cp
from firmware.frame_encoder import FrameEncoder, Hmac8
from gateway.protocol import constants as gw
from gateway.protocol import control as cp
from gateway.protocol.frames import (
    DecodedFrame,
    DecodedGap,
    FrameError,
    FrameErrorCode,
    decode_frame,
    encode_frame,
    encode_gap_frame,
)

VECTORS = Path(__file__).resolve().parent / "vectors"
FRAMES = json.loads((VECTORS / "frames.json").read_text())
CONTROL = json.loads((VECTORS / "control.json").read_text())
VALID = FRAMES["valid"]  # version 2: what the patch sends
VALID_V1 = FRAMES["valid_v1"]  # version 1: older firmware, still decoded
INVALID = FRAMES["invalid"]
GAPS = FRAMES["gaps"]
GAPS_V1 = FRAMES["gaps_v1"]
VERSIONED = [(2, c) for c in VALID] + [(1, c) for c in VALID_V1]
CP_KEY = bytes.fromhex(CONTROL["key"])
CP_BOOT = CONTROL["boot_id"]
CP_NONCE = CONTROL["boot_nonce"]


def _ids(cases):
    return [c["name"] for c in cases]


def test_vectors_are_fresh():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, text in mod.build().items():
        assert (VECTORS / name).read_text() == text, f"{name} is stale: run make_vectors.py"


# --- gateway decoder -----------------------------------------------------------------------


def _versioned_ids(cases):
    return [f"v{v}-{c['name']}" for v, c in cases]


@pytest.mark.parametrize("version, case", VERSIONED, ids=_versioned_ids(VERSIONED))
def test_decode_valid_vector(version, case):
    frame = decode_frame(bytes.fromhex(case["frame"]), bytes.fromhex(case["key"]))
    assert isinstance(frame, DecodedFrame)
    assert frame.version == version
    assert frame.historical is case["historical"]
    assert frame.gaps_before is case["gaps_before"]
    assert frame.flags == (1 if case["historical"] else 0) | (4 if case["gaps_before"] else 0)
    assert (frame.boot_id, frame.first_seq, frame.base_tick) == (
        case["boot_id"],
        case["first_seq"],
        case["base_tick"],
    )
    assert len(frame) == len(case["samples"])
    assert [list(s) for s in frame.samples()] == case["samples"]
    assert frame.seq.dtype == np.int64 and frame.tick.dtype == np.int64
    assert frame.channel.dtype == np.uint8 and frame.value.dtype == np.int32


@pytest.mark.parametrize("case", INVALID, ids=_ids(INVALID))
def test_decode_invalid_vector(case):
    with pytest.raises(FrameError) as info:
        decode_frame(bytes.fromhex(case["frame"]), bytes.fromhex(case["key"]))
    assert info.value.code is FrameErrorCode(case["error"])
    assert str(info.value).startswith(case["error"] + ": ")
    assert isinstance(info.value, ValueError)


def test_decode_accepts_bytearray_and_memoryview():
    case = VALID[2]
    raw = bytes.fromhex(case["frame"])
    key = bytes.fromhex(case["key"])
    for data in (bytearray(raw), memoryview(raw)):
        assert [list(s) for s in decode_frame(data, key).samples()] == case["samples"]


def test_decode_rejects_a_key_of_the_wrong_size():
    with pytest.raises(ValueError, match="32 bytes"):
        decode_frame(bytes.fromhex(VALID[0]["frame"]), b"short")


# --- encoders reproduce the vectors --------------------------------------------------------


@pytest.mark.parametrize("version, case", VERSIONED, ids=_versioned_ids(VERSIONED))
def test_gateway_reference_encoder_vector(version, case):
    data = encode_frame(
        bytes.fromhex(case["key"]),
        case["boot_id"],
        case["first_seq"],
        case["base_tick"],
        [(ch, t, v) for _, ch, t, v in case["samples"]],
        historical=case["historical"],
        gaps_before=case["gaps_before"],
        version=version,
    )
    assert data.hex() == case["frame"]


def test_version_1_and_2_frames_carry_the_same_samples():
    v1 = {c["name"]: c for c in VALID_V1}
    shared = [c for c in VALID if c["name"] in v1]
    assert len(shared) >= 8
    key = bytes.fromhex
    for case in shared:
        old = decode_frame(key(v1[case["name"]]["frame"]), key(v1[case["name"]]["key"]))
        new = decode_frame(key(case["frame"]), key(case["key"]))
        if case["samples"] == v1[case["name"]]["samples"]:
            assert old.samples() == new.samples(), case["name"]
    # the point of version 2: the full frame at the default rates holds far more samples
    full = next(c for c in VALID if c["name"] == "full_244")
    full_v1 = v1["full_244"]
    assert len(full["samples"]) > 1.6 * len(full_v1["samples"])


@pytest.mark.parametrize("case", VALID, ids=_ids(VALID))
def test_firmware_encoder_vector(case):
    enc = FrameEncoder(bytes.fromhex(case["key"]), case["max_frame_bytes"])
    for _ in range(2):  # the second pass reuses the encoder: start() must reset everything
        enc.start(case["boot_id"], case["first_seq"], case["base_tick"], case["historical"],
                  case["gaps_before"])
        for _, ch, t, v in case["samples"]:
            assert enc.add(ch, t, v)
        assert enc.count == len(case["samples"])
        out = enc.finish()
        assert isinstance(out, memoryview)
        assert bytes(out).hex() == case["frame"]


# --- gap notices (§4.1) ---------------------------------------------------------------------


@pytest.mark.parametrize("case", GAPS + GAPS_V1, ids=_ids(GAPS + GAPS_V1))
def test_decode_gap_vector(case):
    gap = decode_frame(bytes.fromhex(case["frame"]), bytes.fromhex(case["key"]))
    assert isinstance(gap, DecodedGap)
    assert (gap.boot_id, gap.seq_at, gap.first_tick, gap.last_tick) == (
        case["boot_id"], case["seq_at"], case["first_tick"], case["last_tick"])
    assert list(gap.counts) == case["counts"]
    assert gap.count == sum(case["counts"])
    assert gap.historical is case["historical"]


def test_gap_notice_version_1():
    [case] = GAPS_V1
    args = (case["boot_id"], case["seq_at"], case["first_tick"], case["last_tick"],
            case["counts"])
    data = encode_gap_frame(bytes.fromhex(case["key"]), *args, version=1)
    assert data.hex() == case["frame"] and data[0] == 1


@pytest.mark.parametrize("case", GAPS, ids=_ids(GAPS))
def test_gap_encoders_reproduce_vector(case):
    key = bytes.fromhex(case["key"])
    args = (case["boot_id"], case["seq_at"], case["first_tick"], case["last_tick"],
            case["counts"])
    assert encode_gap_frame(key, *args, historical=case["historical"]).hex() == case["frame"]
    enc = FrameEncoder(key, 61)  # a gap notice fits the smallest frame (MTU 64)
    assert bytes(enc.gap_frame(*args, historical=case["historical"])).hex() == case["frame"]
    # the encoder is usable for samples right after (gap notices go between frames)
    enc.start(1, case["seq_at"], 0)
    assert enc.add(1, 0, 5)
    assert isinstance(decode_frame(bytes(enc.finish()), key), DecodedFrame)


@pytest.mark.parametrize("bad", [
    dict(counts=[0, 0, 0, 0]), dict(counts=[1, 2, 3]), dict(counts=[-1, 0, 0, 1]),
    dict(counts=[2**32, 0, 0, 0]), dict(first_tick=10, last_tick=9),
    dict(boot_id=0x10000), dict(seq_at=-1),
])
def test_gap_encoders_refuse_bad_gaps(bad):
    fields = dict(boot_id=1, seq_at=5, first_tick=0, last_tick=10, counts=[0, 1, 0, 0])
    fields.update(bad)
    key = bytes(32)
    with pytest.raises(ValueError):
        encode_gap_frame(key, **fields)
    with pytest.raises(ValueError):
        FrameEncoder(key).gap_frame(**fields)


@given(
    boot_id=st.integers(0, 0xFFFF), seq_at=st.integers(0, 0xFFFFFFFF),
    first_tick=st.integers(0, 0xFFFFFFFF), span=st.integers(0, 0xFFFFFFFF),
    counts=st.lists(st.integers(0, 0xFFFFFFFF), min_size=4, max_size=4).filter(any),
    historical=st.booleans(),
)
def test_gap_round_trip(boot_id, seq_at, first_tick, span, counts, historical):
    last_tick = min(first_tick + span, 0xFFFFFFFF)
    key = bytes(range(32))
    data = bytes(FrameEncoder(key).gap_frame(boot_id, seq_at, first_tick, last_tick, counts,
                                             historical))
    assert len(data) <= 45
    gap = decode_frame(data, key)
    assert gap == DecodedGap(flags=2 | int(historical), boot_id=boot_id, seq_at=seq_at,
                             first_tick=first_tick, last_tick=last_tick, counts=tuple(counts))


def test_firmware_encoder_full_frame_refuses_one_more():
    case = next(c for c in VALID if c["name"] == "full_244")
    enc = FrameEncoder(bytes.fromhex(case["key"]), 244)
    enc.start(case["boot_id"], case["first_seq"], case["base_tick"])
    for _, ch, t, v in case["samples"]:
        assert enc.add(ch, t, v)
    _, ch, t, v = case["samples"][-1]
    for extra in [(ch, t, v), (0, t, 0), (1, t + 1, v)]:
        assert enc.add(*extra) is False
    assert enc.count == len(case["samples"])
    assert bytes(enc.finish()).hex() == case["frame"]


def test_firmware_encoder_refusal_writes_nothing():
    key = bytes(range(32))
    enc = FrameEncoder(key, 22)
    enc.start(1, 0, 100)
    assert enc.add(1, 100, 25)
    assert enc.add(1, 100, 26) is False
    assert bytes(enc.finish()).hex() == VALID[0]["frame"]


def test_firmware_encoder_misuse_is_a_clear_error():
    enc = FrameEncoder(bytes(32), 64)
    with pytest.raises(ValueError):
        enc.add(0, 0, 0)  # before start
    enc.start(1, 0, 10)
    with pytest.raises(ValueError):
        enc.finish()  # empty frame
    with pytest.raises(ValueError):
        enc.add(4, 10, 0)  # channel
    with pytest.raises(ValueError):
        enc.add(0, 10, 40000)  # temperature out of int16
    with pytest.raises(ValueError):
        enc.add(1, 9, 0)  # before base_tick
    for n in (21, 245):
        with pytest.raises(ValueError):
            enc.set_max_frame_bytes(n)
    enc.set_max_frame_bytes(22)
    with pytest.raises(ValueError):
        enc.add(2, 10, 100000)  # a 4-byte record never fits a 22-byte frame
    assert enc.count == 0


# --- round trip ----------------------------------------------------------------------------


def encode_stream(enc: FrameEncoder, boot_id, first_seq, samples, historical=False):
    """Split samples into frames the way the patch does: finish when add() refuses."""
    frames = []
    seq = first_seq
    enc.start(boot_id, seq, samples[0][1], historical)
    for ch, t, v in samples:
        if not enc.add(ch, t, v):
            frames.append(bytes(enc.finish()))
            enc.start(boot_id, seq, t, historical)
            assert enc.add(ch, t, v)
        seq += 1
    frames.append(bytes(enc.finish()))
    return frames


_RANGES = [(-32768, 32767), (0, 65535), (0, 2**31 - 1), (0, 65535)]


@st.composite
def sample_runs(draw):
    n = draw(st.integers(1, 400))
    tick = draw(st.integers(0, 2**31))
    prev = [draw(st.integers(lo, hi)) for lo, hi in _RANGES]
    out = []
    for _ in range(n):
        ch = draw(st.integers(0, 3))
        kind = draw(st.integers(0, 9))
        dt = draw(st.integers(0, 62) if kind < 7 else st.integers(63, 2**20))
        tick = min(tick + dt, 2**32 - 1)
        lo, hi = _RANGES[ch]
        if draw(st.booleans()):
            v = min(hi, max(lo, prev[ch] + draw(st.integers(-100, 100))))
        else:
            v = draw(st.integers(lo, hi))
        prev[ch] = v
        out.append((ch, tick, v))
    return out


@st.composite
def strided_runs(draw):
    """Samples as a patch takes them: each channel on its own period, now and then a tick
    late or early, mostly small changes: the version-2 short records (and their edges)."""
    channels = draw(st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True))
    period = {ch: draw(st.sampled_from([1, 2, 10, 50, 100, 600])) for ch in channels}
    due = {ch: draw(st.integers(0, 20)) for ch in channels}
    prev = {ch: draw(st.integers(*_RANGES[ch])) for ch in channels}
    start = draw(st.integers(0, 2**31))
    out = []
    tick = 0
    for _ in range(draw(st.integers(1, 400))):
        ch = min(channels, key=lambda c: (due[c], c))
        tick = max(tick, due[ch])
        lo, hi = _RANGES[ch]
        delta = draw(st.sampled_from([0, 0, 1, -1, 3, -4, 4, 15, -16, 16, -17, 200]))
        prev[ch] = min(hi, max(lo, prev[ch] + delta))
        out.append((ch, start + tick, prev[ch]))
        due[ch] = tick + period[ch] + draw(st.sampled_from([0, 0, 0, 1, -1, 2]))
    return out


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    samples=st.one_of(sample_runs(), strided_runs()),
    mtu=st.integers(64, 247),
    first_seq=st.integers(0, 2**32 - 1000),
    boot_id=st.integers(0, 0xFFFF),
    historical=st.booleans(),
)
def test_round_trip_firmware_encoder_to_gateway_decoder(
    samples, mtu, first_seq, boot_id, historical
):
    key = bytes(range(100, 132))
    enc = FrameEncoder(key, mtu - 3)
    frames = encode_stream(enc, boot_id, first_seq, samples, historical)
    got = []
    next_seq = first_seq
    for data in frames:
        assert 21 <= len(data) <= mtu - 3
        frame = decode_frame(data, key)
        assert frame.boot_id == boot_id and frame.historical is historical
        assert frame.first_seq == next_seq
        next_seq += len(frame)
        got += [(c, t, v) for _, c, t, v in frame.samples()]
        # the gateway's reference encoder agrees byte for byte
        ref = encode_frame(
            key,
            boot_id,
            frame.first_seq,
            frame.base_tick,
            [(c, t, v) for _, c, t, v in frame.samples()],
            historical,
        )
        assert ref == data
        # older firmware's version-1 frame of the same samples decodes to the same
        old = encode_frame(key, boot_id, frame.first_seq, frame.base_tick,
                           [(c, t, v) for _, c, t, v in frame.samples()], historical, version=1)
        assert decode_frame(old, key).samples() == frame.samples()
    assert got == samples
    # every frame but the last was refused only because it was full
    for data in frames[:-1]:
        assert len(data) > mtu - 3 - 11


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=260))
def test_decoder_rejects_garbage_only_with_frame_error(data):
    key = bytes(32)
    with pytest.raises(FrameError):
        decode_frame(data, key)


@settings(max_examples=500, deadline=None)
@given(
    records=st.binary(min_size=2, max_size=224),
    first_seq=st.integers(0, 2**32 - 1),
    flags=st.sampled_from([0, 1]),
    version=st.sampled_from([1, 2]),
)
def test_decoder_on_authenticated_garbage(records, first_seq, flags, version):
    """Records the tag vouches for but that may be nonsense: a DecodedFrame or a FrameError
    from the record checks, never anything else."""
    key = bytes(range(32))
    body = struct.pack("<BBHII", version, flags, 5, first_seq, 1000) + records
    from gateway.protocol.frames import frame_tag

    try:
        frame = decode_frame(body + frame_tag(key, body), key)
    except FrameError as e:
        assert e.code in {
            FrameErrorCode.TRUNCATED_RECORD,
            FrameErrorCode.VARINT_TOO_LONG,
            FrameErrorCode.BAD_VALUE,
            FrameErrorCode.SEQ_OVERFLOW,
        }
    else:
        assert len(frame) >= 1
        # re-encoding gives the same samples (bytes may differ: varints can be non-canonical)
        again = encode_frame(key, 5, first_seq, 1000,
                             [(c, t, v) for _, c, t, v in frame.samples()], bool(flags),
                             version=version)
        assert decode_frame(again, key).samples() == frame.samples()
        assert all(gw.CHANNEL_MIN[c] <= v <= gw.CHANNEL_MAX[c] for _, c, _, v in frame.samples())
        ticks = [1000] + frame.tick.tolist()
        assert ticks == sorted(ticks) and ticks[-1] <= 0xFFFFFFFF


# --- size budget ---------------------------------------------------------------------------


def default_rate_stream(hours: float, seed: int = 1):
    """Samples at the default periods (UV 5 s, temperature 10 s, hydration 60 s, battery
    300 s), in tick order, with realistic slow-changing values in protocol units."""
    rng = random.Random(seed)
    temp, uv, hyd, bat = 4250, 300, 52000, 25600  # 33.2 °C, UVI 3, 52 pF, 100 %
    out = []
    for s in range(0, int(hours * 3600), 5):
        t = 1000 + s * 10
        if s % 10 == 0:
            temp = max(3840, min(4608, temp + rng.randint(-3, 3)))  # 30..36 °C, ±0.02 °C
            out.append((0, t, temp))
        uv = max(0, min(1200, uv + rng.randint(-8, 8)))
        out.append((1, t, uv))
        if s % 60 == 0:
            hyd = max(10000, hyd + rng.randint(-60, 60))
            out.append((2, t, hyd))
        if s % 300 == 0:
            bat = max(0, bat - rng.randint(0, 30))  # 100 % -> 0 in ~7 days
            out.append((3, t, bat))
    return out


def test_bytes_per_sample_at_default_rates():
    samples = default_rate_stream(hours=24)
    enc = FrameEncoder(bytes(32), 247 - 3)
    frames = encode_stream(enc, 1, 0, samples)
    total = sum(len(f) for f in frames)
    per_sample = total / len(samples)
    with_att = (total + 3 * len(frames)) / len(samples)
    print(
        f"\n{len(samples)} samples in {len(frames)} frames at MTU 247: "
        f"{per_sample:.3f} bytes/sample ({with_att:.3f} with the 3-byte ATT header)"
    )
    assert per_sample <= 2.0  # docs/performance.md, Air: the goal
    assert per_sample > 1.0  # sanity: records are at least 1 byte, plus the header and tag
    decoded = [(c, t, v) for f in frames for _, c, t, v in decode_frame(f, bytes(32)).samples()]
    assert decoded == samples


# --- constants -----------------------------------------------------------------------------

_PREFIX_ENUM = {
    "OP_": gw.Opcode,
    "ST_": gw.Status,
    "CFG_": gw.ConfigKey,
    "CH_": gw.Channel,
    "ERR_": gw.ErrorFlag,
    "ADV_": gw.AdvFlag,
}


def test_firmware_and_gateway_constants_agree():
    fw_names = {n: getattr(fw_ids, n) for n in dir(fw_ids) if n.isupper() and not n.startswith("_")}
    assert len(fw_names) > 50
    for name, value in fw_names.items():
        if hasattr(gw, name):
            assert getattr(gw, name) == value, name
            continue
        prefix = next((p for p in _PREFIX_ENUM if name.startswith(p)), None)
        assert prefix, f"firmware constant {name} has no gateway counterpart"
        member = _PREFIX_ENUM[prefix][name[len(prefix) :]]
        assert int(member) == value, name
    for prefix, enum in _PREFIX_ENUM.items():
        for member in enum:
            assert fw_names.get(prefix + member.name) == int(member), f"{prefix}{member.name}"


# --- control point -------------------------------------------------------------------------

REQUESTS = CONTROL["requests"]
RESPONSES = CONTROL["responses"]


def _counter(case):
    return struct.unpack_from("<I", bytes.fromhex(case["request"]), 1)[0]


def _gateway_request(case):
    """The gateway helper that should produce this request, if any."""
    op, operand, n = case["opcode"], case["operand"], _counter(case)
    return {
        1: lambda: cp.set_time(CP_KEY, CP_NONCE, n, operand),
        2: lambda: cp.ack(CP_KEY, CP_NONCE, n, operand),
        3: lambda: cp.replay(CP_KEY, CP_NONCE, n, operand),
        4: lambda: cp.set_config(CP_KEY, CP_NONCE, n, *operand),
        5: lambda: cp.get_status(CP_KEY, CP_NONCE, n),
        6: lambda: cp.identify(CP_KEY, CP_NONCE, n, operand),
    }[op]()


def _key_of(case):
    return None if case["status"] == gw.Status.NOT_PROVISIONED else CP_KEY


@pytest.mark.parametrize("case", REQUESTS, ids=_ids(REQUESTS))
def test_firmware_parse_request_vector(case):
    data = bytes.fromhex(case["request"])
    op, status, operand, counter = fw_cp.parse_request(
        data, _key_of(case), CP_NONCE, case["next_counter"])
    assert (op, status) == (case["opcode"], case["status"])
    assert (list(operand) if isinstance(operand, tuple) else operand) == case["operand"]
    # the guard applies the counter rule: next_counter after, whatever the status
    guard = fw_cp.ControlGuard(_key_of(case), CP_NONCE)
    guard.next_counter = case["next_counter"]
    assert guard.parse(memoryview(bytearray(data)))[:2] == (op, status)
    assert guard.next_counter == case["next_counter_after"]
    assert (counter >= 0) == (case["next_counter_after"] != case["next_counter"])
    # and answers with the vector's tagged response (SUCCESS payloads: see the responses)
    if case["response"] is not None:
        out = guard.respond(bytearray(64), data, op, status)
        assert bytes(out).hex() == case["response"]


@pytest.mark.parametrize("case", [c for c in REQUESTS if c["status"] == 0], ids=lambda c: c["name"])
def test_gateway_encodes_request_vector(case):
    assert _gateway_request(case).hex() == case["request"]
    op = case["opcode"]
    raw = bytes.fromhex(case["request"])
    assert cp.encode_request(CP_KEY, CP_NONCE, _counter(case), op, raw[5:-8]) == raw


def test_a_request_runs_once():
    """The counter rule end to end: the gateway's request is accepted once; written again
    (a capture replayed) it is refused, and so is any older one."""
    guard = fw_cp.ControlGuard(CP_KEY, CP_NONCE)
    first = cp.set_config(CP_KEY, CP_NONCE, 0, gw.ConfigKey.UV_PERIOD_S, 5)
    second = cp.set_config(CP_KEY, CP_NONCE, 1, gw.ConfigKey.UV_PERIOD_S, 60)
    assert guard.parse(first) == (4, gw.Status.SUCCESS, (2, 5))
    assert guard.parse(second) == (4, gw.Status.SUCCESS, (2, 60))
    assert guard.parse(first) == (4, gw.Status.STALE_REQUEST, None)
    assert guard.parse(second) == (4, gw.Status.STALE_REQUEST, None)
    assert guard.next_counter == 2
    # another boot (a new nonce): the same bytes fail their tag
    assert fw_cp.ControlGuard(CP_KEY, CP_NONCE + 1).parse(second)[1] == gw.Status.AUTH_FAILED


def test_gateway_request_helpers_refuse_bad_values():
    with pytest.raises(ValueError):
        cp.set_config(CP_KEY, CP_NONCE, 0, 7, 10)
    with pytest.raises(ValueError):
        cp.set_config(CP_KEY, CP_NONCE, 0, gw.ConfigKey.UV_PERIOD_S, 0)
    with pytest.raises(ValueError):
        cp.ack(CP_KEY, CP_NONCE, 0, 2**32)
    with pytest.raises(ValueError):
        cp.identify(CP_KEY, CP_NONCE, 0, 256)
    with pytest.raises(ValueError, match="boot_nonce"):
        cp.get_status(CP_KEY, 2**32, 0)
    with pytest.raises(ValueError, match="counter"):
        cp.get_status(CP_KEY, CP_NONCE, 0xFFFFFFFF)
    with pytest.raises(ValueError, match="32 bytes"):
        cp.get_status(b"k" * 16, CP_NONCE, 0)


@pytest.mark.parametrize("case", RESPONSES, ids=_ids(RESPONSES))
def test_firmware_builds_response_vector(case):
    buf = bytearray(64)
    payload = bytes.fromhex(case["payload"]) or None
    request = bytes.fromhex(case["request"])
    out = fw_cp.build_response(buf, CP_KEY, CP_NONCE, request, case["opcode"], case["status"],
                               payload)
    assert bytes(out).hex() == case["response"]
    out = fw_cp.build_response(buf, Hmac8(CP_KEY), CP_NONCE, memoryview(bytearray(request)),
                               case["opcode"], case["status"], payload)
    assert bytes(out).hex() == case["response"]


@pytest.mark.parametrize("case", RESPONSES, ids=_ids(RESPONSES))
def test_gateway_decodes_response_vector(case):
    data = bytes.fromhex(case["response"])
    request = bytes.fromhex(case["request"])
    r = cp.decode_response(data, CP_KEY, CP_NONCE, request)
    assert (r.opcode, r.status, r.payload.hex()) == (
        case["opcode"],
        case["status"],
        case["payload"],
    )
    assert r.ok is (case["status"] == 0)
    assert cp.response_tag(CP_KEY, CP_NONCE, request, data[:-8]) == data[-8:]
    if case["name"] == "set_time_ok":
        assert cp.decode_set_time_result(r.payload) == cp.SetTimeResult(**case["result"])
        assert fw_cp.pack_set_time_result(**case["result"]) == r.payload
    if case["name"] == "replay_ok":
        assert cp.decode_replay_result(r.payload) == cp.ReplayResult(**case["result"])
        assert fw_cp.pack_replay_result(**case["result"]) == r.payload
    if case["name"] == "get_status_ok":
        assert cp.decode_status(r.payload).boot_nonce == CONTROL["status"]["boot_nonce"]


@pytest.mark.parametrize("case", CONTROL["bad_responses"], ids=_ids(CONTROL["bad_responses"]))
def test_gateway_rejects_bad_response(case):
    data, request = bytes.fromhex(case["response"]), bytes.fromhex(case["request"])
    with pytest.raises(cp.ControlError) as info:
        cp.decode_response(data, CP_KEY, CP_NONCE, request)
    assert isinstance(info.value, cp.ResponseTagError) is (case["error"] == "tag")


def test_refused_response_says_what_it_claimed():
    case = next(c for c in CONTROL["bad_responses"] if c["name"] == "zero_tag")
    with pytest.raises(cp.ResponseTagError) as info:
        cp.decode_response(bytes.fromhex(case["response"]), CP_KEY, CP_NONCE,
                           bytes.fromhex(case["request"]))
    assert (info.value.claimed_opcode, info.value.claimed_status) == (
        gw.Opcode.ACK, gw.Status.NOT_PROVISIONED)


def test_status_record_both_sides():
    s = CONTROL["status"]
    buf = bytearray(48)
    out = fw_cp.pack_status(
        buf,
        s["fw"],
        s["boot_id"],
        s["oldest_seq"],
        s["next_seq"],
        s["tick"],
        s["error_flags"],
        s["periods"],
        s["battery_pct"],
        s["boot_nonce"],
        s["next_counter"],
        offset=3,
    )
    assert bytes(out).hex() == s["record"] and bytes(buf[3:44]).hex() == s["record"]
    st_ = cp.decode_status(bytes.fromhex(s["record"]))
    assert st_.fw_version == tuple(s["fw"]) and st_.fw_revision == "1.2.3"
    assert (st_.boot_id, st_.oldest_seq, st_.next_seq, st_.tick, st_.battery_pct) == (
        s["boot_id"],
        s["oldest_seq"],
        s["next_seq"],
        s["tick"],
        s["battery_pct"],
    )
    assert st_.error_flags == gw.ErrorFlag.CLOCK_NOT_SET | gw.ErrorFlag.UV_SENSOR
    assert st_.config == {
        gw.ConfigKey.TEMP_PERIOD_S: 10,
        gw.ConfigKey.UV_PERIOD_S: 5,
        gw.ConfigKey.UV_FAST_PERIOD_S: 1,
        gw.ConfigKey.HYDRATION_PERIOD_S: 60,
        gw.ConfigKey.BATTERY_PERIOD_S: 300,
        gw.ConfigKey.FLUSH_INTERVAL_S: 60,
    }
    assert st_.unacked == 234
    assert (st_.boot_nonce, st_.next_counter) == (s["boot_nonce"], s["next_counter"])
    record = bytes.fromhex(s["record"])
    for bad in (record[:-1], record + b"\0", b"\x03" + record[1:], b""):
        with pytest.raises(cp.ControlError):
            cp.decode_status(bad)
    with pytest.raises(cp.ControlError, match="predates authenticated"):
        cp.decode_status(b"\x01" + record[1:31])   # a format-1 record (older firmware)


@pytest.mark.parametrize(
    "case", CONTROL["manufacturer_data"], ids=_ids(CONTROL["manufacturer_data"])
)
def test_manufacturer_data_both_sides(case):
    data = fw_cp.pack_manufacturer_data(
        case["fw"],
        case["battery_pct"],
        case["unacked_samples"],
        case["provisioned"],
        case["log_full"],
    )
    assert data.hex() == case["data"]
    info = cp.decode_manufacturer_data(data)
    assert info.fw_version == tuple(case["fw"]) and info.battery_pct == case["battery_pct"]
    assert info.unacked_samples == case.get("unacked_advertised", case["unacked_samples"])
    assert (info.provisioned, info.log_full) == (case["provisioned"], case["log_full"])
    assert cp.decode_manufacturer_data(b"\xff\xff" + data) == info
    with pytest.raises(cp.ControlError):
        cp.decode_manufacturer_data(data[:-1])


@pytest.mark.parametrize("case", CONTROL["device_names"], ids=lambda c: c["name"])
def test_device_name(case):
    assert fw_cp.device_name(case["device_id"]) == case["name"]


def test_device_name_rejects_bad_ids():
    for bad in ("3f2a0c11d4e59b0", "3f2a0c11d4e59b07a", "3f2a0c11d4e59bzz"):
        with pytest.raises(ValueError):
            fw_cp.device_name(bad)


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(max_size=40), nonce=st.integers(0, 0xFFFFFFFF),
       next_counter=st.integers(0, 0xFFFFFFFF))
def test_parse_request_never_raises_on_random_bytes(data, nonce, next_counter):
    op, status, operand, counter = fw_cp.parse_request(data, CP_KEY, nonce, next_counter)
    assert op == (data[0] if data else 0)
    assert status in (gw.Status.INVALID_OPERAND, gw.Status.AUTH_FAILED)
    assert operand is None and counter == -1
    out = bytes(fw_cp.build_response(bytearray(64), CP_KEY, nonce, data, op, status))
    assert cp.response_tag(CP_KEY, nonce, data, out[:-8]) == out[-8:]   # bound to this write


@settings(max_examples=1000, deadline=None)
@given(opcode=st.integers(0, 255), operands=st.binary(max_size=12),
       nonce=st.integers(0, 0xFFFFFFFF), counter=st.integers(0, 0xFFFFFFFE),
       behind=st.integers(-3, 3))
def test_parse_request_on_authenticated_random_requests(opcode, operands, nonce, counter, behind):
    req = cp.encode_request(CP_KEY, nonce, counter, opcode, operands)
    next_counter = max(0, counter + behind)
    op, status, operand, used = fw_cp.parse_request(req, CP_KEY, nonce, next_counter)
    assert op == opcode
    expected_len = {1: 8, 2: 4, 3: 4, 4: 5, 5: 0, 6: 1}.get(opcode)
    if counter < next_counter:
        assert status == gw.Status.STALE_REQUEST and used == -1
    elif expected_len is None:
        assert status == gw.Status.OPCODE_NOT_SUPPORTED
    elif len(operands) != expected_len:
        assert status == gw.Status.INVALID_OPERAND
    elif opcode == 4 and not (
        1 <= operands[0] <= 6 and 1 <= int.from_bytes(operands[1:], "little") <= 0xFFFF
    ):
        assert status == gw.Status.INVALID_OPERAND
    else:
        assert status == gw.Status.SUCCESS
    assert (operand is None) == (status != gw.Status.SUCCESS or opcode == 5)
    assert used == (counter if counter >= next_counter else -1)
    # the tag binds the boot nonce
    assert fw_cp.parse_request(req, CP_KEY, nonce ^ 1, 0)[1] == gw.Status.AUTH_FAILED
    # the response is bound to this request, this boot and this key
    out = bytes(fw_cp.build_response(bytearray(64), CP_KEY, nonce, req, op, status))
    if 0 < status and opcode in set(gw.Opcode):
        assert cp.decode_response(out, CP_KEY, nonce, req).status == status
    other = cp.encode_request(CP_KEY, nonce, counter ^ 1 if counter < 0xFFFFFFFE else 0, opcode,
                              operands)
    for args in ((CP_KEY, nonce, other), (CP_KEY, nonce ^ 1, req), (bytes(32), nonce, req)):
        with pytest.raises(cp.ResponseTagError):
            cp.decode_response(out, *args)
