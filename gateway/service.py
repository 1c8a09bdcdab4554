"""The gateway process: registry → BLE sessions → ingest (store, twin, outbox) → MQTT.

Data flows one way. This module only wires the parts together and owns the connection
manager: one shared scanner, a connection slot per patch (bounded per adapter), jittered
backoff between attempts, and nothing that exits on a BLE error.
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from gateway import homeassistant, model_registry, samples_message
from gateway import store as store_mod
from gateway.alarms import AlarmChange, Alarms
from gateway.ble.radio import BleRadio
from gateway.clock import CLOCK, now_ms
from gateway.health import run_health_writer
from gateway.ingest import Ingest, encode
from gateway.model_contracts import MED_SED_BY_FITZPATRICK
from gateway.model_set import ModelSet
from gateway.mqtt import topics
from gateway.mqtt.config import MqttConfig
from gateway.mqtt.publisher import DEFAULT_RECONNECT_MAX_DELAY_S, MqttPublisher
from gateway.outbox import Outbox
from gateway.patch_link import PatchLink
from gateway.remote_requests import RemoteRequests
from gateway.report.archive import archive_and_prune
from gateway.store_recovery import open_checked
from gateway.supervisor import SupervisorPolicy, Unrecoverable, supervise
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
PRUNE_RETRY_S = 60.0               # after a failed pass (disk full, busy): try again sooner
MODEL_POLL_S = 2.0                 # how often model files are checked for a hot swap
PUBLISHER_QUIET_S = 30.0           # a publisher `task` alarm clears after this long without a bug
HEALTH_EVERY_S = 10.0              # outbox depth, parked rows, free disk: refreshed this often
BROKER_WATCH_S = 0.5
LINK_STOP_TIMEOUT_S = 3.0          # at shutdown, per attempt to cancel a patch link
CLOCK_CHECK_S = 1.0
CLOCK_ALARM_HOLD_S = 600.0         # the `clock` alarm stays this long after the last step
BROKER_STILL_DOWN_LOG_S = 60.0     # while the broker stays unreachable, one line this often
MANAGER_POLL_S = 0.5
STOP_RECANCEL_S = 1.0       # stopping: cancel again a task still running after this long


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
    samples_format: str = "json"   # or "zlib" (gateway/payload_encoding.py)
    homeassistant_prefix: str | None = None   # Home Assistant discovery under it; None: off
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
        prefix = self.homeassistant_prefix
        if prefix is not None and (not prefix or any(ch in prefix for ch in "+#\0")
                                   or prefix.startswith("/") or prefix.endswith("/")):
            raise ValueError(f"homeassistant prefix {prefix!r}: must be a topic without "
                             "wildcards or a leading/trailing '/'")
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
    failed_session: Any = None   # the session whose task failed (raised the `link` alarm)


class Gateway:
    """`damaged`: SQLite reported the database damaged while the previous Gateway on it ran;
    this one moves it aside and starts fresh (gateway/store_recovery.py)."""

    def __init__(self, config: GatewayConfig, radio: BleRadio, *, damaged: str | None = None):
        self.config = config
        self.radio = radio
        self.alarms = Alarms()
        self.alarms.listen(self._on_alarm_change)
        self._health: dict[str, Any] = {}
        self._publisher_errors_seen = 0
        self._publisher_error_at = 0.0
        conn, recovery = open_checked(config.db_path, damaged)
        self.store = store_mod.Store(conn)
        if recovery is not None:   # stays up for this process's life: the old file needs a look
            self.alarms.raise_("database", recovery.describe(), now_ms())
        self.outbox = Outbox(self.store.conn)
        # Refuse a bad model at start, naming the file and field (inference.ModelError);
        # later, a changed model file is swapped in only if it passes the same checks.
        self.models = ModelSet(config.models_dir, model_registry.MODELS, self.alarms,
                               on_swap=lambda _name, _model: self._queue_meta())
        self.sess = self.store.next_gateway_session()
        self.devices = {d.device_id: d for d in self.store.devices()}
        self.engine = TwinEngine(
            self.sess, {d.device_id: d.subject for d in self.devices.values()},
            self.models.run, self.store.load_twins(),
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
                topic, payload, qos=1, properties=properties),
            homeassistant_prefix=config.homeassistant_prefix)
        self.publisher = MqttPublisher(
            config.mqtt, config.db_path, will_topic=config.mqtt.state_topic,
            will_payload=self._state_payload(False), birth_payload_fn=lambda: self._state_payload(True),
            offline_payload_fn=lambda: self._state_payload(False),
            will_delay_s=config.will_delay_s,
            subscriptions=tuple(row.filter(config.mqtt.topic_root) for row in topics.INBOUND)
            + ((homeassistant.config_filter(config.homeassistant_prefix, config.mqtt.gateway_id),)
               if config.homeassistant_prefix else ()),
            on_message=self.remote.on_mqtt_message)
        self.ingest = Ingest(self.store, self.outbox, self.engine, config.mqtt.topic,
                             self.publisher.kick, publish_samples=config.publish_samples,
                             alarms=self.alarms, samples_format=config.samples_format)
        self.slots = {
            did: LinkSlot(PatchLink(dev, radio, self.ingest.submit, self.store.committed_seq,
                                    self.store, self.remote.on_config,
                                    on_store_error=self.ingest.store_refused))
            for did, dev in self.devices.items()}
        self._by_name = {advertised_name(did): did for did in self.devices}
        self._wake = asyncio.Event()
        self._slots_free = asyncio.Semaphore(config.max_connections)
        self._active = 0
        self._last_heard_s = time.monotonic()
        self.watchdog_escalations = 0

    def _state_payload(self, online: bool) -> bytes:
        """The retained `state`; built on paho's thread too, so it reads only snapshots."""
        state: dict[str, Any] = {"online": online, "sess": self.sess, "ts": now_ms()}
        if online:
            # Published directly, not through the outbox the alarm may concern (docs/mqtt.md).
            alarms = self.alarms.payload()
            state["alarms"] = alarms
            if alarms:
                state["alarm"] = alarms[0]   # the oldest; the field subscribers read before
            state.update(self._health)
        return encode(state)

    def _on_alarm_change(self, change: AlarmChange) -> None:
        if change.raised and not change.updated:
            log.error("alarm raised: %s", change.alarm.describe())
        elif not change.raised:
            log.warning("alarm cleared: %s", change.alarm.describe())
        publisher = getattr(self, "publisher", None)
        if publisher is not None:
            publisher.republish_state()

    def _refresh_health(self) -> bool:
        """Outbox depth, parked rows and free disk for `state`; True if they changed."""
        try:
            free = shutil.disk_usage(self.config.db_path.parent).free
        except OSError:
            free = None
        if free is not None:   # to the MB: a byte-exact figure would republish every time
            free = free // 1_000_000 * 1_000_000
        health = {"outbox": {"depth": self.outbox.count(),
                             "parked": self.outbox.parked_count()},
                  "disk_free_bytes": free}
        changed, self._health = health != self._health, health
        return changed

    # -- birth -----------------------------------------------------------------------
    def _queue_meta(self) -> None:
        """Retained meta per subject (model versions included): at start and on a swap."""
        models = {name: {"version": m.version} for name, m in self.models.items()}
        with self.store.transaction():
            for dev in self.devices.values():
                meta = {"schema": topics.SCHEMA_VERSION, "units": model_registry.ucum_units(),
                        "models": models,
                        "channels": sorted(c.prop for c in model_registry.SENSOR_CHANNELS),
                        "samples": samples_message.meta_columns(),
                        "device": {"name": advertised_name(dev.device_id)}}
                self.ingest.put(topics.META, dev.subject, meta)
                if self.config.homeassistant_prefix:
                    for topic, payload in homeassistant.config_messages(
                            self.config.homeassistant_prefix, self.config.mqtt.gateway_id,
                            dev.subject, advertised_name(dev.device_id)):
                        self.outbox.put(topic, payload, retain=True)
        publisher = getattr(self, "publisher", None)
        if publisher is not None:
            publisher.kick()

    def _birth_messages(self) -> None:
        """Retained meta per subject and a snapshot per known twin, queued before connecting."""
        self._queue_meta()
        with self.store.transaction():
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
                        if self.alarms.raise_("link", f"{type(error).__name__}: {error}",
                                              now_ms(), device_id):
                            log.error("%s: connection task failed; retrying in %.0f s",
                                      device_id, RETRY_STORE_FAILED_S, exc_info=error)
                        slot.next_attempt_s = now + RETRY_STORE_FAILED_S
                        slot.failed_session = slot.link.session
                    elif slot.link.session is not None and slot.link.session.stats.frames_ok:
                        self.alarms.clear("link", device_id)   # a session worked again
                    slot.task = None
                session = slot.link.session
                if (busy and session is not None and session is not slot.failed_session
                        and session.stats.frames_ok):
                    self.alarms.clear("link", device_id)   # a new session streams again
                if not busy and slot.sighting is not None and now >= slot.next_attempt_s:
                    slot.task = asyncio.create_task(self._serve(device_id, slot))
            self._share_slots(now)
            try:
                async with asyncio.timeout(MANAGER_POLL_S):   # not wait_for: see Ingest.run
                    await self._wake.wait()
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
        """Retention; a failed pass (disk full: a DELETE needs journal space too) raises the
        `retention` alarm and is tried again sooner, never ends the task."""
        while True:
            now = now_ms()
            try:
                pruned = archive_and_prune(
                    self.store, now - int(self.config.retention_days * 86_400_000),
                    now - int(self.config.archive_days * 86_400_000))
            except store_mod.DatabaseCorrupt:
                raise
            except store_mod.StoreError as e:   # (disk full) nothing lost: the samples stay
                self.alarms.raise_("retention", f"archiving old samples failed, kept them: {e}",
                                   now)
                await asyncio.sleep(PRUNE_RETRY_S)
                continue
            self.alarms.clear("retention")
            if pruned.samples_deleted:
                log.info("retention: archived and removed %d samples older than %.0f days",
                         pruned.samples_deleted, self.config.retention_days)
            await asyncio.sleep(PRUNE_EVERY_S)

    async def _watch_clock(self) -> None:
        """Wall-clock steps (gateway/clock.py): alarm, and every connected patch re-anchors;
        sample times taken against the old clock are flagged `time_uncertain`."""
        last_step_s: float | None = None
        while True:
            await asyncio.sleep(CLOCK_CHECK_S)
            step = CLOCK.check()
            if step is not None:
                last_step_s = time.monotonic()
                self.alarms.raise_(
                    "clock", f"wall clock stepped {step.step_ms / 1000:+.1f} s; sample times "
                    "stamped against the old clock are flagged time_uncertain; patches "
                    "re-anchored", now_ms())
                for slot in self.slots.values():
                    slot.link.clock_stepped()
            elif last_step_s is not None and time.monotonic() - last_step_s >= CLOCK_ALARM_HOLD_S:
                last_step_s = None
                self.alarms.clear("clock")

    async def _watch_models(self) -> None:
        while True:
            await asyncio.sleep(MODEL_POLL_S)
            self.models.check_for_changes()

    async def _report_health(self) -> None:
        while True:
            self._alarm_publisher_errors()
            if self._refresh_health():
                self.publisher.republish_state()
            await asyncio.sleep(HEALTH_EVERY_S)

    def _alarm_publisher_errors(self) -> None:
        """A bug caught on paho's thread (logged there with its traceback) raises the `task`
        alarm for `publisher`; it clears after PUBLISHER_QUIET_S without another."""
        errors, now = self.publisher.internal_errors, time.monotonic()
        if errors > self._publisher_errors_seen:
            self._publisher_errors_seen, self._publisher_error_at = errors, now
            self.alarms.raise_("task", self.publisher.last_internal_error or "internal error",
                               now_ms(), "publisher")
        elif now - self._publisher_error_at >= PUBLISHER_QUIET_S:
            self.alarms.clear("task", "publisher")

    async def _watch_broker(self) -> None:
        """One log line per broker state change (and one a minute while it stays down)."""
        url = self.config.mqtt.url
        was_up: bool | None = None
        down_since = last_said = time.monotonic()
        while True:
            up, now = self.publisher.connected, time.monotonic()
            if not up and was_up is None and self.publisher.connects > 0:
                was_up = True   # it connected and dropped between two looks: a loss
            if up and was_up is False:
                log.warning("broker %s: connected again after %.0f s; delivering the %d "
                            "waiting messages", url, now - down_since, self.publisher.pending)
            elif not up and (was_up or (was_up is None and now - down_since >= 3.0)):
                if was_up:
                    down_since = now
                last_said = now
                log.warning("broker %s: %s (%s); retrying with backoff, at most %.0f s apart; "
                            "messages wait in the outbox", url,
                            "connection lost" if was_up else "not reachable",
                            self.publisher.last_error or "no answer",
                            DEFAULT_RECONNECT_MAX_DELAY_S)
                was_up = False
            elif not up and was_up is False and now - last_said >= BROKER_STILL_DOWN_LOG_S:
                last_said = now
                log.warning("broker %s: still unreachable after %.0f s, retrying (%s); %d "
                            "messages waiting", url, now - down_since, self.publisher.last_error,
                            self.publisher.pending)
            if up:
                was_up = True
            await asyncio.sleep(BROKER_WATCH_S)

    def _supervised(self, name: str, run, policy: SupervisorPolicy | None = None
                    ) -> asyncio.Task:
        return asyncio.create_task(
            supervise(name, run, self.alarms, policy, fatal=(store_mod.DatabaseCorrupt,)),
            name=name)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set. A task that cannot recover (or a damaged database:
        store.DatabaseCorrupt) ends the run by raising it, after the same orderly shutdown."""
        self.remote.loop = asyncio.get_running_loop()
        self._refresh_health()
        self._birth_messages()
        await self.publisher.start()
        scanner = self.radio.scanner(self._on_advertisement)
        await scanner.start()
        tasks = [self._supervised("ingest", self.ingest.run, SupervisorPolicy(healthy_after_s=5)),
                 self._supervised("connections", self._manage_connections),
                 self._supervised("watchdog", lambda: self._watchdog(scanner)),
                 self._supervised("retention", self._prune),
                 self._supervised("models", self._watch_models),
                 self._supervised("clock", self._watch_clock),
                 self._supervised("state", self._report_health),
                 self._supervised("broker", self._watch_broker),
                 self._supervised("status-file", lambda: run_health_writer(self))]
        stopped = asyncio.create_task(stop.wait())
        fatal: BaseException | None = None
        try:
            await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    fatal = task.exception()
                    break
        finally:
            stopped.cancel()
            await scanner.stop()
            for task in tasks:
                task.cancel()
            pending = set(tasks)
            while pending:   # a cancel can be lost in a library (asyncio.wait_for on 3.11):
                _, pending = await asyncio.wait(pending, timeout=STOP_RECANCEL_S)
                for task in pending:   # ask again rather than wait forever
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._stop_links()
            if not isinstance(fatal, store_mod.DatabaseCorrupt):
                try:   # commit what arrived; patches replay the rest
                    self.ingest.cycle(now_ms())
                except store_mod.StoreError as e:
                    log.error("final commit failed (%s); the patches replay those samples", e)
            self.remote.loop = None   # inbound from here on: retained, seen next start
            await self.publisher.stop()
        if fatal is not None:
            if isinstance(fatal, store_mod.DatabaseCorrupt | Unrecoverable):
                raise fatal
            raise Unrecoverable(f"{type(fatal).__name__}: {fatal}") from fatal

    async def _stop_links(self) -> None:
        """Cancel every patch link; one whose clean-up hangs (a disconnect the radio never
        confirms) is cancelled again rather than holding the shutdown for ever."""
        pending = {s.task for s in self.slots.values() if s.task and not s.task.done()}
        for attempt in range(3):
            if not pending:
                return
            if attempt:
                log.warning("%d patch links still closing after %.0f s; cancelling again",
                            len(pending), LINK_STOP_TIMEOUT_S)
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=LINK_STOP_TIMEOUT_S)
        if pending:
            log.error("%d patch links did not stop; shutting down without them", len(pending))

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

