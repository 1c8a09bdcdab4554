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


def test_peek_ver_and_reported_payload():
    assert inbound.peek_ver(j({"ver": 4, "cfg": {"x": 1}})) == 4
    assert inbound.peek_ver(b"nope") is None and inbound.peek_ver(j({"ver": -2})) is None
    doc = inbound.reported(4, "applied", None, 123, {ConfigKey.UV_PERIOD_S: 3})
    assert doc == {"schema": 1, "ver": 4, "state": "applied", "detail": None, "ts": 123,
                   "cfg": {"uv_period_s": 3}}
    with pytest.raises(ValueError):
        inbound.reported(4, "done", None, 0, {})


def test_commands_parse():
    assert inbound.parse_command(j({"op": "identify", "subject": "s-1", "seconds": 9})) == \
        Command("identify", "s-1", 9)
    assert inbound.parse_command(j({"op": "identify", "subject": "s-1"})).seconds == 5
    assert inbound.parse_command(j({"op": "resync"})) == Command("resync", None)
    assert inbound.parse_command(j({"op": "resync", "subject": "s-2"})) == Command("resync", "s-2")


@pytest.mark.parametrize("payload, field", [
    (b"[", "payload"),
    (j({}), "op"),
    (j({"op": "reboot"}), "op"),
    (j({"op": "identify"}), "subject"),
    (j({"op": "identify", "subject": 5}), "subject"),
    (j({"op": "identify", "subject": "s", "seconds": 0}), "seconds"),
    (j({"op": "identify", "subject": "s", "seconds": 256}), "seconds"),
    (j({"op": "resync", "subject": ""}), "subject"),
])
def test_bad_commands_name_the_field(payload, field):
    with pytest.raises(InboundError) as err:
        inbound.parse_command(payload)
    assert err.value.field == field
    assert inbound.peek_op(payload) in (None, "identify", "resync")


def test_answer_payload():
    assert inbound.answer(False, None, "op: missing") == {"ok": False, "op": None,
                                                         "detail": "op: missing"}
