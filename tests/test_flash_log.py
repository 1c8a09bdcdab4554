"""The power-loss-safe flash log (firmware/flash_log.py) on CPython, on a temporary directory.

A power loss is simulated by copying the log directory while the log is still open: the copy
holds what reached the file (what flush() pushed), not what sits in the writer's buffer, just
as flash holds only synced data. Torn writes and bit rot are simulated by truncating and
corrupting the copy at every byte offset of its newest records.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.flash_log import (
    DEFAULT_MAX_SEGMENTS,
    DEFAULT_SEGMENT_RECORDS,
    HDR_BYTES,
    LOG_FULL,
    NO_RECORD,
    REC_BYTES,
    FlashLog,
    crc16,
    segment_blocks,
    segment_bytes,
    segments_that_fit,
)


def sample(i: int) -> tuple[int, int, int]:
    """A deterministic (channel, tick, value) for the i-th sample, values in range."""
    channel = i % 4
    value = (-3000 + 37 * i, 7 * i % 65536, 25_000 + 11 * i, 65535 - i % 65536)[channel]
    return channel, 10 * i, value


def fill(log: FlashLog, n: int, start: int = 0) -> list[int]:
    return [log.append(*sample(i)) for i in range(start, start + n)]


def record_of(log: FlashLog, seq: int) -> tuple[int, int, int, int]:
    return log.boot(seq), log.channel(seq), log.tick(seq), log.value(seq)


def power_loss(src: Path, dst: Path) -> Path:
    """The directory as flash would hold it if power failed now."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def segment_files(directory: Path) -> list[str]:
    return sorted((p.name for p in directory.iterdir() if p.name.startswith("seg_")),
                  key=lambda name: int(name[4:-4]))


def test_crc16_is_ccitt_false():
    assert crc16(b"123456789", 9) == 0x29B1  # the catalogued check value


def test_append_read_ack_and_whole_segment_deletion(tmp_path):
    d = tmp_path / "log"
    log = FlashLog(str(d), segment_records=4, max_segments=8, flush_every=2)
    assert log.next_seq == log.oldest_seq == 0 and len(log) == 0
    assert fill(log, 10) == list(range(10))
    for seq in range(10):
        assert record_of(log, seq) == (0, *sample(seq))
    assert record_of(log, 10) == (NO_RECORD, NO_RECORD, 0, 0)
    assert segment_files(d) == ["seg_0.log", "seg_4.log", "seg_8.log"]
    assert (d / "seg_0.log").stat().st_size == segment_bytes(4)

    log.ack(5)                             # seg_0 fully acknowledged, seg_4 not
    assert log.oldest_seq == 6 and len(log) == 4
    assert segment_files(d) == ["seg_4.log", "seg_8.log"]
    assert record_of(log, 3)[0] == NO_RECORD and record_of(log, 6) == (0, *sample(6))
    log.ack(2)                             # an old ACK changes nothing
    assert log.oldest_seq == 6
    log.ack(10_000)                        # beyond what exists: only what exists
    assert log.oldest_seq == log.next_seq == 10 and len(log) == 0
    # the newest segment stays: it carries the seq extent the next boot starts after
    assert segment_files(d) == ["seg_8.log"]


def test_reads_interleaved_with_appends_and_values_at_the_limits(tmp_path):
    log = FlashLog(str(tmp_path / "log"), segment_records=16, flush_every=4)
    limits = [(0, -32768), (0, 32767), (1, 0), (1, 65535), (2, 0), (2, 0x7FFFFF), (3, 65535)]
    for i, (channel, value) in enumerate(limits):
        seq = log.append(channel, 1000 + i, value)
        assert record_of(log, seq) == (0, channel, 1000 + i, value)
        assert record_of(log, 0)[1:] == (0, 1000, -32768)   # re-read an older one
    for bad in [(0, 0, 32768), (1, 0, -1), (2, 0, 0x800000), (3, 0, 65536), (4, 0, 1)]:
        with pytest.raises(ValueError):
            log.append(*bad)
    assert log.next_seq == len(limits)


def test_long_tick_gaps_start_a_new_segment(tmp_path):
    log = FlashLog(str(tmp_path / "log"), segment_records=100)
    log.append(0, 5, 1)
    log.append(0, 5 + 0x1FFFFF, 2)          # largest offset that fits 21 bits
    log.append(0, 6 + 0x1FFFFF, 3)          # needs a new segment (base tick moves)
    assert [log.tick(s) for s in range(3)] == [5, 5 + 0x1FFFFF, 6 + 0x1FFFFF]
    assert segment_files(tmp_path / "log") == ["seg_0.log", "seg_2.log"]


def test_reboot_keeps_unacked_records_and_never_reuses_a_seq(tmp_path):
    d = tmp_path / "log"
    log = FlashLog(str(d), segment_records=8, flush_every=4, boot_id=7)
    fill(log, 21)                  # seqs 0..20; 0..19 flushed (every 4th), 20 still buffered
    log.ack(9)
    crashed = power_loss(d, tmp_path / "after")
    log.close()

    log2 = FlashLog(str(crashed), segment_records=8, flush_every=4, boot_id=8)
    assert log2.oldest_seq == 10                           # acked stays acked
    assert [record_of(log2, s) for s in range(10, 20)] == [(7, *sample(s)) for s in range(10, 20)]
    assert log2.boot(20) == NO_RECORD                      # never reached flash
    # next seq = extent of the newest segment (20) + flush_every: above every seq handed out
    assert log2.next_seq == 24 and log2.next_seq > 20
    assert len(log2) == 10
    seq = log2.append(0, 3, 42)
    assert seq == 24 and record_of(log2, 24) == (8, 0, 3, 42)
    assert "seg_24.log" in segment_files(crashed)          # a boot starts its own segment
    assert [log2.boot(s) for s in range(20, 24)] == [NO_RECORD] * 4   # the reboot's hole
    assert log2.next_record(20) == 24 and log2.next_record(12) == 12
    log2.ack(19)                   # the gateway acks up to the hole: oldest skips it
    assert log2.oldest_seq == 24 and len(log2) == 1
    assert segment_files(crashed) == ["seg_24.log"]

    log3 = FlashLog(str(crashed), segment_records=8, flush_every=4, boot_id=9)
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
    log = FlashLog(str(d), segment_records=64, flush_every=16)
    fill(log, 3)
    assert power_loss(d, tmp_path / "before").joinpath("seg_0.log").stat().st_size == HDR_BYTES
    assert log.value(2) == sample(2)[2]    # the streamer reads seq 2 to send it ...
    after = power_loss(d, tmp_path / "after")
    assert (after / "seg_0.log").stat().st_size == HDR_BYTES + 3 * REC_BYTES   # ... so it is durable
    assert FlashLog(str(after)).value(2) == sample(2)[2]


# --- power loss at every byte ------------------------------------------------------------------

SWEEP_SEGMENT = 16
SWEEP_FLUSH = 4


def crashed_image(tmp_path: Path) -> tuple[Path, int]:
    """A log of two full segments + 6 records (seqs 32..37) in the active one, all flushed."""
    src = tmp_path / "src"
    log = FlashLog(str(src), segment_records=SWEEP_SEGMENT, flush_every=SWEEP_FLUSH, boot_id=3)
    fill(log, 2 * SWEEP_SEGMENT + 6)
    log.ack(3)
    log.flush()
    return src, log.next_seq


def check_recovered(log: FlashLog, intact: set[int], first: int, last_seq: int) -> None:
    """Every intact record (and the full older segments) comes back; no other one does."""
    for seq in range(4, last_seq + 1):
        if seq < first or seq in intact:
            assert record_of(log, seq) == (3, *sample(seq)), seq
        else:
            assert record_of(log, seq) == (NO_RECORD, NO_RECORD, 0, 0), seq
    assert log.oldest_seq == 4


def test_truncation_at_every_byte_of_the_active_segment(tmp_path):
    src, next_seq = crashed_image(tmp_path)
    first = 2 * SWEEP_SEGMENT                               # seqs 32..37 live in seg_32
    path = src / f"seg_{first}.log"
    image = path.read_bytes()
    assert len(image) == HDR_BYTES + 6 * REC_BYTES
    for cut in range(len(image) + 1):
        path.write_bytes(image[:cut])
        log = FlashLog(str(src), segment_records=SWEEP_SEGMENT, flush_every=SWEEP_FLUSH)
        complete = (cut - HDR_BYTES) // REC_BYTES if cut >= HDR_BYTES else 0
        check_recovered(log, set(range(first, first + complete)), first, next_seq - 1)
        started = -(-(cut - HDR_BYTES) // REC_BYTES) if cut > HDR_BYTES else 0  # incl. a torn one
        assert log.next_seq == first + started + SWEEP_FLUSH, cut
        assert log.next_seq > first + started - 1               # above every seq on flash
        if next_seq - (first + complete) < SWEEP_FLUSH:         # lost only unflushed-sized tail
            assert log.next_seq >= next_seq, cut                # never reuses a handed-out seq
        assert len(log) == 28 + complete
        log.close()
    path.write_bytes(image)


def test_corruption_of_every_byte_of_the_newest_records(tmp_path):
    src, next_seq = crashed_image(tmp_path)
    first = 2 * SWEEP_SEGMENT
    path = src / f"seg_{first}.log"
    image = path.read_bytes()
    all_records = set(range(first, next_seq))
    for pos in range(len(image)):
        for flip in (0x01, 0x80, 0xFF, 0x5A):
            bad = bytearray(image)
            bad[pos] ^= flip
            path.write_bytes(bad)
            log = FlashLog(str(src), segment_records=SWEEP_SEGMENT, flush_every=SWEEP_FLUSH)
            if pos < HDR_BYTES:             # one header copy hit: the other one serves
                intact = all_records
            else:
                intact = all_records - {first + (pos - HDR_BYTES) // REC_BYTES}
            check_recovered(log, intact, first, next_seq - 1)
            assert log.next_seq == next_seq + SWEEP_FLUSH, (pos, flip)
            assert log.trimmed == (1 if pos >= len(image) - REC_BYTES else 0)
            log.close()
    path.write_bytes(image)


def test_both_header_copies_lost_drops_the_segment_but_not_its_seqs(tmp_path):
    src, next_seq = crashed_image(tmp_path)
    path = src / "seg_32.log"
    bad = bytearray(path.read_bytes())
    bad[5] ^= 1
    bad[16 + 5] ^= 1
    path.write_bytes(bad)
    log = FlashLog(str(src), segment_records=SWEEP_SEGMENT, flush_every=SWEEP_FLUSH)
    assert log.bad_headers == 1
    check_recovered(log, set(), 32, next_seq - 1)
    assert log.next_seq == next_seq + SWEEP_FLUSH
    assert log.append(0, 1, 1) == next_seq + SWEEP_FLUSH


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 40), seg=st.integers(1, 12), cut_back=st.integers(0, 40),
       pos_back=st.integers(1, 40), value=st.integers(0, 255), data=st.data())
def test_any_tail_cut_plus_any_corrupt_byte_recovers_exactly_the_intact_records(
        tmp_path, n, seg, cut_back, pos_back, value, data):
    case = tmp_path / f"case_{n}_{seg}_{cut_back}_{pos_back}_{value}"
    shutil.rmtree(case, ignore_errors=True)
    log = FlashLog(str(case), segment_records=seg, flush_every=3, boot_id=1)
    fill(log, n)
    log.close()
    active = segment_files(case)[-1]
    first = int(active[4:-4])
    path = case / active
    image = bytearray(path.read_bytes())
    cut = max(0, len(image) - cut_back)
    image = image[:cut]
    hit = None
    if image and pos_back <= len(image):
        pos = len(image) - pos_back
        if image[pos] != value:
            image[pos] = value
            hit = pos
    path.write_bytes(bytes(image))
    again = FlashLog(str(case), segment_records=seg, flush_every=3, boot_id=2)
    complete = (cut - HDR_BYTES) // REC_BYTES if cut >= HDR_BYTES else 0
    header_ok = cut >= HDR_BYTES and not (hit is not None and hit < HDR_BYTES and cut < 2 * 16)
    for seq in range(n):
        if seq < first:
            expected_ok = True
        else:
            expected_ok = header_ok and seq - first < complete and not (
                hit is not None and hit >= HDR_BYTES and (hit - HDR_BYTES) // REC_BYTES == seq - first)
        got = record_of(again, seq)
        assert got == ((1, *sample(seq)) if expected_ok else (NO_RECORD, NO_RECORD, 0, 0)), seq
    started = -(-(cut - HDR_BYTES) // REC_BYTES) if cut > HDR_BYTES else 0
    assert again.next_seq == first + started + 3
    assert again.append(0, 0, 0) == again.next_seq - 1 >= first + started


# --- full log and gaps ---------------------------------------------------------------------------

def test_full_log_refuses_counts_the_loss_in_a_gap_and_resumes_after_ack(tmp_path):
    d = tmp_path / "log"
    log = FlashLog(str(d), segment_records=4, max_segments=2, flush_every=2, boot_id=5)
    assert log.capacity == 8
    fill(log, 8)
    assert log.is_full()
    assert log.append(1, 500, 10) == LOG_FULL
    assert log.append(1, 510, 11) == LOG_FULL
    assert log.append(2, 520, 12) == LOG_FULL
    assert log.dropped_total == 3 and log.next_seq == 8
    [gap] = log.gaps()
    assert (gap.seq_at, gap.boot_id, gap.first_tick, gap.last_tick) == (8, 5, 500, 520)
    assert gap.counts == [0, 2, 1, 0] and gap.count == 3

    # the gap survives a power loss with its exact counts
    crashed = power_loss(d, tmp_path / "crashed")
    [kept] = FlashLog(str(crashed), segment_records=4, max_segments=2).gaps()
    assert (kept.seq_at, kept.boot_id, kept.first_tick, kept.last_tick, kept.counts) == (
        8, 5, 500, 520, [0, 2, 1, 0])

    log.ack(3)                                   # frees seg_0
    assert not log.is_full()
    assert log.append(0, 530, 13) == 8           # logging resumes, the gap closes before seq 8
    assert log.append(1, 540, 14) == 9
    assert [g.seq_at for g in log.gaps()] == [8]
    log.ack(7)                                   # acks seqs before the gap: gap stays
    assert [g.seq_at for g in log.gaps()] == [8]
    log.ack(8)                                   # the sample after the gap: gap acknowledged
    assert log.gaps() == []
    log.close()
    assert FlashLog(str(d), segment_records=4, max_segments=2).gaps() == []


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
    log = FlashLog(str(d), segment_records=2, max_segments=1)
    fill(log, 2)
    for i in range(500):
        assert log.append(i % 4, 100 + i, 1) == LOG_FULL
    assert log.gaps()[0].count == 500 == log.dropped_total
    assert (d / "gaps.log").stat().st_size <= 10 * 36
    assert FlashLog(str(d), segment_records=2, max_segments=1).gaps()[0].count == 500


# --- capacity ----------------------------------------------------------------------------------

TICKS_PER_S = 10
DAY_S = 86_400


def default_rate_schedule(days: int):
    """(tick, channel) of every sample at the default rates: temperature 10 s, UV 5 s
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
    return [(t * TICKS_PER_S, ch) for t, ch in events]


def test_seven_days_at_default_rates_fit_the_documented_capacity(tmp_path):
    schedule = default_rate_schedule(7)
    assert len(schedule) == 7 * 30_528 == 213_696
    d = tmp_path / "log"
    log = FlashLog(str(d))                      # defaults: 1018 records x 216 segments
    assert log.capacity == DEFAULT_SEGMENT_RECORDS * DEFAULT_MAX_SEGMENTS >= len(schedule)
    for i, (tick, channel) in enumerate(schedule):
        assert log.append(channel, tick, i % 30_000) == i
    log.close()
    files = segment_files(d)
    assert len(files) == -(-len(schedule) // DEFAULT_SEGMENT_RECORDS) == 210
    total = sum((d / name).stat().st_size for name in files)
    assert total == len(files) * HDR_BYTES + len(schedule) * REC_BYTES   # 1,716,288 B
    assert segment_blocks() == 2 and total <= len(files) * 2 * 4096      # <= 1.72 MB on LittleFS

    again = FlashLog(str(d), boot_id=1)         # reboot: recover 210 segments
    assert again.oldest_seq == 0 and len(again) == len(schedule)
    for seq in (0, 1017, 1018, 100_000, len(schedule) - 1):
        tick, channel = schedule[seq]
        assert record_of(again, seq) == (0, channel, tick, seq % 30_000)
    appended = 0
    while again.append(0, 10**6, 0) != LOG_FULL:
        appended += 1
    assert appended == (DEFAULT_MAX_SEGMENTS - 210) * DEFAULT_SEGMENT_RECORDS
    again.ack(len(schedule) - 1)
    assert len(os.listdir(d)) <= 2 + DEFAULT_MAX_SEGMENTS - 210


def test_what_fits_on_the_boards():
    blocks_per_segment = segment_blocks()
    assert blocks_per_segment == 2 and segment_bytes() == 8176
    per_day = 30_528
    # ESP32-S3 (8 MB flash: MicroPython's vfs partition is about 6 MB)
    esp32s3 = segments_that_fit(6 * 1024 * 1024) * DEFAULT_SEGMENT_RECORDS / per_day
    # ESP32-C3 / 4 MB boards (vfs about 2 MB)
    esp32_4mb = segments_that_fit(2 * 1024 * 1024) * DEFAULT_SEGMENT_RECORDS / per_day
    # Pico W: 848 KB filesystem, about 150 KB of it taken by the firmware files
    pico_w = segments_that_fit((848 - 150) * 1024) * DEFAULT_SEGMENT_RECORDS / per_day
    assert esp32s3 > 25 and esp32_4mb > 8 and 2.5 < pico_w < 3.5
