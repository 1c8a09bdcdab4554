"""One patch's session as a sans-I/O state machine (docs/protocol.md, design.md §3).

connect → MTU (refuse below 64) → identity (Serial Number, Status) → SET_TIME → GET_STATUS
→ subscribe → REPLAY from last committed seq + 1 → stream → ACK after durable commit.

The session never touches BLE, SQLite or clocks: the adapter feeds it what happened (with the
current UTC in ms) and carries out the actions it returns, in order. Frames become `Commit`
actions holding only samples the store does not have yet, contiguous from the last committed
seq; a gap (a rejected frame, or seqs the patch has no sample for) is healed with REPLAY
instead of being acknowledged over: its answer says where the patch's next sample is.

Remote configuration (`set_desired`, docs/mqtt.md `{subject}/desired`): once streaming, the
session sends SET_CONFIG for each desired key whose value differs from the patch's status
record (the flush interval, which the record lacks, whenever the version is not yet applied),
one request at a time behind any waiting ACK or REPLAY, then emits `ConfigApplied`. A SET_CONFIG
the patch answers with an error status ends that attempt with `ConfigFailed` and does not
close the session (every other error status still does).
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from gateway.protocol import constants as ids
from gateway.protocol import control
from gateway.protocol.frames import DecodedFrame, DecodedGap, FrameError, decode_frame
from gateway.values import CloseKind, LostSamples, SampleBatch, SessionClose

MIN_MTU = 64
CONTROL_TIMEOUT_MS = 5_000
# No frame for this long while streaming: ask the patch what it holds, and REPLAY what we
# never received (anti-entropy for a notification lost below the session).
IDLE_STATUS_CHECK_MS = 10_000
MS_PER_TICK = 100
SERIAL_NUMBER_UUID = "00002a25-0000-1000-8000-00805f9b34fb"


class State(enum.Enum):
    NEW = "new"
    IDENTIFY = "identify"
    SET_TIME = "set_time"
    GET_STATUS = "get_status"
    REPLAY = "replay"
    STREAMING = "streaming"
    CLOSED = "closed"


@dataclass(frozen=True)
class ReadChar:
    uuid: str


@dataclass(frozen=True)
class Subscribe:
    uuid: str


@dataclass(frozen=True)
class WriteControl:
    opcode: int
    data: bytes


@dataclass(frozen=True)
class Commit:
    batch: SampleBatch


@dataclass(frozen=True)
class Disconnect:
    """End the connection; `close` says why (a kind to branch on, a detail for humans)."""

    close: SessionClose


@dataclass(frozen=True)
class ConfigApplied:
    """The patch acknowledged every key of desired version `ver`; `cfg` is that version."""

    ver: int
    cfg: dict[ids.ConfigKey, int]


@dataclass(frozen=True)
class ConfigFailed:
    """The patch refused a key of desired version `ver`; the rest of it was not sent."""

    ver: int
    key: ids.ConfigKey
    value: int
    status: ids.Status

    @property
    def detail(self) -> str:
        return (f"patch answered SET_CONFIG {self.key.name.lower()}={self.value} with "
                f"{self.status.name}")


Action = ReadChar | Subscribe | WriteControl | Commit | Disconnect | ConfigApplied | ConfigFailed


@dataclass
class SessionStats:
    frames_ok: int = 0
    samples_new: int = 0
    samples_duplicate: int = 0
    missing: int = 0        # frames that came past seqs never received (REPLAY asked)
    seqs_skipped: int = 0   # seqs the patch said it holds no sample for (see REPLAY)
    resyncs: int = 0        # REPLAYs asked by the idle check (samples missing, no frame came)
    gap_notices: int = 0    # gap notices received (protocol.md §4.1), replays included
    gap_notices_missed: int = 0   # GAPS_BEFORE frames that came without their notices
    frames_rejected: Counter[str] = dataclasses.field(default_factory=Counter)


class PatchSession:
    def __init__(self, device_id: str, key: bytes, committed_seq: int,
                 anchors: dict[int, tuple[int, float]] | None = None):
        self.device_id = device_id
        self.key = key
        self.state = State.NEW
        self.expected_seq = committed_seq + 1   # the next seq the store needs
        self.boot_id: int | None = None
        self.status: control.PatchStatus | None = None
        self.stats = SessionStats()
        self.close: SessionClose | None = None
        self._serial: str | None = None
        # boot_id -> (tick, utc_ms) from SET_TIME: this boot's, and earlier boots' (from the
        # store), so replayed samples of an earlier boot get their UTC too.
        self.anchors: dict[int, tuple[int, float]] = dict(anchors or {})
        self.new_anchor: tuple[int, int, float] | None = None   # to persist: boot, tick, utc
        self._pending: tuple[int, int] | None = None  # opcode, sent_at_ms
        self._queued_ack: int | None = None
        self._queued_replay: int | None = None
        self._replay_requested_for: int | None = None
        self._acked_seq = committed_seq
        self._pending_gaps: dict[tuple[int, int], DecodedGap] = {}   # (boot, seq_at) -> notice
        self._last_frame_ms = 0
        self._last_status_check_ms = 0
        self.drain_target_seq: int | None = None   # the patch's next seq when REPLAY began
        # Remote configuration: the desired version, whether the patch has confirmed it (in
        # an earlier connection), the SET_CONFIGs left to send and the one awaiting its answer.
        self._desired: tuple[int, dict[ids.ConfigKey, int]] | None = None
        self._desired_applied = False
        self._config_plan_due = False
        self._config_todo: list[tuple[ids.ConfigKey, int]] = []
        self._config_inflight: tuple[int, ids.ConfigKey, int] | None = None
        self._config_attempt: int | None = None   # the ver being sent in this session
        self._queued_identify: int | None = None
        self.identify_refusals = 0

    # -- events in -------------------------------------------------------------
    def start(self, mtu: int, now_ms: int) -> list[Action]:
        if mtu < MIN_MTU:
            return self._close(CloseKind.MTU_TOO_SMALL,
                               f"MTU {mtu} < {MIN_MTU}: patch firmware or adapter too old")
        self.state = State.IDENTIFY
        return [ReadChar(SERIAL_NUMBER_UUID), ReadChar(ids.STATUS_CHAR_UUID)]

    def read_result(self, uuid: str, data: bytes, now_ms: int) -> list[Action]:
        if self.state is not State.IDENTIFY:
            return []
        if uuid == SERIAL_NUMBER_UUID:
            self._serial = bytes(data).decode("ascii", "replace").strip().lower()
            if self._serial != self.device_id:
                return self._close(
                    CloseKind.IDENTITY_MISMATCH, f"identity mismatch: patch says {self._serial!r}, registry has "
                    f"{self.device_id!r}")
            return []
        if uuid == ids.STATUS_CHAR_UUID:
            try:
                self.status = control.decode_status(bytes(data))
            except control.ControlError as e:
                return self._close(CloseKind.BAD_STATUS, f"unreadable status record: {e}")
            self.boot_id = self.status.boot_id
            if self._serial is None:
                return []
            self.state = State.SET_TIME
            return [Subscribe(ids.CONTROL_POINT_CHAR_UUID),
                    self._request(ids.Opcode.SET_TIME,
                                  control.set_time(self.key, self.boot_id, now_ms), now_ms)]
        return []

    def set_desired(self, ver: int, cfg: Mapping[int, int], now_ms: int = 0, *,
                    already_applied: bool = False) -> list[Action]:
        """A desired sampling configuration (SET_CONFIG key → seconds) to bring the patch to;
        `already_applied`: the patch confirmed this version in an earlier connection. The same
        version again is ignored; a newer one replaces whatever is still to send."""
        desired = (ver, {ids.ConfigKey(k): int(v) for k, v in cfg.items()})
        if self._desired == desired:
            return []
        self._desired = desired
        self._desired_applied = already_applied
        self._config_plan_due = True
        self._config_todo = []
        self._config_attempt = None
        return self._flush_queue(now_ms)

    def identify(self, seconds: int, now_ms: int) -> list[Action]:
        """Ask the patch to blink/buzz for `seconds` (1..255), behind any waiting ACK."""
        if not 1 <= seconds <= 255:
            raise ValueError(f"seconds {seconds}: must be 1..255")
        self._queued_identify = seconds
        return self._flush_queue(now_ms)

    def control_response(self, data: bytes, now_ms: int) -> list[Action]:
        try:
            response = control.decode_response(bytes(data))
        except control.ControlError as e:
            return self._close(CloseKind.PROTOCOL_ERROR,
                               f"malformed control point response: {e}")
        if self._pending is None or response.opcode != self._pending[0]:
            return []
        sent_at_ms = self._pending[1]
        self._pending = None
        if response.opcode == ids.Opcode.SET_CONFIG:
            return self._config_answered(response.status) + self._flush_queue(now_ms)
        if response.opcode == ids.Opcode.IDENTIFY:   # a blink: an error is no reason to close
            self.identify_refusals += response.status != ids.Status.SUCCESS
            return self._flush_queue(now_ms)
        if response.status != ids.Status.SUCCESS:
            return self._close(
                CloseKind.AUTH_FAILED if response.status == ids.Status.AUTH_FAILED
                else CloseKind.REQUEST_REFUSED,
                f"patch answered {ids.Opcode(response.opcode).name} with "
                f"{ids.Status(response.status).name}")
        actions: list[Action] = []
        if response.opcode == ids.Opcode.SET_TIME:
            set_time = control.decode_set_time_result(response.payload)
            # The patch stamped its tick on receipt: half-way through the round trip.
            utc_ms = (sent_at_ms + now_ms) / 2
            self.anchors[set_time.boot_id] = (set_time.tick, utc_ms)
            self.new_anchor = (set_time.boot_id, set_time.tick, utc_ms)
            self.boot_id = set_time.boot_id
            self.state = State.GET_STATUS
            actions.append(self._request(
                ids.Opcode.GET_STATUS, control.get_status(self.key, set_time.boot_id), now_ms))
        elif response.opcode == ids.Opcode.GET_STATUS and self.state is State.STREAMING:
            # The idle check (tick): the patch holds samples we never received and nothing
            # is on its way (a notification lost below us): fetch them again.
            self.status = control.decode_status(response.payload)
            if (self.status.next_seq > self.expected_seq
                    and self._last_frame_ms <= sent_at_ms):
                self.stats.resyncs += 1
                actions.append(self._replay(self.expected_seq, now_ms))
        elif response.opcode == ids.Opcode.GET_STATUS:
            self.status = control.decode_status(response.payload)
            self.state = State.REPLAY
            actions.append(Subscribe(ids.SAMPLES_CHAR_UUID))
            actions.append(self._replay(self.expected_seq, now_ms))
        elif response.opcode == ids.Opcode.REPLAY:
            replayed = control.decode_replay_result(response.payload)
            if replayed.oldest_seq > self.expected_seq:
                # The patch answers with the first seq at or after from_seq that it holds a
                # sample for: no sample will ever come for the seqs before it (the unused seqs
                # a reboot leaves, a record the patch could not read back, or samples deleted
                # before this store had them). Move past them, or a hole inside the patch's
                # log would make every later frame a gap (protocol.md §5, REPLAY).
                self.stats.seqs_skipped += replayed.oldest_seq - self.expected_seq
                self.expected_seq = replayed.oldest_seq
            self._replay_requested_for = None
            self.drain_target_seq = replayed.next_seq
            self._last_status_check_ms = now_ms
            self.state = State.STREAMING
        return actions + self._flush_queue(now_ms)

    def notification(self, data: bytes, now_ms: int) -> list[Action]:
        # Replayed frames may overtake the REPLAY response's indication.
        if self.state not in (State.REPLAY, State.STREAMING):
            self.stats.frames_rejected["NOT_STREAMING"] += 1
            return []
        try:
            frame = decode_frame(bytes(data), self.key)
        except FrameError as e:
            self.stats.frames_rejected[str(e.code)] += 1
            return []
        self.stats.frames_ok += 1
        self._last_frame_ms = now_ms
        if isinstance(frame, DecodedGap):
            # Held until the sample frame it precedes: the two commit together.
            self.stats.gap_notices += 1
            self._pending_gaps[(frame.boot_id, frame.seq_at)] = frame
            return []
        first, last = frame.first_seq, frame.first_seq + len(frame) - 1
        if first > self.expected_seq:
            return self._missing(now_ms)
        if last < self.expected_seq:
            self.stats.samples_duplicate += len(frame)
            self._pending_gaps.clear()   # stored with these samples the first time
            return []
        skip = self.expected_seq - first
        if (skip == 0 and frame.gaps_before
                and not any(g.seq_at <= first for g in self._pending_gaps.values())):
            self.stats.gap_notices_missed += 1
            return self._missing(now_ms)
        self.stats.samples_duplicate += skip
        batch = self._batch(frame, skip)
        self.expected_seq = last + 1
        self.stats.samples_new += len(batch)
        return [Commit(batch)]

    def committed(self, up_to_seq: int, now_ms: int) -> list[Action]:
        """The store has made every sample up to `up_to_seq` durable: acknowledge it."""
        if up_to_seq <= self._acked_seq or self.state is State.CLOSED:
            return []
        self._queued_ack = up_to_seq
        return self._flush_queue(now_ms)

    def tick(self, now_ms: int) -> list[Action]:
        if self._pending and now_ms - self._pending[1] > CONTROL_TIMEOUT_MS:
            return self._close(
                CloseKind.TIMEOUT, f"control point: no answer to {ids.Opcode(self._pending[0]).name} "
                f"within {CONTROL_TIMEOUT_MS} ms")
        quiet_ms = now_ms - max(self._last_frame_ms, self._last_status_check_ms)
        if (self.state is State.STREAMING and self._pending is None
                and quiet_ms >= IDLE_STATUS_CHECK_MS):
            self._last_status_check_ms = now_ms
            return [self._request(ids.Opcode.GET_STATUS,
                                  control.get_status(self.key, self._known_boot_id()), now_ms)]
        return []

    def disconnected(self, close: SessionClose) -> None:
        """The adapter ended the connection (or saw it end); the first close wins."""
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self.close = close

    # -- helpers ---------------------------------------------------------------
    def _missing(self, now_ms: int) -> list[Action]:
        # Something before this frame never arrived: fetch it again rather than commit over it.
        self.stats.missing += 1
        if self._replay_requested_for != self.expected_seq:
            return self._queue_replay(self.expected_seq, now_ms)
        return []

    def _utc_ms(self, boot_id: int, ticks: np.ndarray) -> np.ndarray:
        """UTC in ms for ticks of boot_id, -1 where the boot has no SET_TIME anchor."""
        anchor = self.anchors.get(boot_id)
        if anchor is None:
            return np.full(ticks.shape, -1, dtype=np.int64)
        tick0, utc0 = anchor
        return np.rint(utc0 + (ticks - tick0) * MS_PER_TICK).astype(np.int64)

    def _lost(self, gap: DecodedGap) -> LostSamples:
        first, last = (int(u) if u >= 0 else None for u in self._utc_ms(
            gap.boot_id, np.array([gap.first_tick, gap.last_tick], dtype=np.int64)))
        return LostSamples(boot_id=gap.boot_id, seq_at=gap.seq_at, first_tick=gap.first_tick,
                           last_tick=gap.last_tick, first_utc_ms=first, last_utc_ms=last,
                           counts=gap.counts)

    def _batch(self, frame: DecodedFrame, skip: int) -> SampleBatch:
        ticks = frame.tick[skip:]
        gaps = tuple(self._lost(g) for g in self._pending_gaps.values())
        self._pending_gaps.clear()
        return SampleBatch(
            device_id=self.device_id, boot_id=frame.boot_id, seq=frame.seq[skip:],
            tick=ticks, utc_ms=self._utc_ms(frame.boot_id, ticks),
            channel=frame.channel[skip:], value=frame.value[skip:],
            historical=frame.historical, gaps=gaps)

    def _known_boot_id(self) -> int:
        """The boot_id requests are signed for. Set from the status record before SET_TIME,
        so every request after it (GET_STATUS, REPLAY, ACK, IDENTIFY, SET_CONFIG) has one."""
        if self.boot_id is None:
            raise RuntimeError(f"{self.device_id}: no boot_id yet (status record not read)")
        return self.boot_id

    def _request(self, opcode: int, data: bytes, now_ms: int) -> WriteControl:
        self._pending = (int(opcode), now_ms)
        return WriteControl(int(opcode), data)

    def _replay(self, from_seq: int, now_ms: int) -> WriteControl:
        self._replay_requested_for = from_seq
        return self._request(ids.Opcode.REPLAY, control.replay(self.key, self._known_boot_id(), from_seq),
                             now_ms)

    def _queue_replay(self, from_seq: int, now_ms: int) -> list[Action]:
        self._queued_replay = from_seq
        self._replay_requested_for = from_seq
        return self._flush_queue(now_ms)

    def _flush_queue(self, now_ms: int) -> list[Action]:
        if self._pending is not None or self.state is not State.STREAMING:
            return []
        if self._queued_ack is not None:
            seq, self._queued_ack = self._queued_ack, None
            self._acked_seq = seq
            return [self._request(ids.Opcode.ACK, control.ack(self.key, self._known_boot_id(), seq),
                                  now_ms)]
        if self._queued_replay is not None:
            seq, self._queued_replay = self._queued_replay, None
            return [self._replay(seq, now_ms)]
        if self._queued_identify is not None:
            seconds, self._queued_identify = self._queued_identify, None
            return [self._request(ids.Opcode.IDENTIFY,
                                  control.identify(self.key, self._known_boot_id(), seconds), now_ms)]
        return self._next_config(now_ms)

    # -- remote configuration ---------------------------------------------------
    def _plan_config(self) -> None:
        """The SET_CONFIGs that bring the patch to the desired version: keys whose value
        differs from its status record, and keys the record lacks unless already applied."""
        self._config_plan_due = False
        if self._desired is None:
            return
        ver, cfg = self._desired
        known = dict(self.status.config) if self.status is not None else {}
        if self._config_inflight is not None:
            known.pop(self._config_inflight[1], None)   # its answer may still change it
        self._config_todo = [
            (key, value) for key, value in sorted(cfg.items())
            if (known[key] != value if key in known else not self._desired_applied)]
        if self._config_todo or not self._desired_applied:
            self._config_attempt = ver

    def _next_config(self, now_ms: int) -> list[Action]:
        if self._config_plan_due:
            self._plan_config()
        if self._config_attempt is None or self._desired is None:
            return []
        if self._config_todo:
            key, value = self._config_todo.pop(0)
            self._config_inflight = (self._config_attempt, key, value)
            return [self._request(ids.Opcode.SET_CONFIG,
                                  control.set_config(self.key, self._known_boot_id(), key, value), now_ms)]
        ver, cfg = self._desired
        self._config_attempt = None
        self._desired_applied = True
        return [ConfigApplied(ver, dict(cfg))]

    def _config_answered(self, status: int) -> list[Action]:
        inflight, self._config_inflight = self._config_inflight, None
        if inflight is None:
            return []
        ver, key, value = inflight
        current = ver == self._config_attempt
        if status == ids.Status.SUCCESS:
            if self.status is not None and key in self.status.config:
                self.status = dataclasses.replace(
                    self.status, config={**self.status.config, key: value})
            return []
        if not current:
            return []   # a superseded version's request: the new plan covers that key
        # Reported, not retried in this session (the next connection tries again).
        self._config_todo = []
        self._config_attempt = None
        return [ConfigFailed(ver, key, value, ids.Status(status))]

    def _close(self, kind: CloseKind, detail: str) -> list[Action]:
        self.state = State.CLOSED
        self.close = SessionClose(kind, detail)
        return [Disconnect(self.close)]
