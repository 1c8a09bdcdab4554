"""Carries one patch's session over a bleak client: the thin BLE adapter around
gateway.session.PatchSession. Everything the session decides happens here, in order."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from bleak.exc import BleakError

from gateway.clock import CLOCK, monotonic_ms
from gateway.progress import DrainProgress
from gateway.protocol import constants as ids
from gateway.session import (
    Commit,
    ConfigApplied,
    ConfigFailed,
    Disconnect,
    PatchSession,
    ReadChar,
    State,
    Subscribe,
    WriteControl,
)
from gateway.store import RegisteredDevice, SampleBatch

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
DRAIN_LOG_EVERY_S = 5.0
DRAIN_MIN_SAMPLES = 500       # smaller catch-ups are not worth a progress line
SESSION_TICK_S = 1.0
BLE_ERRORS = (BleakError, TimeoutError, EOFError, ConnectionError, OSError)
YIELD_REASON = "yielding the connection slot to a waiting patch"
REFUSAL_PREFIXES = ("MTU ", "identity mismatch", "unreadable status", "patch answered")


class Outcome(enum.Enum):
    """How a connection attempt ended; the connection manager's retry policy keys on it."""

    STREAMED = "streamed"              # the session delivered frames, then the link ended
    LINK_LOST = "link lost"            # transient: the patch is near, try again soon
    CONNECT_FAILED = "connect failed"  # device gone or out of range
    REFUSED = "refused"                # wrong key, identity or MTU: needs a technician
    STORE_FAILED = "store failed"      # our disk: wait for it, the patch keeps the samples
    YIELDED = "yielded"                # gave its connection slot to a waiting patch


class PatchLink:
    """One registered patch; `run(ble_device)` serves one connection until it ends."""

    def __init__(self, device: RegisteredDevice, radio: Any,
                 submit: Callable[[PatchLink, SampleBatch], None],
                 committed_seq: Callable[[str], int], store: Any = None,
                 on_config: Callable[[PatchLink, ConfigApplied | ConfigFailed], None]
                 | None = None):
        self.device = device
        self.radio = radio
        self.submit = submit
        self.committed_seq = committed_seq
        self.store = store   # clock anchors, desired config; samples go through `submit`
        self.on_config = on_config   # a desired config applied or refused by the patch
        self.session: PatchSession | None = None
        self.events: asyncio.Queue = asyncio.Queue()
        self.connects = 0
        self.last_close_reason: str | None = None
        self.frames_rejected_total = 0
        self.auth_failures = 0
        self.drain: DrainProgress | None = None
        self.anchor_epochs: dict[int, int] = {}   # boot -> clock epoch of its latest anchor
        self._drain_logged_s = 0.0

    # called by the ingest pipeline after a commit
    def on_committed(self, up_to_seq: int) -> None:
        self.events.put_nowait(("committed", up_to_seq))

    def on_commit_failed(self, reason: str) -> None:
        self.events.put_nowait(("commit_failed", reason))

    def clock_stepped(self) -> None:
        """The gateway's wall clock stepped (gateway/clock.py): re-anchor this patch's time."""
        self.events.put_nowait(("clock_step",))

    def request_yield(self) -> None:
        self.events.put_nowait(("yield",))

    def desired_changed(self) -> None:
        """A new desired config was stored: a connected session picks it up now, an
        unconnected patch at its next connection (from the store)."""
        self.events.put_nowait(("desired",))

    def identify(self, seconds: int) -> bool:
        """Send IDENTIFY if streaming now (fire and forget; False if not connected)."""
        session = self.session
        if session is None or session.state is not State.STREAMING:
            return False
        self.events.put_nowait(("identify", seconds))
        return True

    async def run(self, ble_device: Any) -> Outcome:
        self.events = asyncio.Queue()
        events = self.events
        client = self.radio.client(
            ble_device, disconnected_callback=lambda _c: events.put_nowait(("disconnected",)))
        try:
            async with self.radio.connect_lock:
                await client.connect(timeout=CONNECT_TIMEOUT_S)
        except BLE_ERRORS as e:
            self.last_close_reason = f"connect failed: {e}"
            return Outcome.CONNECT_FAILED
        self.connects += 1
        log.info("%s: connected", self.device.device_id)
        anchors = self.store.anchors(self.device.device_id) if self.store else None
        session = PatchSession(self.device.device_id, self.device.key,
                               self.committed_seq(self.device.device_id), anchors,
                               utc_offset_ms=CLOCK.offset_ms, clock_epoch=CLOCK.epoch,
                               anchor_epochs=self.anchor_epochs)
        self._give_desired(session, monotonic_ms())
        self.session = session
        try:
            await self._execute(client, session, session.start(client.mtu_size, monotonic_ms()))
            next_tick = time.monotonic() + SESSION_TICK_S
            while session.state is not State.CLOSED:
                try:
                    event = await asyncio.wait_for(events.get(), SESSION_TICK_S)
                    await self._execute(client, session, self._dispatch(session, event))
                except TimeoutError:
                    pass
                if time.monotonic() >= next_tick:   # timeouts run even while events flow
                    next_tick = time.monotonic() + SESSION_TICK_S
                    await self._execute(client, session, session.tick(monotonic_ms()))
                self._track_drain(session)
                self._save_anchor(session)
        except BLE_ERRORS as e:
            session.disconnected(f"BLE error: {e}")
        finally:
            self.last_close_reason = session.close_reason
            if session.close_reason and "AUTH_FAILED" in session.close_reason:
                self.auth_failures += 1
                log.error("%s: patch refused our key (AUTH_FAILED); check its registry entry",
                          self.device.device_id)
            if client.is_connected:
                try:
                    await client.disconnect()
                except BLE_ERRORS:
                    pass
        return self._outcome(session)

    def _give_desired(self, session: PatchSession, now_ms: int) -> list:
        desired = self.store.desired(self.device.device_id) if self.store else None
        if desired is None:
            return []
        return session.set_desired(desired.ver, desired.cfg, now_ms,
                                   already_applied=desired.applied)

    def _save_anchor(self, session: PatchSession) -> None:
        if session.new_anchor is not None and self.store is not None:
            boot_id, tick, utc_ms = session.new_anchor
            session.new_anchor = None
            self.anchor_epochs[boot_id] = session.clock_epoch
            self.store.save_anchor(self.device.device_id, boot_id, tick, utc_ms)

    def _track_drain(self, session: PatchSession) -> None:
        now = time.monotonic()
        target = session.drain_target_seq
        if target is not None and (self.drain is None or self.drain.target_seq != target):
            first = session.expected_seq
            if target - first >= DRAIN_MIN_SAMPLES:
                self.drain = DrainProgress(first, target, now)
                log.info("%s: draining a backlog of %d samples", self.device.device_id,
                         target - first)
        if self.drain is None:
            return
        self.drain.done_seq = session.expected_seq
        if self.drain.finished or now - self._drain_logged_s >= DRAIN_LOG_EVERY_S:
            self._drain_logged_s = now
            log.info("%s: backlog %s", self.device.device_id, self.drain.describe(now))
        if self.drain.finished:
            self.drain = None

    def _outcome(self, session: PatchSession) -> Outcome:
        reason = session.close_reason or ""
        if reason.startswith("store refused"):
            return Outcome.STORE_FAILED
        if reason == YIELD_REASON:
            return Outcome.YIELDED
        if reason.startswith(REFUSAL_PREFIXES) or "AUTH_FAILED" in reason:
            return Outcome.REFUSED
        return Outcome.STREAMED if session.stats.frames_ok else Outcome.LINK_LOST

    def _dispatch(self, session: PatchSession, event: tuple) -> list:
        kind, now = event[0], monotonic_ms()
        if kind == "notify":
            before = sum(session.stats.frames_rejected.values())
            actions = session.notification(event[1], now)
            rejected = sum(session.stats.frames_rejected.values()) - before
            if rejected:
                self.frames_rejected_total += rejected
                log.warning("%s: dropped a malformed frame (%s)", self.device.device_id,
                            dict(session.stats.frames_rejected))
            return actions
        if kind == "control":
            return session.control_response(event[1], now)
        if kind == "committed":
            return session.committed(event[1], now)
        if kind == "commit_failed":
            return [Disconnect(f"store refused the samples: {event[1]}")]
        if kind == "yield":
            return [Disconnect(YIELD_REASON)]
        if kind == "desired":
            return self._give_desired(session, now)
        if kind == "identify":
            return session.identify(event[1], now)
        if kind == "clock_step":
            return session.clock_stepped(CLOCK.offset_ms, CLOCK.epoch, now)
        if kind == "disconnected":
            session.disconnected("link lost")
        return []

    async def _execute(self, client: Any, session: PatchSession, actions: list) -> None:
        work = deque(actions)
        while work:
            action = work.popleft()
            if isinstance(action, ReadChar):
                data = await client.read_gatt_char(action.uuid)
                work.extend(session.read_result(action.uuid, bytes(data), monotonic_ms()))
            elif isinstance(action, Subscribe):
                await client.start_notify(action.uuid, self._notification_handler(action.uuid))
            elif isinstance(action, WriteControl):
                await client.write_gatt_char(ids.CONTROL_POINT_CHAR_UUID, action.data,
                                             response=True)
            elif isinstance(action, Commit):
                self.submit(self, action.batch)
            elif isinstance(action, ConfigApplied | ConfigFailed):
                if isinstance(action, ConfigFailed):
                    log.warning("%s: desired config ver %d: %s", self.device.device_id,
                                action.ver, action.detail)
                if self.on_config is not None:
                    self.on_config(self, action)
            elif isinstance(action, Disconnect):
                log.warning("%s: closing session: %s", self.device.device_id, action.reason)
                session.disconnected(action.reason)
                return

    def _notification_handler(self, uuid: str) -> Callable:
        kind = "control" if uuid == ids.CONTROL_POINT_CHAR_UUID else "notify"
        events = self.events

        def handler(_characteristic: Any, data: bytearray) -> None:
            events.put_nowait((kind, bytes(data)))

        return handler
