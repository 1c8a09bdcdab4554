"""The gateway process: registry → BLE sessions → ingest (store, twin, outbox) → MQTT.

Data flows one way. This module only wires the parts together and owns the connection
manager: one shared scanner, a connection slot per patch (bounded per adapter), jittered
backoff between attempts, and nothing that exits on a BLE error.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from gateway import model_registry
from gateway import store as store_mod
from gateway.ble.radio import BleRadio
from gateway.clock import now_ms
from gateway.health import run_health_writer
from gateway.inference import load_models
from gateway.ingest import Ingest, encode
from gateway.model_contracts import MED_SED_BY_FITZPATRICK
from gateway.mqtt.config import MqttConfig
from gateway.mqtt.publisher import MqttPublisher
from gateway.outbox import Outbox
from gateway.patch_link import PatchLink
from gateway.remote_requests import RemoteRequests
from gateway.report.archive import archive_and_prune
from gateway.twin import TwinEngine

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 5
# The retry policy after a connection ends is gateway/retry_policy.py (by close kind);
# a connection task that crashed (a bug, not a BLE condition) waits as long as after a
# store failure.
RETRY_STORE_FAILED_S = 10.0
# Slots are shared: a patch streaming live (no backlog) for this long gives its slot up
# when another registered patch is waiting for one. It loses nothing: it keeps its log.
SLOT_SHARE_AFTER_S = 30.0
# Watchdog: nothing heard from a registered, unconnected patch for this long → restart the
# scan; still nothing after as long again → reset the adapter. It never exits.
WATCHDOG_SILENCE_S = 60.0
PRUNE_EVERY_S = 3600.0
MANAGER_POLL_S = 0.5
META_EXPIRY_S = 30 * 24 * 3600


def advertised_name(device_id: str) -> str:
    return "DT-" + device_id[-4:].upper()


@dataclass
class GatewayConfig:
    db_path: Path
    mqtt: MqttConfig
    models_dir: Path
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    will_delay_s: int = 10
    retention_days: float = 30.0
    archive_days: float = 730.0    # 15-minute summaries of pruned samples (gateway/report/archive.py)
    publish_samples: bool = True   # raw samples on {subject}/samples (docs/mqtt.md)
    # (latitude, longitude) of the gateway, degrees: enables the UV forecast (twin.py)
    location: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.location is not None:
            latitude, longitude = self.location
            if not -90 <= latitude <= 90:
                raise ValueError(f"latitude {latitude}: must be within -90..90")
            if not -180 <= longitude <= 180:
                raise ValueError(f"longitude {longitude}: must be within -180..180")
        if not 1 <= self.max_connections <= 20:
            raise ValueError(f"max_connections {self.max_connections}: must be 1..20")
        if self.retention_days <= 0:
            raise ValueError(f"retention_days {self.retention_days}: must be positive")
        if self.archive_days < self.retention_days:
            raise ValueError(f"archive_days {self.archive_days}: must be at least retention_days"
                             f" ({self.retention_days})")


@dataclass
class LinkSlot:
    link: PatchLink
    task: asyncio.Task | None = None
    next_attempt_s: float = 0.0
    sighting: Any = None
    connected_since_s: float | None = None


class Gateway:
    def __init__(self, config: GatewayConfig, radio: BleRadio):
        self.config = config
        self.radio = radio
        self.store = store_mod.Store(store_mod.connect(config.db_path))
        self.outbox = Outbox(self.store.conn)
        # Refuse a bad model at start, naming the file and field (inference.ModelError).
        self.models = load_models(config.models_dir, names=model_registry.MODELS)
        self.sess = self.store.next_gateway_session()
        self.devices = {d.device_id: d for d in self.store.devices()}
        self.engine = TwinEngine(
            self.sess, {d.device_id: d.subject for d in self.devices.values()},
            lambda name, inputs: self.models[name].run(inputs), self.store.load_twins(),
            med_sed_of={d.subject: MED_SED_BY_FITZPATRICK[d.skin_type]
                        for d in self.devices.values()},
            location=config.location)
        # {subject}/desired and cmd; the publisher, ingest and links it needs come next.
        self.remote = RemoteRequests(
            config.mqtt, self.store, self.outbox, self.engine, self.devices.values(),
            link_of=lambda device_id: self.slots[device_id].link,
            publish_updates=lambda updates: self.ingest.publish_updates(updates),
            kick=lambda: self.publisher.kick(),
            answer=lambda topic, payload, properties: self.publisher.publish_direct(
                topic, payload, qos=1, properties=properties))
        self.publisher = MqttPublisher(
            config.mqtt, config.db_path, will_topic=config.mqtt.state_topic,
            will_payload=self._state_payload(False), birth_payload_fn=lambda: self._state_payload(True),
            offline_payload_fn=lambda: self._state_payload(False),
            will_delay_s=config.will_delay_s,
            subscriptions=(f"{config.mqtt.topic_root}/+/desired", config.mqtt.topic("cmd")),
            on_message=self.remote.on_mqtt_message)
        self.ingest = Ingest(self.store, self.outbox, self.engine, config.mqtt.topic,
                             self.publisher.kick, self.publisher.republish_state,
                             publish_samples=config.publish_samples)
        self.slots = {
            did: LinkSlot(PatchLink(dev, radio, self.ingest.submit, self.store.committed_seq,
                                    self.store, self.remote.on_config))
            for did, dev in self.devices.items()}
        self._by_name = {advertised_name(did): did for did in self.devices}
        self._wake = asyncio.Event()
        self._slots_free = asyncio.Semaphore(config.max_connections)
        self._active = 0
        self._last_heard_s = time.monotonic()
        self.watchdog_escalations = 0

    def _state_payload(self, online: bool) -> bytes:
        state: dict[str, Any] = {"online": online, "sess": self.sess, "ts": now_ms()}
        ingest = getattr(self, "ingest", None)
        if online and ingest is not None and ingest.stats.store_alarm:
            # Published directly, not through the outbox it concerns (docs/mqtt.md).
            state["alarm"] = {"kind": "store", "detail": ingest.stats.last_error}
        return encode(state)

    # -- birth -----------------------------------------------------------------------
    def _birth_messages(self) -> None:
        """Retained meta per subject and a snapshot per known twin, queued before connecting."""
        models = {name: {"version": m.version} for name, m in self.models.items()}
        with self.store.transaction():
            for dev in self.devices.values():
                meta = {"schema": 1, "units": model_registry.ucum_units(), "models": models,
                        "channels": sorted(c.prop for c in model_registry.SENSOR_CHANNELS),
                        "device": {"name": advertised_name(dev.device_id)}}
                self.outbox.put(self.config.mqtt.topic(dev.subject, "meta"), encode(meta),
                                retain=True, expiry_s=META_EXPIRY_S)
            self.ingest.publish_updates(
                [self.engine.snapshot(subject, now_ms()) for subject, twin
                 in self.engine.twins.items() if twin.state])

    # -- BLE connection manager --------------------------------------------------------
    def _on_advertisement(self, device: Any, adv: Any) -> None:
        device_id = self._by_name.get(adv.local_name or getattr(device, "name", None) or "")
        if device_id is not None:
            self.slots[device_id].sighting = device
            self._last_heard_s = time.monotonic()
            self._wake.set()

    async def _serve(self, device_id: str, slot: LinkSlot) -> None:
        async with self._slots_free:
            self._active += 1
            slot.connected_since_s = time.monotonic()
            try:
                close = await slot.link.run(slot.sighting)
            finally:
                self._active -= 1
                slot.connected_since_s = None
        delay = slot.link.retry_delay_s(close)
        slot.next_attempt_s = time.monotonic() + delay * random.uniform(0.5, 1.0)
        slot.sighting = None   # connect again only to a fresh advertisement
        log.info("%s: %s (%s); next attempt in %.1f s", device_id, close.kind.value,
                 close.detail, delay)

    async def _manage_connections(self) -> None:
        while True:
            now = time.monotonic()
            for device_id, slot in self.slots.items():
                busy = slot.task is not None and not slot.task.done()
                if slot.task is not None and slot.task.done() and not slot.task.cancelled():
                    error = slot.task.exception()
                    if error is not None:   # a bug, not a BLE condition: say so, keep going
                        log.error("%s: connection task failed: %r", device_id, error)
                        slot.next_attempt_s = now + RETRY_STORE_FAILED_S
                    slot.task = None
                if not busy and slot.sighting is not None and now >= slot.next_attempt_s:
                    slot.task = asyncio.create_task(self._serve(device_id, slot))
            self._share_slots(now)
            try:
                await asyncio.wait_for(self._wake.wait(), MANAGER_POLL_S)
            except TimeoutError:
                pass
            self._wake.clear()

    def _waiting(self, now: float) -> int:
        """Patches that are due and in range but not being served (more than free slots)."""
        due = sum(1 for s in self.slots.values()
                  if s.sighting is not None and s.connected_since_s is None
                  and now >= s.next_attempt_s)
        return max(0, due - (self.config.max_connections - self._active))

    def _share_slots(self, now: float) -> None:
        waiting = self._waiting(now)
        if not waiting:
            return
        candidates = sorted(
            (s for s in self.slots.values()
             if s.connected_since_s is not None and now - s.connected_since_s >= SLOT_SHARE_AFTER_S
             and s.link.drain is None and s.link.session is not None
             and s.link.session.state.value == "streaming"),
            # cast: the filter above keeps only slots with connected_since_s set
            key=lambda s: cast(float, s.connected_since_s))
        for slot in candidates[:waiting]:
            slot.link.request_yield()

    async def _watchdog(self, scanner: Any) -> None:
        """Escalate, loudly, when registered patches are out of reach; never exit."""
        while True:
            await asyncio.sleep(WATCHDOG_SILENCE_S / 4)
            unconnected = [d for d, s in self.slots.items() if s.connected_since_s is None]
            silent_s = time.monotonic() - self._last_heard_s
            if not unconnected or silent_s < WATCHDOG_SILENCE_S:
                self.watchdog_escalations = 0
                continue
            self.watchdog_escalations += 1
            self._last_heard_s = time.monotonic()
            if self.watchdog_escalations == 1:
                log.warning("watchdog: no advertisement from %d unconnected patches for %.0f s;"
                            " restarting the scan", len(unconnected), silent_s)
                await scanner.stop()
                await scanner.start()
            else:
                log.error("watchdog: still nothing heard after a scan restart; resetting the "
                          "BLE adapter (escalation %d)", self.watchdog_escalations)
                await scanner.stop()
                await self.radio.reset_adapter()
                await scanner.start()

    async def _prune(self) -> None:
        while True:
            now = now_ms()
            try:
                pruned = archive_and_prune(
                    self.store, now - int(self.config.retention_days * 86_400_000),
                    now - int(self.config.archive_days * 86_400_000))
            except store_mod.StoreError as e:   # (disk full) nothing lost: retried next time
                log.error("retention: archiving old samples failed, kept them: %s", e)
            else:
                if pruned.samples_deleted:
                    log.info("retention: archived and removed %d samples older than %.0f days",
                             pruned.samples_deleted, self.config.retention_days)
            await asyncio.sleep(PRUNE_EVERY_S)

    # -- run ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self.remote.loop = asyncio.get_running_loop()
        self._birth_messages()
        await self.publisher.start()
        scanner = self.radio.scanner(self._on_advertisement)
        await scanner.start()
        tasks = [asyncio.create_task(self.ingest.run()),
                 asyncio.create_task(self._manage_connections()),
                 asyncio.create_task(self._watchdog(scanner)),
                 asyncio.create_task(self._prune()),
                 asyncio.create_task(run_health_writer(self))]   # `dermtwin status`
        try:
            await stop.wait()
        finally:
            await scanner.stop()
            for task in tasks:
                task.cancel()
            link_tasks = [s.task for s in self.slots.values() if s.task and not s.task.done()]
            for task in link_tasks:
                task.cancel()
            await asyncio.gather(*tasks, *link_tasks, return_exceptions=True)
            self.ingest.cycle(now_ms())   # commit what arrived; patches replay the rest
            self.remote.loop = None   # inbound from here on: retained, seen next start
            await self.publisher.stop()

    def close(self) -> None:
        self.store.conn.close()

    def summary(self) -> dict:
        return {
            "sess": self.sess,
            "samples_stored": self.store.sample_count(),
            "gaps_stored": self.ingest.stats.gaps,
            "published": self.publisher.published,
            "outbox_pending": self.outbox.count(),
            "last_rev": {t.subject: t.rev for t in self.engine.twins.values()},
            "frames_rejected": {did: s.link.frames_rejected_total
                                for did, s in self.slots.items()},
        }

