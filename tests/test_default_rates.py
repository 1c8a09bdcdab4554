"""End to end at the firmware's default rates (skin temperature 10 s, UV 5 s, hydration 60 s,
battery 300 s, frames flushed after 60 s): live samples arrive as live, never as replay.

On a real board the gateway's quiet-link check once fired after 10 s, before the patch's
60 s flush, asked for status and REPLAYed: every live sample was stored historical. Here the
whole rig (virtual patch, Bumble radio, gateway, SQLite; mosquitto runs in real time) runs
on a clock SCALE times faster than the wall clock, so 2.7 virtual minutes take ~14 s: the
event loop's clock and its waits, time.monotonic() and time.time() all follow it.
"""

from __future__ import annotations

import asyncio
import selectors
import sqlite3
import time

import pytest
from gateway_harness import GatewayRig, wait_for

from gateway.clock import CLOCK

SCALE = 12.0
DEFAULT_RATES = {1: 10, 6: 60}   # the firmware's defaults, spelled out (the rig's are fast)
BACKLOG_S = 30                   # virtual seconds sampled before the gateway comes
LIVE_S = 130                     # then this long connected: two flush intervals and more


class ScaledSelector(selectors.DefaultSelector):
    """The loop computes its waits in virtual seconds; the OS waits in real ones."""

    def select(self, timeout=None):
        return super().select(None if timeout is None else max(0.0, timeout / SCALE))


@pytest.mark.slow
def test_live_samples_at_default_rates_are_stored_live(tmp_path, monkeypatch):
    real_monotonic, real_time = time.monotonic, time.time
    t0, wall0 = real_monotonic(), real_time()

    def virtual_s() -> float:
        return (real_monotonic() - t0) * SCALE

    monkeypatch.setattr(time, "monotonic", lambda: t0 + virtual_s())
    monkeypatch.setattr(time, "time", lambda: wall0 + virtual_s())
    monkeypatch.setattr(time, "time_ns", lambda: int((wall0 + virtual_s()) * 1e9))
    # The gateway's step detector (gateway/clock.py) holds the monotonic_ns it was built
    # with: it must see the same virtual time, or the scaled wall clock reads as steps.
    monkeypatch.setattr(time, "monotonic_ns", lambda: int((t0 + virtual_s()) * 1e9))
    monkeypatch.setattr(CLOCK, "_mono_ns", time.monotonic_ns)
    monkeypatch.setattr(CLOCK, "offset_ms", CLOCK._wall_ns() // 1_000_000
                        - time.monotonic_ns() // 1_000_000)
    steps_before = len(CLOCK.steps)
    loop = asyncio.SelectorEventLoop(ScaledSelector())
    try:
        report = loop.run_until_complete(scenario(tmp_path))
    finally:
        loop.close()
        monkeypatch.undo()   # real time again before pytest tears anything down
    print(f"\n{report}")

    # Everything logged before the first REPLAY is backlog (historical); everything after
    # arrived live, in flush-interval frames, with no idle-check REPLAY in between.
    assert len(CLOCK.steps) == steps_before, CLOCK.steps[steps_before:]   # no false steps
    assert report["resyncs"] == 0, report
    assert report["historical_after_start"] == 0, report
    assert report["backlog_stored"] >= BACKLOG_S // 5, report          # UV alone: every 5 s
    assert report["backlog_historical"] == report["backlog_stored"], report
    assert report["live_stored"] >= (LIVE_S - 70) // 5, report


async def scenario(tmp_path) -> dict:
    async with GatewayRig(tmp_path, patches=1, patch_config=DEFAULT_RATES, seed=5) as rig:
        await asyncio.sleep(BACKLOG_S)
        await rig.start_gateway()
        await wait_for(lambda: rig.patches[0].patch.link._stream_start >= 0,
                       timeout_s=60, what="the gateway's first REPLAY")
        link = rig.patches[0].patch.link
        stream_start = link._stream_start
        await asyncio.sleep(LIVE_S)
        session = rig.link(0).session
        device_id = rig.identities[0][0]
        with sqlite3.connect(rig.db_path) as db:   # WAL: a reader beside the gateway
            rows = db.execute("SELECT seq, historical FROM samples WHERE device_id = ?",
                              (device_id,)).fetchall()
        backlog = [h for seq, h in rows if seq < stream_start]
        live = [h for seq, h in rows if seq >= stream_start]
        return {
            "resyncs": session.stats.resyncs,
            "backlog_stored": len(backlog), "backlog_historical": sum(backlog),
            "live_stored": len(live), "historical_after_start": sum(live),
            "frames": link.frames_sent,
        }
