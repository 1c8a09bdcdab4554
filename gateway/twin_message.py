"""The wire form of `{subject}/twin` and `{subject}/delta` (docs/mqtt.md, docs/schemas/twin and
delta), sans-I/O: the twin engine's documents in, compact payload documents out (`twin`,
`delta`), and back (`leaves`) for subscribers.

The engine keeps a leaf as `{"v": value, "t": sample UTC ms (-1: unknown), "q": quality}`.
On the wire a leaf is an array, because the retained twin goes out with every delta and
its bytes count with every sample (bench/bench_mqtt_bytes.py):

    [v, age]            quality good
    [v, age, "u"]       uncertain ("b": bad)

- `age`: ms between the leaf's sample time and the message's `ts` (`t = ts - age`), or
  null when the sample's time is unknown; small numbers instead of 13-digit times.
- `v` is rounded to one decimal finer than the property's deadband
  (gateway/model_registry.py: 0.1 °C → 0.01, 10 min → 1 min); full resolution travels in
  `{subject}/samples`. A whole number is written without `.0`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from gateway.model_registry import PROPERTIES

QUALITY_CODES = {"uncertain": "u", "bad": "b"}          # "good" is the default: no code
QUALITY_NAMES = {code: name for name, code in QUALITY_CODES.items()}
DEFAULT_DIGITS = 3


def _digits(deadband: float) -> int:
    """One decimal finer than the deadband: 0.1 -> 2, 0.05 -> 3, 1.0 -> 1, 10.0 -> 0."""
    if deadband <= 0:
        return DEFAULT_DIGITS
    return max(0, 1 - math.floor(math.log10(deadband) + 1e-9))


DIGITS: Mapping[str, int] = {name: _digits(p.deadband) for name, p in PROPERTIES.items()}


def wire_value(prop: str, value: object) -> object:
    """A value rounded to its property's wire resolution (bools, texts and null as they are)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    rounded = round(float(value), DIGITS.get(prop, DEFAULT_DIGITS))
    return int(rounded) if rounded.is_integer() else rounded


def wire_leaves(state: Mapping[str, Mapping], ts: int) -> dict[str, list]:
    """The engine's leaves as wire arrays, ages against the message's `ts`."""
    out = {}
    for prop, leaf in state.items():
        t = leaf["t"]
        wire: list = [wire_value(prop, leaf["v"]), None if t is None or t < 0 else ts - t]
        code = QUALITY_CODES.get(leaf.get("q", "good"))
        if code is not None:
            wire.append(code)
        out[prop] = wire
    return out


def leaves(wire: Mapping[str, list], ts: int) -> dict[str, dict]:
    """Wire arrays back to `{"v", "t", "q"}` leaves (`t`: UTC ms, or -1 when unknown)."""
    out = {}
    for prop, leaf in wire.items():
        age = leaf[1]
        out[prop] = {"v": leaf[0], "t": -1 if age is None else ts - age,
                     "q": QUALITY_NAMES[leaf[2]] if len(leaf) > 2 else "good"}
    return out


def twin(doc: Mapping) -> dict:
    """The engine's snapshot `{"schema", "sess", "rev", "ts", "state"}` as its payload."""
    return {**doc, "state": wire_leaves(doc["state"], doc["ts"])}


def delta(doc: Mapping) -> dict:
    """The engine's delta `{"schema", "sess", "rev", "ts", "set", "unset"}` as its payload
    (`unset` only when it names something)."""
    out = {key: value for key, value in doc.items() if key != "unset"}
    out["set"] = wire_leaves(doc["set"], doc["ts"])
    if doc.get("unset"):
        out["unset"] = list(doc["unset"])
    return out


def as_received(state: Mapping[str, Mapping]) -> dict[str, dict]:
    """The engine's leaves as a subscriber decodes them: values at wire resolution."""
    return leaves(wire_leaves(state, 0), 0)
