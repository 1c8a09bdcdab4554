"""Home Assistant MQTT discovery (opt-in: `dermtwin run --homeassistant`), sans-I/O.

Per subject, five sensors read from the retained `{subject}/twin` (always current, so Home
Assistant is right from the moment it subscribes): UV dose in % of MED, minutes to MED,
hydration, skin temperature and battery. Availability follows the gateway's `state`.
Config topics are `{prefix}/sensor/dermtwin_{gw}/{subject}_{property}/config`, retained;
the gateway subscribes to its own node's configs and clears (empty retained message) those
of subjects no longer registered here, so unpairing a patch removes its entities at the
gateway's next start. Names carry only the pseudonymous subject id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gateway.mqtt import topics

DEFAULT_PREFIX = "homeassistant"


@dataclass(frozen=True)
class Sensor:
    prop: str
    name: str
    device_class: str | None
    unit: str
    value_template: str
    icon: str | None = None


def _leaf(prop: str, expression: str = "{v}") -> str:
    # a twin leaf is [value, age ms, quality?] (docs/mqtt.md, gateway/twin_message.py)
    value = expression.format(v=f"value_json.state.{prop}[0]")
    return (f"{{{{ {value} if '{prop}' in value_json.state else none }}}}")


SENSORS = (
    Sensor("uv_med_fraction", "UV dose", None, "%",
           _leaf("uv_med_fraction", "({v} * 100) | round(1)"), "mdi:weather-sunny-alert"),
    Sensor("minutes_to_med", "Minutes to MED", "duration", "min", _leaf("minutes_to_med")),
    Sensor("hydration_au", "Skin hydration", None, "AU", _leaf("hydration_au"), "mdi:water"),
    Sensor("skin_temp_c", "Skin temperature", "temperature", "°C", _leaf("skin_temp_c")),
    Sensor("battery_pct", "Patch battery", "battery", "%", _leaf("battery_pct")),
)


def node_id(gateway_id: str) -> str:
    return "dermtwin_" + gateway_id.replace(".", "_").replace("-", "_")


def config_topic(prefix: str, gateway_id: str, subject: str, prop: str) -> str:
    return f"{prefix}/sensor/{node_id(gateway_id)}/{subject}_{prop}/config"


def config_filter(prefix: str, gateway_id: str) -> str:
    """This gateway's discovery configs (and nobody else's)."""
    return f"{prefix}/sensor/{node_id(gateway_id)}/+/config"


def subject_of(prefix: str, gateway_id: str, topic: str) -> str | None:
    """The subject a config topic of this gateway belongs to, else None."""
    head = f"{prefix}/sensor/{node_id(gateway_id)}/"
    if not topic.startswith(head) or not topic.endswith("/config"):
        return None
    object_id = topic[len(head):-len("/config")]
    for sensor in SENSORS:
        suffix = "_" + sensor.prop
        if object_id.endswith(suffix) and len(object_id) > len(suffix):
            return object_id[:-len(suffix)]
    return None


def config_messages(prefix: str, gateway_id: str, subject: str,
                    device_name: str) -> list[tuple[str, bytes]]:
    """(topic, payload) of every sensor config of one subject (publish retained)."""
    root = topics.root(gateway_id)
    device = {"identifiers": [f"{node_id(gateway_id)}_{subject}"],
              "name": f"dermtwin {subject}", "model": f"skin patch {device_name}",
              "manufacturer": "dermtwin", "via_device": node_id(gateway_id)}
    availability = {"topic": topics.STATE.path(root),
                    "value_template": "{{ 'online' if value_json.online else 'offline' }}"}
    out = []
    for sensor in SENSORS:
        config = {"name": sensor.name,
                  "unique_id": f"{node_id(gateway_id)}_{subject}_{sensor.prop}",
                  "state_topic": topics.TWIN.path(root, subject),
                  "value_template": sensor.value_template,
                  "unit_of_measurement": sensor.unit, "state_class": "measurement",
                  "availability": [availability], "device": device,
                  "origin": {"name": "dermtwin"}}
        if sensor.device_class is not None:
            config["device_class"] = sensor.device_class
        if sensor.icon is not None:
            config["icon"] = sensor.icon
        out.append((config_topic(prefix, gateway_id, subject, sensor.prop),
                    json.dumps(config, separators=(",", ":"), sort_keys=True).encode()))
    return out
