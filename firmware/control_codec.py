# Control Point, Status record and advertising payloads, patch side (docs/protocol.md §2, §5, §6).
#
# Pure functions: bytes in, values out (and values in, bytes into the caller's buffer). The
# BLE glue calls parse_request() on every Control Point write, acts on the result, and
# indicates build_response(). Nothing here raises on what arrives over the air.
try:
    from micropython import const
except ImportError:  # CPython (virtual patch, tests)

    def const(x):  # type: ignore[misc]  # same behaviour as micropython.const
        return x


import struct

from firmware.frame_encoder import Hmac8

_TAG_LEN = const(8)
_RESPONSE = const(0x80)

_OP_SET_TIME = const(0x01)
_OP_ACK = const(0x02)
_OP_REPLAY = const(0x03)
_OP_SET_CONFIG = const(0x04)
_OP_GET_STATUS = const(0x05)
_OP_IDENTIFY = const(0x06)

_ST_SUCCESS = const(0x00)
_ST_OPCODE_NOT_SUPPORTED = const(0x01)
_ST_INVALID_OPERAND = const(0x02)
_ST_NOT_PROVISIONED = const(0x04)
_ST_AUTH_FAILED = const(0x06)

_CFG_KEY_MAX = const(6)
_CFG_VALUE_MIN = const(1)
_CFG_VALUE_MAX = const(0xFFFF)

_STATUS_FORMAT = const(1)
_STATUS_LEN = const(33)
_STATUS_FMT = "<BBBBHIIIHHHHHHBH"
_MFR_FMT = "<BBBBHB"
_ADV_PROVISIONED = const(0x01)
_ADV_LOG_FULL = const(0x02)

# operand length per opcode (index = opcode); -1: not supported
_OPERAND_LEN = (-1, 8, 4, 4, 5, 0, 1)
_PREFIX = b"dtcp"
_HEX = "0123456789abcdefABCDEF"


def request_tag(key, boot_id, body):
    """Tag of a request body (opcode + operands) for this boot (key: bytes or Hmac8)."""
    mac = key if isinstance(key, Hmac8) else Hmac8(key)
    h = mac.begin()
    h.update(_PREFIX)
    h.update(struct.pack("<H", boot_id & 0xFFFF))
    h.update(body)
    out = bytearray(_TAG_LEN)
    mac.end(h, out, 0)
    return out


def parse_request(data, key, boot_id):
    """Check and decode one Control Point write.

    Returns (opcode, status, operand). opcode is data[0] (0 for an empty write). status is
    SUCCESS or the status to answer with; operand is None unless SUCCESS, then:
    SET_TIME utc_ms, ACK seq, REPLAY from_seq, SET_CONFIG (key, value), GET_STATUS None,
    IDENTIFY seconds. Checks, in order: provisioned (key), length >= opcode + tag, tag,
    opcode, operand length and range. Never raises on malformed data.
    """
    try:
        n = len(data)
    except TypeError:
        return 0, _ST_INVALID_OPERAND, None
    op = data[0] if n else 0
    if not key:
        return op, _ST_NOT_PROVISIONED, None
    if n < 1 + _TAG_LEN:
        return op, _ST_INVALID_OPERAND, None
    mv = memoryview(data)
    body = n - _TAG_LEN
    expected = request_tag(key, boot_id, mv[:body])
    diff = 0
    for i in range(_TAG_LEN):  # constant time
        diff |= expected[i] ^ data[body + i]
    if diff:
        return op, _ST_AUTH_FAILED, None
    if op < 1 or op >= len(_OPERAND_LEN):
        return op, _ST_OPCODE_NOT_SUPPORTED, None
    if body - 1 != _OPERAND_LEN[op]:
        return op, _ST_INVALID_OPERAND, None
    if op == _OP_SET_TIME:
        return op, _ST_SUCCESS, struct.unpack_from("<Q", data, 1)[0]
    if op == _OP_ACK or op == _OP_REPLAY:
        return op, _ST_SUCCESS, struct.unpack_from("<I", data, 1)[0]
    if op == _OP_SET_CONFIG:
        cfg_key, value = struct.unpack_from("<BI", data, 1)
        if (
            cfg_key < 1
            or cfg_key > _CFG_KEY_MAX
            or value < _CFG_VALUE_MIN
            or value > _CFG_VALUE_MAX
        ):
            return op, _ST_INVALID_OPERAND, None
        return op, _ST_SUCCESS, (cfg_key, value)
    if op == _OP_IDENTIFY:
        return op, _ST_SUCCESS, data[1]
    return op, _ST_SUCCESS, None  # GET_STATUS


def build_response(buf, opcode, status, payload=None):
    """Write the indication `0x80, opcode, status, payload` into buf; return a view of it."""
    n = 3 + (len(payload) if payload is not None else 0)
    if len(buf) < n:
        raise ValueError("response buffer too small")
    buf[0] = _RESPONSE
    buf[1] = opcode & 0xFF
    buf[2] = status & 0xFF
    if payload is not None:
        for i in range(n - 3):
            buf[3 + i] = payload[i]
    return memoryview(buf)[:n]


def pack_set_time_result(boot_id, tick):
    """SET_TIME success payload: boot_id u16, tick u32."""
    return struct.pack("<HI", boot_id, tick)


def pack_replay_result(oldest_seq, next_seq):
    """REPLAY success payload: oldest_seq u32, next_seq u32."""
    return struct.pack("<II", oldest_seq, next_seq)


def pack_status(
    buf, fw, boot_id, oldest_seq, next_seq, tick, error_flags, periods, battery_pct, offset=0
):
    """Write the 33-byte status record (§6) at buf[offset:]; return a view of it.

    fw: (major, minor, patch); periods: the six config values in config-key order
    (temperature, UV, UV fast, hydration, battery periods, frame flush interval; seconds).
    """
    struct.pack_into(
        _STATUS_FMT,
        buf,
        offset,
        _STATUS_FORMAT,
        fw[0],
        fw[1],
        fw[2],
        boot_id,
        oldest_seq,
        next_seq,
        tick,
        error_flags,
        periods[0],
        periods[1],
        periods[2],
        periods[3],
        periods[4],
        battery_pct,
        periods[5],
    )
    return memoryview(buf)[offset : offset + _STATUS_LEN]


def pack_manufacturer_data(fw, battery_pct, unacked_samples, provisioned, log_full):
    """The 7 manufacturer-data bytes that follow company id 0xFFFF in the advertisement."""
    flags = (_ADV_PROVISIONED if provisioned else 0) | (_ADV_LOG_FULL if log_full else 0)
    if unacked_samples > 0xFFFF:
        unacked_samples = 0xFFFF
    return struct.pack(_MFR_FMT, fw[0], fw[1], fw[2], battery_pct, unacked_samples, flags)


def device_name(device_id_hex):
    """Advertised name: 'DT-' + the last 4 hex chars of the 16-char device id, upper case."""
    if len(device_id_hex) != 16:
        raise ValueError("device id must be 16 hex chars")
    for c in device_id_hex:
        if c not in _HEX:
            raise ValueError("device id must be 16 hex chars")
    return "DT-" + device_id_hex[12:].upper()
