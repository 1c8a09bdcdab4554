"""`{subject}/desired` end to end (docs/mqtt.md): a clinic's retained desired configuration
reaches the virtual patch's firmware through a real mosquitto and Bumble, and the gateway
answers on `{subject}/reported`."""

import asyncio
import json

import pytest
from gateway_harness import GatewayRig, mqtt5_publish, wait_for

from gateway.mqtt import topics
from gateway.protocol.constants import Channel, ConfigKey

pytestmark = pytest.mark.slow


def reported(collector, subject):
    return [json.loads(m.payload)
            for m in collector.on_topic(f"dermtwin/v1/rig/{subject}/reported") if m.payload]


def temp_ticks(gateway, device_id):
    return [r[0] for r in gateway.store.conn.execute(
        "SELECT tick FROM samples WHERE device_id=? AND channel=? ORDER BY seq",
        (device_id, int(Channel.TEMPERATURE)))]


async def test_desired_config_reaches_the_patch_and_is_reported_applied(tmp_path, mqtt_collector):
    async with GatewayRig(tmp_path, patches=1) as rig:
        device_id, _, subject = rig.identities[0]
        collector = mqtt_collector(rig.broker, "dermtwin/v1/rig/+/reported")
        gateway = await rig.start_gateway()
        firmware = rig.patches[0].patch
        await wait_for(lambda: gateway.store.sample_count() >= 2, what="streaming")
        assert firmware.config.get(ConfigKey.TEMP_PERIOD_S) == 1
        desired = {"ver": 3, "cfg": {"temp_period_s": 2, "uv_period_s": 7,
                                     "flush_interval_s": 2}}
        await asyncio.to_thread(mqtt5_publish, rig.broker,
                                f"dermtwin/v1/rig/{subject}/desired", json.dumps(desired).encode(),
                                retain=True)
        await wait_for(lambda: any(r["state"] == "applied" for r in reported(collector, subject)),
                       what="reported: applied")
        states = reported(collector, subject)
        assert [r["state"] for r in states] == ["pending", "applied"]
        applied = states[-1]
        assert applied["ver"] == 3 and applied["schema"] == topics.SCHEMA_VERSION and applied["detail"] is None
        assert applied["cfg"] == desired["cfg"]
        assert isinstance(applied["ts"], int)
        assert device_id not in json.dumps(states)
        # The firmware took it, and persisted it (survives a reboot).
        assert firmware.config.get(ConfigKey.TEMP_PERIOD_S) == 2
        assert firmware.config.get(ConfigKey.UV_PERIOD_S) == 7
        assert firmware.config.get(ConfigKey.FLUSH_INTERVAL_S) == 2
        saved = json.loads((rig.patches[0].data_dir / "config.json").read_text())
        assert (saved["1"], saved["2"], saved["6"]) == (2, 7, 2)
        assert gateway.store.desired(device_id).applied
        assert rig.link(0).session.close is None   # the same session goes on
        # Samples now come every 2 s (20 ticks of 100 ms).
        start = len(temp_ticks(gateway, device_id))
        await wait_for(lambda: len(temp_ticks(gateway, device_id)) >= start + 4, 20,
                       "temperature samples at the new period")
        ticks = temp_ticks(gateway, device_id)[start + 1:]
        assert all(19 <= b - a <= 21 for a, b in zip(ticks, ticks[1:], strict=False)), ticks
        # The retained message comes again on every reconnect: nothing new is answered.
        count = len(reported(collector, subject))
        await rig.stop_gateway()
        gateway = await rig.start_gateway()
        await wait_for(lambda: gateway.publisher.connected and rig.link(0).session is not None
                       and rig.link(0).session.state.value == "streaming", what="reconnected")
        await asyncio.sleep(1.0)
        assert len(reported(collector, subject)) == count


async def test_desired_published_while_patch_and_gateway_are_away_applies_on_connect(
        tmp_path, mqtt_collector):
    async with GatewayRig(tmp_path, patches=2) as rig:
        _, _, subject = rig.identities[1]
        collector = mqtt_collector(rig.broker, "dermtwin/v1/rig/+/reported")
        await asyncio.to_thread(
            mqtt5_publish, rig.broker, f"dermtwin/v1/rig/{subject}/desired",
            json.dumps({"ver": 0, "cfg": {"hydration_period_s": 120}}).encode(), retain=True)
        await rig.start_gateway()   # learns it from the retained message
        await wait_for(lambda: [r["state"] for r in reported(collector, subject)][-1:]
                       == ["applied"], what="applied at the patch's first connection")
        assert rig.patches[1].patch.config.get(ConfigKey.HYDRATION_PERIOD_S) == 120
        assert rig.patches[0].patch.config.get(ConfigKey.HYDRATION_PERIOD_S) == 60


async def test_malformed_or_stale_desired_is_refused_naming_the_field(tmp_path, mqtt_collector):
    async with GatewayRig(tmp_path, patches=1) as rig:
        device_id, _, subject = rig.identities[0]
        collector = mqtt_collector(rig.broker, "dermtwin/v1/rig/+/reported")
        gateway = await rig.start_gateway()
        await wait_for(lambda: gateway.store.sample_count() >= 2, what="streaming")
        topic = f"dermtwin/v1/rig/{subject}/desired"

        async def send(doc, topic=topic):
            payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
            before = len(collector.messages)
            await asyncio.to_thread(mqtt5_publish, rig.broker, topic, payload, retain=True)
            await wait_for(lambda: len(collector.messages) > before, what="an answer")
            return json.loads(collector.messages[-1].payload)

        answer = await send({"ver": 1, "cfg": {"temp_period_s": 0}})
        assert answer["state"] == "refused" and answer["ver"] == 1
        assert answer["detail"].startswith("cfg.temp_period_s: ")
        answer = await send({"ver": 1, "cfg": {"sample_rate": 3}})
        assert answer["detail"].startswith("cfg.sample_rate: unknown key")
        answer = await send(b"{nope")
        assert answer["detail"].startswith("payload: not JSON") and answer["ver"] is None
        answer = await send({"ver": -4, "cfg": {}})
        assert answer["detail"].startswith("ver: ")
        answer = await send({"ver": 1, "cfg": {"uv_period_s": 9}},
                            topic="dermtwin/v1/rig/s-nobody/desired")
        assert collector.messages[-1].topic == "dermtwin/v1/rig/s-nobody/reported"
        assert answer["detail"].startswith("subject: ")
        assert gateway.store.desired(device_id) is None          # nothing changed
        assert rig.patches[0].patch.config.get(ConfigKey.TEMP_PERIOD_S) == 1
        await send({"ver": 5, "cfg": {"uv_period_s": 9}})
        await wait_for(lambda: reported(collector, subject)[-1]["state"] == "applied",
                       what="ver 5 applied")
        assert [r["state"] for r in reported(collector, subject) if r["ver"] == 5] == [
            "pending", "applied"]
        answer = await send({"ver": 4, "cfg": {"uv_period_s": 3}})   # older than accepted
        assert answer["state"] == "refused" and answer["detail"].startswith("ver: 4")
        assert answer["cfg"] == {"uv_period_s": 9}                   # still in force
        assert rig.patches[0].patch.config.get(ConfigKey.UV_PERIOD_S) == 9
        assert rig.link(0).session.close is None


async def test_ver_is_bounded_and_a_clinic_can_reset_the_configuration_history(
        tmp_path, mqtt_collector):
    """`ver` above 2^53-1 is refused; the clinic clears the retained desired and sends
    `reset_config`, after which a small `ver` is accepted again, also after a restart."""
    from gateway_harness import Mqtt5Requester

    async with GatewayRig(tmp_path, patches=1) as rig:
        device_id, _, subject = rig.identities[0]
        topic = f"dermtwin/v1/rig/{subject}/desired"
        collector = mqtt_collector(rig.broker, "dermtwin/v1/rig/+/reported")
        gateway = await rig.start_gateway()
        firmware = rig.patches[0].patch
        await wait_for(lambda: gateway.store.sample_count() >= 2, what="streaming")
        requester = Mqtt5Requester(rig.broker, "dermtwin/reply/rig/clinic")
        try:
            async def desire(ver, cfg):
                await asyncio.to_thread(mqtt5_publish, rig.broker, topic,
                                        json.dumps({"ver": ver, "cfg": cfg}).encode(),
                                        retain=True)

            async def request(doc, correlation):
                await asyncio.to_thread(requester.request, "dermtwin/v1/rig/cmd", doc,
                                        correlation)
                answer, *_ = await requester.answer_to(correlation)
                return answer

            await desire(2**63 - 1, {"temp_period_s": 3})
            await wait_for(lambda: reported(collector, subject), what="an answer")
            refused = reported(collector, subject)[-1]
            assert refused["state"] == "refused" and refused["ver"] is None
            assert refused["detail"] == ("ver: 9223372036854775807 is not an integer "
                                         "0..9007199254740991")
            assert gateway.store.desired(device_id) is None

            await desire(2**53 - 1, {"temp_period_s": 2})   # the largest: accepted, and locks
            await wait_for(lambda: reported(collector, subject)[-1]["state"] == "applied",
                           what="the largest ver applied")
            await desire(7, {"temp_period_s": 3})
            await wait_for(lambda: reported(collector, subject)[-1]["ver"] == 7, what="refusal")
            assert reported(collector, subject)[-1]["detail"].startswith("ver: 7 is not newer")

            # Reset while the retained desired still holds the locking version: refused.
            answer = await request({"op": "reset_config", "subject": subject}, b"r1")
            assert answer["ok"] is False and "clear it first" in answer["detail"]
            assert gateway.store.desired(device_id).ver == 2**53 - 1
            # Clear it, then reset.
            await asyncio.to_thread(mqtt5_publish, rig.broker, topic, b"", retain=True)
            answer = await request({"op": "reset_config", "subject": subject}, b"r2")
            assert answer == {"ok": True, "op": "reset_config", "detail": (
                f"configuration history of {subject} forgotten (was ver 9007199254740991); "
                "the patch keeps its configuration")}
            assert gateway.store.desired(device_id) is None
            await wait_for(lambda: collector.on_topic(f"dermtwin/v1/rig/{subject}/reported")[-1]
                           .payload == b"", what="the retained reported cleared")
            assert firmware.config.get(ConfigKey.TEMP_PERIOD_S) == 2   # kept

            await desire(1, {"temp_period_s": 4})
            await wait_for(lambda: reported(collector, subject)[-1:] and
                           reported(collector, subject)[-1]["state"] == "applied"
                           and reported(collector, subject)[-1]["ver"] == 1,
                           what="ver 1 applied after the reset")
            assert firmware.config.get(ConfigKey.TEMP_PERIOD_S) == 4
        finally:
            requester.close()
        await rig.stop_gateway()
        gateway = await rig.start_gateway()   # the retained ver 1 comes back: nothing re-locks
        await wait_for(lambda: gateway.publisher.connected, what="reconnected")
        await asyncio.sleep(0.5)
        assert gateway.store.desired(device_id).ver == 1
