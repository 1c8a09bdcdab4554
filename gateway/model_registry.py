"""What the twin knows, in one table (sans-I/O): every twin property with its unit, deadband
and source, the sensor channel each raw property comes from, and each model with its
contract and the properties it feeds.

The service loads the models named here and publishes these units in `meta`; the twin
engine takes scales and deadbands from here; `docs/mqtt.md` lists the same properties.
A new model is one `RegisteredModel` here, its contract in `model_contracts.py`, and the
code that feeds it in `twin.py`; a new sensor is one `SensorChannel` here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gateway.model_contracts import CONTRACTS, ModelContract
from gateway.protocol import constants as ids

TMP117_C_PER_LSB = 0.0078125         # TMP117 datasheet §7.3.3, Table 7-1: 7.8125 m°C per LSB


@dataclass(frozen=True)
class TwinProperty:
    name: str
    unit: str                  # UCUM
    deadband: float            # smallest change worth a delta (0: every change)
    source: str                # the channel or model it comes from, or "twin"


@dataclass(frozen=True)
class SensorChannel:
    channel: int               # wire channel (docs/protocol.md §4)
    scale: float               # SI units per wire LSB
    prop: str                  # the twin property of the latest sample


@dataclass(frozen=True)
class RegisteredModel:
    contract: ModelContract
    properties: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.contract.name


def _properties(*rows: tuple[str, str, float, str]) -> Mapping[str, TwinProperty]:
    return MappingProxyType({name: TwinProperty(name, unit, deadband, source)
                             for name, unit, deadband, source in rows})


# Deadbands: the smallest change worth a delta, against the value last published (a slow drift
# is published once it adds up). The twin is state to act on (and the retained twin goes out
# with every delta); full resolution travels in {subject}/samples. So: the sensor's stated
# accuracy (TMP117 ±0.1 °C, datasheet §7.5; the anomaly score is delta / 0.6 °C, so 0.2 is
# 0.12 °C), UV index to one decimal, the dose in 5 % of a MED (0.1 SED; the alert is at 80 %),
# minutes to MED to 10 min, hydration in whole units, battery to half a percent (the low
# alert's hysteresis is 15/20 %); booleans and texts change on any change.
PROPERTIES: Mapping[str, TwinProperty] = _properties(
    ("skin_temp_c", "Cel", 0.1, "TMP117"),
    ("uv_index", "{UVI}", 0.1, "LTR390"),
    ("capacitance_pf", "pF", 0.05, "FDC1004"),
    ("battery_pct", "%", 0.5, "MAX17048"),
    ("temp_baseline_c", "Cel", 0.1, "temp_anomaly"),
    ("temp_delta_c", "K", 0.1, "temp_anomaly"),
    ("temp_anomaly_score", "1", 0.2, "temp_anomaly"),
    ("inflammation", "1", 0.0, "temp_anomaly"),
    ("exertion", "1", 0.0, "temp_anomaly"),
    ("contact", "{state}", 0.0, "temp_anomaly"),
    ("uv_dose_sed", "100.J/m2", 0.1, "uv_dose"),
    ("uv_med_fraction", "1", 0.05, "uv_dose"),
    ("minutes_to_med", "min", 10.0, "uv_dose"),
    ("minutes_to_med_forecast", "min", 10.0, "twin"),
    ("hydration_au", "{AU}", 1.0, "hydration"),
    ("hydration_state", "{state}", 0.0, "hydration"),
    ("hydration_trend_au_per_h", "{AU}/h", 1.0, "twin"),
)

SENSOR_CHANNELS: tuple[SensorChannel, ...] = (
    SensorChannel(ids.Channel.TEMPERATURE, TMP117_C_PER_LSB, "skin_temp_c"),
    SensorChannel(ids.Channel.UV, 0.01, "uv_index"),
    SensorChannel(ids.Channel.HYDRATION, 0.001, "capacitance_pf"),
    SensorChannel(ids.Channel.BATTERY, 1 / 256, "battery_pct"),
)

MODELS: Mapping[str, RegisteredModel] = MappingProxyType({
    "temp_anomaly": RegisteredModel(CONTRACTS["temp_anomaly"], (
        "temp_baseline_c", "temp_delta_c", "temp_anomaly_score", "inflammation", "exertion",
        "contact")),
    "uv_dose": RegisteredModel(CONTRACTS["uv_dose"], (
        "uv_dose_sed", "uv_med_fraction", "minutes_to_med")),
    "hydration": RegisteredModel(CONTRACTS["hydration"], ("hydration_au", "hydration_state")),
})

# channel -> (scale, property), the form the hot paths index by channel number
CHANNEL_SCALE: Mapping[int, tuple[float, str]] = MappingProxyType(
    {c.channel: (c.scale, c.prop) for c in SENSOR_CHANNELS})


def deadband(prop: str) -> float:
    entry = PROPERTIES.get(prop)
    return entry.deadband if entry is not None else 0.0


def ucum_units() -> dict[str, str]:
    return {name: p.unit for name, p in PROPERTIES.items()}


def _check() -> None:
    for model in MODELS.values():
        unknown = [p for p in model.properties if p not in PROPERTIES]
        if unknown:
            raise ValueError(f"model {model.name!r} feeds unregistered properties {unknown}")
    for channel in SENSOR_CHANNELS:
        if channel.prop not in PROPERTIES:
            raise ValueError(f"channel {channel.channel} feeds unregistered {channel.prop!r}")


_check()
