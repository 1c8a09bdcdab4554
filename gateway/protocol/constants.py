"""Protocol numbers, gateway side (docs/protocol.md, version 1).

The same numbers as firmware/protocol_ids.py; tests/test_codec.py checks both agree.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag, StrEnum

# --- GATT (§3) -----------------------------------------------------------------------------
STREAM_SERVICE_UUID = "d7000001-5345-4c50-834d-247ec90e2b93"
SAMPLES_CHAR_UUID = "d7000002-5345-4c50-834d-247ec90e2b93"
CONTROL_POINT_CHAR_UUID = "d7000003-5345-4c50-834d-247ec90e2b93"
STATUS_CHAR_UUID = "d7000004-5345-4c50-834d-247ec90e2b93"

DEVICE_INFO_SERVICE_UUID16 = 0x180A
MANUFACTURER_NAME_CHAR_UUID16 = 0x2A29
MODEL_NUMBER_CHAR_UUID16 = 0x2A24
SERIAL_NUMBER_CHAR_UUID16 = 0x2A25
FIRMWARE_REVISION_CHAR_UUID16 = 0x2A26
BATTERY_SERVICE_UUID16 = 0x180F
BATTERY_LEVEL_CHAR_UUID16 = 0x2A19
ENV_SENSING_SERVICE_UUID16 = 0x181A
TEMPERATURE_CHAR_UUID16 = 0x2A6E
UV_INDEX_CHAR_UUID16 = 0x2A76
MANUFACTURER_NAME = "dermtwin"

# --- identity and advertising (§1, §2) -----------------------------------------------------
DEVICE_ID_LEN = 8
DEVICE_KEY_LEN = 32
TAG_LEN = 8
TICK_MS = 100
COMPANY_ID = 0xFFFF
MANUFACTURER_DATA_LEN = 7  # after the company id
UNACKED_SATURATE = 0xFFFF
DEVICE_NAME_PREFIX = "DT-"

# --- MTU (§3) ------------------------------------------------------------------------------
ATT_MTU_REQUESTED = 247
ATT_MTU_MIN = 64
ATT_NOTIFY_OVERHEAD = 3

# --- sample frames (§4) --------------------------------------------------------------------
FRAME_VERSION = 2  # what patches send; the gateway also decodes FRAME_VERSION_1
FRAME_VERSION_1 = 1  # the older record grammar (protocol.md §4.2)
FRAME_FLAG_HISTORICAL = 0x01
FRAME_FLAG_GAP = 0x02  # a gap notice, not samples (§4.1)
FRAME_FLAG_GAPS_BEFORE = 0x04  # gap notices were sent just before this sample frame
FRAME_FLAGS_RESERVED = 0xF8
GAP_FRAME_VARINTS = 5  # tick span, then one count per channel
FRAME_HEADER_LEN = 12
FRAME_MIN_BYTES = 21  # header + one 1-byte record + tag
FRAME_V1_MIN_BYTES = 22  # version 1: records are at least 2 bytes
FRAME_MAX_BYTES = 244
DT_ESCAPE = 63
# version-2 record codes (head bits 5..0), protocol.md §4
CODE_SHORT_END = 32  # 0..31: at next(c), delta -16..15
CODE_SHORT_PLUS_END = 40  # 32..39: at next(c) + 1, delta -4..3
CODE_SHORT_MINUS_END = 48  # 40..47: at next(c) - 1, delta -4..3; 48..62: long, dt in head
VARINT_MAX_BYTES = 5
CHANNEL_COUNT = 4

# --- Control Point (§5) --------------------------------------------------------------------
CP_TAG_PREFIX = b"dtcp"
CP_RESPONSE_TAG_PREFIX = b"dtcr"
CP_RESPONSE = 0x80
CP_REQUEST_MIN_BYTES = 13  # opcode + counter u32 + tag
CP_REQUEST_MAX_BYTES = 32  # the Control Point's write buffer (SET_TIME, the longest, is 21)
CP_RESPONSE_MIN_BYTES = 11  # 0x80 + opcode + status + tag
CP_COUNTER_MAX = 0xFFFFFFFE  # 0xFFFFFFFF is never accepted

# --- Status record (§6) --------------------------------------------------------------------
STATUS_FORMAT = 2
STATUS_LEN = 41


class Channel(IntEnum):
    """Sample channels (§4) and their integer units."""

    TEMPERATURE = 0  # TMP117 LSB = 7.8125 m°C
    UV = 1  # UV index x 100
    HYDRATION = 2  # fF
    BATTERY = 3  # MAX17048 SOC register, 1/256 %


# inclusive (min, max) decoded value per channel
CHANNEL_RANGE: dict[Channel, tuple[int, int]] = {
    Channel.TEMPERATURE: (-32768, 32767),
    Channel.UV: (0, 65535),
    Channel.HYDRATION: (0, 0x7FFFFFFF),
    Channel.BATTERY: (0, 65535),
}
CHANNEL_MIN = tuple(CHANNEL_RANGE[c][0] for c in Channel)
CHANNEL_MAX = tuple(CHANNEL_RANGE[c][1] for c in Channel)


class Opcode(IntEnum):
    SET_TIME = 0x01
    ACK = 0x02
    REPLAY = 0x03
    SET_CONFIG = 0x04
    GET_STATUS = 0x05
    IDENTIFY = 0x06


class Status(IntEnum):
    SUCCESS = 0x00
    OPCODE_NOT_SUPPORTED = 0x01
    INVALID_OPERAND = 0x02
    OPERATION_FAILED = 0x03
    NOT_PROVISIONED = 0x04
    BUSY = 0x05
    AUTH_FAILED = 0x06
    STALE_REQUEST = 0x07  # authenticated, but its counter was used already (a replay)


class ConfigKey(IntEnum):
    """SET_CONFIG keys; every value is in seconds, 1..65535."""

    TEMP_PERIOD_S = 1
    UV_PERIOD_S = 2
    UV_FAST_PERIOD_S = 3
    HYDRATION_PERIOD_S = 4
    BATTERY_PERIOD_S = 5
    FLUSH_INTERVAL_S = 6


CFG_KEY_COUNT = len(ConfigKey)
CFG_VALUE_MIN = 1
CFG_VALUE_MAX = 0xFFFF

# the config values carried in the status record, in record order (the flush interval
# comes after the battery percent, §6)
STATUS_CONFIG_KEYS = (
    ConfigKey.TEMP_PERIOD_S,
    ConfigKey.UV_PERIOD_S,
    ConfigKey.UV_FAST_PERIOD_S,
    ConfigKey.HYDRATION_PERIOD_S,
    ConfigKey.BATTERY_PERIOD_S,
    ConfigKey.FLUSH_INTERVAL_S,
)


class ErrorFlag(IntFlag):
    """Status record error flags (§6)."""

    LOG_FULL = 0x0001
    CLOCK_NOT_SET = 0x0002
    NOT_PROVISIONED = 0x0004
    TEMP_SENSOR = 0x0008
    UV_SENSOR = 0x0010
    HYDRATION_SENSOR = 0x0020
    BATTERY_GAUGE = 0x0040
    BATTERY_LOW = 0x0080
    BATTERY_CRITICAL = 0x0100


class AdvFlag(IntFlag):
    """Manufacturer-data adv_flags (§2)."""

    PROVISIONED = 0x01
    LOG_FULL = 0x02


class FrameErrorCode(StrEnum):
    """Why a frame was rejected (§4), in the order the decoder checks."""

    TRUNCATED = "TRUNCATED"
    BAD_VERSION = "BAD_VERSION"
    RESERVED_FLAGS = "RESERVED_FLAGS"
    BAD_TAG = "BAD_TAG"
    TRUNCATED_RECORD = "TRUNCATED_RECORD"
    VARINT_TOO_LONG = "VARINT_TOO_LONG"
    BAD_GAP = "BAD_GAP"
    BAD_VALUE = "BAD_VALUE"
    SEQ_OVERFLOW = "SEQ_OVERFLOW"
