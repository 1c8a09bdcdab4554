# The flash log's on-flash format facts that more than the log itself reads: the segment
# header, the `acked` watermark file, and their CRC-16. Shared by the
# firmware's log (firmware/flash_log.py, which describes the whole layout, blocks and gap
# snapshots included) and the gateway's provisioning (gateway/provision.py reads a patch's
# log before flashing new firmware), so the two cannot drift apart. MicroPython and CPython.
# (Every name here costs the patch RAM when loaded as .mpy: keep them few.)
#
#   seg_<first_seq>.log  header 32 B: two identical copies of b"DTL", version u8,
#                        first_seq u32, boot_id u16, base_tick u32, crc16 u16 (over the 14
#                        bytes before it); then blocks (format 2, this firmware) or 8-byte
#                        records (format 1, the first firmware; not read back).
#   acked                first unacknowledged seq u32, crc16 u16 (over the 4 bytes before it)
#   All little-endian. CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF), table-driven: it
#   detects every error confined to 16 consecutive bits, i.e. any single corrupted byte.
import struct
from array import array

try:
    from micropython import const
except ImportError:

    def const(x):  # type: ignore[misc]  # same behaviour as micropython.const
        return x


FORMAT_VERSION = const(2)  # what this firmware writes and reads
V1_RECORD_BYTES = const(8)  # format 1's fixed records after the header
HDR_BYTES = const(32)  # segment header: two 16-byte copies

_COPY_BYTES = const(16)
_COPY_CRC_SPAN = const(14)
_ACKED_BYTES = const(6)


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


def header_version(buf, off=0):
    """The format version of the segment header copy at buf[off:] (its first 4 bytes
    suffice), or -1 if it does not start like one."""
    if len(buf) < off + 4 or buf[off] != 0x44 or buf[off + 1] != 0x54 or buf[off + 2] != 0x4C:
        return -1
    return buf[off + 3]


def pack_header(buf, first, boot_id, base_tick):
    """Both copies of a segment header of this format into buf (HDR_BYTES)."""
    for off in (0, _COPY_BYTES):
        struct.pack_into("<BBBBIHI", buf, off, 0x44, 0x54, 0x4C, FORMAT_VERSION, first, boot_id,
                         base_tick)
        struct.pack_into("<H", buf, off + _COPY_CRC_SPAN,
                         crc16(memoryview(buf)[off:], _COPY_CRC_SPAN))


def parse_header(buf, n, first):
    """(boot_id, base_tick) from the first intact copy among the n bytes read into buf, of a
    segment of this format whose first seq is `first`; None if neither copy is."""
    for off in (0, _COPY_BYTES):
        if n < off + _COPY_BYTES:
            break
        if header_version(buf, off) != FORMAT_VERSION:
            continue
        _, seq, boot, base, crc = struct.unpack_from("<IIHIH", buf, off)
        if crc == crc16(memoryview(buf)[off:], _COPY_CRC_SPAN) and seq == first:
            return boot, base
    return None


def parse_acked(data):
    """The first unacknowledged seq from the `acked` file's content; -1 if damaged. (The
    log writes it as struct "<I" seq + crc16 of those 4 bytes, "<H".)"""
    if len(data) != _ACKED_BYTES or crc16(data, 4) != data[4] | data[5] << 8:
        return -1
    return struct.unpack_from("<I", data, 0)[0]
