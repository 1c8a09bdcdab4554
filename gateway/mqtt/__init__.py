"""MQTT side of the gateway: broker settings, the delivery policy and the outbox publisher.

Exports load lazily, so the sans-I/O delivery policy (`gateway.mqtt.delivery`) can be
imported without paho.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.mqtt.config import MqttConfig, MqttConfigError
    from gateway.mqtt.publisher import MqttPublisher, PublisherStats

_EXPORTS = {
    "MqttConfig": "gateway.mqtt.config",
    "MqttConfigError": "gateway.mqtt.config",
    "MqttPublisher": "gateway.mqtt.publisher",
    "PublisherStats": "gateway.mqtt.publisher",
}

__all__ = ["MqttConfig", "MqttConfigError", "MqttPublisher", "PublisherStats"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gateway.mqtt' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
