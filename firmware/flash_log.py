# Samples not yet acknowledged by the gateway, on flash, addressed by seq (design.md §1, issue 4).
#
# Interface: append/channel/tick/value/ack, oldest_seq, next_seq, len, is_full, boot(seq),
# next_record(seq), flush(), gaps(), append_gap() and dropped_total.
#
# Layout: a directory of segment files `seg_<first_seq>.log`, append-only, one boot each.
# The format facts the gateway also reads (file names, segment header, `acked`, gap snapshots,
# CRC-16) are in firmware/flash_format.py; the blocks are this module's alone.
#   header  32 B  two identical copies of: b"DTL", version u8 (2), first_seq u32, boot_id u16,
#                 base_tick u32, crc16 u16 (over the 14 bytes before it). Written and flushed
#                 before the segment's first block; a corrupt copy is survived.
#   blocks        one per flush (at most BLOCK_RECORDS records), back to back:
#     len u8        body bytes (2 x count .. 9 x count)
#     count u8      records in the block, 1..BLOCK_RECORDS
#     seq_off u16   seq of the first record - first_seq (seqs are contiguous in a segment)
#     tick_off u24  tick of the first record - base_tick
#     body          per record: head u8 = channel << 6 | dt (dt = tick - previous record's
#                   tick in the block, the first's is 0; 63 = escape: the zigzag varint of dt
#                   follows, for a long or a backward step),
#                   then the zigzag varint of value - the previous value of that channel in
#                   the block (the first one of a channel: against 0). Varints are LEB128, as
#                   in the BLE sample frames (protocol.md §4).
#     crc16 u16     over seq (u32 of the first record) + the 7 header bytes + the body. The seq
#                   is implicit but covered, so a block read at the wrong place fails.
#   All little-endian. CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF), table-driven: it detects
#   every error confined to 16 consecutive bits, i.e. any single corrupted byte.
# A block depends on nothing but its segment header: a bad block costs its own records only.
# (Segments of the 8-byte-record format, version 1, read as segments whose headers failed:
# their records are not read back, their seqs are not reused.)
# At default rates a 16-record block is ~44 B: 2.76 B per sample measured on a modelled week
# with sensor noise (7 days: 576 KiB, 73 segments; a Pico W's filesystem has room for ~86
# next to the firmware), see tests/test_flash_log.py. Segments are bounded in bytes: default 8176 B, exactly two 4 KiB
# LittleFS blocks (the second block gives 4 bytes to its CTZ skip-list pointer); a segment
# takes another record while a worst-case block still fits.
#
# Finding a record: the segment table in RAM (first seq, record count, boot, base tick and a
# verified block position per segment: 16 B) gives the segment; the block is found by hopping
# from block header to block header (from the segment's hint, the last block decoded, so
# sequential reading is one hop), then read, CRC-checked and decoded into a one-block cache.
# A hop checks the header's plausibility and that its seq_off continues the chain; when the
# chain breaks (a corrupt len or count), the block before is CRC-checked and the log resyncs
# on the next block whose header is plausible, whose seq_off fits the bytes skipped and whose
# CRC checks. The records in between are a hole.
#
# Seqs: the log is the source of truth. At boot, next_seq = (extent of the newest segment)
# + flush_every, or the persisted acked watermark, or the caller's first_seq floor, whichever is
# largest. The extent is the end of the segment's last good block plus (bytes after it) // 2:
# a torn or corrupt tail counts as many records as its bytes could hold (>= 2 B each). At most
# flush_every - 1 appended records are ever unflushed, so every seq handed out before the power
# loss is below the new next_seq: a seq is never reused. A reboot therefore leaves a hole of up
# to flush_every seqs (more after a torn tail); a block that fails its CRC is a hole of its
# records. boot(seq) returns NO_RECORD for a hole; next_record() skips the reboot holes.
#
# Durability: appended records wait in a RAM block (preallocated) and are written as one block,
# then flushed (LittleFS: file.flush() == lfs_file_sync), every flush_every appends, at a
# segment change, on flush(), and before one of them is read: the streamer reads a record to
# send it, so the gateway never holds (or ACKs) a record that is not on flash. A power loss
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
# Memory: appending and reading allocate nothing once warmed up (preallocated block buffers
# and cache arrays, readinto, write(buf, off, n), the append file kept open, small ints), except
# when a segment starts or the read moves to another segment (one file object and its name,
# once per segment), when a gap opens or is persisted, and in ack(). Ticks, values and seqs
# stay small ints (< 2**30). Hot functions keep their VM state within 11 words: MicroPython
# heap-allocates a bigger one on every call (py/objfun.c, VM_MAX_STATE_ON_STACK), hence the
# small helpers and the walk state kept in attributes; tests/test_flash_log_micropython.py
# checks the compiled sizes.
import os
import struct
import sys
from array import array

from firmware.flash_format import (
    FORMAT_VERSION,
    HDR_BYTES,
    crc16,
    pack_header,
    parse_acked,
    parse_header,
)

try:
    from micropython import const
except ImportError:

    def const(x):  # type: ignore[misc]  # same behaviour as micropython.const
        return x


LOG_FULL = const(-1)
NO_RECORD = const(-1)

BLOCK_OVERHEAD = const(9)  # block header (7) + crc (2)
BLOCK_RECORDS = const(64)  # records per block at most (the read cache holds one block)
REC_MAX_BYTES = const(9)  # head + dt varint (4) + value varint (4)
DEFAULT_SEGMENT_BYTES = const(8176)  # two 4 KiB LittleFS blocks
# 7 days at default rates = 213,696 samples = 73 segments at 2.76 B/sample; + margin for
# reboots (each boot starts a segment, leaving the previous one partly filled) and wetter,
# noisier weeks. Boards size the log from their filesystem (board.py).
DEFAULT_MAX_SEGMENTS = const(80)
DEFAULT_FLUSH_EVERY = const(16)  # at default rates one flush per ~50 s; at most 15 samples lost
LFS_BLOCK_BYTES = const(4096)

_MPY = sys.implementation.name == "micropython"
_TICK_OFFSET_MAX = const(0xFFFFFF)
_DT_ESCAPE = const(63)
_BODY = const(11)  # block buffers: [seq u32][header 7][body ...][crc 2]
_BODY_MAX = const(255)
_BODY_END_MAX = const(_BODY + _BODY_MAX - REC_MAX_BYTES)  # room for one more record
# a segment takes a record while header + pending body + a new block with a worst-case
# record still fit: apos + bend + _ROOM <= segment_bytes
_ROOM = const(2 * BLOCK_OVERHEAD + REC_MAX_BYTES - _BODY)
_SEGMENT_MIN_PAST_HEADER = const(2 * BLOCK_OVERHEAD + REC_MAX_BYTES)
_GAP_BYTES = const(36)
_GAP_MAGIC = const(0x47)  # "G"
# inclusive value range per channel the log stores (the sampler checks readings against it):
# temperature (TMP117 LSB), UV (UVI x 100), hydration (fF; the FDC1004 tops out near 115 pF =
# 115,000 fF, 24 bits hold 8.4 nF), battery (SOC register)
VALUE_MIN = (-32768, 0, 0, 0)
VALUE_MAX = (32767, 65535, 0x7FFFFF, 65535)


def _write(f, buf, n):
    # buf[4:n] to f without a slice object on MicroPython (stream write(buf, off, len)).
    if _MPY:
        f.write(buf, 4, n - 4)  # type: ignore[call-arg]
    else:
        f.write(bytes(buf[4:n]))


def segment_blocks(segment_bytes=DEFAULT_SEGMENT_BYTES, block_bytes=LFS_BLOCK_BYTES):
    """LittleFS blocks one full segment file takes (CTZ skip-list: block i >= 1 spends
    4 * (ctz(i) + 1) bytes on pointers)."""
    blocks = 0
    room = 0
    while room < segment_bytes:
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


def segment_records_min(segment_bytes=DEFAULT_SEGMENT_BYTES):
    """Records a segment holds at the least: every record a worst-case one, alone in its
    block (a flush after every append). At default rates a segment holds ~2,900."""
    return (segment_bytes - HDR_BYTES - _BODY - _ROOM) // (BLOCK_OVERHEAD + REC_MAX_BYTES) + 1


def segments_that_fit(free_bytes, segment_bytes=DEFAULT_SEGMENT_BYTES,
                      block_bytes=LFS_BLOCK_BYTES, reserve_blocks=8):
    """How many segments a filesystem with free_bytes free can hold, keeping reserve_blocks
    for metadata, the acked/gaps files and LittleFS copy-on-write headroom. Use with
    os.statvfs(dir): free_bytes = f_bsize * f_bavail."""
    blocks = free_bytes // block_bytes - reserve_blocks
    n = blocks // segment_blocks(segment_bytes, block_bytes)
    return n if n > 0 else 0


def segments_for_filesystem(directory, segment_bytes=DEFAULT_SEGMENT_BYTES, reserve_blocks=8):
    """max_segments for a log in directory (which must exist): the filesystem's free space
    plus what the log's segments already hold, so a full log does not shrink its own limit."""
    st = os.statvfs(directory)  # f_bsize, f_frsize, f_blocks, f_bfree, ...
    held = 0
    for name in os.listdir(directory):
        if name.startswith("seg_") and name.endswith(".log"):
            held += 1
    block = st[0]
    free = st[0] * st[3] + held * segment_blocks(segment_bytes, block) * block
    return segments_that_fit(free, segment_bytes, block, reserve_blocks)


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


def _replace(path, data):
    # Atomic on LittleFS and POSIX: the old content or the new, never a mix.
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


class FlashLog:
    def __init__(self, directory, segment_bytes=DEFAULT_SEGMENT_BYTES,
                 max_segments=DEFAULT_MAX_SEGMENTS, boot_id=0, first_seq=0,
                 flush_every=DEFAULT_FLUSH_EVERY):
        if (not HDR_BYTES + _SEGMENT_MIN_PAST_HEADER <= segment_bytes <= 0xFFFF
                or max_segments < 1 or flush_every < 1):
            raise ValueError("bad FlashLog geometry")
        self.dir = directory
        self.segment_bytes = segment_bytes
        self.max_segments = max_segments
        self.capacity = segment_records_min(segment_bytes) * max_segments  # at the least
        self.boot_id = boot_id & 0xFFFF
        self.flush_every = flush_every
        self.dropped_total = 0  # samples refused (LOG_FULL) since this boot
        # recovery statistics
        self.trimmed = 0  # segments whose torn or corrupt tail was cut
        self.bad_headers = 0  # segments whose two header copies both failed
        # the block being appended, in RAM: [seq u32][header 7][body][crc 2]; the file sees [4:]
        self._wblk = bytearray(_BODY + _BODY_MAX + 2)
        self._wlast = array("i", (0, 0, 0, 0))  # previous value per channel in the block
        self._bn = 0  # records in it
        self._bend = _BODY  # end of its body in _wblk
        self._bseq = 0  # seq of its first record
        self._bt0 = 0  # tick of its first record
        self._btick = 0  # tick of its last record
        self._apos = 0  # bytes of the active segment in its file
        # a block read from flash, same layout
        self._rblk = bytearray(_BODY + _BODY_MAX + 2)
        self._rview = memoryview(self._rblk)[4:]
        self._hview = memoryview(self._rblk)[4:_BODY]
        self._rp = 0
        self._rend = 0
        self._dlast = array("i", (0, 0, 0, 0))
        # a walk along a segment's blocks: file, size, first seq, position and seq offset of a
        # block, and of the unchecked block before it (-1: none)
        self._wf = None
        self._wsize = 0
        self._wfirst = 0
        self._wpos = 0
        self._woff = 0
        self._wprev = -1
        self._wpoff = 0
        # cache: the last block decoded
        self._cch = bytearray(BLOCK_RECORDS)
        self._ctk = _zeros("I", BLOCK_RECORDS)
        self._cval = _zeros("i", BLOCK_RECORDS)
        self._cfirst = 0  # seq of its first record
        self._cn = 0  # its records (0: nothing cached)
        self._ci = 0  # index of the record asked for last
        self._cboot = 0
        self._hdr = bytearray(HDR_BYTES)
        # open files
        self._af = None  # append handle of the active segment (this boot's newest)
        self._as = -1  # its ring slot
        self._rf = None  # read handle of an older segment
        self._rs = -1  # its ring slot
        self._rsize = 0  # its size
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
        self._hpos = _zeros("H", ring)  # reading hint: a block start known good ...
        self._hoff = _zeros("H", ring)  # ... and its seq offset
        self._head = 0
        self._nseg = 0
        extent = -1  # one past the highest seq any segment may have handed out
        for first in firsts:
            slot = self._nseg
            self._nseg += 1
            self._first[slot] = first
            self._hpos[slot] = HDR_BYTES
            self._hoff[slot] = 0
            with open(self._seg_path(first), "rb") as f:
                size = f.seek(0, 2)
                if size > 0xFFFF:  # (written with other settings: keep what the table holds)
                    size = 0xFFFF
                f.seek(0)
                n = f.readinto(self._hdr)
                self._wpos = HDR_BYTES if size > HDR_BYTES else size
                self._woff = 0
                header = parse_header(self._hdr, n, first)
                if header is not None:
                    self._boot[slot], self._base[slot] = header
                    self._scan(f, size, first)
                else:
                    self.bad_headers += 1  # records without boot and base tick mean nothing
            self._count[slot] = self._woff
            if size > self._wpos:
                self.trimmed += 1
            # a cut tail counts as many records as its bytes could hold (each >= 2 bytes)
            end = first + self._woff + (size - self._wpos) // 2
            if end > extent:
                extent = end
        next_seq = extent + self.flush_every if extent >= 0 else 0
        if first_seq > next_seq:
            next_seq = first_seq
        try:
            with open(self.dir + "/acked", "rb") as f:
                watermark = parse_acked(f.read())
        except OSError:
            watermark = -1
        if watermark < 0:
            watermark = firsts[0] if firsts else next_seq
        if watermark > next_seq:
            next_seq = watermark
        self.next_seq = next_seq
        self._durable = next_seq
        self._watermark = watermark  # every seq below it is acknowledged
        self.oldest_seq = self._skip_holes(watermark)
        self._cn = 0
        self._load_gaps()
        self._delete_acked()

    def _scan(self, f, size, first):
        # Walk the whole segment; leaves _wpos/_woff at the end of its last good block.
        self._wf = f
        self._wsize = size
        self._wfirst = first
        self._wprev = -1
        self._walk(0x7FFFFFFF)
        if self._wprev >= 0 and not self._verified(self._wprev, self._wpoff):
            self._wpos = self._wprev  # the last block is torn or corrupt: cut
            self._woff = self._wpoff
        self._wf = None

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

    # -- walking a segment's blocks ----------------------------------------------------------------
    def _walk(self, target):
        """Advance the walk (_wpos: a block's start, _woff: its seq offset) to the block holding
        seq offset target, CRC-checked into _rblk: True; False if target is in the hole of a
        bad block or past the end, with _wpos/_woff then at the end of the last good block
        reached (the blocks hopped over are not CRC-checked: _scan checks the last)."""
        while self._wpos + BLOCK_OVERHEAD + 2 <= self._wsize:
            if self._hop_ok():
                n = self._rblk[5]
                if target >= self._woff + n:
                    self._wprev = self._wpos
                    self._wpoff = self._woff
                    self._wpos += BLOCK_OVERHEAD + self._rblk[4]
                    self._woff += n
                    continue
                if self._verified(self._wpos, self._woff):
                    return True
                self._wprev = -1  # the block itself is bad (its count may lie): a hole from it
            if not self._resync() or target < self._woff:
                return False
        return False

    def _plausible(self):
        # The header in _rblk[4:11]: a record count and a body length that go together.
        b = self._rblk
        n = b[5]
        return 0 < n <= BLOCK_RECORDS and n + n <= b[4] <= REC_MAX_BYTES * n

    def _hop_ok(self):
        # The header at _wpos: plausible, continuing the chain, inside the file (unchecked CRC).
        f = self._wf
        f.seek(self._wpos)  # type: ignore[union-attr]  # a walk has its file
        if f.readinto(self._hview) != _BODY - 4:  # type: ignore[union-attr]
            return False
        b = self._rblk
        return (self._plausible() and b[6] | b[7] << 8 == self._woff
                and self._wpos + BLOCK_OVERHEAD + b[4] <= self._wsize)

    def _resync(self):
        # The chain broke at _wpos. If the unchecked block before fails its CRC, its header
        # lied: the hole starts there. The next good block starts after the hole's first byte,
        # holds a later seq, no further on than the bytes skipped could hold (>= 2 B per
        # record), and passes its CRC.
        if self._wprev >= 0 and not self._verified(self._wprev, self._wpoff):
            self._wpos = self._wprev
            self._woff = self._wpoff
        self._wprev = -1
        p = self._wpos + 1
        while p + BLOCK_OVERHEAD + 2 <= self._wsize:
            if self._candidate(p):
                self._wpos = p
                self._woff = self._rblk[6] | self._rblk[7] << 8
                return True
            p += 1
        return False

    def _candidate(self, p):
        f = self._wf
        f.seek(p)  # type: ignore[union-attr]
        if f.readinto(self._hview) != _BODY - 4 or not self._plausible():  # type: ignore[union-attr]
            return False
        b = self._rblk
        off = b[6] | b[7] << 8
        if off <= self._woff or off > self._woff + (p - self._wpos) // 2:
            return False
        return p + BLOCK_OVERHEAD + b[4] <= self._wsize and self._verified(p, off)

    def _verified(self, pos, off):
        # The block at pos read into _rblk: plausible, starting at seq offset off, CRC good.
        f = self._wf
        f.seek(pos)  # type: ignore[union-attr]
        n = f.readinto(self._rview)  # type: ignore[union-attr]
        b = self._rblk
        if n < BLOCK_OVERHEAD + 2 or not self._plausible() or n < BLOCK_OVERHEAD + b[4]:
            return False
        if b[6] | b[7] << 8 != off:
            return False
        n = self._wfirst + off
        b[0] = n & 0xFF
        b[1] = (n >> 8) & 0xFF
        b[2] = (n >> 16) & 0xFF
        b[3] = (n >> 24) & 0xFF
        n = _BODY + b[4]
        return crc16(b, n) == b[n] | b[n + 1] << 8

    # -- reading -------------------------------------------------------------------------------
    def _load(self, seq):
        i = seq - self._cfirst
        if 0 <= i < self._cn:
            self._ci = i
            return True
        if not self._fill(seq):
            return False
        self._ci = seq - self._cfirst
        return True

    def _fill(self, seq):
        # Decode the block holding seq into the cache.
        self._cn = 0
        s = self._find(seq)
        if s < 0:
            return False
        self._start_walk(s, seq)
        if not self._walk(seq - self._first[s]) or not self._unpack(s):
            return False
        self._cfirst = self._first[s] + self._woff
        self._cboot = self._boot[s]
        self._cn = self._rblk[5]
        # hint: the block after this verified one (its length and count are good)
        self._hpos[s] = self._wpos + BLOCK_OVERHEAD + self._rblk[4]
        self._hoff[s] = self._woff + self._cn
        return True

    def _start_walk(self, s, seq):
        if s == self._as:
            if seq >= self._durable:
                self.flush()  # whatever may leave the log must be on flash first
            self._wf = self._af
            self._wsize = self._apos
        else:
            self._wf = self._read_handle(s)
            self._wsize = self._rsize
        self._wfirst = self._first[s]
        self._wprev = -1
        if self._hoff[s] <= seq - self._wfirst:  # from the hint, else from the start
            self._wpos = self._hpos[s]
            self._woff = self._hoff[s]
        else:
            self._wpos = HDR_BYTES
            self._woff = 0

    def _unpack(self, s):
        # The verified block in _rblk into the cache arrays.
        b = self._rblk
        self._rp = _BODY
        self._rend = _BODY + b[4]
        d = self._dlast
        d[0] = 0
        d[1] = 0
        d[2] = 0
        d[3] = 0
        return self._records(self._base[s] + (b[8] | b[9] << 8 | b[10] << 16), b[5])

    def _records(self, tick, n):
        i = 0
        while i < n:
            if self._rp >= self._rend:
                return False
            h = self._rblk[self._rp]
            self._rp += 1
            dt = h & _DT_ESCAPE
            if dt == _DT_ESCAPE:
                dt = self._ruvar()
                if dt < 0:
                    return False
                dt = -(dt >> 1) - 1 if dt & 1 else dt >> 1
            tick += dt
            if tick < 0:
                return False
            if not self._record(i, h >> 6, tick):
                return False
            i += 1
        return self._rp == self._rend  # every body byte used: the count and length agree

    def _record(self, i, ch, tick):
        z = self._ruvar()
        if z < 0:
            return False
        z = self._dlast[ch] + (-(z >> 1) - 1 if z & 1 else z >> 1)
        if z < VALUE_MIN[ch] or z > VALUE_MAX[ch]:
            return False
        self._dlast[ch] = z
        self._cval[i] = z
        self._ctk[i] = tick
        self._cch[i] = ch
        return True

    def _ruvar(self):
        # An unsigned varint of at most 4 bytes at _rp, inside the body; -1 if there is none.
        b = self._rblk
        p = self._rp
        z = 0
        k = 0
        while p < self._rend and k < 28:
            c = b[p]
            p += 1
            z |= (c & 0x7F) << k
            if c < 0x80:
                self._rp = p
                return z
            k += 7
        return -1

    def _read_handle(self, slot):
        if slot != self._rs:
            if self._rf is not None:
                self._rf.close()
                self._rf = None
                self._rs = -1
            f = open(self._seg_path(self._first[slot]), "rb")
            self._rsize = f.seek(0, 2)
            self._rf = f
            self._rs = slot
        return self._rf

    def boot(self, seq):
        """Boot id of the record seq, or NO_RECORD (-1) if there is none (a hole left at a
        reboot, a block that failed its CRC, acknowledged and deleted, not yet written)."""
        return self._cboot if self._load(seq) else NO_RECORD

    def channel(self, seq):
        return self._cch[self._ci] if self._load(seq) else NO_RECORD

    def tick(self, seq):
        return self._ctk[self._ci] if self._load(seq) else 0

    def value(self, seq):
        return self._cval[self._ci] if self._load(seq) else 0

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
        return (s < 0 or self._apos + self._bend + _ROOM > self.segment_bytes
                or tick < self._base[s] or tick - self._base[s] > _TICK_OFFSET_MAX)

    def is_full(self):
        return self._nseg >= self.max_segments and (
            self._as < 0 or self._apos + self._bend + _ROOM > self.segment_bytes)

    def append(self, channel, tick, value):
        """Log one sample; its seq, or LOG_FULL (the sample is then counted in a gap)."""
        if channel < 0 or channel > 3 or value < VALUE_MIN[channel] or value > VALUE_MAX[channel]:
            raise ValueError("channel or value out of range")
        if self._needs_segment(tick) and not self._new_segment(tick):
            self._drop(channel, tick)
            return LOG_FULL
        if self._gap is not None:
            self._close_gap()
        seq = self._put(channel, tick, value)
        if seq + 1 - self._durable >= self.flush_every:
            self.flush()
        return seq

    def _put(self, channel, tick, value):
        # The record goes into the RAM block.
        if self._bn and (self._bend > _BODY_END_MAX or self._bn >= BLOCK_RECORDS):
            self._emit()
        if not self._bn:
            self._open_block(tick)
        b = self._wblk
        dt = tick - self._btick
        self._btick = tick
        if 0 <= dt < _DT_ESCAPE:
            b[self._bend] = channel << 6 | dt
            self._bend += 1
        else:  # a long or a backward step: zigzag varint
            b[self._bend] = channel << 6 | _DT_ESCAPE
            self._bend += 1
            self._uvar(dt + dt if dt >= 0 else -dt - dt - 1)
        dt = value - self._wlast[channel]
        self._wlast[channel] = value
        self._uvar(dt + dt if dt >= 0 else -dt - dt - 1)  # zigzag
        self._bn += 1
        self._count[self._as] += 1
        dt = self.next_seq
        self.next_seq = dt + 1
        return dt

    def _uvar(self, z):
        b = self._wblk
        n = self._bend
        while z > 0x7F:
            b[n] = (z & 0x7F) | 0x80
            z >>= 7
            n += 1
        b[n] = z
        self._bend = n + 1

    def _open_block(self, tick):
        self._bseq = self.next_seq
        self._bt0 = tick
        self._btick = tick
        w = self._wlast
        w[0] = 0
        w[1] = 0
        w[2] = 0
        w[3] = 0
        self._bend = _BODY

    def _emit(self):
        # Seal the RAM block and write it to the active segment (synced by flush()).
        n = self._seal()
        _write(self._af, self._wblk, n)
        self._apos += n - 4
        self._bn = 0
        self._bend = _BODY

    def _seal(self):
        b = self._wblk
        v = self._bseq
        b[0] = v & 0xFF
        b[1] = (v >> 8) & 0xFF
        b[2] = (v >> 16) & 0xFF
        b[3] = (v >> 24) & 0xFF
        v -= self._first[self._as]
        b[6] = v & 0xFF
        b[7] = v >> 8
        v = self._bt0 - self._base[self._as]
        b[8] = v & 0xFF
        b[9] = (v >> 8) & 0xFF
        b[10] = v >> 16
        n = self._bend
        b[4] = n - _BODY
        b[5] = self._bn
        v = crc16(b, n)
        b[n] = v & 0xFF
        b[n + 1] = v >> 8
        return n + 2

    def flush(self):
        """Put every appended record on flash (LittleFS: lfs_file_sync)."""
        if self._bn:
            self._emit()
        if self._af is not None and self._durable < self.next_seq:
            self._af.flush()
        self._durable = self.next_seq

    def _new_segment(self, tick):
        if self._nseg >= self.max_segments:
            return False
        if self._af is not None:
            if self._bn:
                self._emit()
            self._af.flush()
            self._af.close()
            self._af = None
            self._as = -1
        first = self.next_seq
        slot = self._slot(self._nseg)
        if slot == self._rs:
            self._close_read()
        pack_header(self._hdr, first, self.boot_id, tick)
        f = open(self._seg_path(first), "ab+")
        f.write(self._hdr)
        f.flush()
        self._first[slot] = first
        self._count[slot] = 0
        self._boot[slot] = self.boot_id
        self._base[slot] = tick
        self._hpos[slot] = HDR_BYTES
        self._hoff[slot] = 0
        self._nseg += 1
        self._af = f
        self._as = slot
        self._apos = HDR_BYTES
        self._bn = 0
        self._bend = _BODY
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
        buf = bytearray(6)  # flash_format.parse_acked reads it
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
            self._cn = 0
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
        struct.pack_into("<BBHIIIIIII", buf, 0, _GAP_MAGIC, FORMAT_VERSION, g.boot_id, g.seq_at,
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
