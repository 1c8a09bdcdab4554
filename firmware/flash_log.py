# Samples not yet acknowledged by the gateway, on flash, addressed by seq (design.md §1, issue 4).
#
# Same interface as sample_log.SampleLog (append/channel/tick/value/ack, oldest_seq, next_seq,
# len, is_full) plus boot(seq), next_record(seq), flush(), gaps(), append_gap() and
# dropped_total.
#
# Layout: a directory of segment files `seg_<first_seq>.log`, append-only, one boot each.
#   header  32 B  two identical copies of: b"DTL", version u8, first_seq u32, boot_id u16,
#                 base_tick u32, crc16 u16 (over the 14 bytes before it). Written and flushed
#                 before the segment's first record; a corrupt copy is survived.
#   record   8 B  u24 w = tick_offset << 3 | channel << 1 | 1   (tick_offset = tick - base_tick,
#                 21 bits = 2.4 days; bit 0 set so an all-zero record never parses), then
#                 i24 value, then crc16 over seq(u32) + those 6 bytes. The seq is implicit
#                 (first_seq + index) but covered by the CRC, so a record read at the wrong
#                 place fails. An all-0xFF record decodes as battery = -1: out of range, refused.
#   All little-endian. CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF), table-driven: it detects
#   every error confined to 16 consecutive bits, i.e. any single corrupted byte.
# Default 1018 records per segment: 32 + 8 x 1018 = 8176 B, exactly two 4 KiB LittleFS blocks
# (the second block gives 4 bytes to its CTZ skip-list pointer).
#
# Seqs: the log is the source of truth. At boot, next_seq = (extent of the newest segment,
# counting a torn record) + flush_every, or the persisted acked watermark, or the caller's
# first_seq floor, whichever is largest. At most flush_every - 1 appended records are ever
# unflushed, so every seq handed out before the power loss is below the new next_seq: a seq is
# never reused. A reboot therefore leaves a hole of up to flush_every seqs; a record that fails
# its CRC is a hole of one. boot(seq) returns NO_RECORD for a hole; next_record() skips them.
#
# Durability: a record is flushed (LittleFS: file.flush() == lfs_file_sync) every flush_every
# appends, at a segment change, on flush(), and before it is read: the streamer reads a record
# to send it, so the gateway never holds (or ACKs) a record that is not on flash. A power loss
# loses at most the flush_every - 1 newest samples, which nobody outside the log has seen.
# Cost: each sync commits metadata and makes the next append copy the segment's partly
# written last block (littlefs cannot program a page twice), so read records only when a
# frame is due, not on every poll. At default rates flush_every = 16 is one sync per ~50 s.
# ack() persists the first unacknowledged seq (file `acked`, written to a temp file and
# renamed: atomic on LittleFS) before it deletes whole segments, so acknowledged records are
# not re-sent after a reboot. The newest segment is kept even when acknowledged: it carries
# the seq extent that the next boot starts after.
#
# Full log: when all max_segments are used, append returns LOG_FULL and counts the sample in
# an open gap (seq_at = next_seq, boot, tick range, per-channel counts); the sampler is
# expected to slow down while is_full(). Gaps live in `gaps.log`: a fixed 36-byte snapshot
# with CRC is appended at every drop (so the count survives a power loss exactly), the last
# snapshot of a gap wins, and the file is compacted by rename. A gap is deleted once the
# gateway ACKs a seq >= seq_at: it is to be sent just before the sample at seq_at, so that
# ACK covers it.
#
# Memory: appending and reading allocate nothing once warmed up (preallocated record buffers,
# readinto, the append file kept open, small ints), except when a segment starts or the read
# moves to another segment (one file object and its name, once per segment), when a gap
# opens or is persisted, and in ack(). Ticks, values and seqs stay small ints (< 2**30).
import os
import struct
from array import array

try:
    from micropython import const
except ImportError:

    def const(x):  # type: ignore[misc]  # same behaviour as micropython.const
        return x


LOG_FULL = const(-1)
NO_RECORD = const(-1)

REC_BYTES = const(8)
HDR_BYTES = const(32)  # two 16-byte copies
DEFAULT_SEGMENT_RECORDS = const(1018)  # 8176 B: two 4 KiB LittleFS blocks
# 7 days at default rates = 213,696 samples = 210 segments; + margin for reboots (each boot
# starts a segment, leaving the previous one partly filled).
DEFAULT_MAX_SEGMENTS = const(216)
DEFAULT_FLUSH_EVERY = const(16)  # at default rates one flush per ~50 s; at most 15 samples lost
LFS_BLOCK_BYTES = const(4096)

_COPY_BYTES = const(16)
_VERSION = const(1)
_TICK_OFFSET_MAX = const(0x1FFFFF)
_VALUE_SIGN = const(0x800000)
_VALUE_WRAP = const(0x1000000)
_GAP_BYTES = const(36)
_GAP_MAGIC = const(0x47)  # "G"
# inclusive value range per channel: temperature (TMP117 LSB), UV (UVI x 100), hydration (fF;
# the FDC1004 tops out near 115 pF = 115,000 fF, 24 bits hold 8.4 nF), battery (SOC register)
_CH_MIN = (-32768, 0, 0, 0)
_CH_MAX = (32767, 65535, 0x7FFFFF, 65535)


def _make_crc_table():
    table = array("H", bytes(512))
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) & 0xFFFF if c & 0x8000 else (c << 1) & 0xFFFF
        table[i] = c
    return table


_CRC_TABLE = _make_crc_table()


def crc16(buf, n):
    """CRC-16/CCITT-FALSE of buf[0:n]; allocates nothing."""
    t = _CRC_TABLE
    crc = 0xFFFF
    for i in range(n):
        crc = t[((crc >> 8) ^ buf[i]) & 0xFF] ^ ((crc << 8) & 0xFFFF)
    return crc


def segment_bytes(segment_records=DEFAULT_SEGMENT_RECORDS):
    return HDR_BYTES + REC_BYTES * segment_records


def segment_blocks(segment_records=DEFAULT_SEGMENT_RECORDS, block_bytes=LFS_BLOCK_BYTES):
    """LittleFS blocks one full segment file takes (CTZ skip-list: block i >= 1 spends
    4 * (ctz(i) + 1) bytes on pointers)."""
    size = segment_bytes(segment_records)
    blocks = 0
    room = 0
    while room < size:
        pointers = 0
        if blocks:
            i = blocks
            pointers = 1
            while not i & 1:
                i >>= 1
                pointers += 1
        room += block_bytes - 4 * pointers
        blocks += 1
    return blocks


def segments_that_fit(free_bytes, segment_records=DEFAULT_SEGMENT_RECORDS,
                      block_bytes=LFS_BLOCK_BYTES, reserve_blocks=8):
    """How many segments a filesystem with free_bytes free can hold, keeping reserve_blocks
    for metadata, the acked/gaps files and LittleFS copy-on-write headroom. Use with
    os.statvfs(dir): free_bytes = f_bsize * f_bavail."""
    blocks = free_bytes // block_bytes - reserve_blocks
    n = blocks // segment_blocks(segment_records, block_bytes)
    return n if n > 0 else 0


def segments_for_filesystem(directory, segment_records=DEFAULT_SEGMENT_RECORDS,
                            reserve_blocks=8):
    """max_segments for a log in directory (which must exist): the filesystem's free space
    plus what the log's segments already hold, so a full log does not shrink its own limit."""
    st = os.statvfs(directory)  # f_bsize, f_frsize, f_blocks, f_bfree, ...
    held = 0
    for name in os.listdir(directory):
        if name.startswith("seg_") and name.endswith(".log"):
            held += 1
    block = st[0]
    free = st[0] * st[3] + held * segment_blocks(segment_records, block) * block
    return segments_that_fit(free, segment_records, block, reserve_blocks)


class Gap:
    """Samples the patch could not log (log full, or reported with append_gap): they would
    have come just before the sample `seq_at`. Ticks are of boot `boot_id`."""

    def __init__(self, seq_at, boot_id, first_tick, last_tick, counts=None):
        self.seq_at = seq_at
        self.boot_id = boot_id
        self.first_tick = first_tick
        self.last_tick = last_tick
        self.counts = list(counts) if counts else [0, 0, 0, 0]  # per channel

    @property
    def count(self):
        c = self.counts
        return c[0] + c[1] + c[2] + c[3]

    def __repr__(self):
        return "Gap(seq_at=%d, boot_id=%d, ticks=%d..%d, counts=%r)" % (
            self.seq_at, self.boot_id, self.first_tick, self.last_tick, self.counts)


def _zeros(typecode, n):
    # Grown in place: array(typecode, bytes(n * size)) would briefly need the bytes as well.
    a = array(typecode)
    for _ in range(n):
        a.append(0)
    return a


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def _replace(path, data):
    # Atomic on LittleFS and POSIX: the old content or the new, never a mix.
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


class FlashLog:
    def __init__(self, directory, segment_records=DEFAULT_SEGMENT_RECORDS,
                 max_segments=DEFAULT_MAX_SEGMENTS, boot_id=0, first_seq=0,
                 flush_every=DEFAULT_FLUSH_EVERY):
        if not 1 <= segment_records <= 0xFFFF or max_segments < 1 or flush_every < 1:
            raise ValueError("bad FlashLog geometry")
        self.dir = directory
        self.segment_records = segment_records
        self.max_segments = max_segments
        self.capacity = segment_records * max_segments
        self.boot_id = boot_id & 0xFFFF
        self.flush_every = flush_every
        self.dropped_total = 0  # samples refused (LOG_FULL) since this boot
        # recovery statistics
        self.trimmed = 0  # torn or corrupt records cut from segment tails
        self.bad_headers = 0  # segments whose two header copies both failed
        # preallocated buffers: [seq u32][record 8 B]; the file sees the last 8 bytes
        self._wbuf = bytearray(4 + REC_BYTES)
        self._wrec = memoryview(self._wbuf)[4:]
        self._rbuf = bytearray(4 + REC_BYTES)
        self._rrec = memoryview(self._rbuf)[4:]
        self._hdr = bytearray(HDR_BYTES)
        # cache of the last record read
        self._cseq = -1
        self._cch = 0
        self._ctick = 0
        self._cval = 0
        self._cboot = 0
        # open files
        self._af = None  # append handle of the active segment (this boot's newest)
        self._as = -1  # its ring slot
        self._rf = None  # read handle of an older segment
        self._rs = -1  # its ring slot
        self._ls = -1  # slot of the last lookup
        self._gap = None  # the open gap (log full), if any
        self._gaps = []
        self._gap_file_records = 0
        self._recover(first_seq)

    # -- paths -------------------------------------------------------------------------------
    def _seg_path(self, first):
        return "%s/seg_%d.log" % (self.dir, first)

    # -- recovery ------------------------------------------------------------------------------
    def _recover(self, first_seq):
        try:
            os.mkdir(self.dir)
        except OSError:
            pass
        firsts = []
        for name in os.listdir(self.dir):
            if name.startswith("seg_") and name.endswith(".log"):
                try:
                    firsts.append(int(name[4:-4]))
                except ValueError:
                    pass
            elif name.endswith(".tmp"):
                os.remove(self.dir + "/" + name)  # an unfinished atomic replace
        firsts.sort()
        ring = len(firsts) if len(firsts) > self.max_segments else self.max_segments
        self._ring = ring
        self._first = _zeros("I", ring)
        self._count = _zeros("H", ring)
        self._boot = _zeros("H", ring)
        self._base = _zeros("I", ring)
        self._head = 0
        self._nseg = 0
        extent = -1  # one past the highest seq any segment may have handed out
        for first in firsts:
            path = self._seg_path(first)
            size = _size(path)
            raw = (size - HDR_BYTES + REC_BYTES - 1) // REC_BYTES if size > HDR_BYTES else 0
            if first + raw > extent:
                extent = first + raw
            slot = self._nseg
            self._nseg += 1
            self._first[slot] = first
            self._count[slot] = 0
            with open(path, "rb") as f:
                n = f.readinto(self._hdr)
                header = self._parse_header(first, n, slot)
                if not header:
                    self.bad_headers += 1
                    continue  # records without boot and base tick mean nothing; kept empty
                count = (size - HDR_BYTES) // REC_BYTES if size > HDR_BYTES else 0
                if count > 0xFFFF:  # (written with other settings: keep what the table holds)
                    count = 0xFFFF
                self.trimmed += raw - count
                while count > 0:  # cut a torn or corrupt tail
                    f.seek(HDR_BYTES + (count - 1) * REC_BYTES)
                    if f.readinto(self._rrec) == REC_BYTES and self._decode(first + count - 1, slot):
                        break
                    count -= 1
                    self.trimmed += 1
                self._count[slot] = count
        next_seq = extent + self.flush_every if extent >= 0 else 0
        if first_seq > next_seq:
            next_seq = first_seq
        watermark = self._read_acked()
        if watermark < 0:
            watermark = firsts[0] if firsts else next_seq
        if watermark > next_seq:
            next_seq = watermark
        self.next_seq = next_seq
        self._durable = next_seq
        self._watermark = watermark  # every seq below it is acknowledged
        self.oldest_seq = self._skip_holes(watermark)
        self._cseq = -1
        self._load_gaps()
        self._delete_acked()

    def _parse_header(self, first, n, slot):
        h = self._hdr
        for off in (0, _COPY_BYTES):
            if n < off + _COPY_BYTES:
                break
            if h[off] != 0x44 or h[off + 1] != 0x54 or h[off + 2] != 0x4C or h[off + 3] != _VERSION:
                continue
            _, seq, boot, base, crc = struct.unpack_from("<IIHIH", h, off)
            if crc != crc16(memoryview(h)[off:], 14) or seq != first:
                continue
            self._boot[slot] = boot
            self._base[slot] = base
            return True
        return False

    def _read_acked(self):
        try:
            with open(self.dir + "/acked", "rb") as f:
                data = f.read()
        except OSError:
            return -1
        if len(data) != 6 or crc16(data, 4) != data[4] | data[5] << 8:
            return -1
        return struct.unpack_from("<I", data, 0)[0]

    # -- ring of segments ------------------------------------------------------------------------
    def _slot(self, i):
        # ring slot of the i-th oldest segment
        return (self._head + i) % self._ring

    def _find(self, seq):
        s = self._ls
        if s >= 0 and self._first[s] <= seq < self._first[s] + self._count[s]:
            return s
        i = self._nseg - 1
        while i >= 0:  # newest first: the streamer reads recent records
            s = (self._head + i) % self._ring
            if self._first[s] <= seq:
                if seq < self._first[s] + self._count[s]:
                    self._ls = s
                    return s
                return -1
            i -= 1
        return -1

    def next_record(self, seq):
        """The first seq >= seq that may hold a record (skips the hole a reboot leaves and
        emptied segments), or next_seq. A record there may still fail its CRC: check boot()."""
        for i in range(self._nseg):
            s = self._slot(i)
            end = self._first[s] + self._count[s]
            if seq < end:
                return seq if seq >= self._first[s] else self._first[s]
        return self.next_seq

    def _skip_holes(self, seq):
        r = self.next_record(seq)
        return r if r > seq else seq

    # -- reading -------------------------------------------------------------------------------
    def _decode(self, seq, slot):
        # Check the record in self._rbuf (read for seq); fill the cache if it is good.
        b = self._rbuf
        b[0] = seq & 0xFF
        b[1] = (seq >> 8) & 0xFF
        b[2] = (seq >> 16) & 0xFF
        b[3] = (seq >> 24) & 0xFF
        if crc16(b, 10) != b[10] | b[11] << 8 or not b[4] & 1:
            return False
        ch = (b[4] >> 1) & 3
        v = b[7] | b[8] << 8 | b[9] << 16
        if v & _VALUE_SIGN:
            v -= _VALUE_WRAP
        if v < _CH_MIN[ch] or v > _CH_MAX[ch]:
            return False
        self._cch = ch
        self._cval = v
        self._ctick = self._base[slot] + ((b[4] >> 3) | b[5] << 5 | b[6] << 13)
        self._cboot = self._boot[slot]
        self._cseq = seq
        return True

    def _read_handle(self, slot):
        if slot != self._rs:
            if self._rf is not None:
                self._rf.close()
                self._rf = None
                self._rs = -1
            self._rf = open(self._seg_path(self._first[slot]), "rb")
            self._rs = slot
        return self._rf

    def _load(self, seq):
        if seq == self._cseq and seq >= 0:  # (_cseq is -1 when nothing is cached)
            return True
        s = self._find(seq)
        if s < 0:
            return False
        if s == self._as:
            if seq >= self._durable:
                self.flush()  # whatever may leave the log must be on flash first
            f = self._af
        else:
            f = self._read_handle(s)
        # f is an open file here: the active segment always has _af
        f.seek(HDR_BYTES + (seq - self._first[s]) * REC_BYTES)  # type: ignore[union-attr]
        if f.readinto(self._rrec) != REC_BYTES:  # type: ignore[union-attr]
            return False
        return self._decode(seq, s)

    def boot(self, seq):
        """Boot id of the record seq, or NO_RECORD (-1) if there is none (a hole left at a
        reboot, a record that failed its CRC, acknowledged and deleted, not yet written)."""
        return self._cboot if self._load(seq) else NO_RECORD

    def channel(self, seq):
        return self._cch if self._load(seq) else NO_RECORD

    def tick(self, seq):
        return self._ctick if self._load(seq) else 0

    def value(self, seq):
        return self._cval if self._load(seq) else 0

    # -- appending -----------------------------------------------------------------------------
    def __len__(self):
        """Records not yet acknowledged (holes not counted)."""
        n = 0
        oldest = self.oldest_seq
        for i in range(self._nseg):
            s = self._slot(i)
            first = self._first[s]
            end = first + self._count[s]
            if end > oldest:
                n += end - (first if first > oldest else oldest)
        return n

    def _needs_segment(self, tick):
        s = self._as
        return (s < 0 or self._count[s] >= self.segment_records or tick < self._base[s]
                or tick - self._base[s] > _TICK_OFFSET_MAX)

    def is_full(self):
        s = self._as
        return self._nseg >= self.max_segments and (s < 0 or self._count[s] >= self.segment_records)

    def append(self, channel, tick, value):
        """Log one sample; its seq, or LOG_FULL (the sample is then counted in a gap)."""
        if channel < 0 or channel > 3 or value < _CH_MIN[channel] or value > _CH_MAX[channel]:
            raise ValueError("channel or value out of range")
        if self._needs_segment(tick) and not self._new_segment(tick):
            self._drop(channel, tick)
            return LOG_FULL
        if self._gap is not None:
            self._close_gap()
        seq = self._write(channel, tick, value)
        if seq + 1 - self._durable >= self.flush_every:
            self.flush()
        return seq

    def _write(self, channel, tick, value):
        # The hot path is split so that each function's VM state (locals + stack) stays within
        # 11 words: MicroPython heap-allocates a bigger one on every call (py/objfun.c,
        # VM_MAX_STATE_ON_STACK). tests/test_flash_log_micropython.py checks the compiled sizes.
        b = self._wbuf
        seq = self.next_seq
        w = (tick - self._base[self._as]) << 3 | channel << 1 | 1
        b[0] = seq & 0xFF
        b[1] = (seq >> 8) & 0xFF
        b[2] = (seq >> 16) & 0xFF
        b[3] = (seq >> 24) & 0xFF
        b[4] = w & 0xFF
        b[5] = (w >> 8) & 0xFF
        b[6] = w >> 16
        value &= 0xFFFFFF
        b[7] = value & 0xFF
        b[8] = (value >> 8) & 0xFF
        b[9] = value >> 16
        w = crc16(b, 10)
        b[10] = w & 0xFF
        b[11] = w >> 8
        self._af.write(self._wrec)  # type: ignore[union-attr]  # open: _new_segment ran
        self._count[self._as] += 1
        self.next_seq = seq + 1
        return seq

    def flush(self):
        """Put every appended record on flash (LittleFS: lfs_file_sync)."""
        if self._af is not None and self._durable < self.next_seq:
            self._af.flush()
        self._durable = self.next_seq

    def _new_segment(self, tick):
        if self._nseg >= self.max_segments:
            return False
        if self._af is not None:
            self._af.flush()
            self._af.close()
            self._af = None
            self._as = -1
        first = self.next_seq
        slot = self._slot(self._nseg)
        if slot == self._rs:
            self._close_read()
        h = self._hdr
        for off in (0, _COPY_BYTES):
            struct.pack_into("<BBBBIHI", h, off, 0x44, 0x54, 0x4C, _VERSION, first, self.boot_id, tick)
            struct.pack_into("<H", h, off + 14, crc16(memoryview(h)[off:], 14))
        f = open(self._seg_path(first), "ab+")
        f.write(h)
        f.flush()
        self._first[slot] = first
        self._count[slot] = 0
        self._boot[slot] = self.boot_id
        self._base[slot] = tick
        self._nseg += 1
        self._af = f
        self._as = slot
        self._durable = first
        return True

    def _close_read(self):
        if self._rf is not None:
            self._rf.close()
        self._rf = None
        self._rs = -1

    # -- acknowledging ---------------------------------------------------------------------------
    def ack(self, seq):
        """Every sample with seq <= this is durable at the gateway."""
        if seq >= self.next_seq:
            seq = self.next_seq - 1
        if seq < self._watermark:
            return
        buf = bytearray(6)
        struct.pack_into("<I", buf, 0, seq + 1)
        struct.pack_into("<H", buf, 4, crc16(buf, 4))
        _replace(self.dir + "/acked", buf)  # first: acknowledged records are never re-sent
        self._watermark = seq + 1
        self.oldest_seq = self._skip_holes(seq + 1)
        self._delete_acked()
        kept = [g for g in self._gaps if g.seq_at > seq]
        if len(kept) != len(self._gaps):
            self._gaps = kept
            self._compact_gaps()

    def _delete_acked(self):
        # Whole segments whose every record is acknowledged; never the newest one.
        while self._nseg > 1:
            s = self._head
            if self._first[s] + self._count[s] > self.oldest_seq:
                break
            if s == self._rs:
                self._close_read()
            first = self._first[s]
            self._head = (s + 1) % self._ring
            self._nseg -= 1
            self._ls = -1
            self._cseq = -1
            try:
                os.remove(self._seg_path(first))
            except OSError:
                pass

    # -- gaps ------------------------------------------------------------------------------------
    def gaps(self):
        """Unacknowledged gaps, oldest first (the open one, if the log is full, last)."""
        return list(self._gaps)

    def _gap_here(self, first_tick, last_tick):
        # The gap just before next_seq: the open one, one append_gap() made here, or a new
        # one. One gap per (seq_at, boot): _load_gaps() keeps the last snapshot of each.
        g = self._gap
        if g is None:
            for old in self._gaps:
                if old.seq_at == self.next_seq and old.boot_id == self.boot_id:
                    g = old
            if g is None:
                g = Gap(self.next_seq, self.boot_id, first_tick, last_tick)
                self._gaps.append(g)
        if first_tick < g.first_tick:
            g.first_tick = first_tick
        if last_tick > g.last_tick:
            g.last_tick = last_tick
        return g

    def _drop(self, channel, tick):
        g = self._gap_here(tick, tick)
        self._gap = g  # open until the next sample is logged
        g.counts[channel] += 1
        self.dropped_total += 1
        self._persist_gap(g)  # every drop: the count survives a power loss exactly

    def _close_gap(self):
        self._gap = None  # already persisted at its last drop; the next sample is at seq_at

    def append_gap(self, channel, first_tick, last_tick, count):
        """Record count samples of channel not taken between first_tick and last_tick (this
        boot), before the next sample to be logged. Merges with a gap at the same place."""
        if channel < 0 or channel > 3 or count < 1 or last_tick < first_tick:
            raise ValueError("bad gap")
        g = self._gap_here(first_tick, last_tick)
        g.counts[channel] += count
        self._persist_gap(g)
        return g

    def _gap_record(self, g):
        buf = bytearray(_GAP_BYTES)
        c = g.counts
        struct.pack_into("<BBHIIIIIII", buf, 0, _GAP_MAGIC, _VERSION, g.boot_id, g.seq_at,
                         g.first_tick, g.last_tick, c[0], c[1], c[2], c[3])
        struct.pack_into("<H", buf, 32, crc16(buf, 32))
        return buf

    def _persist_gap(self, g):
        if self._gap_file_records > 2 * len(self._gaps) + 8:
            self._compact_gaps()
            return
        with open(self.dir + "/gaps.log", "ab") as f:
            f.write(self._gap_record(g))
        self._gap_file_records += 1

    def _compact_gaps(self):
        data = bytearray()
        for g in self._gaps:
            data.extend(self._gap_record(g))
        _replace(self.dir + "/gaps.log", data)
        self._gap_file_records = len(self._gaps)

    def _load_gaps(self):
        try:
            with open(self.dir + "/gaps.log", "rb") as f:
                data = f.read()
        except OSError:
            return
        by_key = {}
        n = 0
        for off in range(0, len(data) - _GAP_BYTES + 1, _GAP_BYTES):
            n += 1
            rec = memoryview(data)[off:off + _GAP_BYTES]
            if rec[0] != _GAP_MAGIC or crc16(rec, 32) != rec[32] | rec[33] << 8:
                continue
            _, _, boot, seq_at, t0, t1, c0, c1, c2, c3 = struct.unpack_from("<BBHIIIIIII", rec, 0)
            if seq_at < self._watermark:
                continue  # acknowledged (ack() persists the watermark before compacting)
            by_key[(seq_at, boot)] = Gap(seq_at, boot, t0, t1, (c0, c1, c2, c3))  # last wins
        self._gaps = sorted(by_key.values(), key=lambda g: (g.seq_at, g.boot_id))
        self._gap_file_records = n

    def close(self):
        self.flush()
        if self._af is not None:
            self._af.close()
            self._af = None
            self._as = -1
        self._close_read()
