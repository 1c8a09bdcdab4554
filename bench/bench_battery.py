"""Battery life estimate at the default rates (bench/battery_model.py has every current and
its source), on a 100 mAh cell: our frames against the same patch sending fixed-width
records, on the ESP32-S3 and the Pico W; and a 1 s connection interval against 50 ms
(BlueZ's default range is 30–50 ms). Bytes per sample are measured in this run by encoding
the 7-day default-rate backlog (bench_codec)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from battery_model import ESP32_S3, PICO_W, days, mah_per_day  # noqa: E402
from bench_codec import backlog_samples, frames_for, naive_frames_bytes  # noqa: E402
from figures import figure, print_table  # noqa: E402

CELL_MAH = 100.0
INTERVAL_S = 1.0
SHORT_INTERVAL_S = 0.05


def figures() -> dict[str, dict]:
    samples = backlog_samples()
    ours = sum(map(len, frames_for(samples))) / len(samples)
    fixed = naive_frames_bytes(samples) / len(samples)
    out = {}
    for key, board in (("esp32s3", ESP32_S3), ("picow", PICO_W)):
        budget = mah_per_day(board, ours, INTERVAL_S)
        split = ", ".join(f"{k} {v:.2f}" for k, v in budget.items())
        out[f"battery.{key}_days_100mAh"] = figure(
            days(board, CELL_MAH, ours, INTERVAL_S), days(board, CELL_MAH, fixed, INTERVAL_S),
            "days",
            f"{board.name} on a {CELL_MAH:.0f} mAh cell at the default rates, {INTERVAL_S:.0f} s "
            f"connection interval, our frames ({ours:.2f} B/sample) against fixed-width "
            f"records ({fixed:.2f} B/sample); mAh/day: {split}")
    out["battery.esp32s3_days_1s_vs_50ms_interval"] = figure(
        days(ESP32_S3, CELL_MAH, ours, INTERVAL_S),
        days(ESP32_S3, CELL_MAH, ours, SHORT_INTERVAL_S), "days",
        f"ESP32-S3, our frames, {INTERVAL_S:.0f} s connection interval against "
        f"{SHORT_INTERVAL_S * 1000:.0f} ms (connection events dominate at short intervals)")
    return out


def main() -> int:
    print_table(figures())
    return 0


if __name__ == "__main__":
    sys.exit(main())
