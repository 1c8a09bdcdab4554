# Board differences live here and nowhere else: I2C pins, BLE stack quirks, storage paths.
import sys

# Supported boards: (sys.platform, text in sys.implementation._machine, name,
# (I2C bus, SCL, SDA)).
# The first match wins. BLE: NimBLE on the ESP32s, BTstack on the Pico W (aioble hides both).
_BOARDS = (
    ("esp32", "ESP32S3", "esp32s3", (0, 9, 8)),
    ("esp32", "ESP32C3", "esp32c3", (0, 7, 6)),        # Seeed XIAO ESP32C3 pinout
    ("rp2", " W with", "rp2-pico-w", (0, 5, 4)),       # "Raspberry Pi Pico W with RP2040"
)
IDENTITY_FILE = "identity"
LOG_DIR = "/log"   # under data_dir: the flash log's segment files (flash_log.py)
# Upper bound on flash-log segments, whatever the filesystem could hold: the log keeps 16 B of
# RAM per segment (2.5 KB here). A segment (8176 B, two LittleFS blocks) holds ~2,900 samples
# at default rates (tests/test_flash_log.py measures 73 segments for 7 days), so 160 segments
# are about 15 days, twice design.md's 7-day target. A Pico W's filesystem holds ~86.
LOG_SEGMENTS_MAX = 160


def parse_identity(text):
    """Parse the provisioning file: lines `device_id=<16 hex>` and `key=<64 hex>`."""
    import binascii
    fields = {}
    for line in text.split("\n"):
        line = line.strip()
        if "=" in line:
            name, value = line.split("=", 1)
            fields[name.strip()] = value.strip()
    device_id = fields.get("device_id", "")
    key_hex = fields.get("key", "")
    if len(device_id) != 16 or len(key_hex) != 64:
        raise ValueError("identity file: need device_id (16 hex chars) and key (64 hex chars)")
    return device_id.lower(), binascii.unhexlify(key_hex)


class Board:
    def __init__(self, name, i2c_pins, data_dir, log_segments=0, config_overrides=None):
        self.name = name
        self.i2c_pins = i2c_pins
        self.data_dir = data_dir
        self.log_dir = data_dir + LOG_DIR
        self.log_segments = log_segments   # 0: as many as the filesystem holds
        self.config_overrides = config_overrides

    def log_max_segments(self):
        """max_segments for the flash log: the board's fixed number, or what the free flash
        holds (counting the log's own segments), at least 2 and at most LOG_SEGMENTS_MAX."""
        if self.log_segments:
            return self.log_segments
        import os

        from firmware.flash_log import segments_for_filesystem
        try:
            os.mkdir(self.log_dir)
        except OSError:
            pass
        n = segments_for_filesystem(self.log_dir)
        return LOG_SEGMENTS_MAX if n > LOG_SEGMENTS_MAX else (n if n > 2 else 2)

    def random_bytes(self, n):
        """n bytes from the port's hardware random source (the boot nonce, persist.py). A
        port without os.urandom cannot run the patch: a guessable nonce would let requests
        captured in one boot be replayed in another."""
        import os
        if not hasattr(os, "urandom"):
            raise OSError("this MicroPython port has no os.urandom: no random source for the boot nonce")
        return os.urandom(n)

    def make_watchdog(self, timeout_ms):
        from machine import WDT
        return WDT(timeout=timeout_ms)

    def make_i2c(self):
        from machine import I2C, Pin
        bus_id, scl, sda = self.i2c_pins
        return I2C(bus_id, scl=Pin(scl), sda=Pin(sda), freq=400_000)

    def identity(self):
        """(device_id_hex, key) from provisioning, or (a placeholder id, b"") if unprovisioned."""
        try:
            with open(self.data_dir + "/" + IDENTITY_FILE) as f:
                return parse_identity(f.read())
        except OSError:
            import binascii

            import machine
            return binascii.hexlify(machine.unique_id()[:8]).decode(), b""

    def identify(self, seconds):
        pass


def board_spec(platform, machine):
    """(name, i2c pins) of the supported board this is, or None."""
    for board_platform, marker, name, pins in _BOARDS:
        if platform == board_platform and marker in machine:
            return name, pins
    return None


def detect():
    import os
    machine = getattr(sys.implementation, "_machine", "")   # what os.uname().machine says
    spec = board_spec(sys.platform, machine)
    if spec is None:
        raise RuntimeError("unsupported board %r (%s): the patch runs on ESP32-S3, ESP32-C3 "
                           "and Pico W" % (machine, sys.platform))
    try:
        os.mkdir("/data")
    except OSError:
        pass
    return Board(spec[0], spec[1], "/data")
