"""A few days of one subject's samples, committed as the gateway commits them (SampleBatch
through Store.insert_samples/insert_gaps in one transaction), for report and archive tests.

UTC days starting at DAY0_MS: skin temperature every 30 s (a daily swing, and a +2.6 °C
episode on day 2 from 14:00 to 16:00), UV every 60 s (UVI 0.05 indoors 06:00-18:00, outdoors from 12:00 for 20, 30, 60 min at UVI 3, 4, 6),
hydration every 5 min, battery every 15 min (falling), nothing at all on day 1 from 02:00 to
05:00, and one gap record (samples the patch could not log) on day 1 at 20:00.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gateway import store as store_mod
from gateway.model_registry import TMP117_C_PER_LSB
from gateway.protocol.constants import Channel
from gateway.values import LostSamples, RegisteredDevice, SampleBatch

DAY0_MS = 1_796_083_200_000          # 2026-12-01 00:00 UTC
DAY_MS = 86_400_000
DEVICE = "3f2a0c11d4e59b07"
SUBJECT = "s-rep01"
SKIN_TYPE = 2                        # MED 2.5 SED
EPISODE = (DAY0_MS + 2 * DAY_MS + 14 * 3_600_000, DAY0_MS + 2 * DAY_MS + 16 * 3_600_000)
SILENT = (DAY0_MS + DAY_MS + 2 * 3_600_000, DAY0_MS + DAY_MS + 5 * 3_600_000)
GAP_AT_MS = DAY0_MS + DAY_MS + 20 * 3_600_000
GAP_COUNTS = (12, 6, 1, 0)


def skin_temp_c(t_ms: int) -> float:
    hour = (t_ms % DAY_MS) / 3_600_000
    c = 33.0 + 0.6 * math.sin((hour - 9) / 24 * 2 * math.pi)
    if EPISODE[0] <= t_ms < EPISODE[1]:
        c += 2.6
    return c


OUTDOORS = ((3.0, 20), (4.0, 30), (6.0, 60))   # per day: UVI outdoors, minutes from 12:00
INDOOR_UVI = 0.05


def uv_index(t_ms: int) -> float:
    day, minute = divmod((t_ms - DAY0_MS) // 60_000, 1440)
    uvi, minutes = OUTDOORS[day % len(OUTDOORS)]
    if 720 <= minute < 720 + minutes:
        return uvi
    return INDOOR_UVI if 360 <= minute < 1080 else 0.0


def expected_dose_sed(day: int) -> float:
    """Σ UVI·dt × 0.025 W/m² / 100 J/m² with UV sampled every 60 s."""
    uvi, minutes = OUTDOORS[day % len(OUTDOORS)]
    return (uvi * minutes + INDOOR_UVI * (720 - minutes)) * 60 * 0.025 / 100


def readings(days: int) -> list[tuple[int, int, int]]:
    """(utc_ms, channel, wire value) in time order."""
    out = []
    for t in range(DAY0_MS, DAY0_MS + days * DAY_MS, 30_000):
        if SILENT[0] <= t < SILENT[1]:
            continue
        out.append((t, Channel.TEMPERATURE, round(skin_temp_c(t) / TMP117_C_PER_LSB)))
        if t % 60_000 == 0:
            out.append((t, Channel.UV, round(uv_index(t) * 100)))
        if t % 300_000 == 0:
            out.append((t, Channel.HYDRATION, 11_500 + round(800 * math.sin(t / 7e6))))
        if t % 900_000 == 0:
            pct = 95.0 - 20.0 * (t - DAY0_MS) / DAY_MS
            out.append((t, Channel.BATTERY, round(max(pct, 5.0) * 256)))
    return out


def fill(db: Path, days: int = 3, *, register: bool = True) -> list[tuple[int, int, int]]:
    """Write the readings into the gateway database at `db`; returns them."""
    store = store_mod.Store(store_mod.connect(db))
    data = readings(days)
    with store.transaction():
        if register:
            store.register(RegisteredDevice(DEVICE, bytes(32), SUBJECT, SKIN_TYPE, None), DAY0_MS)
        for start in range(0, len(data), 500):
            chunk = data[start:start + 500]
            t = np.array([r[0] for r in chunk], np.int64)
            gaps: tuple[LostSamples, ...] = ()
            if start == 0 and days > 1:
                gaps = (LostSamples(1, 0, 0, 0, GAP_AT_MS, GAP_AT_MS + 120_000, GAP_COUNTS),)
            batch = SampleBatch(DEVICE, 1, np.arange(start, start + len(chunk), dtype=np.int64),
                                (t - DAY0_MS) // 1000, t,
                                np.array([r[1] for r in chunk], np.int64),
                                np.array([r[2] for r in chunk], np.int64), gaps=gaps)
            store.insert_samples([batch])
            store.insert_gaps([batch])
    store.conn.close()
    return data
