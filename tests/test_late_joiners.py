"""A retained twin that is always current (design.md §5, docs/subscribers.md): subscribers
that join a running demo at random moments (real mosquitto, virtual patches, the gateway)
end with exactly the twin of a subscriber that was there from the start, and the gateway's
own, using only what they receive: retained messages and the deltas that follow. None of
them publishes anything (no `cmd resync`)."""

from __future__ import annotations

import asyncio
import json
import random

from gateway import twin_message
from gateway.mqtt import topics
from gateway.subscriber.twins import TwinFollower
from simulation.demo import DEMO_PATCH_CONFIG, DEMO_TIME_SCALE

ROOT = "dermtwin/v1/rig"
# the demo's pace: physiology 120x, frames every second, so twins move every few seconds
LIVELY = {"time_scale": DEMO_TIME_SCALE, "patch_config": {**DEMO_PATCH_CONFIG, 6: 1}}
JOINERS = 4


def follow(messages) -> TwinFollower:
    follower = TwinFollower()
    for m in messages:
        found = topics.classify(ROOT, m.topic)
        if found is None or not m.payload:
            continue
        row, subject = found
        if row is topics.TWIN:
            follower.on_twin(subject, json.loads(m.payload))
        elif row is topics.DELTA:
            follower.on_delta(subject, json.loads(m.payload))
    return follower


async def test_late_joiners_rebuild_the_current_twin_without_asking(tmp_path, mqtt_collector):
    from gateway_harness import GatewayRig, wait_for

    rng = random.Random(12)
    async with GatewayRig(tmp_path, patches=2, **LIVELY) as rig:
        subjects = [s for _, _, s in rig.identities]
        from_start = mqtt_collector(rig.broker, f"{ROOT}/#")
        gateway = await rig.start_gateway()
        await wait_for(lambda: all(gateway.engine.twins.get(s) is not None
                                   and gateway.engine.twins[s].rev >= 3 for s in subjects),
                       timeout_s=30, what="a few revs per subject")
        joiners = []
        for _ in range(JOINERS):
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            joiners.append(await asyncio.to_thread(mqtt_collector, rig.broker, f"{ROOT}/#"))
        await asyncio.sleep(1.0)
        await rig.stop_gateway()
        # the engine's twin as it travels: values at their wire resolution, exact times
        final = {s: (gateway.engine.twins[s].rev,
                     twin_message.as_received(gateway.engine.twins[s].state)) for s in subjects}

        for collector in [from_start, *joiners]:
            await asyncio.to_thread(
                collector.wait_for,
                lambda ms: all(follow(ms).twin(s) is not None
                               and follow(ms).twin(s).rev == final[s][0] for s in subjects),
                10, "the final rev of every subject")

        reference = follow(from_start.messages)
        for s in subjects:
            twin = reference.twin(s)
            assert (twin.rev, twin.state) == final[s]
        caught_up_by_deltas = 0
        for collector in joiners:
            follower = follow(collector.messages)
            for s in subjects:
                assert follower.twin(s).state == reference.twin(s).state, s
                assert follower.twin(s).rev == reference.twin(s).rev
            retained = {topics.classify(ROOT, m.topic)[1]: json.loads(m.payload)["rev"]
                        for m in collector.messages if m.retain and m.topic.endswith("/twin")}
            # they joined mid-run: the retained twin they got was current, not the first one
            assert set(retained) == set(subjects) and min(retained.values()) >= 3
            caught_up_by_deltas += any(retained[s] < final[s][0] for s in subjects)
        assert caught_up_by_deltas, "no joiner had deltas to apply after its retained twin"
        # nobody asked: the gateway answered no cmd and published nothing under cmd
        assert not [m for m in from_start.messages if m.topic == topics.CMD.path(ROOT)]

