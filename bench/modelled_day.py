"""Samples of modelled days at the default rates, as the patch would log them.

The skin/environment model (sensor_drivers/environment_model.py `PatchEnvironment`) drives
the register-level chip emulators; the patch's own drivers read them on a simulated clock,
with the sampler's timing (firmware/sampler.py `Sampler.run_channel`): start a conversion,
poll every 10 ms until it is ready, read, sleep the period minus the time spent waiting;
UV every second while UVI > 0.5, else every 5 s. Sleeps overshoot by 0-3 ms (ASSUMED: the
asyncio loop's latency on a board, with BLE and flash work in between), which moves a
channel's tick by one now and then, as on a board.

Used by bench_codec.py for the bytes on air of realistic data; not a test fixture.
"""

from __future__ import annotations

import heapq
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sensor_drivers.emulators.i2c_bus import ManualClock, VirtualI2C  # noqa: E402
from sensor_drivers.environment_model import PatchEnvironment, attach_patch_chips  # noqa: E402
from sensor_drivers.fdc1004 import FDC1004  # noqa: E402
from sensor_drivers.ltr390 import LTR390  # noqa: E402
from sensor_drivers.max17048 import MAX17048  # noqa: E402
from sensor_drivers.tmp117 import TMP117  # noqa: E402

TICK_MS = 100
POLL_MS = 10  # firmware/sampler.py POLL_MS
# design.md §1 defaults (firmware/sampling_config.py): channel -> period ms
PERIOD_MS = {0: 10_000, 1: 5_000, 2: 60_000, 3: 300_000}
UV_FAST_PERIOD_MS = 1_000
UV_FAST_ABOVE_X100 = 50  # firmware/sampler.py UV_FAST_ABOVE_X100
OVERSHOOT_MAX_MS = 3  # ASSUMED, see the module docstring


def modelled_samples(hours: float, *, seed: int = 1, start_s: float = 0.0,
                     indoor: tuple[tuple[float, float], ...] = ()) -> list[tuple[int, int, int]]:
    """(channel, tick, raw value) in the order the patch logs them, for `hours` from
    `start_s` seconds after local midnight (midsummer at 45 deg N, PatchEnvironment's
    defaults); `indoor` lists (start_s, end_s) spans spent indoors (outdoors otherwise)."""
    clock = ManualClock(0)
    bus = VirtualI2C(clock_ms=clock)
    env = PatchEnvironment(seed=seed)
    for start, end in indoor:
        env.set_location("indoor", start, end)
    attach_patch_chips(bus, env, lambda: start_s + clock() / 1000)
    drivers = {0: TMP117(bus), 1: LTR390(bus), 2: FDC1004(bus), 3: MAX17048(bus)}
    due = [(0, channel) for channel in drivers]
    end_ms = int(hours * 3600 * 1000)
    out = []
    while due:
        start_ms, channel = heapq.heappop(due)
        if start_ms > end_ms:
            break
        clock.now_ms = max(clock.now_ms, start_ms)
        sensor = drivers[channel]
        sensor.start()
        waited_ms = 0
        while not sensor.ready():
            clock.now_ms += POLL_MS
            waited_ms += POLL_MS
        value = sensor.read_raw()
        out.append((channel, clock.now_ms // TICK_MS, value))
        period_ms = PERIOD_MS[channel]
        if channel == 1 and value > UV_FAST_ABOVE_X100:
            period_ms = UV_FAST_PERIOD_MS
        overshoot_ms = (len(out) * 2654435761 >> 7) % (OVERSHOOT_MAX_MS + 1)
        heapq.heappush(due, (clock.now_ms + max(period_ms - waited_ms, 0) + overshoot_ms,
                             channel))
    return out


def workday(seed: int = 1) -> list[tuple[int, int, int]]:
    """One day from midnight: indoors but for 07:30-08:00, 12:00-13:00 and 17:30-19:30."""
    hours = 3600.0
    return modelled_samples(24, seed=seed, indoor=(
        (0, 7.5 * hours), (8 * hours, 12 * hours), (13 * hours, 17.5 * hours),
        (19.5 * hours, 24 * hours)))
