"""Control Point, Status record and advertising payloads (docs/protocol.md §2, §5, §6),
gateway side. Pure functions: values in, request bytes out; response bytes in, values out.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from .constants import (
    CFG_VALUE_MAX,
    CFG_VALUE_MIN,
    CP_RESPONSE,
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
    "set_config",
    "set_time",
]

_STATUS = struct.Struct("<BBBBHIIIHHHHHHBH")
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


# --- requests ------------------------------------------------------------------------------


def request_tag(key: bytes, boot_id: int, body: bytes) -> bytes:
    """HMAC-SHA256(key, b"dtcp" + boot_id u16 + opcode + operands)[:8]."""
    msg = CP_TAG_PREFIX + struct.pack("<H", boot_id) + bytes(body)
    return hmac.new(check_device_key(key), msg, hashlib.sha256).digest()[:TAG_LEN]


def encode_request(key: bytes, boot_id: int, opcode: int, operands: bytes = b"") -> bytes:
    """`opcode, operands, tag` for the patch's current boot_id (read it from Status first)."""
    if not 0 <= boot_id <= 0xFFFF:
        raise ValueError(f"boot_id {boot_id} is not a u16")
    if not 0 <= opcode <= 0xFF:
        raise ValueError(f"opcode {opcode} is not a u8")
    body = bytes([opcode]) + bytes(operands)
    return body + request_tag(key, boot_id, body)


def _u(value: int, bits: int, what: str) -> int:
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{what} {value} is not a u{bits}")
    return value


def set_time(key: bytes, boot_id: int, utc_ms: int) -> bytes:
    return encode_request(
        key, boot_id, Opcode.SET_TIME, struct.pack("<Q", _u(utc_ms, 64, "utc_ms"))
    )


def ack(key: bytes, boot_id: int, seq: int) -> bytes:
    """Every sample with seq <= `seq` is durable at the gateway."""
    return encode_request(key, boot_id, Opcode.ACK, struct.pack("<I", _u(seq, 32, "seq")))


def replay(key: bytes, boot_id: int, from_seq: int) -> bytes:
    return encode_request(
        key, boot_id, Opcode.REPLAY, struct.pack("<I", _u(from_seq, 32, "from_seq"))
    )


def set_config(key: bytes, boot_id: int, cfg_key: ConfigKey | int, value: int) -> bytes:
    cfg_key = ConfigKey(cfg_key)
    if not CFG_VALUE_MIN <= value <= CFG_VALUE_MAX:
        raise ValueError(f"{cfg_key.name} = {value}: must be {CFG_VALUE_MIN}..{CFG_VALUE_MAX}")
    return encode_request(key, boot_id, Opcode.SET_CONFIG, struct.pack("<BI", cfg_key, value))


def get_status(key: bytes, boot_id: int) -> bytes:
    return encode_request(key, boot_id, Opcode.GET_STATUS)


def identify(key: bytes, boot_id: int, seconds: int) -> bytes:
    return encode_request(key, boot_id, Opcode.IDENTIFY, bytes([_u(seconds, 8, "seconds")]))


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


def decode_response(data: bytes) -> ControlResponse:
    """Decode one Control Point indication; ControlError if malformed.

    A SUCCESS response must carry exactly its opcode's payload (GET_STATUS: any non-empty
    payload, checked by decode_status); any other status carries none.
    """
    data = bytes(data)
    if len(data) < 3:
        raise ControlError(f"response is {len(data)} bytes, at least 3 expected")
    if data[0] != CP_RESPONSE:
        raise ControlError(f"response starts with 0x{data[0]:02x}, expected 0x80")
    try:
        opcode = Opcode(data[1])
    except ValueError:
        raise ControlError(f"response to unknown opcode 0x{data[1]:02x}") from None
    try:
        status = Status(data[2])
    except ValueError:
        raise ControlError(f"unknown status 0x{data[2]:02x} for {opcode.name}") from None
    payload = data[3:]
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

    @property
    def unacked(self) -> int:
        return (self.next_seq - self.oldest_seq) & _U32_MAX

    @property
    def fw_revision(self) -> str:
        return ".".join(str(part) for part in self.fw_version)


def decode_status(data: bytes) -> PatchStatus:
    """The 33-byte status record (Status read or GET_STATUS payload)."""
    data = bytes(data)
    if not data:
        raise ControlError("empty status record")
    if data[0] != STATUS_FORMAT:
        raise ControlError(f"status format {data[0]}, expected {STATUS_FORMAT}")
    if len(data) != STATUS_LEN:
        raise ControlError(f"status record is {len(data)} bytes, expected {STATUS_LEN}")
    (_, major, minor, patch, boot_id, oldest, nxt, tick, flags, *periods, battery, flush_s) = (
        _STATUS.unpack(data))
    return PatchStatus(
        fw_version=(major, minor, patch),
        boot_id=boot_id,
        oldest_seq=oldest,
        next_seq=nxt,
        tick=tick,
        error_flags=ErrorFlag(flags),
        config=dict(zip(STATUS_CONFIG_KEYS, (*periods, flush_s), strict=True)),
        battery_pct=battery,
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
