"""Battery life of a patch at the default rates, from charge per event (sans-I/O).

Charge per day = sleep floor + per sample (MCU awake + the sensor's conversion) + per BLE
connection event + per byte on the air + the sensors' standby. Every current below says
where it comes from; figures the search for datasheets did not confirm are marked ASSUMED.
docs/performance.md ("Battery") holds the same table.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_S = 86_400
# design.md §1 default periods, seconds: skin temperature, UV, hydration, battery
DEFAULT_PERIOD_S = {"temperature": 10, "uv": 5, "hydration": 60, "battery": 300}
FLUSH_S = 60                 # firmware/sampling_config.py CFG_FLUSH_INTERVAL_S default
US_PER_BYTE_1M = 8.0         # LE 1M PHY: 1 µs per bit
LL_OVERHEAD_BYTES = 1 + 4 + 2 + 3 + 4 + 3   # preamble, AA, header, CRC, L2CAP, ATT per PDU
EMPTY_PDU_BYTES = 1 + 4 + 2 + 3
FRAME_BYTES = 244


@dataclass(frozen=True)
class Board:
    name: str
    sleep_ma: float           # between events, BLE connection kept
    awake_ma: float           # CPU running (MicroPython handles a sample or a frame)
    tx_ma: float              # radio transmitting, 0 dBm
    rx_ma: float              # radio receiving / listening
    wake_per_sample_ms: float  # MicroPython: read the driver, append to the flash log
    event_overhead_ms: float  # per connection event: wake, radio ramp-up, RX window


ESP32_S3 = Board(
    "ESP32-S3",
    # ESP32-S3 datasheet, "Current consumption in low-power modes": Light-sleep 240 µA
    sleep_ma=0.240,
    # ESP32 series datasheet Table "Power consumption by power modes": Modem-sleep at
    # 160 MHz 27–44 mA (dual core); the S3 at 160 MHz is of the same order
    awake_ma=30.0,
    # ESP32 series datasheet: Wi-Fi/BT TX packet at 0 dBm 120 mA, RX and listening 80–90 mA
    tx_ma=120.0, rx_ma=85.0,
    wake_per_sample_ms=5.0,    # ASSUMED: MicroPython sample + log append, measured nowhere
    event_overhead_ms=1.0)     # ASSUMED: light-sleep exit + radio ramp-up + RX window

PICO_W = Board(
    "Pico W",
    # MicroPython's rp2 lightsleep measured ~1.5 mA from USB on a Pico (the commit adding
    # machine.lightsleep to the rp2 port); the CYW43439 keeps the link on its own
    sleep_ma=1.5,
    # Raspberry Pi Pico datasheet, typical: ~20 mA busy at 125 MHz (ASSUMED for MicroPython)
    awake_ma=20.0,
    # ASSUMED: the CYW43439's BLE currents were not found; taken as the ESP32's
    tx_ma=120.0, rx_ma=85.0,
    wake_per_sample_ms=5.0, event_overhead_ms=1.0)


@dataclass(frozen=True)
class Sensor:
    name: str
    active_ma: float
    conversion_ms: float
    standby_ma: float
    period_s: float


SENSORS = (
    # TMP117 datasheet: active conversion current 135 µA, shutdown 150 nA; one-shot with
    # 8 averages takes 125 ms (sensor_drivers/tmp117.py, datasheet §7.4.3)
    Sensor("TMP117", 0.135, 125.0, 0.000150, DEFAULT_PERIOD_S["temperature"]),
    # LTR-390UV-01 datasheet: active 110 µA, standby 1 µA; 18-bit UVS integration 100 ms
    # (sensor_drivers/ltr390.py enables it for one integration)
    Sensor("LTR390", 0.110, 100.0, 0.001, DEFAULT_PERIOD_S["uv"]),
    # FDC1004 datasheet features: active 750 µA, standby 29 µA; 10 ms at 100 S/s
    Sensor("FDC1004", 0.750, 10.0, 0.029, DEFAULT_PERIOD_S["hydration"]),
    # MAX17048 datasheet: 3 µA hibernate (entered by itself at the patch's low currents),
    # 23 µA active; it measures by itself, the patch only reads a register
    Sensor("MAX17048", 0.0, 0.0, 0.003, DEFAULT_PERIOD_S["battery"]),
)


def samples_per_day() -> float:
    return sum(DAY_S / p for p in DEFAULT_PERIOD_S.values())


def mah_per_day(board: Board, air_bytes_per_sample: float, connection_interval_s: float,
                ) -> dict[str, float]:
    """Charge per day (mAh) by what spends it."""
    def mah(ma: float, seconds: float) -> float:
        return ma * seconds / 3600

    n = samples_per_day()
    payload = n * air_bytes_per_sample
    frames = max(payload / FRAME_BYTES, DAY_S / FLUSH_S)   # at least one per flush
    air_tx_s = (payload + frames * LL_OVERHEAD_BYTES) * US_PER_BYTE_1M / 1e6
    air_rx_s = frames * EMPTY_PDU_BYTES * US_PER_BYTE_1M / 1e6   # the central's ack
    events = DAY_S / connection_interval_s
    sensors = sum(mah(s.active_ma, DAY_S / s.period_s * s.conversion_ms / 1000)
                  + mah(s.standby_ma, DAY_S) for s in SENSORS)
    return {
        "sleep": mah(board.sleep_ma, DAY_S),
        "sampling": mah(board.awake_ma, n * board.wake_per_sample_ms / 1000),
        "sensors": sensors,
        "connection events": mah(board.awake_ma, events * board.event_overhead_ms / 1000)
        + mah(board.rx_ma, events * EMPTY_PDU_BYTES * US_PER_BYTE_1M / 1e6)
        + mah(board.tx_ma, events * EMPTY_PDU_BYTES * US_PER_BYTE_1M / 1e6),
        "data on air": mah(board.tx_ma, air_tx_s) + mah(board.rx_ma, air_rx_s),
    }


def days(board: Board, cell_mah: float, air_bytes_per_sample: float,
         connection_interval_s: float) -> float:
    return cell_mah / sum(mah_per_day(board, air_bytes_per_sample,
                                      connection_interval_s).values())
