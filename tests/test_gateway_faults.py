"""Faults inside a running gateway (virtual patches, real mosquitto, real onnxruntime): a
model failing at run time never stops storage and is named in the retained `state`; a
damaged database is moved aside at start and the patches drain into a fresh one; damage
found while running ends the run with DatabaseCorrupt (the CLI starts a fresh Gateway)."""

import asyncio
import json
import sqlite3

import pytest
from gateway_harness import GatewayRig, wait_for

from gateway.store import DatabaseCorrupt
from simulation.demo import DEMO_PATCH_CONFIG, DEMO_TIME_SCALE

STATE = "dermtwin/v1/rig/state"


def _states(collector):
    return [json.loads(m.payload) for m in collector.on_topic(STATE)]


def _garble_table(path, table):
    conn = sqlite3.connect(path)
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name=?", (table,)).fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(bytes([0x5A]) * page_size)


async def test_model_failing_at_run_time_never_stops_storage(tmp_path, mqtt_collector):
    async with GatewayRig(tmp_path, patches=1) as rig:
        collector = mqtt_collector(rig.broker, STATE)
        gateway = await rig.start_gateway()
        await wait_for(lambda: gateway.store.sample_count() >= 3, what="streaming")

        real = gateway.models.models["temp_anomaly"]

        class Failing:
            version, path = real.version, real.path

            def run(self, inputs):
                raise RuntimeError("onnxruntime: session is broken")

        gateway.models.models["temp_anomaly"] = Failing()
        await wait_for(lambda: gateway.alarms.is_up("model", "temp_anomaly"), what="the alarm")
        stored = gateway.store.sample_count()
        acked = rig.patches[0].patch.log.acked_seq if hasattr(
            rig.patches[0].patch.log, "acked_seq") else None
        await wait_for(lambda: gateway.store.sample_count() >= stored + 4, 20,
                       "samples stored while the model fails")
        await wait_for(lambda: any(a.get("source") == "temp_anomaly" and a["kind"] == "model"
                                   for s in _states(collector) for a in s.get("alarms", [])),
                       what="the model alarm on the retained state")
        twin = gateway.engine.twins[next(iter(gateway.engine.twins))]
        assert twin.state["temp_anomaly_score"]["q"] == "bad"
        assert gateway.ingest.stats.commit_failures == 0
        if acked is not None:
            assert rig.patches[0].patch.log.acked_seq > acked, "still acknowledging"
        gateway.models.models["temp_anomaly"] = real
        await wait_for(lambda: not gateway.alarms.is_up("model", "temp_anomaly"), 20,
                       "the alarm to clear")
        await wait_for(lambda: "alarm" not in _states(collector)[-1], what="a clear state")
        state = _states(collector)[-1]
        assert state["alarms"] == [] and state["outbox"]["parked"] == 0
        assert state["disk_free_bytes"] > 0


async def test_damaged_database_is_moved_aside_and_the_patches_drain_into_a_fresh_one(
        tmp_path, mqtt_collector):
    async with GatewayRig(tmp_path, patches=1) as rig:
        collector = mqtt_collector(rig.broker, STATE)
        gateway = await rig.start_gateway()
        await wait_for(lambda: gateway.store.sample_count() >= 5, what="streaming")
        await rig.stop_gateway()
        subject = next(iter(gateway.engine.twins))
        last_rev = gateway.engine.twins[subject].rev
        conn = sqlite3.connect(rig.db_path)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        _garble_table(rig.db_path, "samples")
        patch = rig.patches[0].patch
        first_unacked = patch.log.next_seq
        rig.patches[0].preload_backlog(800)   # what the patch gathers while we are down

        gateway = await rig.start_gateway()
        alarm = gateway.alarms.get("database")
        assert alarm is not None and "moved to gateway.sqlite3.corrupt-" in alarm.detail
        assert list(gateway.devices) == [rig.identities[0][0]], "registry recovered"
        await wait_for(lambda: any(a["kind"] == "database" for s in _states(collector)
                                   for a in s.get("alarms", [])),
                       what="the database alarm on the retained state")
        rig.patches[0].stop_sampling()
        await wait_for(lambda: len(patch.log) == 0, 40, "the patch log to drain")
        stored = gateway.store.sample_seqs(rig.identities[0][0])
        assert stored[0] <= first_unacked and stored[-1] == patch.log.next_seq - 1
        assert stored == list(range(stored[0], stored[-1] + 1)), "no hole in the drain"
        await wait_for(lambda: gateway.engine.twins[subject].rev > last_rev, 20, "a new delta")
        assert gateway.ingest.stats.last_rev[subject] > last_rev, "rev continues after recovery"


async def test_damage_found_while_running_ends_the_run_with_database_corrupt(tmp_path):
    async with GatewayRig(tmp_path, patches=1) as rig:
        gateway = await rig.start_gateway()
        await wait_for(lambda: gateway.store.sample_count() >= 3, what="streaming")
        rig.patches[0].preload_backlog(3000)
        gateway.store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        _garble_table(rig.db_path, "samples")
        gateway.store.conn.execute("PRAGMA cache_size=0")   # read the damaged page again
        with pytest.raises(DatabaseCorrupt):
            await rig._run
        rig._run = None
        gateway.close()
        assert gateway.ingest.stats.samples_committed >= 3


async def test_restarted_gateway_continues_each_twin_rev_at_last_plus_one(tmp_path,
                                                                            mqtt_collector):
    # the demo's pace: deltas come often enough with the sensor-accuracy deadbands
    async with GatewayRig(tmp_path, patches=1, time_scale=DEMO_TIME_SCALE,
                          patch_config={**DEMO_PATCH_CONFIG, 6: 1}) as rig:
        collector = mqtt_collector(rig.broker, "dermtwin/v1/rig/+/delta")

        def revs():
            return [json.loads(m.payload)["rev"] for m in collector.messages]

        gateway = await rig.start_gateway()
        await wait_for(lambda: len(revs()) >= 3, 30, "three deltas")
        await rig.stop_gateway()
        await asyncio.sleep(0.5)   # every delta of the first run has arrived
        first_run = revs()
        assert first_run == list(range(1, len(first_run) + 1))
        gateway = await rig.start_gateway()
        await wait_for(lambda: len(revs()) > len(first_run), 30, "a delta after the restart")
        assert revs()[len(first_run)] == first_run[-1] + 1
        assert gateway.sess == 2
