"""An asyncio face over paho for dermtwin subscribers, in the manner of aiomqtt:

    async with Subscriber("mqtt://broker:1883", gateway_id="gw1") as sub:
        async for twin in sub.twins():           # per-subject twins, always whole
            print(twin.subject, twin.rev, twin.state["skin_temp_c"]["v"])

    async with Subscriber(url, gateway_id="gw1", group="sink") as sub:
        async for item in sub.samples():         # SampleRow once per (subject, boot, seq),
            ...                                  # or DataLoss

`twins()` follows docs/subscribers.md: retained twin, then deltas; a hole that no twin
closes within `resync_after_s` is repaired with `cmd resync` (MQTT 5 Response Topic and
Correlation Data). `samples()` decodes the columnar samples, drops duplicates and surfaces
`data_loss`. With `group`, samples and alerts come through the MQTT 5 shared subscription
`$share/{group}/…`: each message goes to one member of the group (scale-out sinks; make the
sink idempotent on (subject, boot, seq)). Twins never use the group: each follower needs
every delta, and shared subscriptions get no retained messages. Payloads are read by their
MQTT 5 Content Type: JSON when absent, `application/zlib` for compressed samples
(gateway/payload_encoding.py); twins and deltas come out decoded (`Twin.state`).

paho's network thread only hands messages to the event loop; everything else runs there.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import payload_encoding
from gateway.mqtt import topics
from gateway.mqtt.config import MqttConfig
from gateway.subscriber.samples import DataLoss, SampleDeduper, SampleRow
from gateway.subscriber.twins import Twin, TwinFollower

log = logging.getLogger(__name__)

DEFAULT_RESYNC_AFTER_S = 5.0
RESYNC_REPEAT_S = 30.0        # ask again for the same subject no sooner than this
CONNECT_TIMEOUT_S = 10.0
CHECK_HOLES_EVERY_S = 1.0
# Where `cmd` answers come back: the branch `dermtwin broker-config` lets the gateway write
# and the clinic read (docs/security.md), and that a bridge carries (docs/scale-out.md).
REPLY_ROOT = "dermtwin/reply"
_QUEUE_END = object()


class SubscriberError(RuntimeError):
    """The broker refused us or could not be reached in time; the message says which."""


class Subscriber:
    def __init__(self, broker_url: str, *, gateway_id: str, group: str | None = None,
                 client_id: str | None = None, username: str | None = None,
                 password: str | None = None, ca_file: str | None = None,
                 resync_after_s: float = DEFAULT_RESYNC_AFTER_S,
                 session_expiry_s: int = 0):
        if group is not None and (not group or any(ch in group for ch in "/+#")):
            raise ValueError(f"group {group!r}: one topic level without '/', '+' or '#'")
        self.config = MqttConfig.from_url(broker_url, username=username, password=password,
                                          gateway_id=gateway_id, ca_file=ca_file)
        self.root = self.config.topic_root
        self.group = group
        self.client_id = client_id or f"dermtwin-sub-{os.getpid()}-{time.monotonic_ns()}"
        self.resync_after_s = resync_after_s
        self.session_expiry_s = session_expiry_s
        self.reply_topic = f"{REPLY_ROOT}/{gateway_id}/{self.client_id}"
        self.follower = TwinFollower()
        self.deduper = SampleDeduper()
        self.resyncs_sent = 0
        self._filters: dict[str, None] = {}   # ordered set, resubscribed on reconnect
        self._queues: dict[str, asyncio.Queue] = {}
        self._answers: dict[bytes, asyncio.Future] = {}
        self._asked: dict[str, float] = {}
        self._correlations = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected: asyncio.Event | None = None
        self._client: paho.Client | None = None
        self._refusal: str | None = None

    # -- connection --------------------------------------------------------------------
    async def __aenter__(self) -> Subscriber:
        self._loop = asyncio.get_running_loop()
        self._connected = asyncio.Event()
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=paho.MQTTv5)
        if self.config.username is not None:
            client.username_pw_set(self.config.username, self.config.password)
        if self.config.tls:
            client.tls_set(ca_certs=self.config.ca_file)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 30)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.session_expiry_s
        self._client = client
        self._filters[self.reply_topic] = None
        client.connect_async(self.config.host, self.config.port, keepalive=30,
                             clean_start=self.session_expiry_s == 0, properties=properties)
        client.loop_start()
        try:
            await asyncio.wait_for(self._connected.wait(), CONNECT_TIMEOUT_S)
        except TimeoutError:
            await self.__aexit__(None, None, None)
            raise SubscriberError(f"cannot connect to {self.config.url}"
                                  + (f": {self._refusal}" if self._refusal else "")) from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
        for queue in self._queues.values():
            queue.put_nowait(_QUEUE_END)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refusal = str(reason_code)
            log.warning("subscriber: %s refused the connection: %s", self.config.url,
                        reason_code)
            return
        client.subscribe([(f, 1) for f in self._filters])
        self._call(self._connected.set)   # type: ignore[union-attr]

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.value != 0:
            log.warning("subscriber: disconnected from %s (%s); reconnecting",
                        self.config.url, reason_code)

    def _on_message(self, client, userdata, message) -> None:
        self._call(self._dispatch, message.topic, bytes(message.payload),
                   getattr(message, "properties", None))

    def _call(self, fn, *args) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def _subscribe(self, *filters: str) -> None:
        new = [f for f in filters if f not in self._filters]
        for f in new:
            self._filters[f] = None
        if new and self._client is not None:
            self._client.subscribe([(f, 1) for f in new])

    def _shared(self, topic_filter: str) -> str:
        return topic_filter if self.group is None else f"$share/{self.group}/{topic_filter}"

    # -- routing -----------------------------------------------------------------------
    def _dispatch(self, topic: str, payload: bytes, properties: Any) -> None:
        if topic == self.reply_topic:
            correlation = getattr(properties, "CorrelationData", None)
            future = self._answers.pop(bytes(correlation or b""), None)
            if future is not None and not future.done():
                future.set_result(json.loads(payload))
            return
        found = topics.classify(self.root, topic)
        if found is None or not payload:
            return
        row, subject = found
        try:
            doc = json.loads(payload_encoding.json_bytes(
                payload, getattr(properties, "ContentType", None)))
        except ValueError as e:
            log.warning("subscriber: %s: not JSON (%s); skipped", topic, e)
            return
        queue = self._queues.get(row.leaf)
        if queue is not None:
            queue.put_nowait((subject, doc))

    def _queue(self, *leaves: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        for leaf in leaves:
            self._queues[leaf] = queue
        return queue

    # -- twins -------------------------------------------------------------------------
    async def twins(self) -> AsyncIterator[Twin]:
        """Every subject's twin each time it moves; starts with the retained twins."""
        queue = self._queue(topics.TWIN.leaf, topics.DELTA.leaf)
        self._subscribe(topics.TWIN.filter(self.root), topics.DELTA.filter(self.root))
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), CHECK_HOLES_EVERY_S)
            except TimeoutError:
                self._repair_holes()
                continue
            if item is _QUEUE_END:
                return
            subject, doc = item
            now = time.monotonic()
            handler = self.follower.on_twin if "state" in doc else self.follower.on_delta
            try:
                twin = handler(subject, doc, now)
            except (KeyError, TypeError, ValueError) as e:
                log.warning("subscriber: %s twin/delta malformed (%s); skipped", subject, e)
                continue
            if twin is not None:
                yield twin
            self._repair_holes()

    def _repair_holes(self) -> None:
        now = time.monotonic()
        for subject in self.follower.overdue(now, self.resync_after_s):
            if now - self._asked.get(subject, -RESYNC_REPEAT_S) < RESYNC_REPEAT_S:
                continue
            self._asked[subject] = now
            log.info("subscriber: %s has a hole no twin closed in %.0f s; asking for resync",
                     subject, self.resync_after_s)
            self.resyncs_sent += 1
            self._request({"op": "resync", "subject": subject})

    def _request(self, doc: dict) -> asyncio.Future:
        assert self._loop is not None
        correlation = f"{self.client_id}-{next(self._correlations)}".encode()
        future = self._loop.create_future()
        self._answers[correlation] = future
        properties = Properties(PacketTypes.PUBLISH)
        properties.ResponseTopic = self.reply_topic
        properties.CorrelationData = correlation
        if self._client is not None:
            self._client.publish(topics.CMD.path(self.root), json.dumps(doc).encode(), qos=1,
                                 properties=properties)
        return future

    async def resync(self, subject: str | None = None, timeout_s: float = 10.0) -> dict:
        """Ask the gateway to republish twin snapshots now; returns its answer."""
        doc = {"op": "resync"} if subject is None else {"op": "resync", "subject": subject}
        self.resyncs_sent += 1
        return await asyncio.wait_for(self._request(doc), timeout_s)

    # -- samples -----------------------------------------------------------------------
    async def samples(self) -> AsyncIterator[SampleRow | DataLoss]:
        """Each raw sample once per (subject, boot, seq), and `DataLoss` events."""
        queue = self._queue(topics.SAMPLES.leaf, topics.ALERT.leaf, topics.META.leaf)
        # meta is retained: never through the group (shared subscriptions get no retained)
        self._subscribe(topics.META.filter(self.root),
                        self._shared(topics.SAMPLES.filter(self.root)),
                        self._shared(topics.ALERT.filter(self.root)))
        while True:
            item = await queue.get()
            if item is _QUEUE_END:
                return
            subject, doc = item
            try:
                if "units" in doc:
                    self.deduper.on_meta(subject, doc)
                elif "kind" in doc:
                    loss = self.deduper.on_alert(subject, doc)
                    if loss is not None:
                        yield loss
                else:
                    for row in self.deduper.on_samples(subject, doc):
                        yield row
            except (KeyError, TypeError, ValueError) as e:
                log.warning("subscriber: %s samples/alert malformed (%s); skipped", subject, e)
