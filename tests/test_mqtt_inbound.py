"""Inbound MQTT parsing and validation (gateway/mqtt/inbound.py), without a broker."""

import json

import pytest

from gateway.mqtt import inbound
from gateway.mqtt.inbound import Command, Desired, InboundError
from gateway.protocol.constants import ConfigKey

ROOT = "dermtwin/v1/gw"


def j(doc) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize("topic, kind", [
    (f"{ROOT}/s-1/desired", ("desired", "s-1")),
    (f"{ROOT}/cmd", ("cmd", None)),
    (f"{ROOT}/s-1/reported", None),
    (f"{ROOT}/s-1/x/desired", None),
    ("dermtwin/v1/other/s-1/desired", None),
    (f"{ROOT}//desired", None),
])
def test_classify(topic, kind):
    assert inbound.classify(ROOT, topic) == kind


def test_desired_is_parsed_by_setconfig_key_name():
    desired = inbound.parse_desired(j({"ver": 7, "cfg": {"temp_period_s": 30,
                                                         "flush_interval_s": 65535},
                                        "by": "clinic"}))
    assert desired == Desired(7, {ConfigKey.TEMP_PERIOD_S: 30, ConfigKey.FLUSH_INTERVAL_S: 65535})
    assert desired.cfg_by_name() == {"temp_period_s": 30, "flush_interval_s": 65535}
    assert set(inbound.CONFIG_KEYS) == {"temp_period_s", "uv_period_s", "uv_fast_period_s",
                                        "hydration_period_s", "battery_period_s",
                                        "flush_interval_s"}


@pytest.mark.parametrize("payload, field", [
    (b"not json", "payload"),
    (b"\xff\xfe", "payload"),
    (j([1, 2]), "payload"),
    (b"{" + b" " * 5000 + b"}", "payload"),
    (j({"cfg": {}}), "ver"),
    (j({"ver": -1, "cfg": {}}), "ver"),
    (j({"ver": 1.5, "cfg": {}}), "ver"),
    (j({"ver": "3", "cfg": {}}), "ver"),
    (j({"ver": True, "cfg": {}}), "ver"),
    (j({"ver": 1}), "cfg"),
    (j({"ver": 1, "cfg": [1]}), "cfg"),
    (j({"ver": 1, "cfg": {"temp_period": 5}}), "cfg.temp_period"),
    (j({"ver": 1, "cfg": {"uv_period_s": 0}}), "cfg.uv_period_s"),
    (j({"ver": 1, "cfg": {"uv_period_s": 65536}}), "cfg.uv_period_s"),
    (j({"ver": 1, "cfg": {"uv_period_s": 5.0}}), "cfg.uv_period_s"),
    (j({"ver": 1, "cfg": {"uv_period_s": "5"}}), "cfg.uv_period_s"),
])
def test_bad_desired_is_refused_naming_the_field(payload, field):
    with pytest.raises(InboundError) as err:
        inbound.parse_desired(payload)
    assert err.value.field == field
    assert str(err.value).startswith(field + ": ")


def test_ver_is_bounded_to_what_json_consumers_hold():
    """A `ver` near 2^63 would lock configuration for good: every later one "not newer"."""
    assert inbound.MAX_VER == 2**53 - 1
    assert inbound.parse_desired(j({"ver": 2**53 - 1, "cfg": {}})).ver == 2**53 - 1
    for ver in (2**53, 2**63 - 1, 10**30):
        with pytest.raises(InboundError) as err:
            inbound.parse_desired(j({"ver": ver, "cfg": {}}))
        assert str(err.value) == f"ver: {ver} is not an integer 0..9007199254740991"
        assert inbound.peek_ver(j({"ver": ver})) is None


def test_peek_ver_and_reported_payload():
    assert inbound.peek_ver(j({"ver": 4, "cfg": {"x": 1}})) == 4
    assert inbound.peek_ver(b"nope") is None and inbound.peek_ver(j({"ver": -2})) is None
    doc = inbound.reported(4, "applied", None, 123, {ConfigKey.UV_PERIOD_S: 3})
    assert doc == {"schema": 3, "ver": 4, "state": "applied", "detail": None, "ts": 123,
                   "cfg": {"uv_period_s": 3}}
    with pytest.raises(ValueError):
        inbound.reported(4, "done", None, 0, {})


def test_commands_parse():
    assert inbound.parse_command(j({"op": "identify", "subject": "s-1", "seconds": 9})) == \
        Command("identify", "s-1", 9)
    assert inbound.parse_command(j({"op": "identify", "subject": "s-1"})).seconds == 5
    assert inbound.parse_command(j({"op": "resync"})) == Command("resync", None)
    assert inbound.parse_command(j({"op": "resync", "subject": "s-2"})) == Command("resync", "s-2")
    assert inbound.parse_command(j({"op": "reset_config", "subject": "s-2"})) == \
        Command("reset_config", "s-2")


@pytest.mark.parametrize("payload, field", [
    (b"[", "payload"),
    (j({}), "op"),
    (j({"op": "reboot"}), "op"),
    (j({"op": "identify"}), "subject"),
    (j({"op": "identify", "subject": 5}), "subject"),
    (j({"op": "identify", "subject": "s", "seconds": 0}), "seconds"),
    (j({"op": "identify", "subject": "s", "seconds": 256}), "seconds"),
    (j({"op": "resync", "subject": ""}), "subject"),
    (j({"op": "reset_config"}), "subject"),
])
def test_bad_commands_name_the_field(payload, field):
    with pytest.raises(InboundError) as err:
        inbound.parse_command(payload)
    assert err.value.field == field
    assert inbound.peek_op(payload) in (None, "identify", "resync", "reset_config")


def test_answer_payload():
    assert inbound.answer(False, None, "op: missing") == {"ok": False, "op": None,
                                                         "detail": "op: missing"}


def test_response_topic_checks():
    assert inbound.response_topic_problem(ROOT, "clinic/replies/7") is None
    assert "wildcard" in inbound.response_topic_problem(ROOT, "clinic/+/x")
    assert "own topic root" in inbound.response_topic_problem(ROOT, f"{ROOT}/state")


# -- `cmd` end to end: real mosquitto, virtual patches, an MQTT 5 requester ------------------

@pytest.fixture
async def cmd_rig(tmp_path):
    from gateway_harness import GatewayRig, Mqtt5Requester, wait_for
    async with GatewayRig(tmp_path, patches=2) as rig:
        gateway = await rig.start_gateway()
        await wait_for(lambda: all(gateway.store.sample_count(d) >= 2
                                   for d, _, _ in rig.identities), what="both streaming")
        requester = Mqtt5Requester(rig.broker, "clinic/replies/1")
        try:
            yield rig, requester
        finally:
            requester.close()


@pytest.mark.slow
async def test_cmd_identify_reaches_the_patch_and_is_answered(cmd_rig):
    import asyncio

    from gateway_harness import wait_for
    rig, requester = cmd_rig
    subject = rig.identities[1][2]
    await asyncio.to_thread(requester.request, "dermtwin/v1/rig/cmd",
                            {"op": "identify", "subject": subject, "seconds": 7}, b"\x01id")
    answer, correlation, retain, qos = await requester.answer_to(b"\x01id")
    assert answer["ok"] is True and answer["op"] == "identify"
    assert (correlation, retain, qos) == (b"\x01id", False, 1)
    board = rig.patches[1].patch.board
    await wait_for(lambda: board.identify_requests == [7], what="IDENTIFY at the patch")
    assert rig.patches[0].patch.board.identify_requests == []
    # Without a Response Topic: executed, not answered.
    await asyncio.to_thread(requester.request, "dermtwin/v1/rig/cmd",
                            {"op": "identify", "subject": subject, "seconds": 2}, b"quiet",
                            answer=False)
    await wait_for(lambda: board.identify_requests == [7, 2], what="the second IDENTIFY")
    await asyncio.sleep(0.3)
    assert all(a[1] != b"quiet" for a in requester.answers)


@pytest.mark.slow
async def test_cmd_identify_of_a_patch_not_connected_says_so(cmd_rig):
    import asyncio

    from gateway_harness import wait_for
    rig, requester = cmd_rig
    await rig.patches[0].stop()
    await wait_for(lambda: rig.link(0).session is None
                   or rig.link(0).session.state.value == "closed", what="patch 0 gone")
    await asyncio.to_thread(requester.request, "dermtwin/v1/rig/cmd",
                            {"op": "identify", "subject": rig.identities[0][2]}, b"nc")
    answer, *_ = await requester.answer_to(b"nc")
    assert answer == {"ok": False, "op": "identify", "detail": "not_connected"}


@pytest.mark.slow
async def test_cmd_resync_republishes_twins_and_errors_are_answered(cmd_rig, mqtt_collector):
    import asyncio

    from gateway_harness import wait_for
    rig, requester = cmd_rig
    subjects = [s for _, _, s in rig.identities]
    await wait_for(lambda: all(rig.gateway.engine.twins.get(s) is not None
                               and rig.gateway.engine.twins[s].state for s in subjects),
                   what="twin state for both subjects")
    collector = mqtt_collector(rig.broker, "dermtwin/v1/rig/+/twin")
    await asyncio.to_thread(collector.wait_for, lambda m: len(m) >= 2, 10, "retained twins")
    before = {s: len(collector.on_topic(f"dermtwin/v1/rig/{s}/twin")) for s in subjects}

    await asyncio.to_thread(requester.request, "dermtwin/v1/rig/cmd",
                            {"op": "resync", "subject": subjects[0]}, b"r1")
    answer, *_ = await requester.answer_to(b"r1")
    assert answer["ok"] is True and answer["op"] == "resync"
    await wait_for(lambda: len(collector.on_topic(f"dermtwin/v1/rig/{subjects[0]}/twin"))
                   > before[subjects[0]], what="a fresh snapshot")
    snapshot = json.loads(collector.on_topic(f"dermtwin/v1/rig/{subjects[0]}/twin")[-1].payload)
    assert snapshot["rev"] == rig.gateway.engine.twins[subjects[0]].rev
    assert not collector.on_topic(f"dermtwin/v1/rig/{subjects[0]}/twin")[-1].retain  # live copy

    await asyncio.to_thread(requester.request, "dermtwin/v1/rig/cmd", {"op": "resync"}, b"all")
    answer, *_ = await requester.answer_to(b"all")
    assert answer["ok"] is True and answer["detail"].startswith("2 ")
    await wait_for(lambda: all(len(collector.on_topic(f"dermtwin/v1/rig/{s}/twin"))
                               >= before[s] + 1 for s in subjects), what="both snapshots")

    for correlation, doc, field in [
            (b"e1", b"{oops", "payload"),
            (b"e2", {"op": "reboot"}, "op"),
            (b"e3", {"op": "identify"}, "subject"),
            (b"e4", {"op": "resync", "subject": "s-nobody"}, "subject"),
            (b"e5", {"op": "identify", "subject": subjects[0], "seconds": 999}, "seconds")]:
        await asyncio.to_thread(requester.request, "dermtwin/v1/rig/cmd", doc, correlation)
        answer, *_ = await requester.answer_to(correlation)
        assert answer["ok"] is False and answer["detail"].startswith(field + ": "), answer
    assert rig.gateway.publisher.connected
