"""Issue 5's guarantees: every sample each patch generated is stored exactly once, whatever
happens to the links; nothing is stored from a patch that cannot authenticate."""

import asyncio
import random

import pytest
from gateway_harness import GatewayRig, wait_for

from gateway.session import State
from gateway.values import CloseKind

pytestmark = pytest.mark.slow


def assert_every_sample_stored_once(rig):
    for patch in rig.patches:
        log = patch.patch.log
        first = patch.patch.boot_state.first_seq
        stored = rig.gateway.store.sample_seqs(patch.device_id_hex)
        assert stored == list(range(first, log.next_seq)), patch.name
        assert len(log) == 0, f"{patch.name}: acknowledged samples still in its log"


async def test_ten_patches_survive_fifty_random_link_drops(tmp_path):
    rng = random.Random(20261127)
    async with GatewayRig(tmp_path, patches=10, max_connections=10, seed=5) as rig:
        # log_capacity in the rig (20,000) holds every backlog below without loss
        for patch in rig.patches:
            patch.preload_backlog(rng.randrange(300, 1500))   # a drain to interrupt
        gateway = await rig.start_gateway()
        drops = mid_drain = 0
        deadline = asyncio.get_running_loop().time() + 90
        while drops < 60 or mid_drain < 10:
            assert asyncio.get_running_loop().time() < deadline, (drops, mid_drain)
            await asyncio.sleep(rng.uniform(0.02, 0.3))
            index = rng.randrange(len(rig.patches))
            patch, session = rig.patches[index], rig.link(index).session
            if not rig.connected(index) or session is None:
                continue
            if session.state is State.STREAMING and rng.random() < 0.5:
                patch.preload_backlog(rng.randrange(2000, 4000))  # back from out of range
                await asyncio.sleep(rng.uniform(0.0, 0.05))
            if len(patch.patch.log) > 100:
                mid_drain += 1
            drops += await rig.radio.drop_link(str(patch.bumble_device.random_address))
        for patch in rig.patches:
            patch.stop_sampling()
        try:
            await wait_for(lambda: all(len(p.patch.log) == 0 for p in rig.patches), 60,
                           "every patch log to drain")
        except AssertionError:
            now = asyncio.get_running_loop().time()
            for i, p in enumerate(rig.patches):
                slot = gateway.slots[rig.identities[i][0]]
                link = slot.link
                print(i, "unacked", len(p.patch.log), "connected", rig.connected(i),
                      "session", link.session.state if link.session else None,
                      "task", slot.task is not None and not slot.task.done(),
                      "failures", link.connect_failures, "next in", round(slot.next_attempt_s - now, 1),
                      "last", link.last_close,
                      "sighting", slot.sighting is not None, "connects", link.connects)
            raise
        await asyncio.sleep(0.5)
        assert_every_sample_stored_once(rig)
        assert gateway.ingest.stats.commit_failures == 0


async def test_patch_with_unknown_key_is_rejected_and_nothing_stored(tmp_path):
    async with GatewayRig(tmp_path, patches=2, registry_keys={1: b"\x55" * 32}) as rig:
        gateway = await rig.start_gateway()
        await wait_for(lambda: gateway.store.sample_count(rig.identities[0][0]) > 0,
                       what="the genuine patch to stream")
        await wait_for(lambda: rig.link(1).auth_failures > 0, what="the impostor to be refused")
        assert gateway.store.sample_count(rig.identities[1][0]) == 0
        last_close = rig.link(1).last_close
        assert last_close is not None and last_close.kind is CloseKind.AUTH_FAILED
        assert "AUTH_FAILED" in last_close.detail


async def test_frames_with_bad_tag_are_counted_and_not_stored(tmp_path):
    async with GatewayRig(tmp_path, patches=1) as rig:
        gateway = await rig.start_gateway()
        await wait_for(lambda: gateway.store.sample_count() >= 2, what="streaming")
        firmware = rig.patches[0].patch
        before = gateway.store.sample_count()
        # The patch signs frames with a key the gateway does not have.
        from firmware.frame_encoder import FrameEncoder
        forged = FrameEncoder(b"\x66" * 32)
        forged.start(firmware.boot_state.boot_id, firmware.log.next_seq + 100, 5)
        forged.add(0, 5, 4400)
        firmware.gatt.samples.notify(firmware.link.connection, bytes(forged.finish()))
        await wait_for(lambda: rig.link(0).frames_rejected_total >= 1, what="rejection")
        session = rig.link(0).session
        assert session.stats.frames_rejected["BAD_TAG"] == 1
        assert all(seq < firmware.log.next_seq + 100 for seq in
                   gateway.store.sample_seqs(rig.identities[0][0]))
        assert gateway.store.sample_count() >= before


async def test_disk_full_raises_a_store_alarm_on_mqtt_and_loses_nothing(tmp_path, mqtt_collector):
    import json
    async with GatewayRig(tmp_path, patches=1) as rig:
        collector = mqtt_collector(rig.broker, "dermtwin/v1/rig/state")
        gateway = await rig.start_gateway()
        await wait_for(lambda: gateway.store.sample_count() >= 2, what="streaming")
        conn = gateway.store.conn
        conn.execute(f"PRAGMA max_page_count={conn.execute('PRAGMA page_count').fetchone()[0]}")
        rig.patches[0].preload_backlog(5000)    # more than the pages left can hold

        def states():
            return [json.loads(m.payload) for m in collector.on_topic("dermtwin/v1/rig/state")]

        await wait_for(lambda: gateway.ingest.stats.store_alarm, what="the store alarm")
        await wait_for(lambda: any("alarm" in s for s in states()),
                       what=f"the alarm on MQTT (seen: {states()})")
        assert gateway.ingest.stats.store_alarm
        conn.execute("PRAGMA max_page_count=1073741823")          # space is back
        await wait_for(lambda: not gateway.ingest.stats.store_alarm, 30, "the alarm to clear")
        await wait_for(lambda: "alarm" not in states()[-1], what="a clear state on MQTT")
        rig.patches[0].stop_sampling()
        patch = rig.patches[0].patch
        await wait_for(lambda: len(patch.log) == 0, 40, "the patch log to drain")
        stored = gateway.store.sample_seqs(rig.identities[0][0])
        assert stored == list(range(patch.boot_state.first_seq, patch.log.next_seq))
