"""Wall-clock steps: detected against the monotonic clock, never closing a session, never
silently restamping samples (gateway/clock.py, session re-anchoring, `time_uncertain`)."""

import json
import time

import pytest
from gateway_harness import GatewayRig, wait_for

from gateway.clock import CLOCK, SteadyClock


def test_steady_clock_follows_slewing_and_reports_steps_once():
    wall = [1_800_000_000_000_000_000]
    mono = [5_000_000_000]
    clock = SteadyClock(lambda: wall[0], lambda: mono[0])
    assert clock.utc_ms() == 1_800_000_000_000
    for _ in range(10):   # NTP slewing: 0.5 ms faster per second
        mono[0] += 1_000_000_000
        wall[0] += 1_000_500_000
        assert clock.check() is None
    assert clock.utc_ms() == wall[0] // 1_000_000 and clock.epoch == 0
    wall[0] += 3_600_000_000_000   # +1 h
    step = clock.check()
    assert step is not None and step.step_ms == 3_600_000 and step.epoch == 1
    assert clock.check() is None, "reported once"
    before = clock.monotonic_ms()
    wall[0] -= 7_200_000_000_000   # −2 h: monotonic time does not move
    assert clock.check().step_ms == -7_200_000 and clock.monotonic_ms() == before
    assert clock.epoch == 2


@pytest.mark.parametrize("step_ms", [3_600_000, -3_600_000])
async def test_wall_clock_step_keeps_the_session_and_reanchors_the_patch(
        tmp_path, monkeypatch, mqtt_collector, step_ms):
    skew = tmp_path / "skew"
    skew.write_text("0")
    monkeypatch.setenv("DERMTWIN_CLOCK_SKEW_FILE", str(skew))
    CLOCK.check()
    async with GatewayRig(tmp_path, patches=1) as rig:
        collector = mqtt_collector(rig.broker, "dermtwin/v1/rig/state")
        gateway = await rig.start_gateway()
        device = rig.identities[0][0]
        await wait_for(lambda: gateway.store.sample_count() >= 3, what="streaming")
        link = rig.link(0)
        connects = link.connects
        skew.write_text(str(step_ms))
        await wait_for(lambda: gateway.alarms.is_up("clock"), 5, "the clock alarm")
        assert f"{step_ms / 1000:+.1f} s" in gateway.alarms.get("clock").detail
        await wait_for(lambda: any(a["kind"] == "clock" for m in collector.on_topic(
            "dermtwin/v1/rig/state") for a in json.loads(m.payload).get("alarms", [])),
            what="the clock alarm on the retained state")
        stepped_at = gateway.store.committed_seq(device)
        await wait_for(lambda: gateway.store.committed_seq(device) >= stepped_at + 5, 20,
                       "samples after the step")
        assert link.connects == connects, "a wall-clock step closes no session"
        rows = gateway.store.conn.execute(
            "SELECT seq, utc_ms, time_uncertain FROM samples WHERE device_id=? ORDER BY seq",
            (device,)).fetchall()
        last_seq, last_utc, last_uncertain = rows[-1]
        assert abs(last_utc - (time.time() * 1000 + step_ms)) < 5_000, \
            "re-anchored: new samples are stamped by the stepped clock"
        assert not last_uncertain
        for seq, utc, uncertain in rows:
            if seq <= stepped_at - 1:
                assert abs(utc - last_utc) < 60_000 + abs(step_ms) and not uncertain
        # no sample is silently stamped in the old clock after the new anchor: every sample
        # between the step and the re-anchor is flagged
        shifted = [r for r in rows if abs(r[1] - last_utc) > abs(step_ms) / 2]
        assert all(r[2] or r[0] <= stepped_at for r in shifted)
        await rig.stop_gateway()
    skew.write_text("0")
    CLOCK.check()   # the process's clock back as it was, for the tests after this one
