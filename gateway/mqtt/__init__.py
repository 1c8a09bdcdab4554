"""MQTT side of the gateway: broker settings, the topic table and the outbox publisher.

The publisher (paho) is loaded on first use, so that importing the dependency-free parts
(`gateway.mqtt.topics`, `gateway.mqtt.inbound`) loads no MQTT client.
"""

from __future__ import annotations

from typing import Any

from gateway.mqtt.config import MqttConfig, MqttConfigError

__all__ = [
    "MqttConfig",
    "MqttConfigError",
    "MqttPublisher",
    "PublisherStats",
]


def __getattr__(name: str) -> Any:
    if name in ("MqttPublisher", "PublisherStats"):
        from gateway.mqtt import publisher
        return getattr(publisher, name)
    raise AttributeError(f"module 'gateway.mqtt' has no attribute {name!r}")
