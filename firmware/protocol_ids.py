# dermtwin protocol numbers, patch side (docs/protocol.md, version 1).
#
# Plain const() ints so they fold away when compiled with mpy-cross. The gateway keeps the
# same numbers as enums in gateway/protocol/constants.py; tests/test_codec.py checks that
# both agree name by name (prefix OP_ -> Opcode, ST_ -> Status, CFG_ -> ConfigKey,
# CH_ -> Channel, ERR_ -> ErrorFlag, ADV_ -> AdvFlag).
try:
    from micropython import const
except ImportError:  # CPython (virtual patch, tests)

    def const(x):  # type: ignore[misc]  # same behaviour as micropython.const
        return x


# --- GATT (protocol.md §3) ---------------------------------------------------------------
STREAM_SERVICE_UUID = "d7000001-5345-4c50-834d-247ec90e2b93"
SAMPLES_CHAR_UUID = "d7000002-5345-4c50-834d-247ec90e2b93"
CONTROL_POINT_CHAR_UUID = "d7000003-5345-4c50-834d-247ec90e2b93"
STATUS_CHAR_UUID = "d7000004-5345-4c50-834d-247ec90e2b93"

DEVICE_INFO_SERVICE_UUID16 = const(0x180A)
MANUFACTURER_NAME_CHAR_UUID16 = const(0x2A29)
MODEL_NUMBER_CHAR_UUID16 = const(0x2A24)
SERIAL_NUMBER_CHAR_UUID16 = const(0x2A25)
FIRMWARE_REVISION_CHAR_UUID16 = const(0x2A26)
BATTERY_SERVICE_UUID16 = const(0x180F)
BATTERY_LEVEL_CHAR_UUID16 = const(0x2A19)
ENV_SENSING_SERVICE_UUID16 = const(0x181A)
TEMPERATURE_CHAR_UUID16 = const(0x2A6E)
UV_INDEX_CHAR_UUID16 = const(0x2A76)
MANUFACTURER_NAME = "dermtwin"

# --- identity and advertising (§1, §2) ---------------------------------------------------
DEVICE_ID_LEN = const(8)
DEVICE_KEY_LEN = const(32)
TAG_LEN = const(8)
TICK_MS = const(100)
COMPANY_ID = const(0xFFFF)
MANUFACTURER_DATA_LEN = const(7)  # after the company id
ADV_PROVISIONED = const(0x01)
ADV_LOG_FULL = const(0x02)
UNACKED_SATURATE = const(0xFFFF)

# --- MTU (§3) ------------------------------------------------------------------------------
ATT_MTU_REQUESTED = const(247)
ATT_MTU_MIN = const(64)
ATT_NOTIFY_OVERHEAD = const(3)

# --- sample frames (§4) --------------------------------------------------------------------
FRAME_VERSION = const(2)
FRAME_FLAG_HISTORICAL = const(0x01)
FRAME_FLAG_GAP = const(0x02)  # a gap notice, not samples (§4.1)
FRAME_FLAG_GAPS_BEFORE = const(0x04)  # gap notices were sent just before this sample frame
FRAME_FLAGS_RESERVED = const(0xF8)
FRAME_HEADER_LEN = const(12)
FRAME_MIN_BYTES = const(21)  # header + one 1-byte record + tag
FRAME_MAX_BYTES = const(244)  # ATT MTU 247 - 3
DT_ESCAPE = const(63)
VARINT_MAX_BYTES = const(5)

CH_TEMPERATURE = const(0)  # TMP117 LSB, 7.8125 m°C
CH_UV = const(1)  # UVI x 100
CH_HYDRATION = const(2)  # fF
CH_BATTERY = const(3)  # MAX17048 SOC, 1/256 %
CHANNEL_COUNT = const(4)
# inclusive (min, max) per channel, indexed by channel id
CHANNEL_MIN = (-32768, 0, 0, 0)
CHANNEL_MAX = (32767, 65535, 0x7FFFFFFF, 65535)

# --- Control Point (§5) --------------------------------------------------------------------
CP_TAG_PREFIX = b"dtcp"
CP_RESPONSE_TAG_PREFIX = b"dtcr"
CP_RESPONSE = const(0x80)
CP_REQUEST_MAX_BYTES = const(32)  # the Control Point's write buffer (SET_TIME, the longest, is 21)

OP_SET_TIME = const(0x01)
OP_ACK = const(0x02)
OP_REPLAY = const(0x03)
OP_SET_CONFIG = const(0x04)
OP_GET_STATUS = const(0x05)
OP_IDENTIFY = const(0x06)

ST_SUCCESS = const(0x00)
ST_OPCODE_NOT_SUPPORTED = const(0x01)
ST_INVALID_OPERAND = const(0x02)
ST_OPERATION_FAILED = const(0x03)
ST_NOT_PROVISIONED = const(0x04)
ST_BUSY = const(0x05)
ST_AUTH_FAILED = const(0x06)
ST_STALE_REQUEST = const(0x07)

CFG_TEMP_PERIOD_S = const(1)
CFG_UV_PERIOD_S = const(2)
CFG_UV_FAST_PERIOD_S = const(3)
CFG_HYDRATION_PERIOD_S = const(4)
CFG_BATTERY_PERIOD_S = const(5)
CFG_FLUSH_INTERVAL_S = const(6)
CFG_KEY_COUNT = const(6)
CFG_VALUE_MIN = const(1)
CFG_VALUE_MAX = const(0xFFFF)

# --- Status record (§6) --------------------------------------------------------------------
STATUS_FORMAT = const(2)
STATUS_LEN = const(41)

ERR_LOG_FULL = const(0x0001)
ERR_CLOCK_NOT_SET = const(0x0002)
ERR_NOT_PROVISIONED = const(0x0004)
ERR_TEMP_SENSOR = const(0x0008)
ERR_UV_SENSOR = const(0x0010)
ERR_HYDRATION_SENSOR = const(0x0020)
ERR_BATTERY_GAUGE = const(0x0040)
ERR_BATTERY_LOW = const(0x0080)  # also set while critical (power.py)
ERR_BATTERY_CRITICAL = const(0x0100)  # sensors paused, log flushed (power.py)
