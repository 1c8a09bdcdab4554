"""Samples a patch could not log (log full) reach the gateway as gap notices, end to end.

The firmware source runs as a virtual patch over Bumble; its flash log is filled until it
refuses samples. The gateway drains it, the patch logs again, and the gap travels before the
first sample after it (protocol.md §4.1): stored once, announced on MQTT as a `data_loss`
alert, and deleted on the patch only by the ACK that covers it.
"""

from __future__ import annotations

import json

from firmware.flash_log import LOG_FULL
from simulation.virtual_patch import VirtualPatch
from tests.gateway_harness import GatewayRig, wait_for


async def test_log_full_gap_reaches_the_store_and_mqtt(tmp_path, mqtt_collector):
    async with GatewayRig(tmp_path, patches=1, log_capacity=1500) as rig:
        device_id, _, subject = rig.identities[0]
        alerts = mqtt_collector(rig.broker, f"dermtwin/v1/rig/{subject}/alert")
        virtual = rig.patches[0]
        await wait_for(lambda: virtual.patch.sampling_tasks, what="the patch to start sampling")
        virtual.stop_sampling()            # only this test appends from here on
        log = virtual.patch.log
        tick = virtual.patch.clock.now()
        filled = 0
        while not log.is_full():
            assert log.append(filled % 4, tick, 4300 + filled % 50) != LOG_FULL
            filled += 1
        dropped = [0, 0, 0, 0]
        for i in range(37):
            channel = (0, 1, 1, 2, 3)[i % 5]
            assert log.append(channel, tick + 1 + i, 100) == LOG_FULL
            dropped[channel] += 1
        [held] = log.gaps()
        assert held.counts == dropped and held.seq_at == log.next_seq

        gateway = await rig.start_gateway()
        await wait_for(lambda: len(log) == 0, 60, f"the {filled}-sample backlog to drain")
        assert log.gaps() == [held], "a gap is kept until an ACK covers the sample after it"
        assert gateway.store.gaps(device_id) == []

        after = log.append(0, tick + 40, 4301)          # the log has room again
        assert after == held.seq_at
        await wait_for(lambda: log.gaps() == [], 20, "the ACK that covers the gap")
        [stored] = gateway.store.gaps(device_id)
        assert (stored.boot_id, stored.seq_at, stored.first_tick, stored.last_tick) == (
            held.boot_id, held.seq_at, tick + 1, tick + 37)
        assert list(stored.counts) == dropped
        assert stored.first_utc_ms is not None and stored.last_utc_ms >= stored.first_utc_ms
        first_seq = virtual.patch.boot_state.first_seq
        assert gateway.store.sample_seqs(device_id) == list(range(first_seq, after + 1))

        def data_loss():
            return [json.loads(m.payload) for m in alerts.messages]

        await wait_for(lambda: data_loss(), 20, "the data_loss alert on MQTT")
        [alert] = data_loss()
        assert alert["kind"] == "data_loss"
        assert alert["samples"] == dict(zip(
            ("skin_temp_c", "uv_index", "capacitance_pf", "battery_pct"), dropped, strict=True))
        assert (alert["from"], alert["to"]) == (stored.first_utc_ms, stored.last_utc_ms)
        assert gateway.ingest.stats.gaps == 1


async def test_gaps_of_two_boots_around_a_reboot_hole_are_all_delivered(tmp_path):
    # Boot A fills its log and drops samples (a gap at A's next seq), then reboots: boot B
    # starts past the seqs A may have handed out, so A's gap sits in a hole; B is full too
    # and drops its own. Both notices must go out before B's first logged sample.
    async with GatewayRig(tmp_path, patches=1, log_capacity=1200) as rig:
        device_id, key, _ = rig.identities[0]
        first = rig.patches[0]
        await wait_for(lambda: first.patch.sampling_tasks, what="the patch to start sampling")
        first.stop_sampling()
        log = first.patch.log
        while not log.is_full():
            log.append(1, 0, 7)
        for _ in range(5):
            assert log.append(0, 3, 4300) == LOG_FULL
        boot_a = first.patch.boot_state.boot_id
        await first.stop()

        second = VirtualPatch(rig.radio, device_id, key, first.data_dir, seed=1,
                              config_overrides=rig.patch_config, log_capacity=1200)
        rig.patches[0] = second
        await second.start()
        await wait_for(lambda: second.patch.sampling_tasks, what="the rebooted patch to sample")
        second.stop_sampling()
        log = second.patch.log
        boot_b = second.patch.boot_state.boot_id
        assert boot_b != boot_a
        for _ in range(3):
            assert log.append(2, 1, 50_000) == LOG_FULL
        # (B's sampler may have had one go at the full log before it was stopped)
        held = [(g.boot_id, g.seq_at, tuple(g.counts)) for g in log.gaps()]
        assert [boot for boot, _, _ in held] == [boot_a, boot_b]
        assert held[0][2] == (5, 0, 0, 0) and held[1][2][2] >= 3
        hole_at = held[0][1]

        gateway = await rig.start_gateway()
        await wait_for(lambda: len(log) == 0, 60, "the backlog to drain")
        after = log.append(3, 2, 25_000)
        await wait_for(lambda: log.gaps() == [], 20, "the ACK that covers both gaps")
        stored = gateway.store.gaps(device_id)
        assert [(g.boot_id, g.seq_at, g.counts) for g in stored] == held
        assert held[1][1] == after
        assert hole_at < after and hole_at not in gateway.store.sample_seqs(device_id)
        assert after in gateway.store.sample_seqs(device_id)
        assert gateway.ingest.stats.gaps == 2
