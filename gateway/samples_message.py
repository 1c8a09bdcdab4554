"""The `{subject}/samples` payload (docs/mqtt.md): committed samples, raw data for research
pipelines, in SI units, grouped by property. Sans-I/O: a batch in, a dict out."""

from __future__ import annotations

import numpy as np

from gateway.model_registry import CHANNEL_SCALE
from gateway.values import SampleBatch

SCHEMA_VERSION = 1
# decimals worth keeping per channel: the integer wire unit's resolution in SI
DECIMALS = {0: 7, 1: 2, 2: 3, 3: 8}   # 1/128 °C and 1/256 % are exact binary fractions


def samples_payload(batch: SampleBatch, fresh: np.ndarray) -> dict | None:
    """The payload for the samples of batch selected by the boolean mask fresh (those not
    published before), or None if there are none."""
    if not fresh.any():
        return None
    seq, utc = batch.seq[fresh], batch.utc_ms[fresh]
    channel, value = batch.channel[fresh], batch.value[fresh]
    by_property = {}
    for ch, (scale, prop) in CHANNEL_SCALE.items():
        mask = channel == int(ch)
        if not mask.any():
            continue
        t = utc[mask]
        by_property[prop] = {
            "seq": seq[mask].tolist(),
            "t": [None if u < 0 else u for u in t.tolist()],
            "v": np.round(value[mask] * scale, DECIMALS[int(ch)]).tolist(),
        }
    payload = {"schema": SCHEMA_VERSION, "boot": batch.boot_id,
               "historical": batch.historical, "samples": by_property}
    if batch.time_uncertain:   # times from before a gateway wall-clock step (docs/mqtt.md)
        payload["time_uncertain"] = True
    return payload
