"""The power-loss-safe flash log (firmware/flash_log.py) on CPython, on a temporary directory.

A power loss is simulated by copying the log directory while the log is still open: the copy
holds what reached the file (what flush() pushed), not what sits in the writer's buffer or the
log's RAM block, just as flash holds only synced data. Torn writes and bit rot are simulated by
truncating and corrupting the copy at every byte offset of its newest blocks.

Block boundaries and expected records come from `parse_segment`, an independent reading of the
documented format (CRC by binascii.crc_hqx), not from the log's own code.
"""

from __future__ import annotations

import binascii
import math
import os
import random
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware import flash_format
from firmware.flash_log import (
    BLOCK_OVERHEAD,
    DEFAULT_MAX_SEGMENTS,
    DEFAULT_SEGMENT_BYTES,
    HDR_BYTES,
    LFS_BLOCK_BYTES,
    LOG_FULL,
    NO_RECORD,
    FlashLog,
    crc16,
    segment_blocks,
    segment_records_min,
    segments_that_fit,
)

REPO = Path(__file__).resolve().parent.parent


def sample(i: int) -> tuple[int, int, int]:
    """A deterministic (channel, tick, value) for the i-th sample, values in range."""
    channel = i % 4
    value = (-3000 + 37 * i, 7 * i % 65536, 25_000 + 11 * i, 65535 - i % 65536)[channel]
    return channel, 10 * i, value


def fill(log: FlashLog, n: int, start: int = 0) -> list[int]:
    return [log.append(*sample(i)) for i in range(start, start + n)]


def record_of(log: FlashLog, seq: int) -> tuple[int, int, int, int]:
    return log.boot(seq), log.channel(seq), log.tick(seq), log.value(seq)


MISSING = (NO_RECORD, NO_RECORD, 0, 0)


def power_loss(src: Path, dst: Path) -> Path:
    """The directory as flash would hold it if power failed now."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def segment_files(directory: Path) -> list[str]:
    return sorted((p.name for p in directory.iterdir() if p.name.startswith("seg_")),
                  key=lambda name: int(name[4:-4]))


# --- an independent reader of the format -------------------------------------------------------

@dataclass
class Block:
    pos: int            # first byte in the file
    end: int            # one past its last byte
    seq_off: int
    count: int
    records: list[tuple[int, int, int]]   # (channel, tick, value)


def _varint(data: bytes, p: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[p]
        p += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, p
        shift += 7


def _unzigzag(z: int) -> int:
    return -(z >> 1) - 1 if z & 1 else z >> 1


def parse_segment(data: bytes) -> tuple[int, int, int, list[Block]]:
    """(first_seq, boot_id, base_tick, blocks) of an intact segment image."""
    magic, version, first, boot, base, crc = struct.unpack_from("<3sBIHIH", data, 0)
    assert (magic, version) == (b"DTL", 2) and data[:16] == data[16:32]
    assert crc == binascii.crc_hqx(data[:14], 0xFFFF)
    blocks = []
    pos = HDR_BYTES
    while pos < len(data):
        length, count, seq_off = struct.unpack_from("<BBH", data, pos)
        tick = base + int.from_bytes(data[pos + 4:pos + 7], "little")
        end = pos + 7 + length + 2
        assert end <= len(data), "torn block"
        covered = struct.pack("<I", first + seq_off) + data[pos:pos + 7 + length]
        assert binascii.crc_hqx(covered, 0xFFFF) == int.from_bytes(data[end - 2:end], "little")
        records, last, p = [], [0, 0, 0, 0], pos + 7
        while p < pos + 7 + length:
            head = data[p]
            p += 1
            channel, dt = head >> 6, head & 63
            if dt == 63:
                z, p = _varint(data, p)
                dt = _unzigzag(z)
            tick += dt
            z, p = _varint(data, p)
            last[channel] += _unzigzag(z)
            records.append((channel, tick, last[channel]))
        assert p == pos + 7 + length and len(records) == count
        blocks.append(Block(pos, end, seq_off, count, records))
        pos = end
    return first, boot, base, blocks


def test_crc16_is_ccitt_false():
    assert crc16(b"123456789", 9) == 0x29B1  # the catalogued check value


def test_on_flash_format_is_the_documented_one(tmp_path):
    d = tmp_path / "log"
    log = FlashLog(str(d), flush_every=4, boot_id=0x1234)
    samples = [(0, 100, 4480), (1, 100, 0), (0, 150, 4475), (1, 150, 3),  # dt 0, 0, 50, 0
               (2, 400, 60_000), (3, 400, 25_600), (1, 1000, 250),        # dt 600: escape
               (0, 990, 4470),                                            # dt -10: escape
               (0, 1000, 4471)]
    for s in samples:
        log.append(*s)
    log.flush()
    image = (d / "seg_0.log").read_bytes()
    first, boot, base, blocks = parse_segment(image)
    assert (first, boot, base) == (0, 0x1234, 100)
    assert [(b.seq_off, b.count) for b in blocks] == [(0, 4), (4, 4), (8, 1)]
    assert [r for b in blocks for r in b.records] == samples
    # block 1: heads and zigzag deltas exactly as documented (first of a channel against 0)
    body = image[blocks[0].pos + 7:blocks[0].end - 2]
    assert body == bytes([0 << 6 | 0, 0x80, 0x46,        # temp 4480 -> zigzag 8960, varint
                          1 << 6 | 0, 0,                # uv 0
                          0 << 6 | 50, 9,               # temp -5 -> zigzag 9
                          1 << 6 | 0, 6])               # uv +3 -> zigzag 6
    assert image[blocks[0].pos:blocks[0].pos + 7] == bytes([len(body), 4, 0, 0, 0, 0, 0])
    assert image[blocks[1].pos + 4:blocks[1].pos + 7] == (400 - 100).to_bytes(3, "little")
    body = image[blocks[1].pos + 7:blocks[1].end - 2]
    assert body[-9:] == bytes([1 << 6 | 63, 0xB0, 0x09,   # uv, dt escape: 600 -> zigzag 1200
                               0xF4, 0x03,                # 250 -> zigzag 500
                               0 << 6 | 63, 0x13,         # temp, dt -10 -> zigzag 19
                               0xEC, 0x45])               # 4470 (first temp) -> zigzag 8940
    assert len(image) == HDR_BYTES + sum(b.end - b.pos for b in blocks)
    assert all(b.end - b.pos == BLOCK_OVERHEAD + len(image[b.pos + 7:b.end - 2]) for b in blocks)


def test_the_gateway_reads_what_the_log_writes_through_flash_format(tmp_path):
    # gateway/provision.py reads a patch's log with firmware/flash_format.py before flashing:
    # the same module must describe what FlashLog actually writes.
    d = tmp_path / "log"
    log = FlashLog(str(d), flush_every=1, boot_id=0x0BAD, first_seq=500)
    log.append(0, 77, 4480)
    log.append(0, 78, 4481)
    log.ack(500)
    log.close()
    image = (d / "seg_500.log").read_bytes()
    assert flash_format.header_version(image) == flash_format.FORMAT_VERSION == 2
    assert flash_format.header_version(image, 16) == 2                 # the second copy
    assert flash_format.parse_header(image, len(image), 500) == (0x0BAD, 77)
    assert flash_format.parse_header(image, len(image), 501) is None   # not its first seq
    damaged = bytearray(image)
    damaged[5] ^= 0x01                                                 # first copy corrupt
    assert flash_format.parse_header(damaged, len(damaged), 500) == (0x0BAD, 77)
    damaged[16 + 5] ^= 0x01                                            # and the second
    assert flash_format.parse_header(damaged, len(damaged), 500) is None
    acked = (d / "acked").read_bytes()
    assert flash_format.parse_acked(acked) == 501
    assert flash_format.parse_acked(acked[:4] + bytes(2)) == -1
    assert flash_format.header_version(b"DTL\x01") == 1 and flash_format.header_version(b"XTL\x02") == -1


def test_append_read_ack_and_whole_segment_deletion(tmp_path):
    d = tmp_path / "log"
    log = FlashLog(str(d), segment_bytes=96, max_segments=8, flush_every=2)
    assert log.next_seq == log.oldest_seq == 0 and len(log) == 0
    assert fill(log, 30) == list(range(30))
    for seq in range(30):
        assert record_of(log, seq) == (0, *sample(seq))
    assert record_of(log, 30) == MISSING
    names = segment_files(d)
    firsts = [int(n[4:-4]) for n in names]
    assert len(names) >= 3 and firsts[0] == 0
    assert all((d / n).stat().st_size <= 96 for n in names)          # bounded in bytes
    for name in names[:-1]:                                           # and filled
        assert (d / name).stat().st_size > 96 - BLOCK_OVERHEAD - 2 * 9
    log.flush()
    parsed = [parse_segment((d / n).read_bytes()) for n in names]
    assert [r for p in parsed for b in p[3] for r in b.records] == [sample(i) for i in range(30)]

    log.ack(firsts[1] + 1)                 # the first segment fully acknowledged, the second not
    assert log.oldest_seq == firsts[1] + 2 and len(log) == 30 - firsts[1] - 2
    assert segment_files(d) == names[1:]
    assert record_of(log, 0) == MISSING and record_of(log, 29) == (0, *sample(29))
    log.ack(2)                             # an old ACK changes nothing
    assert log.oldest_seq == firsts[1] + 2
    log.ack(10_000)                        # beyond what exists: only what exists
    assert log.oldest_seq == log.next_seq == 30 and len(log) == 0
    # the newest segment stays: it carries the seq extent the next boot starts after
    assert segment_files(d) == names[-1:]


def test_reads_interleaved_with_appends_and_values_at_the_limits(tmp_path):
    log = FlashLog(str(tmp_path / "log"), flush_every=4)
    limits = [(0, -32768), (0, 32767), (1, 0), (1, 65535), (2, 0), (2, 0x7FFFFF), (3, 65535),
              (2, 0), (0, -32768)]                   # the largest deltas, both ways
    for i, (channel, value) in enumerate(limits):
        seq = log.append(channel, 1000 + i, value)
        assert record_of(log, seq) == (0, channel, 1000 + i, value)
        assert record_of(log, 0)[1:] == (0, 1000, -32768)   # re-read an older one
    for bad in [(0, 0, 32768), (1, 0, -1), (2, 0, 0x800000), (3, 0, 65536), (4, 0, 1)]:
        with pytest.raises(ValueError):
            log.append(*bad)
    assert log.next_seq == len(limits)
    log.close()
    again = FlashLog(str(tmp_path / "log"))
    assert [record_of(again, s)[1:] for s in range(len(limits))] == [
        (c, 1000 + i, v) for i, (c, v) in enumerate(limits)]


def test_tick_steps_long_and_backward_and_segment_tick_range(tmp_path):
    log = FlashLog(str(tmp_path / "log"))
    ticks = [5, 5, 67, 68, 5 + 1000, 500, 5, 5 + 0xFFFFFF]   # 62 fits the head, 63 escapes
    for i, t in enumerate(ticks):
        assert log.append(i % 4, t, 7) == i
    log.append(0, 6 + 0xFFFFFF, 3)          # past the 24-bit offset: a new segment
    log.append(0, 4, 3)                     # before the segment's base tick: another one
    assert [log.tick(s) for s in range(len(ticks) + 2)] == ticks + [6 + 0xFFFFFF, 4]
    assert segment_files(tmp_path / "log") == ["seg_0.log", "seg_8.log", "seg_9.log"]


def test_reboot_keeps_unacked_records_and_never_reuses_a_seq(tmp_path):
    d = tmp_path / "log"
    log = FlashLog(str(d), segment_bytes=120, flush_every=4, boot_id=7)
    fill(log, 21)                  # seqs 0..20; 0..19 flushed (every 4th), 20 still in RAM
    log.ack(9)
    crashed = power_loss(d, tmp_path / "after")
    log.close()

    log2 = FlashLog(str(crashed), segment_bytes=120, flush_every=4, boot_id=8)
    assert log2.trimmed == 0 and log2.oldest_seq == 10           # acked stays acked
    assert [record_of(log2, s) for s in range(10, 20)] == [(7, *sample(s)) for s in range(10, 20)]
    assert log2.boot(20) == NO_RECORD                      # never reached flash
    # next seq = extent of the newest segment (20) + flush_every: above every seq handed out
    assert log2.next_seq == 24
    assert len(log2) == 10
    seq = log2.append(0, 3, 42)
    assert seq == 24 and record_of(log2, 24) == (8, 0, 3, 42)
    assert "seg_24.log" in segment_files(crashed)          # a boot starts its own segment
    assert [log2.boot(s) for s in range(20, 24)] == [NO_RECORD] * 4   # the reboot's hole
    assert log2.next_record(20) == 24 and log2.next_record(12) == 12
    log2.ack(19)                   # the gateway acks up to the hole: oldest skips it
    assert log2.oldest_seq == 24 and len(log2) == 1
    assert segment_files(crashed) == ["seg_24.log"]

    log3 = FlashLog(str(crashed), segment_bytes=120, flush_every=4, boot_id=9)
    assert log3.oldest_seq == 24 and log3.next_seq == 25 + 4
    assert record_of(log3, 24) == (8, 0, 3, 42)


def test_empty_log_resumes_from_the_floor_and_the_acked_watermark(tmp_path):
    d = tmp_path / "log"
    log = FlashLog(str(d), first_seq=5000)                 # e.g. BootState's legacy seq floor
    assert log.next_seq == log.oldest_seq == 5000
    assert log.append(1, 0, 3) == 5000
    log.ack(5000)
    log.close()
    again = FlashLog(str(d))
    assert again.oldest_seq == again.next_seq == 5001 + again.flush_every
    assert len(again) == 0


def test_record_is_on_flash_before_it_can_be_read_for_sending(tmp_path):
    d = tmp_path / "log"
    log = FlashLog(str(d), flush_every=16)
    fill(log, 3)
    assert power_loss(d, tmp_path / "before").joinpath("seg_0.log").stat().st_size == HDR_BYTES
    assert log.value(2) == sample(2)[2]    # the streamer reads seq 2 to send it ...
    after = power_loss(d, tmp_path / "after")
    [block] = parse_segment((after / "seg_0.log").read_bytes())[3]   # ... so it is durable
    assert (block.seq_off, block.count) == (0, 3)
    assert FlashLog(str(after)).value(2) == sample(2)[2]


def test_sequential_and_jumping_reads_across_many_blocks_and_segments(tmp_path):
    d = tmp_path / "log"
    log = FlashLog(str(d), segment_bytes=400, flush_every=5, boot_id=2)
    fill(log, 700)
    log.close()
    log = FlashLog(str(d), segment_bytes=400, flush_every=5)
    assert len(segment_files(d)) > 10
    for seq in range(700):                                   # forward, as the streamer reads
        assert record_of(log, seq) == (2, *sample(seq))
    rng = random.Random(3)
    for seq in [rng.randrange(700) for _ in range(300)]:     # after REPLAYs, anywhere
        assert record_of(log, seq) == (2, *sample(seq))
    for seq in range(699, -1, -1):                           # and backwards
        assert log.value(seq) == sample(seq)[2]


# --- power loss at every byte ------------------------------------------------------------------

SWEEP_SEGMENT = 200
SWEEP_FLUSH = 4


def crashed_image(tmp_path: Path) -> tuple[Path, int, int]:
    """Two full segments and an active one of 5 blocks (4, 4, 4, 4, 2 records), all flushed;
    seqs 0..3 acknowledged. Returns (directory, first seq of the active segment, next_seq)."""
    src = tmp_path / "src"
    log = FlashLog(str(src), segment_bytes=SWEEP_SEGMENT, flush_every=SWEEP_FLUSH, boot_id=3)
    i = 0
    while len(segment_files(src)) < 3:
        log.append(*sample(i))
        i += 1
    fill(log, 17, i)
    log.ack(3)
    log.flush()
    active = segment_files(src)[-1]
    assert len(parse_segment((src / active).read_bytes())[3]) == 5
    return src, int(active[4:-4]), log.next_seq


def check_recovered(log: FlashLog, intact: set[int], first: int, last_seq: int) -> None:
    """Every intact record (and the full older segments) comes back; no other one does."""
    for seq in range(4, last_seq + 1):
        if seq < first or seq in intact:
            assert record_of(log, seq) == (3, *sample(seq)), seq
        else:
            assert record_of(log, seq) == MISSING, seq
    assert log.oldest_seq == 4


def expected_next_seq(first: int, blocks: list[Block], cut: int, hit: int | None,
                      flush: int) -> int:
    """The documented rule: end of the last good block + (bytes after it) // 2 + flush_every."""
    good_end, end_seq = min(cut, HDR_BYTES), 0
    complete = [b for b in blocks if b.end <= cut]
    if complete and hit is not None and complete[-1].pos <= hit < complete[-1].end:
        complete.pop()                        # the last block corrupt: cut with the tail
    if complete:
        good_end, end_seq = complete[-1].end, complete[-1].seq_off + complete[-1].count
    return first + end_seq + (cut - good_end) // 2 + flush


def test_truncation_at_every_byte_of_the_active_segment(tmp_path):
    src, first, next_seq = crashed_image(tmp_path)
    path = src / f"seg_{first}.log"
    image = path.read_bytes()
    blocks = parse_segment(image)[3]
    for cut in range(len(image) + 1):
        path.write_bytes(image[:cut])
        log = FlashLog(str(src), segment_bytes=SWEEP_SEGMENT, flush_every=SWEEP_FLUSH)
        whole = [b for b in blocks if b.end <= cut]
        intact = {first + b.seq_off + k for b in whole for k in range(b.count)}
        check_recovered(log, intact, first, next_seq - 1)
        assert log.next_seq == expected_next_seq(first, blocks, cut, None, SWEEP_FLUSH), cut
        assert log.next_seq > max(intact | {first - 1})         # above every seq on flash
        if next_seq - (first + len(intact)) < SWEEP_FLUSH:      # lost only an unflushed-sized tail
            assert log.next_seq >= next_seq, cut                # never reuses a handed-out seq
        assert log.trimmed == (1 if cut > (whole[-1].end if whole else HDR_BYTES) else 0)
        assert len(log) == first - 4 + len(intact)
        log.close()
    path.write_bytes(image)


def test_corruption_of_every_byte_of_the_active_segment(tmp_path):
    src, first, next_seq = crashed_image(tmp_path)
    path = src / f"seg_{first}.log"
    image = path.read_bytes()
    blocks = parse_segment(image)[3]
    all_records = set(range(first, next_seq))
    for pos in range(len(image)):
        for flip in (0x01, 0x80, 0xFF, 0x5A):
            bad = bytearray(image)
            bad[pos] ^= flip
            path.write_bytes(bad)
            log = FlashLog(str(src), segment_bytes=SWEEP_SEGMENT, flush_every=SWEEP_FLUSH)
            lost = set()
            for b in blocks:                  # a hit costs its own block, nothing else
                if b.pos <= pos < b.end:
                    lost = {first + b.seq_off + k for k in range(b.count)}
            check_recovered(log, all_records - lost, first, next_seq - 1)
            assert log.next_seq == expected_next_seq(first, blocks, len(image), pos, SWEEP_FLUSH)
            assert log.next_seq >= next_seq + SWEEP_FLUSH, (pos, flip)   # never reused
            assert log.trimmed == (1 if pos >= blocks[-1].pos else 0)
            # the log goes on: appends after the damage and reads them back
            seq = log.append(1, 10**6, 5)
            assert seq == log.next_seq - 1 and record_of(log, seq) == (0, 1, 10**6, 5)
            log.close()
            (src / f"seg_{seq}.log").unlink()       # the next case starts from the image
    path.write_bytes(image)


def test_corruption_in_the_middle_of_a_full_segment_costs_one_block(tmp_path):
    # A full, older segment: every byte of its third block, by every kind of flip.
    src, _, next_seq = crashed_image(tmp_path)
    name = segment_files(src)[1]
    path = src / name
    image = path.read_bytes()
    first = int(name[4:-4])
    blocks = parse_segment(image)[3]
    victim = blocks[2]
    lost = {first + victim.seq_off + k for k in range(victim.count)}
    for pos in range(victim.pos, victim.end):
        for flip in (0x01, 0x10, 0x80, 0xFF):
            bad = bytearray(image)
            bad[pos] ^= flip
            path.write_bytes(bad)
            log = FlashLog(str(src), segment_bytes=SWEEP_SEGMENT, flush_every=SWEEP_FLUSH)
            check_recovered(log, set(range(next_seq)) - lost, 0, next_seq - 1)
            assert log.next_seq == next_seq + SWEEP_FLUSH and log.trimmed == 0
            # the streamer walks the hole record by record, then reads on
            assert [log.boot(s) for s in sorted(lost)] == [NO_RECORD] * len(lost)
            log.close()
    path.write_bytes(image)


def test_both_header_copies_lost_drops_the_segment_but_not_its_seqs(tmp_path):
    src, first, next_seq = crashed_image(tmp_path)
    path = src / f"seg_{first}.log"
    bad = bytearray(path.read_bytes())
    bad[5] ^= 1
    bad[16 + 5] ^= 1
    path.write_bytes(bad)
    log = FlashLog(str(src), segment_bytes=SWEEP_SEGMENT, flush_every=SWEEP_FLUSH)
    assert log.bad_headers == 1
    check_recovered(log, set(), first, next_seq - 1)
    # its bytes count as records: (size - header) // 2 >= the records it held
    assert log.next_seq == first + (len(bad) - HDR_BYTES) // 2 + SWEEP_FLUSH > next_seq
    assert log.append(0, 1, 1) == log.next_seq - 1


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 60), segment=st.integers(80, 260), flush=st.integers(1, 6),
       cut_back=st.integers(0, 60), pos_back=st.integers(1, 80), value=st.integers(0, 255))
def test_any_tail_cut_plus_any_corrupt_byte_recovers_exactly_the_intact_records(
        tmp_path, n, segment, flush, cut_back, pos_back, value):
    case = tmp_path / f"case_{n}_{segment}_{flush}_{cut_back}_{pos_back}_{value}"
    shutil.rmtree(case, ignore_errors=True)
    log = FlashLog(str(case), segment_bytes=segment, flush_every=flush, boot_id=1)
    fill(log, n)
    log.close()
    active = segment_files(case)[-1]
    first = int(active[4:-4])
    path = case / active
    image = bytearray(path.read_bytes())
    blocks = parse_segment(bytes(image))[3]
    cut = max(0, len(image) - cut_back)
    image = image[:cut]
    hit = None
    if image and pos_back <= len(image):
        pos = len(image) - pos_back
        if image[pos] != value:
            image[pos] = value
            hit = pos
    path.write_bytes(bytes(image))
    again = FlashLog(str(case), segment_bytes=segment, flush_every=flush, boot_id=2)
    header_ok = cut >= HDR_BYTES
    good = set()
    for b in blocks:
        if header_ok and b.end <= cut and not (hit is not None and b.pos <= hit < b.end):
            good |= {first + b.seq_off + k for k in range(b.count)}
    for seq in range(n):
        expected_ok = seq < first or seq in good
        assert record_of(again, seq) == ((1, *sample(seq)) if expected_ok else MISSING), seq
    expected = expected_next_seq(first, blocks if header_ok else [], cut,
                                 hit if hit is None or hit >= HDR_BYTES else None, flush)
    assert again.next_seq == expected
    if n - max(good | {first - 1}) - 1 <= flush:     # lost no more than a power loss can
        assert again.next_seq >= n                   # never reuses a handed-out seq
    assert again.append(0, 0, 0) == again.next_seq - 1 >= max(good | {first})


# --- full log and gaps ---------------------------------------------------------------------------

def fill_until_full(log: FlashLog, start: int = 0) -> int:
    i = start
    while not log.is_full():
        assert log.append(*sample(i)) == i
        i += 1
    return i


def test_full_log_refuses_counts_the_loss_in_a_gap_and_resumes_after_ack(tmp_path):
    d = tmp_path / "log"
    log = FlashLog(str(d), segment_bytes=80, max_segments=2, flush_every=2, boot_id=5)
    n = fill_until_full(log)
    assert n >= log.capacity == 2 * segment_records_min(80)
    second = int(segment_files(d)[1][4:-4])
    assert log.append(1, 500, 10) == LOG_FULL
    assert log.append(1, 510, 11) == LOG_FULL
    assert log.append(2, 520, 12) == LOG_FULL
    assert log.dropped_total == 3 and log.next_seq == n
    [gap] = log.gaps()
    assert (gap.seq_at, gap.boot_id, gap.first_tick, gap.last_tick) == (n, 5, 500, 520)
    assert gap.counts == [0, 2, 1, 0] and gap.count == 3

    # the gap survives a power loss with its exact counts
    crashed = power_loss(d, tmp_path / "crashed")
    [kept] = FlashLog(str(crashed), segment_bytes=80, max_segments=2).gaps()
    assert (kept.seq_at, kept.boot_id, kept.first_tick, kept.last_tick, kept.counts) == (
        n, 5, 500, 520, [0, 2, 1, 0])

    log.ack(second - 1)                          # frees the first segment
    assert not log.is_full()
    assert log.append(0, 530, 13) == n           # logging resumes, the gap closes before n
    assert log.append(1, 540, 14) == n + 1
    assert [g.seq_at for g in log.gaps()] == [n]
    log.ack(n - 1)                               # acks seqs before the gap: gap stays
    assert [g.seq_at for g in log.gaps()] == [n]
    log.ack(n)                                   # the sample after the gap: gap acknowledged
    assert log.gaps() == []
    log.close()
    assert FlashLog(str(d), segment_bytes=80, max_segments=2).gaps() == []


def test_capacity_is_a_floor_even_for_worst_case_records(tmp_path):
    # Large records (24-bit value swings), each alone in its block (a flush per append): the
    # log still holds `capacity` records.
    log = FlashLog(str(tmp_path / "log"), segment_bytes=300, max_segments=3, flush_every=1)
    i = 0
    while not log.is_full():
        assert log.append(2, i * 1000, 0x7FFFFF if i % 2 else 0) == i
        i += 1
    assert i >= log.capacity == 3 * segment_records_min(300)
    assert log.capacity > 0 and all(log.value(s) == (0x7FFFFF if s % 2 else 0) for s in range(i))


def test_append_gap_reports_samples_not_taken_and_merges(tmp_path):
    d = tmp_path / "log"
    log = FlashLog(str(d), boot_id=2)
    fill(log, 3)
    log.append_gap(1, 100, 160, 12)              # e.g. UV sampled slower than configured
    log.append_gap(0, 90, 150, 6)
    [gap] = log.gaps()
    assert (gap.seq_at, gap.first_tick, gap.last_tick, gap.counts) == (3, 90, 160, [6, 12, 0, 0])
    assert log.append(1, 170, 5) == 3
    log.append_gap(3, 180, 180, 1)               # a new place in the stream: a second gap
    assert [(g.seq_at, g.count) for g in log.gaps()] == [(3, 18), (4, 1)]
    with pytest.raises(ValueError):
        log.append_gap(0, 10, 5, 1)
    log.close()
    assert [(g.seq_at, g.count) for g in FlashLog(str(d)).gaps()] == [(3, 18), (4, 1)]


def test_gap_file_stays_small_while_a_long_outage_is_counted(tmp_path):
    d = tmp_path / "log"
    log = FlashLog(str(d), segment_bytes=60, max_segments=1)
    fill_until_full(log)
    for i in range(500):
        assert log.append(i % 4, 100 + i, 1) == LOG_FULL
    assert log.gaps()[0].count == 500 == log.dropped_total
    assert (d / "gaps.log").stat().st_size <= 10 * 36
    assert FlashLog(str(d), segment_bytes=60, max_segments=1).gaps()[0].count == 500


# --- capacity ----------------------------------------------------------------------------------

TICKS_PER_S = 10
DAY_S = 86_400
SAMPLES_PER_DAY = 30_528
# Raspberry Pi Pico W: MicroPython's rp2 port gives the filesystem
# MICROPY_HW_FLASH_STORAGE_BYTES = 848 * 1024 (ports/rp2/boards/RPI_PICO_W/mpconfigboard.h),
# LittleFS v2 on 4 KiB erase blocks (FLASH_SECTOR_SIZE): 212 blocks.
PICO_W_FS_BYTES = 848 * 1024


def default_rate_schedule(days: int) -> list[tuple[int, int]]:
    """(second, channel) of every sample at the default rates: temperature 10 s, UV 5 s
    (1 s during one outdoor hour a day with UVI > 0.5), hydration 60 s, battery 300 s."""
    events = []
    for day in range(days):
        t0 = day * DAY_S
        events += [(t0 + s, 0) for s in range(0, DAY_S, 10)]
        outdoor = range(12 * 3600, 13 * 3600)
        events += [(t0 + s, 1) for s in range(0, DAY_S, 5) if s not in outdoor]
        events += [(t0 + s, 1) for s in outdoor]
        events += [(t0 + s, 2) for s in range(0, DAY_S, 60)]
        events += [(t0 + s, 3) for s in range(0, DAY_S, 300)]
    events.sort()
    return events


def realistic_week() -> list[tuple[int, int, int]]:
    """(channel, tick, value) for 7 days at default rates, in wire units, from the patch's
    environment model (indoors, one outdoor hour at noon, midsummer at 45 N) plus sensor noise:
    TMP117 sigma 1.5 LSB (12 m degC), UV 1 (0.01 UVI), FDC1004 20 fF, fuel gauge 1 LSB."""
    from sensor_drivers.environment_model import PatchEnvironment

    env = PatchEnvironment(seed=7, default_location="indoor")
    for day in range(7):
        env.set_location("outdoor", day * DAY_S + 12 * 3600, day * DAY_S + 13 * 3600)
        env.add_exercise(day * DAY_S + 18 * 3600, 40 * 60, intensity=0.7)
    env.apply_moisturiser(2 * DAY_S + 8 * 3600)
    rng = random.Random(5)
    out = []
    for s, channel in default_rate_schedule(7):
        if channel == 0:
            value = round(env.skin_temp_c_at(s) / 0.0078125 + rng.gauss(0, 1.5))
        elif channel == 1:
            value = max(0, round(env.uv_index_at(s) * 100 + rng.gauss(0, 1)))
        elif channel == 2:
            value = round(env.capacitance_pf_at(s) * 1000 + rng.gauss(0, 20))
        else:
            value = round(env.battery_soc_pct_at(s) * 256 + rng.gauss(0, 1))
        out.append((channel, s * TICKS_PER_S, value))
    return out


def firmware_blocks_on_lfs() -> int:
    """LittleFS blocks the firmware files `dermtwin flash` puts on a patch take (from the
    tools/build_firmware.py output; each file at least one 4 KiB block)."""
    import tempfile

    from gateway.provision import firmware_files
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, str(REPO / "tools" / "build_firmware.py"), "--out", out],
                       check=True, capture_output=True)
        return sum(max(1, math.ceil(local.stat().st_size / LFS_BLOCK_BYTES))
                   for local, _ in firmware_files(out))


def test_seven_days_at_default_rates_fit_a_pico_w(tmp_path):
    week = realistic_week()
    assert len(week) == 7 * SAMPLES_PER_DAY == 213_696
    ranges = [(min(v for ch, _, v in week if ch == c), max(v for ch, _, v in week if ch == c))
              for c in range(4)]
    print("\nvalue ranges per channel:", ranges)
    (t0, t1), (u0, u1), (h0, h1), (b0, b1) = ranges
    assert 4000 <= t0 < t1 <= 4800 and t1 - t0 > 100            # 31..37.5 degC, it moves
    assert u0 == 0 and 500 < u1 <= 1200                          # outdoor noon: UVI 5..12
    assert 10_000 <= h0 < h1 <= 20_000 and h1 - h0 > 500         # 10..20 pF, moisturiser
    assert 10_000 <= b0 < b1 <= 25_600                           # 100 % .. ~40 %
    d = tmp_path / "log"
    log = FlashLog(str(d), max_segments=200)
    for i, sample_ in enumerate(week):
        assert log.append(*sample_) == i
    log.close()
    files = segment_files(d)
    total = sum((d / name).stat().st_size for name in files)
    per_sample = total / len(week)
    print(f"\n7 days at default rates: {len(week)} samples, {total} B in {len(files)} "
          f"segments of <= {DEFAULT_SEGMENT_BYTES} B: {per_sample:.3f} B/sample")
    assert per_sample <= 3.0
    assert all((d / name).stat().st_size <= DEFAULT_SEGMENT_BYTES for name in files)
    assert segment_blocks() == 2                                 # 8176 B: two LittleFS blocks

    # The Pico W: 212 blocks, minus the firmware files, minus the log's 8-block reserve.
    fw_blocks = firmware_blocks_on_lfs()
    fit = segments_that_fit(PICO_W_FS_BYTES - fw_blocks * LFS_BLOCK_BYTES)
    print(f"Pico W: {PICO_W_FS_BYTES // LFS_BLOCK_BYTES} blocks, firmware {fw_blocks} blocks, "
          f"room for {fit} segments ({fit * segment_blocks()} blocks); 7 days need {len(files)} "
          f"segments ({len(files) * segment_blocks()} blocks, {total / 1024:.0f} KiB of data)")
    assert fw_blocks <= 40                       # the 150 KB the Pico W budget assumes
    assert len(files) * 1.1 <= fit               # with >= 10 % margin (reboots, wetter weeks)
    assert len(files) <= DEFAULT_MAX_SEGMENTS

    again = FlashLog(str(d), boot_id=1, max_segments=200)     # reboot: recover every segment
    assert again.trimmed == again.bad_headers == 0
    assert again.oldest_seq == 0 and len(again) == len(week)
    assert again.next_seq == len(week) + again.flush_every
    for seq in range(len(week)):                               # every sample, exactly
        assert (again.boot(seq), again.channel(seq), again.tick(seq), again.value(seq)) == (
            0, *week[seq]), seq
    again.ack(len(week) - 1)
    assert len(os.listdir(d)) == 2                               # newest segment + acked


def test_what_fits_on_the_boards():
    assert segment_blocks() == 2 and segment_blocks(4096 - 1) == 1 and segment_blocks(8192) == 3
    per_segment = 213_696 / 73            # measured above: 73 segments a week, ~2,900 each
    # ESP32-S3 (8 MB flash: MicroPython's vfs partition is about 6 MB)
    esp32s3 = segments_that_fit(6 * 1024 * 1024) * per_segment / SAMPLES_PER_DAY
    # ESP32-C3 / 4 MB boards (vfs about 2 MB)
    esp32_4mb = segments_that_fit(2 * 1024 * 1024) * per_segment / SAMPLES_PER_DAY
    # Pico W: 848 KB filesystem, about 150 KB of it taken by the firmware files
    pico_w = segments_that_fit((848 - 150) * 1024) * per_segment / SAMPLES_PER_DAY
    assert esp32s3 > 60 and esp32_4mb > 20 and 7.5 < pico_w < 9
    # worst case (every record a flush of its own, 18 B): still a floor on the count
    assert segment_records_min() == (DEFAULT_SEGMENT_BYTES - HDR_BYTES - 27) // 18 + 1


def test_ack_one_short_of_a_segment_end_keeps_the_segment_and_its_last_record(tmp_path):
    d = tmp_path / "log"
    log = FlashLog(str(d), segment_bytes=96, max_segments=8, flush_every=2)
    fill(log, 30)
    names = segment_files(d)
    last_of_first = int(names[1][4:-4]) - 1   # the first segment's last seq
    log.ack(last_of_first - 1)
    assert segment_files(d) == names, "the segment still holds an unacknowledged record"
    assert log.oldest_seq == last_of_first and len(log) == 30 - last_of_first
    assert record_of(log, last_of_first) == (0, *sample(last_of_first))
    reopened = FlashLog(str(d), segment_bytes=96, max_segments=8, flush_every=2)
    assert record_of(reopened, last_of_first) == (0, *sample(last_of_first)), "after reboot"
    reopened.ack(last_of_first)
    assert segment_files(d) == names[1:]


# --- found by the mutation run (make mutate) ---------------------------------------------------

def test_blocks_of_the_largest_records_fill_to_the_last_byte_and_read_back(tmp_path):
    # 9-byte records (a 4-byte tick step and a 4-byte value step) after 0..8 two-byte ones,
    # no sync in between (a sync ends the block early):
    # some block's body then ends within a record of its 255-byte limit, so its CRC lands
    # on the write buffer's last bytes.
    for pad in range(9):
        log = FlashLog(str(tmp_path / f"pad{pad}"), boot_id=3, flush_every=1000)
        expected = {}
        tick = 1 << 22
        for _ in range(pad):
            tick += 1
            expected[log.append(0, tick, 100)] = (0, tick, 100)
        for i in range(80):
            tick += (1 << 21) if i % 2 == 0 else -(1 << 21)
            value = 0x7FFFFF if i % 2 == 0 else 0
            expected[log.append(2, tick, value)] = (2, tick, value)
        log.flush()
        for seq, (channel, tick, value) in expected.items():
            assert record_of(log, seq) == (3, channel, tick, value), (pad, seq)
        log.close()


def test_boot_zero_records_are_records_and_a_hole_reads_as_minus_one(tmp_path):
    d = tmp_path / "log"
    log = FlashLog(str(d), segment_bytes=120, flush_every=4, boot_id=0)
    seqs = fill(log, 10)
    log.close()
    log = FlashLog(str(d), segment_bytes=120, flush_every=4, boot_id=1)
    hole = seqs[-1] + 1        # the seqs a reboot skips hold nothing
    assert hole < log.next_seq
    assert log.boot(seqs[0]) == 0 and log.next_record(seqs[0]) == seqs[0]
    assert log.boot(hole) == -1 == NO_RECORD
    log.close()


def test_reading_on_through_acks_that_delete_the_segment_being_read(tmp_path):
    # The read handle belongs to a segment an ACK deletes; later reads, in whatever ring slot,
    # must open their own segment.
    log = FlashLog(str(tmp_path / "log"), segment_bytes=120, max_segments=4, flush_every=4,
                   boot_id=5)
    written = {}
    i = 0
    for _ in range(30):
        for _ in range(12):
            written[log.append(*sample(i))] = sample(i)
            i += 1
        log.flush()
        held = [s for s in written if s >= log.oldest_seq]
        for seq in held:
            assert record_of(log, seq) == (5, *written[seq]), seq
        log.ack(held[len(held) // 2])
    log.close()


def test_a_segment_file_that_cannot_be_created_is_tried_again_on_the_next_append(
        tmp_path, monkeypatch):
    import firmware.flash_log as flash_log_module

    log = FlashLog(str(tmp_path / "log"), segment_bytes=120, flush_every=4, boot_id=2)
    fill(log, 3)
    segments = len(segment_files(tmp_path / "log"))
    i = 3
    while True:   # fill the active segment until the next append needs a new one
        if log._needs_segment(sample(i)[1]):
            break
        log.append(*sample(i))
        i += 1

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(flash_log_module, "open", no_space, raising=False)
    with pytest.raises(OSError):
        log.append(*sample(i))
    monkeypatch.undo()
    seq = log.append(*sample(i))     # the flash has room again
    log.flush()
    assert len(segment_files(tmp_path / "log")) == segments + 1
    assert record_of(log, seq) == (2, *sample(i))
    log.close()


def test_a_block_holds_at_most_64_records(tmp_path):
    d = tmp_path / "log"
    log = FlashLog(str(d), boot_id=1, flush_every=1000)
    for i in range(200):
        log.append(0, 10 * i, 100)      # two bytes each: only the record limit ends a block
    log.flush()
    [segment] = segment_files(d)
    _, _, _, blocks = parse_segment((d / segment).read_bytes())
    assert [b.count for b in blocks] == [64, 64, 64, 8]
    log.close()
