# Sample-frame encoder, patch side (docs/protocol.md §4): frame version 2, where a sample at
# its channel's stride with a small change of value is a one-byte record.
#
# One FrameEncoder per connection, built once: it owns a preallocated 244-byte frame buffer
# and the HMAC pads, so the per-sample path (`add`) writes bytes into that buffer and
# allocates nothing (as long as ticks and values are small ints, |x| < 2**29 on a 32-bit
# port, which every realistic sample is). `finish` computes the tag and allocates a few
# small objects (two sha256 states, two digests, one memoryview): once per frame.
#
#     enc = FrameEncoder(key, mtu - 3)
#     enc.start(boot_id, next_seq, tick)
#     for channel, tick, value in samples:
#         if not enc.add(channel, tick, value):
#             notify(enc.finish())
#             enc.start(boot_id, next_seq, tick)   # next_seq: seq of this sample
#             enc.add(channel, tick, value)
try:
    from micropython import const
except ImportError:  # CPython (virtual patch, tests)

    def const(x):  # type: ignore[misc]  # same behaviour as micropython.const
        return x


import hashlib
import struct

_VERSION = const(2)
_FLAG_HISTORICAL = const(0x01)
_FLAG_GAP = const(0x02)
_FLAG_GAPS_BEFORE = const(0x04)
_HEADER_LEN = const(12)
_TAG_LEN = const(8)
_MIN_FRAME = const(22)
_MAX_FRAME = const(244)
_DT_ESCAPE = const(63)
# record codes (head bits 5..0, protocol.md §4): short records at the channel's stride
_SHORT_PLUS = const(32)  # 32..39: one tick after it, delta -4..3
_SHORT_MINUS = const(40)  # 40..47: one tick before it, delta -4..3
_LONG = const(48)  # 48..62: long record, dt 0..14 in the head; 63: dt_ext follows
_MAX_RECORD = const(11)  # head + two 5-byte varints
_HMAC_BLOCK = const(64)

# inclusive value range per channel: temperature, UV, hydration, battery
_CH_MIN = (-32768, 0, 0, 0)
_CH_MAX = (32767, 65535, 0x7FFFFFFF, 65535)


class Hmac8:
    """HMAC-SHA256 truncated to 8 bytes, over hashlib.sha256 (MicroPython ports do not all
    ship `hmac`). The key pads are computed once."""

    def __init__(self, key):
        if key is None or len(key) == 0:
            raise ValueError("empty key")
        if len(key) > _HMAC_BLOCK:
            key = hashlib.sha256(key).digest()
        ipad = bytearray(_HMAC_BLOCK)
        opad = bytearray(_HMAC_BLOCK)
        n = len(key)
        for i in range(_HMAC_BLOCK):
            k = key[i] if i < n else 0
            ipad[i] = k ^ 0x36
            opad[i] = k ^ 0x5C
        self._ipad = ipad
        self._opad = opad

    def begin(self):
        """Inner hash state; feed the message with .update(), then call end()."""
        return hashlib.sha256(self._ipad)

    def end(self, inner, out, offset):
        """Finish the HMAC and write its first 8 bytes into out[offset:offset + 8]."""
        outer = hashlib.sha256(self._opad)
        outer.update(inner.digest())
        d = outer.digest()
        for i in range(_TAG_LEN):
            out[offset + i] = d[i]

    def tag(self, data):
        """The 8-byte tag of data, as a new bytearray."""
        h = self.begin()
        h.update(data)
        out = bytearray(_TAG_LEN)
        self.end(h, out, 0)
        return out


class FrameEncoder:
    def __init__(self, key, max_frame_bytes=_MAX_FRAME):
        self._mac = Hmac8(key)
        self._buf = bytearray(_MAX_FRAME + _MAX_RECORD)  # + scratch for a refused record
        self._mv = memoryview(self._buf)
        self._prev = [0, 0, 0, 0]  # previous value per channel in this frame
        self._ch_tick = [0, 0, 0, 0]  # tick of each channel's previous record (base_tick)
        self._step = [0, 0, 0, 0]  # and the step that led to it: next(c) = sum of the two
        # the long record being written: channel and value delta (see add)
        self._long_channel = 0
        self._long_delta = 0
        self._max = _MAX_FRAME
        self._pos = _HEADER_LEN  # next free byte
        self._count = 0
        self._last = 0  # tick of the previous record (base_tick before record 0)
        self._open = False
        self.set_max_frame_bytes(max_frame_bytes)

    def set_max_frame_bytes(self, n):
        """Largest frame in bytes (ATT MTU - 3), 22..244. Takes effect at once; a frame in
        progress must already fit."""
        if n < _MIN_FRAME or n > _MAX_FRAME:
            raise ValueError("max_frame_bytes must be 22..244")
        if self._open and self._pos + _TAG_LEN > n:
            raise ValueError("frame in progress is larger than max_frame_bytes")
        self._max = n

    @property
    def max_frame_bytes(self):
        return self._max

    @property
    def count(self):
        """Records in the current (or just finished) frame."""
        return self._count

    def start(self, boot_id, first_seq, base_tick, historical=False, gaps_before=False):
        """Begin a frame; first_seq is the seq of the next sample added. gaps_before: gap
        notices for this position were sent just before it (protocol.md §4.1)."""
        if not 0 <= boot_id <= 0xFFFF:
            raise ValueError("boot_id must be u16")
        if first_seq < 0 or first_seq > 0xFFFFFFFF or base_tick < 0 or base_tick > 0xFFFFFFFF:
            raise ValueError("first_seq and base_tick must be u32")
        struct.pack_into(
            "<BBHII",
            self._buf,
            0,
            _VERSION,
            (_FLAG_HISTORICAL if historical else 0) | (_FLAG_GAPS_BEFORE if gaps_before else 0),
            boot_id,
            first_seq,
            base_tick,
        )
        for c in range(4):
            self._prev[c] = 0
            self._ch_tick[c] = base_tick
            self._step[c] = 0
        self._pos = _HEADER_LEN
        self._count = 0
        self._last = base_tick
        self._open = True

    def gap_frame(self, boot_id, seq_at, first_tick, last_tick, counts, historical=False):
        """A tagged gap notice (protocol.md §4.1) in this encoder's buffer, as a memoryview
        valid until the next start() or gap_frame(). Not during a frame: start() afresh after.
        counts: samples not logged per channel (a list of four)."""
        if not 0 <= boot_id <= 0xFFFF or seq_at < 0 or seq_at > 0xFFFFFFFF:
            raise ValueError("boot_id must be u16 and seq_at u32")
        if first_tick < 0 or last_tick < first_tick or last_tick > 0xFFFFFFFF:
            raise ValueError("gap ticks must be an ordered u32 range")
        total = 0
        for c in counts:
            if c < 0 or c > 0xFFFFFFFF:
                raise ValueError("gap counts must be u32")
            total += c
        if len(counts) != 4 or total == 0:
            raise ValueError("a gap needs four counts, not all 0")
        buf = self._buf
        struct.pack_into("<BBHII", buf, 0, _VERSION,
                         _FLAG_GAP | (_FLAG_HISTORICAL if historical else 0),
                         boot_id, seq_at, first_tick)
        pos = _put_varint(buf, _HEADER_LEN, last_tick - first_tick)
        for c in counts:
            pos = _put_varint(buf, pos, c)
        mac = self._mac
        h = mac.begin()
        h.update(self._mv[:pos])
        mac.end(h, buf, pos)
        self._open = False
        self._count = 0
        return self._mv[: pos + _TAG_LEN]

    def add(self, channel, tick, value):
        """Append one sample. False (and the frame unchanged) if it would not fit; then
        finish() this frame and start() another.

        Allocation-free for small ints. Kept to 8 locals and a 3-deep stack so its call
        state (11 words) stays on the C stack: a bigger one is heap-allocated (and freed)
        on every call by MicroPython (VM_MAX_STATE_ON_STACK, py/objfun.c); the long record
        is written by _put_long, a call of its own.
        """
        if not self._open:
            raise ValueError("start() a frame first")
        if channel < 0 or channel > 3 or value < _CH_MIN[channel] or value > _CH_MAX[channel]:
            raise ValueError("channel or value out of range")
        dt = tick - self._last
        if dt < 0:
            raise ValueError("tick earlier than the previous record")
        d = value - self._prev[channel]
        a = tick - self._ch_tick[channel] - self._step[channel]  # against next(c)
        # The short code (protocol.md §4, canonical choice), or -1 for a long record.
        if a == 0 and -16 <= d <= 15:
            a = d + d if d >= 0 else -d - d - 1
        elif (a == 1 or a == -1) and -4 <= d <= 3:
            a = (_SHORT_PLUS if a == 1 else _SHORT_MINUS) + (d + d if d >= 0 else -d - d - 1)
        else:
            a = -1
        # Write the record after the committed end (the buffer has 11 spare bytes past the
        # largest frame), then commit it only if it and the tag fit.
        pos = self._pos
        if a >= 0:
            self._buf[pos] = (channel << 6) | a
            pos += 1
        else:
            # passed through attributes: a call with more arguments would deepen the stack
            self._long_channel = channel
            self._long_delta = d
            pos = self._put_long(dt)
        if pos + _TAG_LEN > self._max:
            if self._count == 0:
                raise ValueError("record does not fit even in an empty frame")
            return False
        self._pos = pos
        self._count += 1
        self._last = tick
        self._step[channel] = tick - self._ch_tick[channel]
        self._ch_tick[channel] = tick
        self._prev[channel] = value
        return True

    def _put_long(self, dt):
        """A long record after the committed end (dt since the previous record, then the
        value delta); returns the position after it."""
        buf = self._buf
        pos = self._pos
        head = self._long_channel << 6
        if dt < _DT_ESCAPE - _LONG:
            buf[pos] = head | (_LONG + dt)
            pos += 1
        else:
            buf[pos] = head | _DT_ESCAPE
            pos = _put_varint(buf, pos + 1, dt)
        d = self._long_delta
        return _put_varint(buf, pos, d + d if d >= 0 else -d - d - 1)  # zigzag

    def finish(self):
        """Write the tag; return a memoryview of the frame (valid until the next start)."""
        if not self._open:
            raise ValueError("no frame in progress")
        if self._count == 0:
            raise ValueError("a frame needs at least one record")
        pos = self._pos
        mac = self._mac
        h = mac.begin()
        h.update(self._mv[:pos])
        mac.end(h, self._buf, pos)
        self._open = False
        return self._mv[: pos + _TAG_LEN]


def _put_varint(buf, pos, u):
    while u > 0x7F:
        buf[pos] = (u & 0x7F) | 0x80
        u >>= 7
        pos += 1
    buf[pos] = u
    return pos + 1
