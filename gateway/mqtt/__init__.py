"""MQTT side of the gateway: broker settings, a private local broker, the outbox publisher."""

from gateway.mqtt.broker import BrokerError, LocalBroker, find_mosquitto
from gateway.mqtt.config import MqttConfig, MqttConfigError
from gateway.mqtt.publisher import MqttPublisher, PublisherStats

__all__ = [
    "BrokerError",
    "LocalBroker",
    "MqttConfig",
    "MqttConfigError",
    "MqttPublisher",
    "PublisherStats",
    "find_mosquitto",
]
