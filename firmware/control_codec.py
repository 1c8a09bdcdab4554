# Control Point, Status record and advertising payloads, patch side (docs/protocol.md §2, §5, §6).
#
# Pure functions: bytes in, values out (and values in, bytes into the caller's buffer), plus
# ControlGuard, which holds the one piece of state the Control Point needs for a boot: the
# request counter that refuses a replayed request. The BLE glue calls guard.parse() on every
# Control Point write, acts on the result, and indicates guard.respond(). Nothing here raises
# on what arrives over the air.
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
_ST_STALE_REQUEST = const(0x07)

_CFG_KEY_MAX = const(6)
_CFG_VALUE_MIN = const(1)
_CFG_VALUE_MAX = const(0xFFFF)

_STATUS_FORMAT = const(2)
_STATUS_LEN = const(41)
_STATUS_FMT = "<BBBBHIIIHHHHHHBHII"
_MFR_FMT = "<BBBBHB"
_ADV_PROVISIONED = const(0x01)
_ADV_LOG_FULL = const(0x02)

# operand length per opcode (index = opcode); -1: not supported
_OPERAND_LEN = (-1, 8, 4, 4, 5, 0, 1)
_COUNTER_LEN = const(4)
_COUNTER_SPENT = 0xFFFFFFFF   # never accepted: next_counter stays a u32
_REQUEST_MIN = const(13)   # opcode + counter + tag
_PREFIX = b"dtcp"
_RESPONSE_PREFIX = b"dtcr"
_NO_TAG = bytes(_TAG_LEN)
_HEX = "0123456789abcdefABCDEF"


def _mac(key):
    return key if isinstance(key, Hmac8) else Hmac8(key)


def request_tag(key, boot_nonce, body):
    """Tag of a request body (opcode + counter + operands) for this boot's nonce (key: bytes
    or Hmac8): HMAC-SHA256(key, b"dtcp" + boot_nonce u32 + body)[:8]."""
    mac = _mac(key)
    h = mac.begin()
    h.update(_PREFIX)
    h.update(struct.pack("<I", boot_nonce))
    h.update(body)
    out = bytearray(_TAG_LEN)
    mac.end(h, out, 0)
    return out


def parse_request(data, key, boot_nonce, next_counter):
    """Check and decode one Control Point write.

    Returns (opcode, status, operand, counter). opcode is data[0] (0 for an empty write).
    status is SUCCESS or the status to answer with; operand is None unless SUCCESS, then:
    SET_TIME utc_ms, ACK seq, REPLAY from_seq, SET_CONFIG (key, value), GET_STATUS None,
    IDENTIFY seconds. counter is the request's counter once it is authenticated and fresh
    (the caller's next_counter becomes counter + 1, whatever the status), else -1. A counter
    below next_counter, or 0xFFFFFFFF, is STALE_REQUEST.
    Checks, in order: provisioned (key), length >= opcode + counter + tag, tag, counter >=
    next_counter, opcode, operand length and range. Never raises on malformed data.
    """
    try:
        n = len(data)
    except TypeError:
        return 0, _ST_INVALID_OPERAND, None, -1
    op = data[0] if n else 0
    if not key:
        return op, _ST_NOT_PROVISIONED, None, -1
    if n < _REQUEST_MIN:
        return op, _ST_INVALID_OPERAND, None, -1
    mv = memoryview(data)
    body = n - _TAG_LEN
    expected = request_tag(key, boot_nonce, mv[:body])
    diff = 0
    for i in range(_TAG_LEN):  # constant time
        diff |= expected[i] ^ data[body + i]
    if diff:
        return op, _ST_AUTH_FAILED, None, -1
    counter = struct.unpack_from("<I", data, 1)[0]
    if counter < next_counter or counter == _COUNTER_SPENT:  # replayed, or answered already
        return op, _ST_STALE_REQUEST, None, -1
    if op < 1 or op >= len(_OPERAND_LEN):
        return op, _ST_OPCODE_NOT_SUPPORTED, None, counter
    at = 1 + _COUNTER_LEN
    if body - at != _OPERAND_LEN[op]:
        return op, _ST_INVALID_OPERAND, None, counter
    if op == _OP_SET_TIME:
        return op, _ST_SUCCESS, struct.unpack_from("<Q", data, at)[0], counter
    if op == _OP_ACK or op == _OP_REPLAY:
        return op, _ST_SUCCESS, struct.unpack_from("<I", data, at)[0], counter
    if op == _OP_SET_CONFIG:
        cfg_key, value = struct.unpack_from("<BI", data, at)
        if (
            cfg_key < 1
            or cfg_key > _CFG_KEY_MAX
            or value < _CFG_VALUE_MIN
            or value > _CFG_VALUE_MAX
        ):
            return op, _ST_INVALID_OPERAND, None, counter
        return op, _ST_SUCCESS, (cfg_key, value), counter
    if op == _OP_IDENTIFY:
        return op, _ST_SUCCESS, data[at], counter
    return op, _ST_SUCCESS, None, counter  # GET_STATUS


def bound_request_tag(data):
    """The request tag a response is bound to: the write's last 8 bytes, or 8 zero bytes
    for a write too short to be a request (or not bytes at all)."""
    try:
        n = len(data)
    except TypeError:
        return _NO_TAG
    if n < _REQUEST_MIN:
        return _NO_TAG
    return memoryview(data)[n - _TAG_LEN :]


def build_response(buf, key, boot_nonce, request, opcode, status, payload=None):
    """Write the indication `0x80, opcode, status, payload, tag` into buf; return a view of it.

    tag = HMAC-SHA256(key, b"dtcr" + boot_nonce u32 + request tag + 0x80, opcode, status,
    payload)[:8], bound to the write it answers (`request`, see bound_request_tag). Without
    a key (not provisioned) the tag is 8 zero bytes: nobody can check it.
    """
    n = 3 + (len(payload) if payload is not None else 0)
    if len(buf) < n + _TAG_LEN:
        raise ValueError("response buffer too small")
    buf[0] = _RESPONSE
    buf[1] = opcode & 0xFF
    buf[2] = status & 0xFF
    if payload is not None:
        for i in range(n - 3):
            buf[3 + i] = payload[i]
    if key:
        mac = _mac(key)
        h = mac.begin()
        h.update(_RESPONSE_PREFIX)
        h.update(struct.pack("<I", boot_nonce))
        h.update(bound_request_tag(request))
        h.update(memoryview(buf)[:n])
        mac.end(h, buf, n)
    else:
        for i in range(_TAG_LEN):
            buf[n + i] = 0
    return memoryview(buf)[: n + _TAG_LEN]


class ControlGuard:
    """This boot's request authentication: the key, the boot nonce and the next counter a
    request must carry at least (protocol.md §5). One per boot, shared by every connection,
    so a request captured on one link is refused on the next."""

    def __init__(self, key, boot_nonce):
        self.mac = Hmac8(key) if key else None
        self.boot_nonce = boot_nonce
        self.next_counter = 0

    def parse(self, data):
        """(opcode, status, operand) of a write; an authenticated, fresh request uses up its
        counter whatever its status."""
        op, status, operand, counter = parse_request(
            data, self.mac, self.boot_nonce, self.next_counter)
        if counter >= 0:
            self.next_counter = counter + 1
        return op, status, operand

    def respond(self, buf, request, opcode, status, payload=None):
        return build_response(buf, self.mac, self.boot_nonce, request, opcode, status, payload)


def pack_set_time_result(boot_id, tick):
    """SET_TIME success payload: boot_id u16, tick u32."""
    return struct.pack("<HI", boot_id, tick)


def pack_replay_result(oldest_seq, next_seq):
    """REPLAY success payload: oldest_seq u32, next_seq u32."""
    return struct.pack("<II", oldest_seq, next_seq)


def pack_status(
    buf, fw, boot_id, oldest_seq, next_seq, tick, error_flags, periods, battery_pct,
    boot_nonce, next_counter, offset=0
):
    """Write the 41-byte status record (§6) at buf[offset:]; return a view of it.

    fw: (major, minor, patch); periods: the six config values in config-key order
    (temperature, UV, UV fast, hydration, battery periods, frame flush interval; seconds);
    boot_nonce and next_counter: what the next Control Point request must be tagged with
    (ControlGuard).
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
        boot_nonce,
        next_counter,
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
