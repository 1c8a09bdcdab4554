"""docs/schemas/ (JSON Schema draft 2020-12, one per row of the topic table): every message of
a run (real mosquitto, virtual patches, the gateway, a clinic sending `desired` and `cmd`)
validates against the schema its topic names, seen by a plain subscriber on `#`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from gateway.ingest import data_loss_alert
from gateway.mqtt import topics
from gateway.values import LostSamples, SampleBatch
from simulation.demo import DEMO_PATCH_CONFIG, DEMO_TIME_SCALE

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"
ROOT = "dermtwin/v1/rig"
# the demo's pace: physiology 120x, frames every second, so twins move every few seconds
LIVELY = {"time_scale": DEMO_TIME_SCALE, "patch_config": {**DEMO_PATCH_CONFIG, 6: 1}}
REPLIES = "clinic/replies/7"


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def problems(name: str, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator(name).iter_errors(doc)]


def test_every_schema_is_valid_2020_12_and_names_its_version():
    for name in topics.SCHEMAS:
        schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == topics.SCHEMA_ID_BASE + name
        Draft202012Validator.check_schema(schema)
        version = schema.get("properties", {}).get("schema")
        if version is not None:
            assert version == {"const": topics.SCHEMA_VERSION,
                               "description": "payload schema version (docs/schemas/)"}


def test_schemas_refuse_what_the_gateway_never_sends():
    good = {"schema": topics.SCHEMA_VERSION, "boot": 1, "seq": 5, "t": None, "c": "0",
            "v": [[3]]}
    assert problems("samples", good) == []
    assert problems("samples", {**good, "t": 1, }), "a known time needs dt"
    assert problems("samples", {**good, "extra": 1})
    assert problems("twin", {"schema": 1, "sess": 1, "rev": 1, "ts": 0, "state": {}})
    assert problems("delta", {"schema": topics.SCHEMA_VERSION, "sess": 1, "rev": 2, "ts": 0,
                              "set": {"skin_temp_c": {"v": 1, "t": 0}}, "unset": []})


def test_alerts_validate(tmp_path):
    from gateway.inference import default_models_dir, load_models
    from gateway.twin import TwinEngine

    lost = LostSamples(boot_id=1, seq_at=5, first_tick=20, last_tick=49,
                       first_utc_ms=None, last_utc_ms=None, counts=(3, 6, 0, 1))
    alerts = [data_loss_alert(lost, 1)]
    models = load_models(default_models_dir())
    engine = TwinEngine(1, {"d": "s"}, lambda n, i: models[n].run(i))
    n = 40
    for seq, (channel, values) in enumerate([(0, [33.0] * 30 + [36.0] * 10),
                                             (3, [40.0, 10.0]), (1, [1100] * n)]):
        count = len(values)
        utc = 1_700_000_000_000 + np.arange(count, dtype=np.int64) * 60_000
        engine.ingest(SampleBatch("d", 1, np.arange(count, dtype=np.int64) + 100 * seq,
                                  np.arange(count, dtype=np.int64), utc,
                                  np.full(count, channel, dtype=np.uint8),
                                  np.array(values, dtype=np.int32) * (128 if channel == 0
                                                                      else 256 if channel == 3
                                                                      else 1)))
        alerts += [a for u in engine.step(now_ms=seq) for a in u.alerts]
    assert {a["kind"] for a in alerts} == {"data_loss", "inflammation", "battery_low",
                                           "uv_dose"}
    for alert in alerts:
        assert problems("alert", json.loads(json.dumps(alert))) == [], alert


@pytest.mark.slow
async def test_every_message_of_a_run_validates(tmp_path, mqtt_collector):
    from gateway_harness import GatewayRig, Mqtt5Requester, mqtt5_publish, wait_for

    async with GatewayRig(tmp_path, patches=2, **LIVELY) as rig:
        subjects = [s for _, _, s in rig.identities]
        everything = mqtt_collector(rig.broker, "#")
        gateway = await rig.start_gateway()
        await wait_for(lambda: all(gateway.engine.twins.get(s) is not None
                                   and gateway.engine.twins[s].rev >= 3 for s in subjects),
                       timeout_s=30, what="a few revs per subject")
        requester = Mqtt5Requester(rig.broker, REPLIES)
        try:
            await asyncio.to_thread(mqtt5_publish, rig.broker, topics.DESIRED.path(
                ROOT, subjects[0]), b'{"ver": 1, "cfg": {"temp_period_s": 2}}', retain=True)
            await asyncio.to_thread(mqtt5_publish, rig.broker, topics.DESIRED.path(
                ROOT, subjects[1]), b'{"ver": 1, "cfg": {"temp_period_s": 0}}', retain=True)
            await asyncio.to_thread(requester.request, topics.CMD.path(ROOT), {"op": "resync"},
                                    b"c1")
            await requester.answer_to(b"c1")
            await wait_for(lambda: len(everything.on_topic(topics.REPORTED.path(
                ROOT, subjects[1]))) >= 1, what="the refusal on reported")
            await asyncio.sleep(1.0)
        finally:
            requester.close()
        await rig.stop_gateway()
        await asyncio.to_thread(everything.wait_for, lambda ms: any(
            m.topic == topics.STATE.path(ROOT) and b'"online":false' in m.payload for m in ms),
            10, "the offline state")

    seen: dict[str, int] = {}
    refused_desired = topics.DESIRED.path(ROOT, subjects[1])
    for m in everything.messages:
        if m.topic == REPLIES:
            name = topics.CMD_ANSWER_SCHEMA
        else:
            found = topics.classify(ROOT, m.topic)
            assert found is not None, f"a topic outside the table: {m.topic}"
            row = found[0]
            name = row.schema
            if row.direction == "out":   # what the gateway sends follows the table's flags
                assert m.retain in (row.retained, False), m.topic   # live copies: retain 0
        doc = json.loads(m.payload)
        if m.topic == refused_desired:   # the clinic's bad request: the schema refuses it too
            assert problems(name, doc) == ["cfg/temp_period_s: 0 is less than the minimum of 1"]
            continue
        assert problems(name, doc) == [], (m.topic, doc)
        seen[name] = seen.get(name, 0) + 1
    assert set(seen) >= {"state", "meta", "twin", "delta", "samples", "desired", "reported",
                         "cmd", "cmd-answer"}, seen
