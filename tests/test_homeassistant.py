"""Home Assistant MQTT discovery (gateway/homeassistant.py, `--homeassistant`): retained
config topics per subject on a real mosquitto, value templates rendered by Jinja2 (what Home
Assistant uses) against the retained twin, and configs cleared after `dermtwin unpair`."""

from __future__ import annotations

import asyncio
import json

import jinja2
import pytest

from gateway import homeassistant as ha
from gateway import twin_message
from gateway.mqtt import topics

PREFIX = "homeassistant"


def render(template: str, twin: dict):
    text = jinja2.Environment().from_string(template).render(value_json=twin)
    return text


def test_configs_name_sensors_with_class_unit_and_state_class():
    messages = dict(ha.config_messages(PREFIX, "gw1", "s-1", "DT-ABCD"))
    assert len(messages) == 5
    configs = {json.loads(p)["unique_id"]: json.loads(p) for p in messages.values()}
    skin = configs["dermtwin_gw1_s-1_skin_temp_c"]
    assert skin["device_class"] == "temperature" and skin["unit_of_measurement"] == "°C"
    assert skin["state_class"] == "measurement"
    assert skin["state_topic"] == "dermtwin/v1/gw1/s-1/twin"
    assert skin["availability"][0]["topic"] == "dermtwin/v1/gw1/state"
    assert configs["dermtwin_gw1_s-1_battery_pct"]["device_class"] == "battery"
    assert configs["dermtwin_gw1_s-1_minutes_to_med"]["device_class"] == "duration"
    assert configs["dermtwin_gw1_s-1_uv_med_fraction"]["unit_of_measurement"] == "%"
    for topic in messages:
        assert ha.subject_of(PREFIX, "gw1", topic) == "s-1"
        assert ha.subject_of(PREFIX, "gw2", topic) is None
    # nothing names a person: only the pseudonymous subject and the patch's short name
    assert all("s-1" in c["device"]["name"] for c in configs.values())


def test_value_templates_read_the_twin_with_jinja2():
    leaf = lambda v: {"v": v, "t": 1, "q": "good"}  # noqa: E731   the engine's leaf
    # the retained twin as the gateway publishes it (leaves [value, age ms])
    twin = twin_message.twin({"schema": 3, "sess": 1, "rev": 3, "ts": 5, "state": {
        "uv_med_fraction": leaf(0.4567), "skin_temp_c": leaf(33.2512),
        "battery_pct": leaf(87.0), "minutes_to_med": leaf(41.0)}})
    assert twin["state"]["battery_pct"] == [87, 4]
    by_prop = {s.prop: s.value_template for s in ha.SENSORS}
    assert render(by_prop["uv_med_fraction"], twin) == "45.7"
    assert render(by_prop["skin_temp_c"], twin) == "33.25"
    assert render(by_prop["battery_pct"], twin) == "87"
    assert render(by_prop["hydration_au"], twin) == "None"   # not in the twin yet: unknown
    availability = json.loads(dict(ha.config_messages(PREFIX, "g", "s", "DT-1"))[
        ha.config_topic(PREFIX, "g", "s", "skin_temp_c")])["availability"][0]
    assert render(availability["value_template"], {"online": True}) == "online"
    assert render(availability["value_template"], {"online": False}) == "offline"


@pytest.mark.slow
async def test_discovery_configs_are_retained_and_cleared_after_unpair(tmp_path, mqtt_collector):
    from gateway_harness import GatewayRig, wait_for

    from gateway.cli import main as cli

    async with GatewayRig(tmp_path, patches=2) as rig:
        subjects = [s for _, _, s in rig.identities]
        gateway = await rig.start_gateway(homeassistant_prefix=PREFIX)
        await wait_for(lambda: all(gateway.engine.twins.get(s) is not None
                                   and gateway.engine.twins[s].rev >= 1 for s in subjects),
                       timeout_s=30, what="twins")
        first = mqtt_collector(rig.broker, f"{PREFIX}/#")
        configs = await asyncio.to_thread(first.wait_for, lambda ms: len(ms) >= 10, 10,
                                          "10 retained configs")
        assert all(m.retain for m in configs[:10])
        assert {ha.subject_of(PREFIX, "rig", m.topic) for m in configs} == set(subjects)
        # the state topic it names holds the current twin, which the template reads
        config = json.loads(next(m.payload for m in configs if m.topic == ha.config_topic(
            PREFIX, "rig", subjects[0], "skin_temp_c")))
        twins = mqtt_collector(rig.broker, config["state_topic"])
        [retained] = await asyncio.to_thread(twins.wait_for, lambda ms: len(ms) >= 1)
        skin = float(render(config["value_template"], json.loads(retained.payload)))
        assert 25 < skin < 40

        await rig.stop_gateway()
        assert await asyncio.to_thread(cli, ["unpair", "--db", str(rig.db_path),
                                             "--device-id", rig.identities[1][0]]) == 0
        await rig.start_gateway(homeassistant_prefix=PREFIX)
        await wait_for(lambda: rig.gateway.publisher.published >= 5, what="the gateway's birth")
        gone = [ha.config_topic(PREFIX, "rig", subjects[1], s.prop) for s in ha.SENSORS]
        await asyncio.to_thread(first.wait_for, lambda ms: all(
            any(m.topic == t and m.payload == b"" for m in ms) for t in gone), 10,
            "the unpaired subject's configs cleared")
        later = mqtt_collector(rig.broker, f"{PREFIX}/#")
        await asyncio.sleep(1.0)
        assert {ha.subject_of(PREFIX, "rig", m.topic) for m in later.messages} == {subjects[0]}
        assert len(later.messages) == 5 and all(m.retain for m in later.messages)
    assert topics.TWIN.path("dermtwin/v1/rig", subjects[0]) == config["state_topic"]
