"""The subscriber library (gateway/subscriber/) against a real mosquitto and a running gateway
with virtual patches: twins rebuilt from retained + deltas, a lost delta and twin repaired
with `cmd resync`, samples deduplicated by (subject, boot, seq) with `data_loss` surfaced,
and an MQTT 5 shared subscription splitting samples between the members of a group."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway import samples_message, twin_message
from gateway.ingest import data_loss_alert, encode
from gateway.mqtt import topics
from gateway.store import Store, connect
from gateway.subscriber import DataLoss, SampleRow, Subscriber
from gateway.subscriber.twins import TwinFollower
from gateway.values import LostSamples
from simulation.demo import DEMO_PATCH_CONFIG, DEMO_TIME_SCALE

ROOT = "dermtwin/v1/rig"
# the demo's pace: physiology 120x, frames every second, so twins move every few seconds
LIVELY = {"time_scale": DEMO_TIME_SCALE, "patch_config": {**DEMO_PATCH_CONFIG, 6: 1}}


def test_follower_orders_drops_duplicates_and_holds_holes():
    f = TwinFollower()
    wire = [1.5, 200]                                    # [v, age ms] (docs/mqtt.md)
    assert f.on_delta("s", {"rev": 4, "ts": 1000, "set": {"a": wire}}, 0.0) is None
    assert f.overdue(10.0, 5.0) == ["s"]                 # deltas and no twin yet
    twin = f.on_twin("s", {"rev": 3, "sess": 1, "ts": 900, "state": {"b": [2, None, "u"]}},
                     11.0)
    a = {"v": 1.5, "t": 800, "q": "good"}
    b = {"v": 2, "t": -1, "q": "uncertain"}              # time unknown
    assert twin.rev == 4 and twin.state == {"a": a, "b": b}   # held delta applied
    assert f.on_twin("s", {"rev": 4, "ts": 0, "state": {}}, 12.0) is None   # same rev again
    assert f.on_delta("s", {"rev": 6, "ts": 2000, "set": {"c": [0, 0, "b"]}},
                      12.0) is None                      # hole at 5
    assert f.overdue(13.0, 5.0) == [] and f.overdue(18.0, 5.0) == ["s"]
    twin = f.on_delta("s", {"rev": 5, "ts": 1500, "set": {}, "unset": ["a"]}, 14.0)
    assert twin.rev == 6 and twin.state == {"b": b, "c": {"v": 0, "t": 2000, "q": "bad"}}
    assert f.overdue(100.0, 5.0) == [] and f.duplicates == 1 and f.holes_closed == 2


@pytest.mark.slow
async def test_twins_follow_and_a_lost_delta_is_repaired_with_resync(tmp_path):
    from gateway_harness import GatewayRig, wait_for

    async with GatewayRig(tmp_path, patches=2, **LIVELY) as rig:
        gateway = await rig.start_gateway()
        subjects = [s for _, _, s in rig.identities]
        await wait_for(lambda: all(gateway.engine.twins.get(s) is not None
                                   and gateway.engine.twins[s].rev >= 2 for s in subjects),
                       timeout_s=30, what="twins")
        # Fault injection: the next delta of subject 0 and every twin that goes with a delta
        # are lost on the way (as if parked); resync snapshots still get through.
        lost = {"delta": None, "twins_dropped": 0}
        original = gateway.ingest.publish_updates

        def lossy(updates):
            for u in updates:
                if u.subject == subjects[0] and u.delta is not None:
                    if lost["delta"] is None:
                        lost["delta"] = u.delta["rev"]
                        u.delta = None
                    if u.snapshot is not None:
                        u.snapshot = None
                        lost["twins_dropped"] += 1
            return original(updates)

        latest: dict[str, object] = {}
        async with Subscriber(rig.broker.url, gateway_id="rig", resync_after_s=1.0) as sub:
            async def follow():
                async for twin in sub.twins():
                    latest[twin.subject] = twin

            task = asyncio.create_task(follow())
            await wait_for(lambda: set(latest) == set(subjects), what="retained twins")
            gateway.ingest.publish_updates = lossy
            await wait_for(lambda: lost["delta"] is not None and lost["twins_dropped"] >= 2,
                           timeout_s=30, what="a lost delta and the twins after it")
            await wait_for(lambda: sub.resyncs_sent >= 1, what="the library to ask for resync")
            gateway.ingest.publish_updates = original
            await wait_for(lambda: all(s in latest and latest[s].rev == gateway.engine.twins[s].rev
                                       for s in subjects), timeout_s=20,
                           what="the library's twins to reach the gateway's revs")
            await rig.stop_gateway()
            final = {s: gateway.engine.twins[s] for s in subjects}
            await wait_for(lambda: all(latest[s].rev == final[s].rev for s in subjects),
                           what="the last revs")
            task.cancel()
        for s in subjects:
            assert latest[s].state == twin_message.as_received(final[s].state)
        assert sub.follower.holes_closed >= 1


@pytest.mark.slow
async def test_samples_dedup_data_loss_and_shared_subscription(tmp_path, mqtt_collector):
    from gateway_harness import GatewayRig, mqtt5_publish, wait_for

    async with GatewayRig(tmp_path, patches=2, **LIVELY) as rig:
        raw = mqtt_collector(rig.broker, f"{ROOT}/+/samples")
        everyone: list = []
        members: dict[str, list] = {"a": [], "b": []}
        async with Subscriber(rig.broker.url, gateway_id="rig") as sub, \
                Subscriber(rig.broker.url, gateway_id="rig", group="sink") as member_a, \
                Subscriber(rig.broker.url, gateway_id="rig", group="sink") as member_b:
            async def drain(source, into):
                async for item in source.samples():
                    into.append(item)

            tasks = [asyncio.create_task(drain(sub, everyone)),
                     asyncio.create_task(drain(member_a, members["a"])),
                     asyncio.create_task(drain(member_b, members["b"]))]
            await asyncio.sleep(0.5)   # subscriptions in place before the first sample
            await rig.start_gateway()
            await wait_for(lambda: len(raw.messages) >= 12, timeout_s=30, what="samples")
            # at least once: the same message again, as after a gateway restart
            again = raw.messages[0]
            await asyncio.to_thread(mqtt5_publish, rig.broker, again.topic, again.payload)
            subject = again.topic.split("/")[3]
            loss = data_loss_alert(LostSamples(1, 50, 10, 20, 1_700_000_000_000,
                                               1_700_000_060_000, (3, 6, 0, 1)), 5)
            await asyncio.to_thread(mqtt5_publish, rig.broker, topics.ALERT.path(ROOT, subject),
                                    encode(loss))
            await wait_for(lambda: any(isinstance(i, DataLoss) for i in everyone),
                           what="the data_loss event")
            await rig.stop_gateway()
            store = Store(connect(rig.db_path))
            stored = {(s, seq) for did, _, s in rig.identities
                      for seq in store.sample_seqs(did)}
            store.conn.close()
            rows = lambda items: [(i.subject, i.seq) for i in items if isinstance(i, SampleRow)]  # noqa: E731
            await wait_for(lambda: set(rows(everyone)) == stored, what="every stored sample")
            await wait_for(lambda: set(rows(members["a"])) | set(rows(members["b"])) == stored,
                           what="the group to see every sample")
            for task in tasks:
                task.cancel()
        assert len(rows(everyone)) == len(stored)          # the repeat was dropped
        assert sub.deduper.duplicates >= 1
        [event] = [i for i in everyone if isinstance(i, DataLoss)]
        assert event.subject == subject and event.samples["uv_index"] == 6
        # the shared subscription split the messages: both members got some, none twice but
        # the repeated message's (the broker may hand the repeat to the other member)
        assert rows(members["a"]) and rows(members["b"])
        repeated = {(subject, s.seq) for s in samples_message.decode(json.loads(again.payload))}
        assert set(rows(members["a"])) & set(rows(members["b"])) <= repeated
        temps = [i for i in everyone if isinstance(i, SampleRow) and i.prop == "skin_temp_c"]
        assert temps and all(25 < t.value < 40 and t.utc_ms for t in temps)
        by_topic = json.loads(raw.messages[0].payload)
        assert by_topic["schema"] == topics.SCHEMA_VERSION


@pytest.mark.slow
async def test_watch_examples_and_mosquitto_sub_see_the_current_twins(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from gateway_harness import GatewayRig, wait_for

    async with GatewayRig(tmp_path, patches=2, **LIVELY) as rig:
        gateway = await rig.start_gateway()
        subjects = [s for _, _, s in rig.identities]
        await wait_for(lambda: all(gateway.engine.twins.get(s) is not None
                                   and gateway.engine.twins[s].rev >= 2 for s in subjects),
                       timeout_s=30, what="twins")
        repo = Path(__file__).resolve().parents[1]
        env = dict(os.environ, PYTHONPATH=str(repo))

        def run(*argv: str) -> subprocess.CompletedProcess:
            return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)

        url = rig.broker.url
        done, follow, sink, retained = await asyncio.gather(
            asyncio.to_thread(run, sys.executable, "-m", "gateway.cli", "watch", "--broker",
                              url, "--gateway-id", "rig", "--duration", "3"),
            asyncio.to_thread(run, sys.executable, str(repo / "examples/follow_twins.py"), url,
                              "rig", "--seconds", "3"),
            asyncio.to_thread(run, sys.executable, str(repo / "examples/samples_sink.py"), url,
                              "rig", str(tmp_path / "out.csv"), "--seconds", "3"),
            # docs/subscribers.md: the current twins, from the shell
            asyncio.to_thread(run, "mosquitto_sub", "-V", "mqttv5", "-h", rig.broker.host,
                              "-p", str(rig.broker.port), "-t", f"{ROOT}/+/twin",
                              "--retained-only", "-F", "%t %p"))
        revs = {s: gateway.engine.twins[s].rev for s in subjects}
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for subject in subjects:
        [line] = [ln for ln in lines if subject in ln]
        cells = [c.strip() for c in line.split("│") if c.strip()]
        assert cells[0] == subject and 2 <= int(cells[1]) <= revs[subject]
        assert 25 < float(cells[2].rstrip("?")) < 40     # skin °C
    assert "0 resyncs" in done.stdout   # the retained twins were current: nothing to ask
    for subject in subjects:
        assert f"{subject} rev " in follow.stdout, follow.stderr
        assert any(line.startswith(f"{subject},") for line in
                   (tmp_path / "out.csv").read_text().splitlines()), sink.stderr
        [line] = [ln for ln in retained.stdout.splitlines() if f"/{subject}/twin " in ln]
        # (current as of its connection; the gateway may have been a cycle ahead of the broker)
        assert 1 <= json.loads(line.split(" ", 1)[1])["rev"] <= revs[subject]
