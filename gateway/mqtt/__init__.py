"""MQTT side of the gateway: broker settings and the outbox publisher."""

from gateway.mqtt.config import MqttConfig, MqttConfigError
from gateway.mqtt.publisher import MqttPublisher, PublisherStats

__all__ = [
    "MqttConfig",
    "MqttConfigError",
    "MqttPublisher",
    "PublisherStats",
]
