"""An in-process rig for gateway tests: a private mosquitto, a Bumble virtual radio,
virtual patches running the firmware source, and a Gateway on its own adapter."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from gateway.ble.radio import BleRadio
from gateway.inference import default_models_dir
from gateway.mqtt.config import MqttConfig
from gateway.service import Gateway, GatewayConfig
from simulation.broker import LocalBroker
from simulation.demo import demo_identity, pair_virtual_patches
from simulation.virtual_patch import VirtualPatch
from simulation.virtual_radio import VirtualRadio

FAST_PATCH_CONFIG = {1: 1, 6: 1}   # skin temperature every 1 s, flush frames every 1 s


async def wait_for(predicate, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


class GatewayRig:
    def __init__(self, tmp_path: Path, patches: int = 1, *, max_connections: int = 5,
                 patch_config: dict | None = None, registry_keys: dict[int, bytes] | None = None,
                 seed: int = 1, log_capacity: int = 20_000, time_scale: float = 1.0,
                 broker: LocalBroker | None = None, mqtt_url: str | None = None,
                 mqtt_options: dict | None = None):
        """`broker`: a broker of the test's own (default: an anonymous private one); the rig
        starts and stops it unless it is running already; `mqtt_url` and `mqtt_options` (credentials, TLS files)
        are how the gateway reaches it (default: its plain URL, anonymous)."""
        self.tmp_path = tmp_path
        self.n_patches = patches
        self.max_connections = max_connections
        self.patch_config = patch_config or FAST_PATCH_CONFIG
        self.registry_keys = registry_keys or {}
        self.seed = seed
        self.log_capacity = log_capacity
        self._given_broker = broker
        self._mqtt_url = mqtt_url
        self._mqtt_options = mqtt_options or {}
        self.time_scale = time_scale   # >1: the wearer's physiology runs faster (as in the demo)
        self.db_path = tmp_path / "gateway.sqlite3"
        self.patches: list[VirtualPatch] = []
        self.gateway: Gateway | None = None
        self._stop = asyncio.Event()
        self._run: asyncio.Task | None = None

    async def __aenter__(self) -> GatewayRig:
        self.broker = self._given_broker or LocalBroker(data_dir=self.tmp_path / "mosquitto")
        self._started_broker = not self.broker.running
        if self._started_broker:
            await self.broker.start()
        self.radio = VirtualRadio(seed=self.seed)
        secret = os.urandom(32)
        self.identities = [demo_identity(i, secret) for i in range(self.n_patches)]
        pair_virtual_patches(self.db_path, self.identities, self.registry_keys)
        for i, (device_id, key, _) in enumerate(self.identities):
            patch = VirtualPatch(self.radio, device_id, key, self.tmp_path / f"patch-{i}",
                                 seed=i + 1, config_overrides=self.patch_config,
                                 log_capacity=self.log_capacity, time_scale=self.time_scale)
            await patch.start()
            self.patches.append(patch)
        return self

    async def start_gateway(self, **config) -> Gateway:
        """Start the gateway; `config` adds GatewayConfig fields (e.g. homeassistant_prefix)."""
        mqtt = MqttConfig.from_url(self._mqtt_url or self.broker.url, gateway_id="rig",
                                   **self._mqtt_options)
        self.gateway = Gateway(
            GatewayConfig(self.db_path, mqtt, default_models_dir(),
                          max_connections=self.max_connections, **config),
            BleRadio(await self.radio.new_adapter()))
        self._stop = asyncio.Event()
        self._run = asyncio.create_task(self.gateway.run(self._stop))
        return self.gateway

    async def stop_gateway(self) -> None:
        if self._run is not None:
            self._stop.set()
            await self._run
            self._run = None
            self.gateway.close()

    async def __aexit__(self, *exc) -> None:
        await self.stop_gateway()
        for patch in self.patches:
            await patch.stop()
        await self.radio.close()
        if self._started_broker:
            await self.broker.stop()

    def link(self, index: int):
        return self.gateway.slots[self.identities[index][0]].link

    def connected(self, index: int) -> bool:
        return bool(self.patches[index].bumble_device.connections)


def mqtt5_publish(broker: LocalBroker, topic: str, payload: bytes, *, retain: bool = False,
                  response_topic: str | None = None, correlation: bytes | None = None) -> None:
    """Publish one QoS 1 message as an MQTT 5 client would (the clinic's side), waiting for
    its PUBACK; optionally with a Response Topic and Correlation Data (a `cmd` request)."""
    import paho.mqtt.client as paho
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"rig-clinic-{time.time_ns()}",
                         protocol=paho.MQTTv5)
    properties = None
    if response_topic is not None or correlation is not None:
        properties = Properties(PacketTypes.PUBLISH)
        if response_topic is not None:
            properties.ResponseTopic = response_topic
        if correlation is not None:
            properties.CorrelationData = correlation
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        info.wait_for_publish(5)
        assert info.is_published(), f"publish to {topic} not acknowledged"
    finally:
        client.disconnect()
        client.loop_stop()


class Mqtt5Requester:
    """The clinic's side of `cmd`: an MQTT 5 client that publishes requests with a Response
    Topic and Correlation Data and records the answers (payload, correlation, retain, qos)."""

    def __init__(self, broker: LocalBroker, reply_topic: str):
        import threading

        import paho.mqtt.client as paho

        self.reply_topic = reply_topic
        self.answers: list[tuple[dict, bytes | None, bool, int]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                   client_id=f"rig-requester-{time.time_ns()}",
                                   protocol=paho.MQTTv5)
        self._client.on_connect = lambda c, *_: c.subscribe(reply_topic, qos=1)
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        assert subscribed.wait(5), "requester did not subscribe"

    def _on_message(self, client, userdata, message) -> None:
        import json
        correlation = getattr(message.properties, "CorrelationData", None)
        with self._lock:
            self.answers.append((json.loads(message.payload), correlation,
                                 bool(message.retain), message.qos))

    def request(self, topic: str, doc: dict | bytes, correlation: bytes | None = None,
                answer: bool = True) -> None:
        import json

        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        properties = Properties(PacketTypes.PUBLISH)
        if answer:
            properties.ResponseTopic = self.reply_topic
        if correlation is not None:
            properties.CorrelationData = correlation
        payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        info = self._client.publish(topic, payload, qos=1, properties=properties)
        info.wait_for_publish(5)

    async def answer_to(self, correlation: bytes, timeout_s: float = 10.0) -> tuple:
        def found():
            with self._lock:
                return [a for a in self.answers if a[1] == correlation]
        await wait_for(lambda: found(), timeout_s, f"an answer with correlation {correlation!r}")
        [answer] = found()
        return answer

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
