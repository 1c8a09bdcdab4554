"""One registry of twin properties and models: the docs, `meta` and what the twin engine
actually publishes all agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from gateway import model_registry as registry
from gateway.inference import default_models_dir, load_models
from gateway.twin import TwinEngine
from gateway.values import SampleBatch

REPO = Path(__file__).resolve().parents[1]


def documented_properties() -> dict[str, str]:
    text = (REPO / "docs" / "mqtt.md").read_text()
    section = text.split("## Properties (schema 3)")[1].split("\n## ")[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `([a-z_]+)` \| `([^`]+)`", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_docs_list_every_registered_property_with_its_unit():
    assert documented_properties() == registry.ucum_units()


def test_every_model_has_a_contract_and_feeds_registered_properties():
    loaded = load_models(default_models_dir(), names=registry.MODELS)
    assert set(loaded) == set(registry.MODELS)
    for name, model in registry.MODELS.items():
        assert loaded[name].contract is model.contract
        assert all(p in registry.PROPERTIES for p in model.properties)


def test_the_twin_publishes_only_registered_properties():
    models = load_models(default_models_dir(), names=registry.MODELS)
    engine = TwinEngine(1, {"d": "s"}, lambda n, i: models[n].run(i), location=(45.0, 0.0))
    t0 = 1_782_036_000_000          # 2026-06-21 10:00 UTC
    seen: set[str] = set()
    for minute in range(70):
        n = 4
        t = t0 + minute * 60_000
        engine.ingest(SampleBatch(
            device_id="d", boot_id=1, seq=np.arange(minute * n, minute * n + n, dtype=np.int64),
            tick=np.zeros(n, dtype=np.int64), utc_ms=np.full(n, t, dtype=np.int64),
            channel=np.array([0, 1, 2, 3], dtype=np.uint8),
            value=np.array([33 * 128, 600, 12_500 - minute * 10, 200 * 256 // 2],
                           dtype=np.int32)))
        for update in engine.step(t):
            if update.delta:
                seen |= set(update.delta["set"])
    unregistered = seen - set(registry.PROPERTIES)
    assert not unregistered
    # every property a model or channel feeds shows up in a day of data with a location
    assert seen == set(registry.PROPERTIES)


@pytest.mark.parametrize("prop", sorted(registry.PROPERTIES))
def test_deadbands_are_not_negative(prop):
    assert registry.deadband(prop) >= 0.0
