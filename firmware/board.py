# Board differences live here and nowhere else: I2C pins, BLE stack quirks, storage paths.
import sys

# (I2C bus id, SCL pin, SDA pin) per board; BLE stack noted for pairing support.
_BOARDS = {
    "esp32": {"name": "esp32s3", "i2c": (0, 9, 8), "ble_stack": "nimble", "pairing": True},
    "rp2": {"name": "rp2-pico-w", "i2c": (0, 5, 4), "ble_stack": "btstack", "pairing": False},
}
IDENTITY_FILE = "identity"
LOG_DIR = "/log"   # under data_dir: the flash log's segment files (flash_log.py)
# Upper bound on flash-log segments, whatever the filesystem could hold: the log keeps 16 B of
# RAM per segment (2.5 KB here). A segment (8176 B, two LittleFS blocks) holds ~2,900 samples
# at default rates (tests/test_flash_log.py measures 73 segments for 7 days), so 160 segments
# are about 15 days, twice design.md's 7-day target. A Pico W's filesystem holds ~83.
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


def detect():
    spec = _BOARDS.get(sys.platform)
    if spec is None:
        raise RuntimeError("unsupported board platform %r" % sys.platform)
    import os
    try:
        os.mkdir("/data")
    except OSError:
        pass
    return Board(spec["name"], spec["i2c"], "/data")
