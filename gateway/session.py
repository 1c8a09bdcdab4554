"""One patch's session as a sans-I/O state machine (docs/protocol.md, design.md §3).

connect → MTU (refuse below 64) → identity (Serial Number, Status) → SET_TIME → GET_STATUS
→ subscribe → REPLAY from last committed seq + 1 → stream → ACK after durable commit (and,
right after the REPLAY answer, an ACK of what an earlier connection committed but whose ACK
the link lost, if the patch's status shows it still holds such samples).

The session never touches BLE, SQLite or clocks: the adapter feeds it what happened (with the
current time of a monotonic clock in ms: every timeout is immune to wall-clock steps) and
carries out the actions it returns, in order. UTC is that time plus `utc_offset_ms`, used only
for SET_TIME. After the adapter reports a wall-clock step (`clock_stepped`), the session sends
SET_TIME again; until its answer, and for any boot anchored before the step, sample times
are flagged `time_uncertain` rather than silently shifted. Frames become `Commit`
actions holding only samples the store does not have yet, contiguous from the last committed
seq; a gap (a rejected frame, or seqs the patch has no sample for) is healed with REPLAY
instead of being acknowledged over: its answer says where the patch's next sample is.

Control Point requests are tagged for the patch's boot nonce and carry a counter one higher
per request, both read from the Status record (protocol.md §5): the patch runs each at most
once. A response is acted on only once its tag proves it is the patch's answer to the request
pending: any other response closes the session and is counted (`responses_rejected`), so a
rewritten REPLAY answer can neither skip seqs nor lead to an ACK beyond what was stored.

Remote configuration (`set_desired`, docs/mqtt.md `{subject}/desired`): once streaming, the
session sends SET_CONFIG for each desired key whose value differs from the patch's status
record,
one request at a time behind any waiting ACK or REPLAY, then emits `ConfigApplied`. A SET_CONFIG
the patch answers with an error status ends that attempt with `ConfigFailed` and does not
close the session (every other error status still does).
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from gateway.protocol import constants as ids
from gateway.protocol import control
from gateway.protocol.frames import DecodedFrame, DecodedGap, FrameError, decode_frame
from gateway.values import CloseKind, LostSamples, SampleBatch, SessionClose

MIN_MTU = 64
CONTROL_TIMEOUT_MS = 5_000
# No frame for this long while streaming: ask the patch what it holds, and REPLAY what we
# never received (anti-entropy for a notification lost below the session). The patch holds
# live samples up to its flush interval before it sends a frame, so the check waits that
# long, plus its shortest sampling period and a margin (quiet_link_ms): asking sooner would
# REPLAY samples still on their way as live ones.
IDLE_STATUS_CHECK_MS = 10_000
IDLE_CHECK_MARGIN_MS = 2_000
MS_PER_TICK = 100
SERIAL_NUMBER_UUID = "00002a25-0000-1000-8000-00805f9b34fb"


def quiet_link_ms(status: control.PatchStatus | None) -> int:
    """How long a streaming link may stay without frames before the idle check asks."""
    if status is None:
        return IDLE_STATUS_CHECK_MS
    cfg = status.config
    flush_s = cfg.get(ids.ConfigKey.FLUSH_INTERVAL_S, 0)
    shortest_s = min(cfg.get(key, 0) for key in (
        ids.ConfigKey.TEMP_PERIOD_S, ids.ConfigKey.UV_PERIOD_S,
        ids.ConfigKey.HYDRATION_PERIOD_S, ids.ConfigKey.BATTERY_PERIOD_S))
    return max(IDLE_STATUS_CHECK_MS, (flush_s + shortest_s) * 1000 + IDLE_CHECK_MARGIN_MS)


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
    responses_rejected: int = 0   # control point responses whose tag did not check, or that
                                  # answered no pending request
    frames_rejected: Counter[str] = dataclasses.field(default_factory=Counter)
    malformed_responses: int = 0  # control point answers that did not decode (protocol.md §5)


class PatchSession:
    def __init__(self, device_id: str, key: bytes, committed_seq: int,
                 anchors: dict[int, tuple[int, float]] | None = None, *,
                 utc_offset_ms: int = 0, clock_epoch: int = 0,
                 anchor_epochs: Mapping[int, int] | None = None):
        self.device_id = device_id
        self.key = key
        self.state = State.NEW
        self.expected_seq = committed_seq + 1   # the next seq the store needs
        self.boot_id: int | None = None
        self.boot_nonce: int | None = None   # requests are tagged for it (Status, §5)
        self._next_counter = 0               # the counter of the next request
        self.status: control.PatchStatus | None = None
        self.stats = SessionStats()
        self.close: SessionClose | None = None
        self._serial: str | None = None
        # boot_id -> (tick, utc_ms) from SET_TIME: this boot's, and earlier boots' (from the
        # store), so replayed samples of an earlier boot get their UTC too.
        self.anchors: dict[int, tuple[int, float]] = dict(anchors or {})
        # The gateway clock's epoch (wall-clock steps seen) when each anchor was taken; an
        # anchor not in `anchor_epochs` was taken before this gateway process's first step.
        self.utc_offset_ms = utc_offset_ms
        self.clock_epoch = clock_epoch
        self._anchor_epoch: dict[int, int] = {boot: (anchor_epochs or {}).get(boot, 0)
                                              for boot in self.anchors}
        self._queued_set_time = False
        self.new_anchor: tuple[int, int, float] | None = None   # to persist: boot, tick, utc
        self._pending: tuple[int, int, bytes] | None = None  # opcode, sent_at_ms, request
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
            self.boot_nonce = self.status.boot_nonce
            self._next_counter = self.status.next_counter
            if self._serial is None:
                return []
            self.state = State.SET_TIME
            return [Subscribe(ids.CONTROL_POINT_CHAR_UUID),
                    self._request(control.set_time, now_ms + self.utc_offset_ms,
                                  now_ms=now_ms)]
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

    def clock_stepped(self, utc_offset_ms: int, clock_epoch: int, now_ms: int) -> list[Action]:
        """The gateway's wall clock stepped: anchors taken before are now uncertain; send
        SET_TIME again (behind any waiting ACK) to anchor this boot to the new clock."""
        self.utc_offset_ms = utc_offset_ms
        self.clock_epoch = clock_epoch
        if self.state is State.CLOSED:
            return []
        self._queued_set_time = True
        return self._flush_queue(now_ms)

    def control_response(self, data: bytes, now_ms: int) -> list[Action]:
        if self._pending is None:   # nothing asked: no request to check it against
            self.stats.responses_rejected += 1
            return []
        opcode, sent_at_ms, request = self._pending
        try:
            response = control.decode_response(bytes(data), self.key, self._known_nonce(),
                                               request)
        except control.ResponseTagError as e:
            self.stats.responses_rejected += 1
            return self._close(*_refused_response(opcode, e))
        except control.ControlError as e:
            self.stats.malformed_responses += 1
            return self._close(CloseKind.PROTOCOL_ERROR,
                               f"malformed control point response: {e}")
        self._pending = None
        if response.status == ids.Status.STALE_REQUEST:
            # Our counter is behind the patch's (it ran a request we never saw answered):
            # a new connection reads the patch's counter from Status again.
            return self._close(
                CloseKind.PROTOCOL_ERROR,
                f"patch answered {ids.Opcode(response.opcode).name} with STALE_REQUEST: "
                f"request counter {int.from_bytes(request[1:5], 'little')} was used already")
        try:
            return self._answered(response, sent_at_ms, now_ms)
        except control.ControlError as e:
            # A payload that does not decode (protocol.md §5). The idle status check asks
            # again later; anything else cannot go on without its answer.
            self.stats.malformed_responses += 1
            name = ids.Opcode(response.opcode).name
            if response.opcode == ids.Opcode.GET_STATUS and self.state is State.STREAMING:
                return self._flush_queue(now_ms)
            return self._close(CloseKind.PROTOCOL_ERROR, f"malformed {name} answer: {e}")

    def _answered(self, response: control.ControlResponse, sent_at_ms: int,
                  now_ms: int) -> list[Action]:
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
            utc_ms = (sent_at_ms + now_ms) / 2 + self.utc_offset_ms
            self.anchors[set_time.boot_id] = (set_time.tick, utc_ms)
            self._anchor_epoch[set_time.boot_id] = self.clock_epoch
            self.new_anchor = (set_time.boot_id, set_time.tick, utc_ms)
            if self.state is State.STREAMING:   # re-anchored after a clock step
                return self._flush_queue(now_ms)
            self.boot_id = set_time.boot_id
            self.state = State.GET_STATUS
            actions.append(self._request(control.get_status, now_ms=now_ms))
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
            self._ack_what_is_stored_already(self.status)
            actions.append(Subscribe(ids.SAMPLES_CHAR_UUID))
            actions.append(self._replay(self.expected_seq, now_ms))
        elif response.opcode == ids.Opcode.REPLAY:
            replayed = control.decode_replay_result(response.payload)
            if replayed.oldest_seq > replayed.next_seq:
                return self._close(
                    CloseKind.PROTOCOL_ERROR,
                    f"malformed control point response: REPLAY oldest_seq "
                    f"{replayed.oldest_seq} > next_seq {replayed.next_seq}")
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

    def _ack_what_is_stored_already(self, status: control.PatchStatus) -> None:
        """The patch still holds samples the store committed in an earlier connection (its
        ACK was lost with the link): acknowledge them as soon as streaming begins, rather than
        only once a newer sample commits (never, if the patch has nothing newer). Never past
        the patch's own next seq."""
        up_to = min(self.expected_seq, status.next_seq) - 1
        if status.oldest_seq <= up_to:
            self._queued_ack = up_to

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
                and quiet_ms >= quiet_link_ms(self.status)):
            self._last_status_check_ms = now_ms
            return [self._request(control.get_status, now_ms=now_ms)]
        return []

    @property
    def pending_request(self) -> bytes | None:
        """The Control Point request awaiting its answer (the answer is bound to it)."""
        return self._pending[2] if self._pending is not None else None

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
            historical=frame.historical, gaps=gaps,
            time_uncertain=self._anchor_epoch.get(frame.boot_id, self.clock_epoch)
            < self.clock_epoch)

    def _known_nonce(self) -> int:
        """The boot nonce requests are tagged for. Set from the status record before SET_TIME,
        so every request (SET_TIME, GET_STATUS, REPLAY, ACK, IDENTIFY, SET_CONFIG) has one."""
        if self.boot_nonce is None:
            raise RuntimeError(f"{self.device_id}: no boot nonce yet (status record not read)")
        return self.boot_nonce

    def _request(self, encode: Callable[..., bytes], *operands: int, now_ms: int) -> WriteControl:
        """The request `encode(key, boot_nonce, counter, *operands)`, with the next counter."""
        data = encode(self.key, self._known_nonce(), self._next_counter, *operands)
        self._next_counter += 1
        self._pending = (data[0], now_ms, data)
        return WriteControl(data[0], data)

    def _replay(self, from_seq: int, now_ms: int) -> WriteControl:
        self._replay_requested_for = from_seq
        return self._request(control.replay, from_seq, now_ms=now_ms)

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
            return [self._request(control.ack, seq, now_ms=now_ms)]
        if self._queued_replay is not None:
            seq, self._queued_replay = self._queued_replay, None
            return [self._replay(seq, now_ms)]
        if self._queued_set_time:
            self._queued_set_time = False
            return [self._request(control.set_time, now_ms + self.utc_offset_ms,
                                  now_ms=now_ms)]
        if self._queued_identify is not None:
            seconds, self._queued_identify = self._queued_identify, None
            return [self._request(control.identify, seconds, now_ms=now_ms)]
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
            return [self._request(control.set_config, key, value, now_ms=now_ms)]
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


def _refused_response(opcode: int, e: control.ResponseTagError) -> tuple[CloseKind, str]:
    """How a response whose tag failed closes the session. A patch that holds another key (or
    none) answers AUTH_FAILED (NOT_PROVISIONED) under a tag we cannot check: close as that
    refusal, so a key mismatch still reaches the operator as one; anything else is an
    unauthenticated response, refused as such."""
    asked = ids.Opcode(opcode).name
    claimed = e.claimed_status
    if claimed in (ids.Status.AUTH_FAILED, ids.Status.NOT_PROVISIONED):
        kind = (CloseKind.AUTH_FAILED if claimed == ids.Status.AUTH_FAILED
                else CloseKind.REQUEST_REFUSED)
        return kind, (f"patch answered {asked} with {ids.Status(claimed).name} (response not "
                      f"authenticated: the patch's key is not the registry's, or it was forged)")
    return (CloseKind.BAD_RESPONSE_TAG,
            f"unauthenticated control point response to {asked} refused: {e}")
