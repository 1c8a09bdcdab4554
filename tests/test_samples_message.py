"""The columnar `{subject}/samples` encoding (gateway/samples_message.py): every contiguous
slice of any batch decodes back to exactly its samples."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import samples_message as sm


@st.composite
def batches(draw):
    n = draw(st.integers(1, 60))
    seq0 = draw(st.integers(0, 2**32 - 100_000))
    steps = draw(st.lists(st.sampled_from([1, 1, 1, 1, 2, 7]), min_size=n, max_size=n))
    seqs = [seq0]
    for step in steps[1:]:
        seqs.append(seqs[-1] + step)
    known = draw(st.booleans())
    t0 = draw(st.integers(1_600_000_000_000, 1_900_000_000_000))
    tick_ms = draw(st.sampled_from([1, 100, 1000, 5000]))
    times, t = [], t0
    for _ in range(n):
        t += tick_ms * draw(st.integers(0, 12))
        times.append(t if known else -1)
    channels = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    values = draw(st.lists(st.integers(-2**23, 2**24), min_size=n, max_size=n))
    return seqs, times, channels, values


@settings(max_examples=300, deadline=None)
@given(batches(), st.data())
def test_any_contiguous_slice_round_trips(batch, data):
    seqs, times, channels, values = batch
    a = data.draw(st.integers(0, len(seqs) - 1))
    b = data.draw(st.integers(a + 1, len(seqs)))
    doc = json.loads(json.dumps(sm.encode(5, seqs[a:b], times[a:b], channels[a:b], values[a:b],
                                          historical=True)))
    decoded = sm.decode(doc)
    assert [(s.seq, s.prop, s.utc_ms, s.raw) for s in decoded] == [
        (q, c, None if u < 0 else u, v)
        for q, u, c, v in zip(seqs[a:b], times[a:b], channels[a:b], values[a:b], strict=True)]
    assert doc["hist"] is True and doc["boot"] == 5


def test_regular_columns_collapse_to_a_first_value_and_one_difference():
    n = 12
    doc = sm.encode(1, range(100, 100 + n), [1_764_000_000_000 + 5000 * i for i in range(n)],
                    [0, 1] * (n // 2), [4300, 0] * (n // 2))
    assert doc["c"] == "01" * 6 and doc["tu"] == 5000 and "skip" not in doc
    assert doc["dt"] == [[0, 2], [1, 2]] and doc["v"] == [[4300], [0]]


def test_malformed_columns_are_refused_naming_the_field():
    doc = sm.encode(1, [1, 2], [-1, -1], [0, 0], [5, 6])
    doc["v"] = [[5, 1, 1]]
    try:
        sm.decode(doc)
    except ValueError as e:
        assert "v[0]" in str(e)
    else:
        raise AssertionError("decode accepted 3 values for 2 samples")


def test_the_worked_example_in_docs_mqtt_md_decodes_as_described():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "mqtt.md").read_text()
    doc = json.loads(re.search(r"```json\n(\{\"schema\": 3, \"boot\".*?)\n```", text, re.S)[1])
    rows = sm.decode(doc)
    assert [s.seq for s in rows] == list(range(1200, 1212))
    temps = [(s.utc_ms - doc["t"], round(sm.to_si(s), 3)) for s in rows if s.prop == 0]
    assert temps == [(0, 33.516), (10_000, 33.539), (20_000, 33.531), (30_000, 33.523)]
    uv = [(s.utc_ms - doc["t"], sm.to_si(s)) for s in rows if s.prop == 1]
    assert uv == [(5000 * i, 0.12) for i in range(7)]
    assert [(s.utc_ms - doc["t"], sm.to_si(s)) for s in rows if s.prop == 2] == [(20_000, 250.017)]
