"""The numpy encoder of `{subject}/samples` (samples_message.encode_arrays, the ingest cycle's
path) gives exactly the messages of the reference encoder, `encode`, for any batch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import samples_message as sm


@st.composite
def batches(draw):
    n = draw(st.integers(1, 80))
    seq0 = draw(st.integers(0, 2**32 - 100_000))
    steps = draw(st.lists(st.sampled_from([1, 1, 1, 1, 2, 7]), min_size=n, max_size=n))
    seqs = [seq0]
    for step in steps[1:]:
        seqs.append(seqs[-1] + step)
    t0 = draw(st.integers(1_600_000_000_000, 1_900_000_000_000))
    tick_ms = draw(st.sampled_from([1, 100, 1000, 5000]))
    unknown = draw(st.sampled_from(["none", "all", "some"]))
    times, t = [], t0
    for _ in range(n):
        t += tick_ms * draw(st.integers(0, 12))
        hidden = unknown == "all" or (unknown == "some" and draw(st.booleans()))
        times.append(-1 if hidden else t)
    n_channels = draw(st.integers(1, 4))
    channels = draw(st.lists(st.integers(0, n_channels - 1), min_size=n, max_size=n))
    regular = draw(st.booleans())   # long runs of one difference: the trimmed columns
    values = ([4300 + 3 * i for i in range(n)] if regular else
              draw(st.lists(st.integers(-2**23, 2**24), min_size=n, max_size=n)))
    return seqs, times, channels, values


def arrays(*columns):
    return [np.asarray(c, dtype=np.int64) for c in columns]


@settings(max_examples=400, deadline=None)
@given(batches(), st.booleans(), st.booleans())
def test_arrays_give_the_reference_messages(batch, historical, time_uncertain):
    seqs, times, channels, values = batch
    assert sm.encode_runs_arrays(7, *arrays(seqs, times, channels, values),
                                 historical=historical, time_uncertain=time_uncertain) == \
        sm.encode_runs(7, seqs, times, channels, values, historical=historical,
                       time_uncertain=time_uncertain)
    if min(times) >= 0 or max(times) < 0:
        assert sm.encode_arrays(7, *arrays(seqs, times, channels, values)) == \
            sm.encode(7, seqs, times, channels, values)


def test_regular_columns_collapse_as_the_reference_does():
    n = 12
    seqs, times = list(range(100, 100 + n)), [1_764_000_000_000 + 5000 * i for i in range(n)]
    channels, values = [0, 1] * (n // 2), [4300, 0] * (n // 2)
    doc = sm.encode_arrays(1, *arrays(seqs, times, channels, values))
    assert doc == sm.encode(1, seqs, times, channels, values)
    assert doc["dt"] == [[0, 2], [1, 2]] and doc["v"] == [[4300], [0]] and doc["tu"] == 5000


def test_out_of_order_seqs_are_refused_as_by_the_reference():
    with pytest.raises(ValueError, match="seq"):
        sm.encode_arrays(1, *arrays([5, 5], [-1, -1], [0, 0], [1, 2]))
    with pytest.raises(ValueError, match="no samples"):
        sm.encode_arrays(1, *arrays([], [], [], []))
