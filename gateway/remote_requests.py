"""The gateway's inbound MQTT (docs/mqtt.md): `{subject}/desired`, answered on the retained
`{subject}/reported`, and `cmd` requests, answered on their MQTT 5 Response Topic.

Payloads are parsed and checked by gateway/mqtt/inbound.py (sans-I/O); this module acts on
them with the gateway's store, outbox, twins and patch links, and answers through two
callables (wake the outbox drain, publish an answer directly). It is given exactly those
parts, not the whole gateway. `on_mqtt_message` is the one entry from paho's network thread:
it hands the message to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import homeassistant
from gateway import store as store_mod
from gateway.clock import now_ms
from gateway.ingest import encode
from gateway.mqtt import inbound, topics
from gateway.mqtt.config import MqttConfig
from gateway.mqtt.inbound import InboundError
from gateway.outbox import Outbox
from gateway.session import ConfigApplied, ConfigFailed
from gateway.twin import TwinEngine, TwinUpdate
from gateway.values import RegisteredDevice

if TYPE_CHECKING:
    from gateway.patch_link import PatchLink

log = logging.getLogger(__name__)


class LinkControl(Protocol):
    """What a request may ask of a patch's link."""

    def desired_changed(self) -> None: ...

    def identify(self, seconds: int) -> bool: ...


class RemoteRequests:
    def __init__(self, mqtt: MqttConfig, store: store_mod.Store, outbox: Outbox,
                 engine: TwinEngine, devices: Iterable[RegisteredDevice], *,
                 link_of: Callable[[str], LinkControl],
                 publish_updates: Callable[[list[TwinUpdate]], None],
                 kick: Callable[[], None],
                 answer: Callable[[str, bytes, Any], bool],
                 homeassistant_prefix: str | None = None):
        """`link_of(device_id)`: the patch's link; `publish_updates`: twin updates into the
        outbox (inside the caller's transaction); `kick`: wake the outbox drain;
        `answer(topic, payload, properties)`: publish now, QoS 1, not through the outbox
        (False when not connected)."""
        self.mqtt = mqtt
        self.store = store
        self.outbox = outbox
        self.engine = engine
        self.link_of = link_of
        self.publish_updates = publish_updates
        self.kick = kick
        self.answer = answer
        self.homeassistant_prefix = homeassistant_prefix   # discovery configs to keep tidy
        self.loop: asyncio.AbstractEventLoop | None = None   # set while the gateway runs
        self._by_subject = {d.subject: d.device_id for d in devices}
        self._last_refused: dict[str, bytes] = {}   # subject -> desired payload refused last
        # subject -> the last `desired` message seen holds a configuration (not the empty
        # retained message that clears it): `reset_config` waits for the clear.
        self._desired_retained: dict[str, bool] = {}

    def on_mqtt_message(self, topic: str, payload: bytes, properties: Any) -> None:
        """paho's network thread: hand the message to the event loop, nothing more."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._handle_mqtt_message, topic, payload, properties)

    def _handle_mqtt_message(self, topic: str, payload: bytes, properties: Any) -> None:
        try:
            kind = inbound.classify(self.mqtt.topic_root, topic)
            if kind is not None and kind[0] == "desired" and kind[1] is not None:
                self._handle_desired(kind[1], payload)
            elif kind is not None and kind[0] == "cmd":
                self._handle_command(payload, properties)
            elif kind is None and self.homeassistant_prefix:
                self._handle_discovery_config(topic, payload)
        except Exception:   # a bug here must not take the gateway down
            log.exception("inbound %s: handler failed", topic)

    def _report(self, subject: str, doc: dict) -> None:
        """Inside the caller's transaction."""
        row = topics.REPORTED
        self.outbox.put(row.path(self.mqtt.topic_root, subject), encode(doc), qos=row.qos,
                        retain=row.retained, expiry_s=row.expiry_s)

    def _handle_desired(self, subject: str, payload: bytes) -> None:
        self._desired_retained[subject] = bool(payload)
        if not payload:
            log.info("desired for %s cleared (empty retained message): the patch keeps its "
                     "configuration", subject)
            return
        device_id = self._by_subject.get(subject)
        current = self.store.desired(device_id) if device_id is not None else None
        try:
            if device_id is None:
                raise InboundError("subject", f"{subject!r} is not registered at this gateway")
            desired = inbound.parse_desired(payload)
            if current is not None and desired.ver <= current.ver:
                if desired.ver == current.ver and desired.cfg == current.cfg:
                    return   # the retained message again (every (re)connect): already handled
                raise InboundError("ver", f"{desired.ver} is not newer than the accepted "
                                   f"ver {current.ver}")
        except InboundError as e:
            if self._last_refused.get(subject) == payload:
                return       # the same retained message again: answered already
            self._last_refused[subject] = payload
            log.warning("desired for %s refused: %s", subject, e)
            in_force = current.applied_cfg if current is not None else {}
            try:
                with self.store.transaction():
                    self._report(subject, inbound.reported(
                        inbound.peek_ver(payload), "refused", str(e), now_ms(), in_force))
            except store_mod.StoreError as err:
                log.error("desired for %s: cannot store the answer: %s", subject, err)
                return
            self.kick()
            return
        self._last_refused.pop(subject, None)
        try:
            with self.store.transaction():
                self.store.save_desired(device_id, desired.ver, desired.cfg, now_ms())
                self._report(subject, inbound.reported(desired.ver, "pending", None, now_ms(),
                                                       desired.cfg))
        except store_mod.StoreError as err:
            log.error("desired for %s ver %d not accepted: %s", subject, desired.ver, err)
            return
        log.info("desired for %s: ver %d accepted %s", subject, desired.ver,
                 desired.cfg_by_name())
        self.kick()
        self.link_of(device_id).desired_changed()

    def _handle_discovery_config(self, topic: str, payload: bytes) -> None:
        """A retained Home Assistant config of ours for a subject no longer registered here
        (unpaired): clear it, so its entities go away."""
        prefix = self.homeassistant_prefix
        assert prefix is not None
        subject = homeassistant.subject_of(prefix, self.mqtt.gateway_id, topic)
        if subject is None or not payload or subject in self._by_subject:
            return
        try:
            with self.store.transaction():
                self.outbox.put(topic, b"", retain=True)
        except store_mod.StoreError as err:
            log.error("home assistant: cannot clear %s: %s", topic, err)
            return
        log.info("home assistant: %s is not registered here any more; cleared %s",
                 subject, topic)
        self.kick()

    # -- cmd: requests with MQTT 5 Response Topic + Correlation Data --------------------
    def _handle_command(self, payload: bytes, properties: Any) -> None:
        response_topic = getattr(properties, "ResponseTopic", None)
        correlation = getattr(properties, "CorrelationData", None)
        op: str | None   # None: a malformed request without a valid op
        try:
            command = inbound.parse_command(payload)
            op = command.op
            ok, detail = self._run_command(command)
        except InboundError as e:
            op, ok, detail = inbound.peek_op(payload), False, str(e)
        (log.info if ok else log.warning)("cmd %s: %s", op, detail)
        if not response_topic:
            return   # executed, not answered
        problem = inbound.response_topic_problem(self.mqtt.topic_root, response_topic)
        if problem is not None:
            log.warning("cmd %s: not answered: response topic %r %s", op, response_topic, problem)
            return
        answer_properties = Properties(PacketTypes.PUBLISH)
        if correlation is not None:
            answer_properties.CorrelationData = correlation
        sent = self.answer(response_topic, encode(inbound.answer(ok, op, detail)),
                           answer_properties)
        if not sent:
            log.warning("cmd %s: answer dropped, not connected to the broker", op)

    def _run_command(self, command: inbound.Command) -> tuple[bool, str]:
        if command.subject is not None and command.subject not in self._by_subject:
            raise InboundError("subject",
                               f"{command.subject!r} is not registered at this gateway")
        if command.op == "identify":
            if command.subject is None:   # parse_command refuses identify without a subject
                raise InboundError("subject", "missing (identify needs a subject)")
            link = self.link_of(self._by_subject[command.subject])
            if not link.identify(command.seconds):
                return False, "not_connected"
            return True, f"identify for {command.seconds} s sent to the patch"
        if command.op == "reset_config":
            assert command.subject is not None   # parse_command requires it
            return self._reset_config(command.subject)
        # resync: republish retained twin snapshots now, through the outbox
        subjects = [command.subject] if command.subject is not None else sorted(self._by_subject)
        subjects = [sub for sub in subjects
                    if sub in self.engine.twins and self.engine.twins[sub].state]
        if not subjects:
            return False, "no twin state yet" + (f" for {command.subject}"
                                                 if command.subject else "")
        try:
            with self.store.transaction():
                self.publish_updates([self.engine.snapshot(sub, now_ms()) for sub in subjects])
        except store_mod.StoreError as e:
            return False, f"store: {e}"
        self.kick()
        return True, f"{len(subjects)} twin snapshot(s) republished"

    def _reset_config(self, subject: str) -> tuple[bool, str]:
        """Forget the subject's accepted desired version (docs/mqtt.md, reset_config): the
        patch keeps its configuration, the next `desired` may start again at any `ver`."""
        topic = self.mqtt.topic(subject, "desired")
        if self._desired_retained.get(subject):
            return False, (f"{topic} still holds a retained configuration, which would come "
                           "back at the next reconnect: clear it first (an empty retained "
                           "message), then reset")
        device_id = self._by_subject[subject]
        try:
            with self.store.transaction():
                forgotten = self.store.forget_desired(device_id)
                # The retained answer goes too: it speaks of the forgotten version.
                self.outbox.put(self.mqtt.topic(subject, "reported"), b"", retain=True)
        except store_mod.StoreError as e:
            return False, f"store: {e}"
        self._last_refused.pop(subject, None)
        self.kick()
        was = f"ver {forgotten.ver}" if forgotten is not None else "no version"
        return True, (f"configuration history of {subject} forgotten (was {was}); the patch "
                      "keeps its configuration")

    def on_config(self, link: PatchLink, result: ConfigApplied | ConfigFailed) -> None:
        """The patch applied (or refused) a desired version: answer on `reported`."""
        device_id, subject = link.device.device_id, link.device.subject
        current = self.store.desired(device_id)
        try:
            with self.store.transaction():
                if isinstance(result, ConfigApplied):
                    self.store.mark_config_applied(device_id, result.ver, result.cfg)
                    doc = inbound.reported(result.ver, "applied", None, now_ms(), result.cfg)
                else:
                    doc = inbound.reported(result.ver, "refused", result.detail, now_ms(),
                                           current.applied_cfg if current else {})
                self._report(subject, doc)
        except store_mod.StoreError as err:
            log.error("%s: config ver %d result not stored: %s", device_id, result.ver, err)
            return
        if isinstance(result, ConfigApplied):
            log.info("%s: desired config ver %d applied", device_id, result.ver)
        self.kick()
