"""The topic table (gateway/mqtt/topics.py) is the one source of topic names, flags and
schemas: docs/mqtt.md's table, the gateway's subscriptions and the inbound handler agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.mqtt import inbound, topics
from gateway.mqtt.config import MqttConfig

DOCS = Path(__file__).resolve().parents[1] / "docs"
ROOT = "dermtwin/v1/gw"


def test_docs_table_is_the_topic_table():
    text = (DOCS / "mqtt.md").read_text()
    found = re.search(r"<!-- topic table:[^\n]*-->\n(.*?)\n<!-- end of topic table -->", text,
                      re.S)
    assert found, "docs/mqtt.md lost its generated topic table markers"
    assert found.group(1) == topics.markdown_table(), (
        "docs/mqtt.md's topic table differs from gateway/mqtt/topics.py; regenerate it with "
        "`python -m gateway.mqtt.topics`")


def test_every_row_names_a_schema_file():
    for schema in topics.SCHEMAS:
        assert (DOCS / "schemas" / f"{schema}.schema.json").is_file(), schema


def test_paths_filters_and_match_round_trip():
    for row in topics.TOPICS:
        subject = "s-1" if row.per_subject else None
        path = row.path(ROOT, subject)
        assert row.match(ROOT, path) == (subject or "")
        assert topics.classify(ROOT, path) == (row, subject)
        assert "+" in row.filter(ROOT) if row.per_subject else row.filter(ROOT) == path
    assert topics.TWIN.path(ROOT, "s-1") == "dermtwin/v1/gw/s-1/twin"
    assert topics.classify(ROOT, "dermtwin/v1/gw/s-1/unknown") is None
    assert topics.classify("dermtwin/v1/other", topics.TWIN.path(ROOT, "s-1")) is None
    with pytest.raises(ValueError, match="subject"):
        topics.TWIN.path(ROOT, "a/b")
    with pytest.raises(ValueError, match="takes no subject"):
        topics.STATE.path(ROOT, "s-1")


def test_config_and_inbound_derive_from_the_table():
    config = MqttConfig.from_url("mqtt://h", gateway_id="gw")
    assert config.topic_root == ROOT == topics.root("gw")
    assert config.state_topic == topics.STATE.path(ROOT)
    for row in topics.INBOUND:
        concrete = row.path(ROOT, "s-1" if row.per_subject else None)
        assert inbound.classify(ROOT, concrete) == (row.leaf, "s-1" if row.per_subject else None)
    outbound = [r for r in topics.TOPICS if r.direction == "out"]
    for row in outbound:
        assert inbound.classify(ROOT, row.path(ROOT, "s-1" if row.per_subject else None)) is None


def test_retained_rows_that_can_go_stale_expire():
    # A retained message of a vanished device must not linger forever (design.md §5);
    # state is the exception: it is the Will, replaced on every connect.
    for row in topics.TOPICS:
        if row.retained and row.direction == "out" and row is not topics.STATE:
            assert row.expiry_s is not None, row.name
