"""Carries one patch's session over a bleak client: the thin BLE adapter around
gateway.session.PatchSession. Everything the session decides happens here, in order."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bleak.exc import BleakError

from gateway.clock import CLOCK, monotonic_ms
from gateway.progress import DrainProgress
from gateway.protocol import constants as ids
from gateway.retry_policy import retry_delay_s
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
from gateway.store import DatabaseCorrupt, StoreError
from gateway.values import CloseKind, RegisteredDevice, SampleBatch, SessionClose

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
DRAIN_LOG_EVERY_S = 5.0
DRAIN_MIN_SAMPLES = 500       # smaller catch-ups are not worth a progress line
SESSION_TICK_S = 1.0
BLE_ERRORS = (BleakError, TimeoutError, EOFError, ConnectionError, OSError)


# -- what the link's event queue carries (from BLE callbacks, ingest and the manager) --------
@dataclass(frozen=True)
class Notified:
    """A Samples notification."""

    data: bytes


@dataclass(frozen=True)
class Indicated:
    """A Control Point indication (the answer to a request)."""

    data: bytes


@dataclass(frozen=True)
class Committed:
    up_to_seq: int


@dataclass(frozen=True)
class CommitFailed:
    detail: str


@dataclass(frozen=True)
class YieldRequested:
    pass


@dataclass(frozen=True)
class DesiredChanged:
    pass


@dataclass(frozen=True)
class IdentifyRequested:
    seconds: int


@dataclass(frozen=True)
class LinkDropped:
    pass


@dataclass(frozen=True)
class ClockStepped:
    """The gateway's wall clock stepped (gateway/clock.py): re-anchor the patch's time."""


LinkEvent = (Notified | Indicated | Committed | CommitFailed | YieldRequested | DesiredChanged
             | IdentifyRequested | LinkDropped | ClockStepped)


class PatchLink:
    """One registered patch; `run(ble_device)` serves one connection until it ends."""

    def __init__(self, device: RegisteredDevice, radio: Any,
                 submit: Callable[[PatchLink, SampleBatch], None],
                 committed_seq: Callable[[str], int], store: Any = None,
                 on_config: Callable[[PatchLink, ConfigApplied | ConfigFailed], None]
                 | None = None, on_store_error: Callable[[str], None] | None = None):
        self.device = device
        self.radio = radio
        self.submit = submit
        self.committed_seq = committed_seq
        self.store = store   # clock anchors, desired config; samples go through `submit`
        self.on_config = on_config   # a desired config applied or refused by the patch
        self.on_store_error = on_store_error   # a store write of ours failed (disk full)
        self.session: PatchSession | None = None
        self.events: asyncio.Queue[LinkEvent] = asyncio.Queue()
        self.connects = 0
        self.connect_failures = 0   # in a row; the retry policy backs off on them
        self.last_close: SessionClose | None = None
        self.frames_rejected_total = 0
        self.auth_failures = 0
        self.drain: DrainProgress | None = None
        self.anchor_epochs: dict[int, int] = {}   # boot -> clock epoch of its latest anchor
        self._drain_logged_s = 0.0
        self._store_refused = False   # this connection's samples were refused by the store

    # called by the ingest pipeline after a commit
    def on_committed(self, up_to_seq: int) -> None:
        self.events.put_nowait(Committed(up_to_seq))

    def on_commit_failed(self, reason: str) -> None:
        # Called inside the failed ingest cycle. Frames this connection decodes from now on
        # follow the refused ones: committed once the store has room again, they would leave
        # a hole under the store's watermark that the next ACK covers (the patch would delete
        # samples never stored). Submit none; the session closes on the event.
        self._store_refused = True
        self.events.put_nowait(CommitFailed(reason))

    def clock_stepped(self) -> None:
        """The gateway's wall clock stepped (gateway/clock.py): re-anchor this patch's time."""
        self.events.put_nowait(ClockStepped())

    def request_yield(self) -> None:
        self.events.put_nowait(YieldRequested())

    def desired_changed(self) -> None:
        """A new desired config was stored: a connected session picks it up now, an
        unconnected patch at its next connection (from the store)."""
        self.events.put_nowait(DesiredChanged())

    def identify(self, seconds: int) -> bool:
        """Send IDENTIFY if streaming now (fire and forget; False if not connected)."""
        session = self.session
        if session is None or session.state is not State.STREAMING:
            return False
        self.events.put_nowait(IdentifyRequested(seconds))
        return True

    async def run(self, ble_device: Any) -> SessionClose:
        """Serve one connection; returns how it ended (`retry_delay_s` says when to retry)."""
        self.events = asyncio.Queue()
        self._store_refused = False
        events = self.events
        client = self.radio.client(
            ble_device, disconnected_callback=lambda _c: events.put_nowait(LinkDropped()))
        try:
            async with self.radio.connect_lock:
                await client.connect(timeout=CONNECT_TIMEOUT_S)
        except BLE_ERRORS as e:
            self.connect_failures += 1
            self.last_close = SessionClose(CloseKind.CONNECT_FAILED, f"connect failed: {e}")
            return self.last_close
        self.connect_failures = 0
        self.connects += 1
        log.info("%s: connected (MTU %d)", self.device.device_id, client.mtu_size)
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
                    async with asyncio.timeout(SESSION_TICK_S):   # not wait_for: Ingest.run
                        event = await events.get()
                    await self._execute(client, session, self._dispatch(session, event))
                    # The frames that arrived with it, without a wake-up each (a drain's
                    # notifications come several to a read); only those already queued, so
                    # the tick below still runs while events flow.
                    for _ in range(events.qsize()):
                        if session.state is State.CLOSED:
                            break
                        event = events.get_nowait()
                        await self._execute(client, session, self._dispatch(session, event))
                except TimeoutError:
                    pass
                if time.monotonic() >= next_tick:   # timeouts run even while events flow
                    next_tick = time.monotonic() + SESSION_TICK_S
                    await self._execute(client, session, session.tick(monotonic_ms()))
                self._track_drain(session)
                await self._execute(client, session, self._save_anchor(session))
        except BLE_ERRORS as e:
            session.disconnected(SessionClose(CloseKind.BLE_ERROR, f"BLE error: {e}"))
        finally:
            self.last_close = session.close
            if session.close is not None and session.close.kind is CloseKind.AUTH_FAILED:
                self.auth_failures += 1
                log.error("%s: patch refused our key (AUTH_FAILED); check its registry entry",
                          self.device.device_id)
            if client.is_connected:
                try:
                    await client.disconnect()
                except BLE_ERRORS:
                    pass
        if session.close is None:   # the loop above ends only once the session is closed
            raise RuntimeError(f"{self.device.device_id}: session ended without a close")
        return session.close

    def retry_delay_s(self, close: SessionClose) -> float:
        """Seconds before the next attempt after `close`: by its kind, never its wording."""
        return retry_delay_s(close.kind, self.connect_failures)

    def _give_desired(self, session: PatchSession, now_ms: int) -> list:
        desired = self.store.desired(self.device.device_id) if self.store else None
        if desired is None:
            return []
        return session.set_desired(desired.ver, desired.cfg, now_ms,
                                   already_applied=desired.applied)

    def _save_anchor(self, session: PatchSession) -> list:
        if session.new_anchor is None or self.store is None:
            return []
        boot_id, tick, utc_ms = session.new_anchor
        session.new_anchor = None
        try:
            self.store.save_anchor(self.device.device_id, boot_id, tick, utc_ms)
        except DatabaseCorrupt:
            raise
        except StoreError as e:
            # Without the anchor stored, samples of this session could not be timed after a
            # restart: close as the ingest cycle would, and the next session sets the time again.
            if self.on_store_error is not None:
                self.on_store_error(f"saving {self.device.device_id}'s clock anchor: {e}")
            return [Disconnect(SessionClose(CloseKind.STORE_FAILED,
                                            f"store refused the clock anchor: {e}"))]
        self.anchor_epochs[boot_id] = session.clock_epoch
        return []

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

    def _dispatch(self, session: PatchSession, event: LinkEvent) -> list:
        now = monotonic_ms()
        match event:
            case Notified(data):
                before = sum(session.stats.frames_rejected.values())
                actions = session.notification(data, now)
                rejected = sum(session.stats.frames_rejected.values()) - before
                if rejected:
                    self.frames_rejected_total += rejected
                    log.warning("%s: dropped a malformed frame (%s)", self.device.device_id,
                                dict(session.stats.frames_rejected))
                return actions
            case Indicated(data):
                before = session.stats.responses_rejected
                actions = session.control_response(data, now)
                if (session.stats.responses_rejected > before
                        and session.state is not State.CLOSED):
                    log.warning("%s: ignored a control point response no request was waiting "
                                "for (%d so far)", self.device.device_id,
                                session.stats.responses_rejected)
                return actions
            case Committed(up_to_seq):
                return session.committed(up_to_seq, now)
            case CommitFailed(detail):
                return [Disconnect(SessionClose(CloseKind.STORE_FAILED,
                                                f"store refused the samples: {detail}"))]
            case YieldRequested():
                return [Disconnect(SessionClose(
                    CloseKind.YIELDED, "yielding the connection slot to a waiting patch"))]
            case DesiredChanged():
                return self._give_desired(session, now)
            case IdentifyRequested(seconds):
                return session.identify(seconds, now)
            case ClockStepped():
                return session.clock_stepped(CLOCK.offset_ms, CLOCK.epoch, now)
            case LinkDropped():
                session.disconnected(SessionClose(CloseKind.LINK_LOST, "link lost"))
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
                if not self._store_refused:
                    self.submit(self, action.batch)
            elif isinstance(action, ConfigApplied | ConfigFailed):
                if isinstance(action, ConfigFailed):
                    log.warning("%s: desired config ver %d: %s", self.device.device_id,
                                action.ver, action.detail)
                if self.on_config is not None:
                    self.on_config(self, action)
            elif isinstance(action, Disconnect):
                log.warning("%s: closing session (%s): %s", self.device.device_id,
                            action.close.kind.value, action.close.detail)
                session.disconnected(action.close)
                return

    def _notification_handler(self, uuid: str) -> Callable:
        event = Indicated if uuid == ids.CONTROL_POINT_CHAR_UUID else Notified
        events = self.events

        def handler(_characteristic: Any, data: bytearray) -> None:
            events.put_nowait(event(bytes(data)))

        return handler
