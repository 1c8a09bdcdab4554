"""Control Point, Status record and advertising payloads (docs/protocol.md §2, §5, §6),
gateway side. Pure functions: values in, request bytes out; response bytes in, values out.

Requests are tagged for the patch's boot nonce and carry a counter the patch accepts once;
responses are tagged by the patch and bound to the request they answer, and are checked
here before anything in them is read (decode_response).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from .constants import (
    CFG_VALUE_MAX,
    CFG_VALUE_MIN,
    CP_COUNTER_MAX,
    CP_REQUEST_MAX_BYTES,
    CP_REQUEST_MIN_BYTES,
    CP_RESPONSE,
    CP_RESPONSE_MIN_BYTES,
    CP_RESPONSE_TAG_PREFIX,
    CP_TAG_PREFIX,
    MANUFACTURER_DATA_LEN,
    STATUS_CONFIG_KEYS,
    STATUS_FORMAT,
    STATUS_LEN,
    TAG_LEN,
    AdvFlag,
    ConfigKey,
    ErrorFlag,
    Opcode,
    Status,
)
from .frames import check_device_key

__all__ = [
    "AdvertInfo",
    "ControlError",
    "ControlResponse",
    "PatchStatus",
    "ReplayResult",
    "ResponseTagError",
    "SetTimeResult",
    "ack",
    "decode_manufacturer_data",
    "decode_replay_result",
    "decode_response",
    "decode_set_time_result",
    "decode_status",
    "encode_request",
    "get_status",
    "identify",
    "replay",
    "request_tag",
    "response_tag",
    "set_config",
    "set_time",
]

_STATUS = struct.Struct("<BBBBHIIIHHHHHHBHII")
_MFR = struct.Struct("<BBBBHB")
_SET_TIME_RESULT = struct.Struct("<HI")
_REPLAY_RESULT = struct.Struct("<II")
_U32_MAX = 0xFFFFFFFF

# exact payload length of a SUCCESS response, per opcode (GET_STATUS: checked by decode_status)
_SUCCESS_PAYLOAD_LEN = {
    Opcode.SET_TIME: _SET_TIME_RESULT.size,
    Opcode.ACK: 0,
    Opcode.REPLAY: _REPLAY_RESULT.size,
    Opcode.SET_CONFIG: 0,
    Opcode.IDENTIFY: 0,
}


class ControlError(ValueError):
    """A response, status record or advertisement payload is malformed."""


class ResponseTagError(ControlError):
    """A Control Point response whose tag does not match the request it should answer: forged,
    altered, answering another request, untagged, or tagged under another key. `claimed_opcode`
    and `claimed_status` are what its unauthenticated bytes say (None if too short), for the
    log only: nothing in such a response is acted on."""

    def __init__(self, message: str, claimed_opcode: int | None = None,
                 claimed_status: int | None = None):
        super().__init__(message)
        self.claimed_opcode = claimed_opcode
        self.claimed_status = claimed_status


# --- requests ------------------------------------------------------------------------------


def request_tag(key: bytes, boot_nonce: int, body: bytes) -> bytes:
    """HMAC-SHA256(key, b"dtcp" + boot_nonce u32 + opcode + counter + operands)[:8]."""
    msg = CP_TAG_PREFIX + struct.pack("<I", boot_nonce) + bytes(body)
    return hmac.new(check_device_key(key), msg, hashlib.sha256).digest()[:TAG_LEN]


def encode_request(key: bytes, boot_nonce: int, counter: int, opcode: int,
                   operands: bytes = b"") -> bytes:
    """`opcode, counter, operands, tag` for the patch's current boot nonce; counter at least
    the patch's next_counter (read both from Status first), one higher for every request."""
    _u(boot_nonce, 32, "boot_nonce")
    if not 0 <= counter <= CP_COUNTER_MAX:
        raise ValueError(f"counter {counter} is not in 0..{CP_COUNTER_MAX}")
    _u(opcode, 8, "opcode")
    body = bytes([opcode]) + struct.pack("<I", counter) + bytes(operands)
    if len(body) + TAG_LEN > CP_REQUEST_MAX_BYTES:
        raise ValueError(f"request of {len(body) + TAG_LEN} bytes: the patch's Control Point "
                         f"takes at most {CP_REQUEST_MAX_BYTES}")
    return body + request_tag(key, boot_nonce, body)


def _u(value: int, bits: int, what: str) -> int:
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{what} {value} is not a u{bits}")
    return value


def set_time(key: bytes, boot_nonce: int, counter: int, utc_ms: int) -> bytes:
    return encode_request(key, boot_nonce, counter, Opcode.SET_TIME,
                          struct.pack("<Q", _u(utc_ms, 64, "utc_ms")))


def ack(key: bytes, boot_nonce: int, counter: int, seq: int) -> bytes:
    """Every sample with seq <= `seq` is durable at the gateway."""
    return encode_request(key, boot_nonce, counter, Opcode.ACK,
                          struct.pack("<I", _u(seq, 32, "seq")))


def replay(key: bytes, boot_nonce: int, counter: int, from_seq: int) -> bytes:
    return encode_request(key, boot_nonce, counter, Opcode.REPLAY,
                          struct.pack("<I", _u(from_seq, 32, "from_seq")))


def set_config(key: bytes, boot_nonce: int, counter: int, cfg_key: ConfigKey | int,
               value: int) -> bytes:
    cfg_key = ConfigKey(cfg_key)
    if not CFG_VALUE_MIN <= value <= CFG_VALUE_MAX:
        raise ValueError(f"{cfg_key.name} = {value}: must be {CFG_VALUE_MIN}..{CFG_VALUE_MAX}")
    return encode_request(key, boot_nonce, counter, Opcode.SET_CONFIG,
                          struct.pack("<BI", cfg_key, value))


def get_status(key: bytes, boot_nonce: int, counter: int) -> bytes:
    return encode_request(key, boot_nonce, counter, Opcode.GET_STATUS)


def identify(key: bytes, boot_nonce: int, counter: int, seconds: int) -> bytes:
    return encode_request(key, boot_nonce, counter, Opcode.IDENTIFY,
                          bytes([_u(seconds, 8, "seconds")]))


# --- responses -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ControlResponse:
    opcode: Opcode
    status: Status
    payload: bytes

    @property
    def ok(self) -> bool:
        return self.status is Status.SUCCESS


@dataclass(frozen=True, slots=True)
class SetTimeResult:
    boot_id: int
    tick: int  # patch tick when the request arrived


@dataclass(frozen=True, slots=True)
class ReplayResult:
    oldest_seq: int
    next_seq: int


def response_tag(key: bytes, boot_nonce: int, request: bytes, body: bytes) -> bytes:
    """HMAC-SHA256(key, b"dtcr" + boot_nonce u32 + the request's tag + response body)[:8]:
    the tag of the response `body` (0x80, opcode, status, payload) to the write `request`."""
    request = bytes(request)
    bound = request[-TAG_LEN:] if len(request) >= CP_REQUEST_MIN_BYTES else bytes(TAG_LEN)
    msg = CP_RESPONSE_TAG_PREFIX + struct.pack("<I", boot_nonce) + bound + bytes(body)
    return hmac.new(check_device_key(key), msg, hashlib.sha256).digest()[:TAG_LEN]


def decode_response(data: bytes, key: bytes, boot_nonce: int, request: bytes) -> ControlResponse:
    """Check and decode the Control Point indication that answers `request` (the bytes the
    gateway wrote); ResponseTagError if its tag does not match, ControlError if malformed.

    The tag is checked before anything else is read. A SUCCESS response must carry exactly
    its opcode's payload (GET_STATUS: any non-empty payload, checked by decode_status); any
    other status carries none; the opcode must be the request's.
    """
    data = bytes(data)
    if len(data) < CP_RESPONSE_MIN_BYTES:
        raise ResponseTagError(
            f"response is {len(data)} bytes, at least {CP_RESPONSE_MIN_BYTES} expected "
            f"(untagged?)", *(data[1:3] if len(data) >= 3 else ()))
    body, tag = data[:-TAG_LEN], data[-TAG_LEN:]
    if not hmac.compare_digest(tag, response_tag(key, boot_nonce, request, body)):
        raise ResponseTagError("response tag does not match the request it answers",
                               body[1], body[2])
    if body[0] != CP_RESPONSE:
        raise ControlError(f"response starts with 0x{body[0]:02x}, expected 0x80")
    try:
        opcode = Opcode(body[1])
    except ValueError:
        raise ControlError(f"response to unknown opcode 0x{body[1]:02x}") from None
    if opcode != request[0]:
        raise ControlError(f"{opcode.name} response to a 0x{request[0]:02x} request")
    try:
        status = Status(body[2])
    except ValueError:
        raise ControlError(f"unknown status 0x{body[2]:02x} for {opcode.name}") from None
    payload = body[3:]
    if status is Status.SUCCESS:
        want = _SUCCESS_PAYLOAD_LEN.get(opcode)
        if want is None:
            if not payload:
                raise ControlError("GET_STATUS success without a status record")
        elif len(payload) != want:
            raise ControlError(
                f"{opcode.name} success payload is {len(payload)} bytes, expected {want}"
            )
    elif payload:
        raise ControlError(f"{opcode.name} {status.name} response carries {len(payload)} bytes")
    return ControlResponse(opcode, status, payload)


def decode_set_time_result(payload: bytes) -> SetTimeResult:
    if len(payload) != _SET_TIME_RESULT.size:
        raise ControlError(f"SET_TIME result is {len(payload)} bytes, expected 6")
    return SetTimeResult(*_SET_TIME_RESULT.unpack(payload))


def decode_replay_result(payload: bytes) -> ReplayResult:
    if len(payload) != _REPLAY_RESULT.size:
        raise ControlError(f"REPLAY result is {len(payload)} bytes, expected 8")
    return ReplayResult(*_REPLAY_RESULT.unpack(payload))


# --- status record -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PatchStatus:
    fw_version: tuple[int, int, int]
    boot_id: int
    oldest_seq: int  # oldest sample not yet acknowledged (== next_seq when none)
    next_seq: int  # seq the next sample will get
    tick: int
    error_flags: ErrorFlag
    config: dict[ConfigKey, int]  # keys 1..6: the periods and the flush interval, seconds
    battery_pct: int
    boot_nonce: int  # what this boot's Control Point requests are tagged with (§5)
    next_counter: int  # the lowest counter the patch accepts in its next request

    @property
    def unacked(self) -> int:
        return (self.next_seq - self.oldest_seq) & _U32_MAX

    @property
    def fw_revision(self) -> str:
        return ".".join(str(part) for part in self.fw_version)


def decode_status(data: bytes) -> PatchStatus:
    """The 41-byte status record (Status read or GET_STATUS payload)."""
    data = bytes(data)
    if not data:
        raise ControlError("empty status record")
    if data[0] == 1:
        raise ControlError("status format 1: the patch firmware predates authenticated "
                           "control responses (format 2); update it")
    if data[0] != STATUS_FORMAT:
        raise ControlError(f"status format {data[0]}, expected {STATUS_FORMAT}")
    if len(data) != STATUS_LEN:
        raise ControlError(f"status record is {len(data)} bytes, expected {STATUS_LEN}")
    (_, major, minor, patch, boot_id, oldest, nxt, tick, flags, p1, p2, p3, p4, p5, battery,
     flush_s, boot_nonce, next_counter) = _STATUS.unpack(data)
    periods = (p1, p2, p3, p4, p5)
    return PatchStatus(
        fw_version=(major, minor, patch),
        boot_id=boot_id,
        oldest_seq=oldest,
        next_seq=nxt,
        tick=tick,
        error_flags=ErrorFlag(flags),
        config=dict(zip(STATUS_CONFIG_KEYS, (*periods, flush_s), strict=True)),
        battery_pct=battery,
        boot_nonce=boot_nonce,
        next_counter=next_counter,
    )


# --- advertising ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdvertInfo:
    fw_version: tuple[int, int, int]
    battery_pct: int
    unacked_samples: int  # saturates at 65535
    flags: AdvFlag

    @property
    def provisioned(self) -> bool:
        return AdvFlag.PROVISIONED in self.flags

    @property
    def log_full(self) -> bool:
        return AdvFlag.LOG_FULL in self.flags


def decode_manufacturer_data(data: bytes) -> AdvertInfo:
    """The 7 bytes after company id 0xFFFF (as bleak's `manufacturer_data[0xFFFF]`); 9 bytes
    starting with the company id (ff ff) are accepted too. Reserved flag bits are ignored."""
    data = bytes(data)
    if len(data) == MANUFACTURER_DATA_LEN + 2 and data[:2] == b"\xff\xff":
        data = data[2:]
    if len(data) != MANUFACTURER_DATA_LEN:
        raise ControlError(
            f"manufacturer data is {len(data)} bytes, expected {MANUFACTURER_DATA_LEN}"
        )
    major, minor, patch, battery, unacked, flags = _MFR.unpack(data)
    return AdvertInfo((major, minor, patch), battery, unacked, AdvFlag(flags & 0x03))
