"""The patch session state machine, driven without BLE: bytes and times in, actions out."""

import hashlib
import hmac
import struct

import pytest

from gateway.protocol import constants as ids
from gateway.protocol.frames import encode_frame, encode_gap_frame
from gateway.session import (
    SERIAL_NUMBER_UUID,
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
from gateway.values import CloseKind, SessionClose

KEY = bytes(range(32))
DEVICE = "3f2a0c11d4e59b07"
BOOT = 7
NONCE = 0xC0FFEE42
COUNTER0 = 17     # the patch's next_counter when the session reads Status
T0_MS = 1_800_000_000_000


def status_record(boot_id=BOOT, oldest=0, next_seq=0, tick=1000, flush_s=1, nonce=NONCE,
                  next_counter=COUNTER0):
    return struct.pack("<BBBBHIIIHHHHHHBHII", 2, 0, 1, 0, boot_id, oldest, next_seq, tick, 0,
                       10, 5, 1, 60, 300, 90, flush_s, nonce, next_counter)


def _tag(msg: bytes, key=KEY) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()[:8]


def tagged_response(request: bytes, opcode, status=0, payload=b"", key=KEY, nonce=NONCE) -> bytes:
    """The patch's indication answering `request` (protocol.md §5), written out here."""
    body = bytes([0x80, int(opcode), int(status)]) + payload
    return body + _tag(b"dtcr" + struct.pack("<I", nonce) + request[-8:] + body, key)


def response(s: PatchSession, opcode, status=0, payload=b"") -> bytes:
    """The patch's answer to the request the session is waiting on."""
    assert s.pending_request is not None and s.pending_request[0] == opcode
    return tagged_response(s.pending_request, opcode, status, payload)


def request_tag_ok(data: bytes, nonce=NONCE) -> bool:
    body, tag = data[:-8], data[-8:]
    return hmac.compare_digest(_tag(b"dtcp" + struct.pack("<I", nonce) + body), tag)


def operand_u32(action) -> int:
    return struct.unpack_from("<I", action.data, 5)[0]


def streaming_session(committed=-1, oldest=0, next_seq=0, tick_at_set=1000, flush_s=1):
    return handshake(committed, oldest, next_seq, tick_at_set, flush_s)[0]


def handshake(committed=-1, oldest=0, next_seq=0, tick_at_set=1000, flush_s=1):
    """A session through the handshake; with the actions the REPLAY answer brought."""
    s = PatchSession(DEVICE, KEY, committed)
    assert s.start(247, T0_MS) == [ReadChar(SERIAL_NUMBER_UUID), ReadChar(ids.STATUS_CHAR_UUID)]
    assert s.read_result(SERIAL_NUMBER_UUID, DEVICE.encode(), T0_MS) == []
    actions = s.read_result(ids.STATUS_CHAR_UUID, status_record(), T0_MS)
    assert actions[0] == Subscribe(ids.CONTROL_POINT_CHAR_UUID)
    set_time = actions[1]
    assert isinstance(set_time, WriteControl) and set_time.opcode == ids.Opcode.SET_TIME
    assert request_tag_ok(set_time.data)
    assert struct.unpack_from("<Q", set_time.data, 5)[0] == T0_MS
    actions = s.control_response(
        response(s, ids.Opcode.SET_TIME, 0, struct.pack("<HI", BOOT, tick_at_set)), T0_MS + 20)
    [get_status] = actions
    assert get_status.opcode == ids.Opcode.GET_STATUS and request_tag_ok(get_status.data)
    actions = s.control_response(
        response(s, ids.Opcode.GET_STATUS, 0,
                 status_record(oldest=oldest, next_seq=next_seq, flush_s=flush_s)),
        T0_MS + 30)
    assert actions[0] == Subscribe(ids.SAMPLES_CHAR_UUID)
    replay = actions[1]
    assert replay.opcode == ids.Opcode.REPLAY and request_tag_ok(replay.data)
    assert operand_u32(replay) == committed + 1
    after_replay = s.control_response(
        response(s, ids.Opcode.REPLAY, 0, struct.pack(
            "<II", min(max(oldest, committed + 1), next_seq), next_seq)), T0_MS + 40)
    assert s.state is State.STREAMING
    return s, after_replay


def frame(first_seq, n, tick0=1000, boot_id=BOOT, key=KEY, gaps_before=False):
    samples = [(0, tick0 + 10 * i, 4224 + i) for i in range(n)]
    return encode_frame(key, boot_id, first_seq, tick0, samples, gaps_before=gaps_before)


def gap_notice(seq_at, counts=(2, 4, 0, 0), first_tick=900, last_tick=990, boot_id=BOOT):
    return encode_gap_frame(KEY, boot_id, seq_at, first_tick, last_tick, counts)


def test_handshake_reaches_streaming():
    s = streaming_session(committed=41, oldest=30, next_seq=60)
    assert s.expected_seq == 42


def test_samples_committed_before_a_lost_ack_are_acknowledged_at_the_next_handshake():
    # The link dropped after the store committed up to 41 but before ACK(41) reached the
    # patch: it still holds 30..59. Acknowledge 41 right after the REPLAY answer, not only
    # once a newer sample commits (the patch may have nothing newer).
    s, actions = handshake(committed=41, oldest=30, next_seq=60)
    [ack] = actions
    assert ack.opcode == ids.Opcode.ACK and operand_u32(ack) == 41 and request_tag_ok(ack.data)
    assert s.control_response(response(s, ids.Opcode.ACK), T0_MS + 50) == []
    assert s.committed(41, T0_MS + 60) == []          # acknowledged once only
    [ack] = s.committed(45, T0_MS + 70)
    assert operand_u32(ack) == 45


@pytest.mark.parametrize("committed, oldest, next_seq", [
    (41, 42, 60),    # the ACK arrived: the patch holds only what the store needs
    (41, 60, 60),    # nothing held at all
    (-1, 0, 10),     # a new patch: nothing committed yet
])
def test_no_handshake_ack_when_the_patch_holds_nothing_already_stored(committed, oldest,
                                                                      next_seq):
    assert handshake(committed, oldest, next_seq)[1] == []


def test_handshake_ack_never_goes_past_the_patch_next_seq():
    # A patch whose log restarted below what the store has (a replaced flash, a reset seq
    # floor): acknowledge what it holds, never seqs it has not handed out yet.
    s, actions = handshake(committed=41, oldest=30, next_seq=36)
    [ack] = actions
    assert operand_u32(ack) == 35


def test_low_mtu_is_refused_with_a_clear_reason():
    s = PatchSession(DEVICE, KEY, -1)
    [action] = s.start(23, T0_MS)
    assert isinstance(action, Disconnect) and "MTU 23 < 64" in action.close.detail
    assert action.close.kind is CloseKind.MTU_TOO_SMALL and s.close == action.close
    assert s.state is State.CLOSED


def test_identity_mismatch_closes():
    s = PatchSession(DEVICE, KEY, -1)
    s.start(247, T0_MS)
    [action] = s.read_result(SERIAL_NUMBER_UUID, b"ffffffffffffffff", T0_MS)
    assert isinstance(action, Disconnect) and "identity mismatch" in action.close.detail
    assert action.close.kind is CloseKind.IDENTITY_MISMATCH


def test_frame_becomes_commit_with_utc_from_set_time_anchor():
    s = streaming_session(tick_at_set=1000)
    [commit] = s.notification(frame(0, 5, tick0=1000), T0_MS + 50)
    assert isinstance(commit, Commit)
    batch = commit.batch
    assert batch.seq.tolist() == [0, 1, 2, 3, 4]
    assert batch.value.tolist() == [4224, 4225, 4226, 4227, 4228]
    # anchor: tick 1000 at the middle of the SET_TIME round trip (T0 + 10 ms); 1 tick = 100 ms
    assert batch.utc_ms.tolist() == [T0_MS + 10 + 1000 * i for i in range(5)]
    assert s.expected_seq == 5


def test_duplicates_are_dropped_and_overlaps_trimmed():
    s = streaming_session()
    s.notification(frame(0, 5), T0_MS)
    assert s.notification(frame(0, 5), T0_MS) == []
    [commit] = s.notification(frame(3, 5), T0_MS)
    assert commit.batch.seq.tolist() == [5, 6, 7]
    assert s.stats.samples_duplicate == 5 + 2


def test_gap_asks_for_replay_once_and_is_not_committed():
    s = streaming_session()
    s.notification(frame(0, 5), T0_MS)
    [replay] = s.notification(frame(10, 5), T0_MS)
    assert replay.opcode == ids.Opcode.REPLAY
    assert operand_u32(replay) == 5
    assert s.notification(frame(15, 5), T0_MS) == []   # same gap: no second REPLAY
    assert s.stats.missing == 2
    s.control_response(response(s, ids.Opcode.REPLAY, 0, struct.pack("<II", 0, 20)), T0_MS)
    [commit] = s.notification(frame(5, 5), T0_MS)
    assert commit.batch.seq[0] == 5


def tagged_frame(records: bytes, version=2, first_seq=0, base_tick=1000) -> bytes:
    body = struct.pack("<BBHII", version, 0, BOOT, first_seq, base_tick) + records
    return body + _tag(body)


@pytest.mark.parametrize("data, code", [
    (b"\x01\x00", "TRUNCATED"),
    (b"\x03" + bytes(29), "BAD_VERSION"),
    # temperature, UV 3 ticks later, temperature one tick before its stride (protocol.md §4)
    (tagged_frame(bytes.fromhex("30 00 73 00 28")), "BAD_VALUE"),
    (tagged_frame(bytes.fromhex("40 32 40"), version=1), "TRUNCATED_RECORD"),
])
def test_malformed_frames_are_counted_and_dropped(data, code):
    s = streaming_session()
    assert s.notification(data, T0_MS) == []
    assert s.stats.frames_rejected[code] == 1
    [commit] = s.notification(frame(0, 3), T0_MS)   # the session goes on
    assert len(commit.batch) == 3


def test_frames_of_older_firmware_are_committed_alike():
    s = streaming_session()
    samples = [(0, 1000 + 10 * i, 4224 + i) for i in range(3)]
    [commit] = s.notification(encode_frame(KEY, BOOT, 0, 1000, samples, version=1), T0_MS)
    [commit2] = s.notification(frame(3, 3, tick0=1030), T0_MS)   # version 2 right after
    assert list(commit.batch.seq) + list(commit2.batch.seq) == list(range(6))


def test_frame_under_another_key_is_rejected():
    s = streaming_session()
    assert s.notification(frame(0, 3, key=b"\x00" * 32), T0_MS) == []
    assert s.stats.frames_rejected["BAD_TAG"] == 1
    assert s.expected_seq == 0


def test_ack_only_after_commit_and_one_request_at_a_time():
    s = streaming_session()
    s.notification(frame(0, 5), T0_MS)
    [ack] = s.committed(4, T0_MS)
    assert ack.opcode == ids.Opcode.ACK and operand_u32(ack) == 4
    assert request_tag_ok(ack.data)
    s.notification(frame(5, 5), T0_MS)
    assert s.committed(9, T0_MS) == []     # previous ACK not yet answered
    [ack2] = s.control_response(response(s, ids.Opcode.ACK), T0_MS)
    assert operand_u32(ack2) == 9
    assert s.committed(9, T0_MS) == []     # already acknowledged


def test_error_status_closes_naming_the_request():
    s = PatchSession(DEVICE, KEY, -1)
    s.start(247, T0_MS)
    s.read_result(SERIAL_NUMBER_UUID, DEVICE.encode(), T0_MS)
    s.read_result(ids.STATUS_CHAR_UUID, status_record(), T0_MS)
    [action] = s.control_response(response(s, ids.Opcode.SET_TIME, ids.Status.AUTH_FAILED), T0_MS)
    assert isinstance(action, Disconnect)
    assert "SET_TIME" in action.close.detail and "AUTH_FAILED" in action.close.detail
    assert action.close.kind is CloseKind.AUTH_FAILED


def test_unanswered_control_request_times_out():
    s = streaming_session()
    s.notification(frame(0, 1), T0_MS)
    s.committed(0, T0_MS)
    assert s.tick(T0_MS + 1000) == []
    [action] = s.tick(T0_MS + 10_000)
    assert isinstance(action, Disconnect) and "ACK" in action.close.detail
    assert action.close.kind is CloseKind.TIMEOUT


def test_samples_from_patch_that_lost_data_resume_at_its_oldest():
    s = streaming_session(committed=9, oldest=20, next_seq=30)
    assert s.stats.seqs_skipped == 10
    [commit] = s.notification(frame(20, 3), T0_MS)
    assert commit.batch.seq.tolist() == [20, 21, 22]


def test_hole_inside_the_patch_log_is_skipped_on_the_replay_answer():
    # The patch holds 50..99 and 116..139: a reboot left 100..115 unused. Frames never span
    # the hole; the frame after it is a gap, and the REPLAY answer (the first seq at or after
    # from_seq that the patch holds) moves the session past it.
    s = streaming_session(committed=49, oldest=50, next_seq=140)
    [commit] = s.notification(frame(50, 50), T0_MS)
    assert commit.batch.seq.tolist()[-1] == 99
    [replay] = s.notification(frame(116, 10, boot_id=BOOT + 1), T0_MS)
    assert operand_u32(replay) == 100
    s.control_response(response(s, ids.Opcode.REPLAY, 0, struct.pack("<II", 116, 140)), T0_MS)
    assert s.expected_seq == 116 and s.stats.seqs_skipped == 16
    [commit] = s.notification(frame(116, 10, boot_id=BOOT + 1), T0_MS)
    assert commit.batch.seq.tolist() == list(range(116, 126))


def test_replayed_frame_overtaking_the_answer_past_a_hole_converges():
    s = streaming_session(committed=99, oldest=116, next_seq=140)
    assert s.expected_seq == 116 and s.stats.seqs_skipped == 16   # hole at the log's start
    s = streaming_session(committed=79, oldest=80, next_seq=140)   # hole 100..115 ahead
    s.notification(frame(80, 20), T0_MS)
    [replay] = s.notification(frame(116, 4), T0_MS)
    assert s.notification(frame(120, 4), T0_MS) == []   # same gap, no second REPLAY
    s.control_response(response(s, ids.Opcode.REPLAY, 0, struct.pack("<II", 116, 140)), T0_MS)
    [replay] = s.notification(frame(124, 4), T0_MS)     # sent before the patch rewound
    assert operand_u32(replay) == 116
    s.control_response(response(s, ids.Opcode.REPLAY, 0, struct.pack("<II", 116, 140)), T0_MS)
    [commit] = s.notification(frame(116, 8), T0_MS)
    assert commit.batch.seq.tolist() == list(range(116, 124))


def test_quiet_link_with_samples_missing_is_resynced():
    s = streaming_session()
    s.notification(frame(0, 3), T0_MS + 100)
    assert s.tick(T0_MS + 5_000) == []                       # not quiet long enough
    [check] = s.tick(T0_MS + 11_000)                           # nothing for 10 s: ask
    assert check.opcode == ids.Opcode.GET_STATUS
    actions = s.control_response(
        response(s, ids.Opcode.GET_STATUS, 0, status_record(oldest=0, next_seq=8)), T0_MS + 11_050)
    [replay] = actions                                         # it holds 3..7, we never got them
    assert replay.opcode == ids.Opcode.REPLAY
    assert operand_u32(replay) == 3
    assert s.stats.resyncs == 1


def test_quiet_link_check_waits_for_the_patchs_flush_interval():
    # At the firmware's default flush interval (60 s) live samples wait up to a minute on the
    # patch: asking sooner would REPLAY them and store live data as historical.
    s = streaming_session(flush_s=60)
    s.notification(frame(0, 3), T0_MS + 100)
    assert s.tick(T0_MS + 60_000) == []
    assert s.tick(T0_MS + 100 + 66_000) == []              # flush 60 s + UV period 5 s + 1 s
    [check] = s.tick(T0_MS + 100 + 67_000)                 # + the 2 s margin: ask
    assert check.opcode == ids.Opcode.GET_STATUS


def test_quiet_link_with_nothing_missing_just_checks():
    s = streaming_session()
    s.notification(frame(0, 3), T0_MS + 100)
    [check] = s.tick(T0_MS + 11_000)
    assert s.control_response(
        response(s, ids.Opcode.GET_STATUS, 0, status_record(oldest=0, next_seq=3)),
        T0_MS + 11_050) == []
    assert s.tick(T0_MS + 12_000) == []                        # not again right away


def test_samples_of_an_earlier_boot_get_utc_from_its_stored_anchor():
    s = PatchSession(DEVICE, KEY, -1, anchors={BOOT - 1: (500, float(T0_MS - 3_600_000))})
    s.start(247, T0_MS)
    s.read_result(SERIAL_NUMBER_UUID, DEVICE.encode(), T0_MS)
    s.read_result(ids.STATUS_CHAR_UUID, status_record(), T0_MS)
    s.control_response(response(s, ids.Opcode.SET_TIME, 0, struct.pack("<HI", BOOT, 1000)),
                       T0_MS + 20)
    assert s.new_anchor == (BOOT, 1000, T0_MS + 10)
    s.control_response(response(s, ids.Opcode.GET_STATUS, 0, status_record()), T0_MS + 30)
    s.control_response(response(s, ids.Opcode.REPLAY, 0, struct.pack("<II", 0, 10)), T0_MS + 40)
    [old] = s.notification(frame(0, 2, tick0=600, boot_id=BOOT - 1), T0_MS + 50)
    assert old.batch.utc_ms.tolist() == [T0_MS - 3_600_000 + 10_000, T0_MS - 3_600_000 + 11_000]
    [unknown] = s.notification(frame(2, 1, tick0=5, boot_id=BOOT - 2), T0_MS + 60)
    assert unknown.batch.utc_ms.tolist() == [-1]      # a boot nobody set the time for


def test_gap_notice_commits_with_the_frame_after_it():
    s = streaming_session(tick_at_set=1000)
    s.notification(frame(0, 5), T0_MS)
    assert s.notification(gap_notice(5), T0_MS) == []        # held until its frame
    [commit] = s.notification(frame(5, 3, tick0=1000, gaps_before=True), T0_MS)
    [lost] = commit.batch.gaps
    assert (lost.boot_id, lost.seq_at, lost.counts, lost.count) == (BOOT, 5, (2, 4, 0, 0), 6)
    # UTC from the SET_TIME anchor (tick 1000 at T0 + 10 ms), 100 ms per tick
    assert (lost.first_utc_ms, lost.last_utc_ms) == (T0_MS + 10 - 10_000, T0_MS + 10 - 1_000)
    assert commit.batch.seq.tolist() == [5, 6, 7]
    [commit] = s.notification(frame(8, 2), T0_MS)
    assert commit.batch.gaps == ()                           # committed once
    assert s.stats.gap_notices == 1


def test_frame_flagged_gaps_before_without_its_notice_is_replayed():
    s = streaming_session()
    s.notification(frame(0, 5), T0_MS)
    [replay] = s.notification(frame(5, 3, gaps_before=True), T0_MS)   # the notice was lost
    assert replay.opcode == ids.Opcode.REPLAY
    assert operand_u32(replay) == 5
    assert s.expected_seq == 5 and s.stats.gap_notices_missed == 1
    s.control_response(response(s, ids.Opcode.REPLAY, 0, struct.pack("<II", 5, 8)), T0_MS)
    s.notification(gap_notice(5), T0_MS)
    [commit] = s.notification(frame(5, 3, gaps_before=True), T0_MS)
    assert [g.seq_at for g in commit.batch.gaps] == [5]


def test_gap_in_a_hole_arrives_with_the_first_held_sample_and_replays_dedupe():
    # A gap at seq 5 of boot 6, then a reboot: seqs 5..20 hold nothing, boot 7 resumes at 21.
    s = streaming_session(committed=4)
    s.notification(gap_notice(5, boot_id=6, counts=(1, 0, 0, 0)), T0_MS)
    s.notification(gap_notice(5, boot_id=6, counts=(1, 0, 0, 0)), T0_MS)   # replayed twice
    [replay] = s.notification(frame(21, 2, gaps_before=True), T0_MS)
    assert operand_u32(replay) == 5
    s.control_response(response(s, ids.Opcode.REPLAY, 0, struct.pack("<II", 21, 23)), T0_MS)
    [commit] = s.notification(frame(21, 2, gaps_before=True), T0_MS)
    [lost] = commit.batch.gaps
    assert (lost.boot_id, lost.seq_at) == (6, 5)
    assert lost.first_utc_ms is None      # boot 6 never had its time set
    assert commit.batch.seq.tolist() == [21, 22]


def test_gap_notices_before_a_duplicate_frame_are_not_committed_again():
    s = streaming_session()
    s.notification(gap_notice(0), T0_MS)
    [commit] = s.notification(frame(0, 4, gaps_before=True), T0_MS)
    assert len(commit.batch.gaps) == 1
    s.notification(gap_notice(0), T0_MS)                      # a REPLAY sends both again
    assert s.notification(frame(0, 4, gaps_before=True), T0_MS) == []
    [commit] = s.notification(frame(4, 1), T0_MS)
    assert commit.batch.gaps == ()


def test_malformed_gap_notice_is_counted_and_dropped():
    s = streaming_session()
    bad = bytearray(gap_notice(0))
    bad[-1] ^= 1
    assert s.notification(bytes(bad), T0_MS) == []
    assert s.stats.frames_rejected["BAD_TAG"] == 1 and s.stats.gap_notices == 0


# -- remote configuration (set_desired; docs/mqtt.md `{subject}/desired`) ------------------
# status_record() config: temp 10, uv 5, uv_fast 1, hydration 60, battery 300, flush 1
K = ids.ConfigKey


def set_config_of(action):
    assert isinstance(action, WriteControl) and action.opcode == ids.Opcode.SET_CONFIG
    assert request_tag_ok(action.data)
    return struct.unpack_from("<BI", action.data, 5)


def test_desired_config_sends_only_differing_keys_one_at_a_time_then_applied():
    s = streaming_session()
    [first] = s.set_desired(3, {K.TEMP_PERIOD_S: 10, K.UV_PERIOD_S: 7, K.BATTERY_PERIOD_S: 600},
                            T0_MS)
    assert set_config_of(first) == (K.UV_PERIOD_S, 7)        # temp is 10 already: not sent
    assert s.set_desired(3, {K.TEMP_PERIOD_S: 10, K.UV_PERIOD_S: 7, K.BATTERY_PERIOD_S: 600},
                         T0_MS) == []                         # the same version again: nothing
    [second] = s.control_response(response(s, ids.Opcode.SET_CONFIG), T0_MS)
    assert set_config_of(second) == (K.BATTERY_PERIOD_S, 600)
    [done] = s.control_response(response(s, ids.Opcode.SET_CONFIG), T0_MS)
    assert done == ConfigApplied(3, {K.TEMP_PERIOD_S: 10, K.UV_PERIOD_S: 7,
                                     K.BATTERY_PERIOD_S: 600})
    assert s.status.config[K.UV_PERIOD_S] == 7
    assert s.state is State.STREAMING


def test_acks_go_first_while_configuration_is_sent():
    s = streaming_session()
    [cfg1] = s.set_desired(1, {K.TEMP_PERIOD_S: 2, K.UV_PERIOD_S: 3}, T0_MS)
    s.notification(frame(0, 5), T0_MS)
    assert s.committed(4, T0_MS) == []                         # SET_CONFIG in flight
    [ack] = s.control_response(response(s, ids.Opcode.SET_CONFIG), T0_MS)
    assert ack.opcode == ids.Opcode.ACK                        # waiting ACK before the next key
    [cfg2] = s.control_response(response(s, ids.Opcode.ACK), T0_MS)
    assert set_config_of(cfg2) == (K.UV_PERIOD_S, 3)
    s.notification(frame(5, 5), T0_MS)
    assert s.committed(9, T0_MS) == []
    [ack2] = s.control_response(response(s, ids.Opcode.SET_CONFIG), T0_MS)
    assert ack2.opcode == ids.Opcode.ACK
    [done] = s.control_response(response(s, ids.Opcode.ACK), T0_MS)
    assert isinstance(done, ConfigApplied) and done.ver == 1


def test_desired_given_before_connecting_is_sent_once_streaming():
    s = PatchSession(DEVICE, KEY, -1)
    assert s.set_desired(5, {K.HYDRATION_PERIOD_S: 60, K.FLUSH_INTERVAL_S: 2}) == []
    s.start(247, T0_MS)
    s.read_result(SERIAL_NUMBER_UUID, DEVICE.encode(), T0_MS)
    s.read_result(ids.STATUS_CHAR_UUID, status_record(), T0_MS)
    s.control_response(response(s, ids.Opcode.SET_TIME, 0, struct.pack("<HI", BOOT, 1000)), T0_MS)
    s.control_response(response(s, ids.Opcode.GET_STATUS, 0, status_record()), T0_MS)
    [cfg] = s.control_response(response(s, ids.Opcode.REPLAY, 0, struct.pack("<II", 0, 0)), T0_MS)
    assert set_config_of(cfg) == (K.FLUSH_INTERVAL_S, 2)   # the record says 1: sent
    [done] = s.control_response(response(s, ids.Opcode.SET_CONFIG), T0_MS)
    assert done == ConfigApplied(5, {K.HYDRATION_PERIOD_S: 60, K.FLUSH_INTERVAL_S: 2})


def test_desired_already_applied_and_matching_sends_nothing():
    s = streaming_session(flush_s=2)
    assert s.set_desired(5, {K.TEMP_PERIOD_S: 10, K.FLUSH_INTERVAL_S: 2}, T0_MS,
                         already_applied=True) == []
    s = streaming_session(flush_s=2)
    [cfg] = s.set_desired(5, {K.TEMP_PERIOD_S: 20, K.FLUSH_INTERVAL_S: 2}, T0_MS,
                          already_applied=True)            # the patch lost it: send again
    assert set_config_of(cfg) == (K.TEMP_PERIOD_S, 20)
    [done] = s.control_response(response(s, ids.Opcode.SET_CONFIG), T0_MS)
    assert isinstance(done, ConfigApplied)


def test_desired_matching_the_patch_is_applied_at_once():
    s = streaming_session()
    assert s.set_desired(2, {K.UV_PERIOD_S: 5}, T0_MS) == [ConfigApplied(2, {K.UV_PERIOD_S: 5})]


def test_set_config_error_is_reported_without_closing_and_not_retried():
    s = streaming_session()
    [cfg] = s.set_desired(4, {K.TEMP_PERIOD_S: 2, K.UV_PERIOD_S: 3}, T0_MS)
    [failed] = s.control_response(
        response(s, ids.Opcode.SET_CONFIG, ids.Status.INVALID_OPERAND), T0_MS)
    assert failed == ConfigFailed(4, K.TEMP_PERIOD_S, 2, ids.Status.INVALID_OPERAND)
    assert "temp_period_s" in failed.detail and "INVALID_OPERAND" in failed.detail
    assert s.state is State.STREAMING and s.close is None
    s.notification(frame(0, 2), T0_MS)
    [ack] = s.committed(1, T0_MS)                              # the session goes on
    assert ack.opcode == ids.Opcode.ACK
    assert s.control_response(response(s, ids.Opcode.ACK), T0_MS) == []   # no retry loop
    assert s.tick(T0_MS + 1000) == []


def test_other_error_answers_still_close():
    s = streaming_session()
    s.notification(frame(0, 2), T0_MS)
    s.committed(1, T0_MS)
    [action] = s.control_response(response(s, ids.Opcode.ACK, ids.Status.BUSY), T0_MS)
    assert isinstance(action, Disconnect) and "ACK" in action.close.detail
    assert action.close.kind is CloseKind.REQUEST_REFUSED


def test_newer_desired_replaces_what_is_left_to_send():
    s = streaming_session()
    [cfg] = s.set_desired(1, {K.TEMP_PERIOD_S: 2, K.UV_PERIOD_S: 3}, T0_MS)
    assert s.set_desired(2, {K.TEMP_PERIOD_S: 4}, T0_MS) == []     # one request at a time
    [cfg2] = s.control_response(response(s, ids.Opcode.SET_CONFIG), T0_MS)
    assert set_config_of(cfg2) == (K.TEMP_PERIOD_S, 4)
    [done] = s.control_response(response(s, ids.Opcode.SET_CONFIG), T0_MS)
    assert done == ConfigApplied(2, {K.TEMP_PERIOD_S: 4})


def test_unanswered_set_config_times_out_like_any_request():
    s = streaming_session()
    s.set_desired(1, {K.TEMP_PERIOD_S: 2}, T0_MS)
    [action] = s.tick(T0_MS + 10_000)
    assert isinstance(action, Disconnect) and "SET_CONFIG" in action.close.detail
    assert action.close.kind is CloseKind.TIMEOUT


def test_identify_waits_behind_acks_and_an_error_does_not_close():
    s = streaming_session()
    s.notification(frame(0, 2), T0_MS)
    [ack] = s.committed(1, T0_MS)
    assert s.identify(9, T0_MS) == []                          # the ACK is in flight
    [ident] = s.control_response(response(s, ids.Opcode.ACK), T0_MS)
    assert ident.opcode == ids.Opcode.IDENTIFY and request_tag_ok(ident.data)
    assert ident.data[5] == 9
    assert s.control_response(response(s, ids.Opcode.IDENTIFY, ids.Status.BUSY), T0_MS) == []
    assert s.state is State.STREAMING and s.identify_refusals == 1


# -- an authenticated control channel (protocol.md §5, issue 11) ----------------------------

def test_requests_are_tagged_for_the_boot_nonce_with_one_counter_each():
    s = PatchSession(DEVICE, KEY, -1)
    s.start(247, T0_MS)
    s.read_result(SERIAL_NUMBER_UUID, DEVICE.encode(), T0_MS)
    [_, set_time] = s.read_result(ids.STATUS_CHAR_UUID, status_record(), T0_MS)
    sent = [set_time]
    sent += s.control_response(response(s, ids.Opcode.SET_TIME, 0, struct.pack("<HI", BOOT, 9)),
                               T0_MS)
    sent += s.control_response(response(s, ids.Opcode.GET_STATUS, 0, status_record()), T0_MS)[1:]
    counters = [struct.unpack_from("<I", a.data, 1)[0] for a in sent]
    assert counters == [COUNTER0, COUNTER0 + 1, COUNTER0 + 2]   # from Status, one per request
    assert all(request_tag_ok(a.data) for a in sent)
    assert not any(request_tag_ok(a.data, nonce=NONCE ^ 1) for a in sent)


def replay_pending(committed=99, next_seq=1100):
    """A session that asked REPLAY(committed + 1) and waits for the answer."""
    s = PatchSession(DEVICE, KEY, committed)
    s.start(247, T0_MS)
    s.read_result(SERIAL_NUMBER_UUID, DEVICE.encode(), T0_MS)
    s.read_result(ids.STATUS_CHAR_UUID, status_record(), T0_MS)
    s.control_response(response(s, ids.Opcode.SET_TIME, 0, struct.pack("<HI", BOOT, 1000)), T0_MS)
    [_, replay] = s.control_response(
        response(s, ids.Opcode.GET_STATUS, 0, status_record(oldest=100, next_seq=next_seq)), T0_MS)
    assert replay.opcode == ids.Opcode.REPLAY and operand_u32(replay) == committed + 1
    return s


def test_rewritten_replay_answer_is_refused_and_nothing_is_acknowledged():
    # Issue 11, reproduced: the patch holds 100..1099 and answers REPLAY(100) with oldest_seq
    # 100; an attacker rewrites it to 1000 in flight. Untagged, that made the session skip 900
    # seqs and acknowledge up to 1099, deleting 900 samples never stored.
    s = replay_pending()
    genuine = response(s, ids.Opcode.REPLAY, 0, struct.pack("<II", 100, 1100))
    tampered = genuine[:3] + struct.pack("<I", 1000) + genuine[7:]
    [action] = s.control_response(tampered, T0_MS + 40)
    assert isinstance(action, Disconnect) and s.state is State.CLOSED
    assert action.close.kind is CloseKind.BAD_RESPONSE_TAG
    assert action.close.detail.startswith(
        "unauthenticated control point response to REPLAY refused")
    assert s.stats.responses_rejected == 1
    assert s.expected_seq == 100 and s.stats.seqs_skipped == 0      # nothing skipped
    actions = s.notification(frame(1000, 100), T0_MS + 50)           # what the attacker wanted
    actions += s.committed(1099, T0_MS + 60)
    actions += s.tick(T0_MS + 70)
    assert not [a for a in actions if isinstance(a, (Commit, WriteControl))]   # no ACK at all


def test_the_genuine_replay_answer_is_taken():
    s = replay_pending()
    s.control_response(response(s, ids.Opcode.REPLAY, 0, struct.pack("<II", 100, 1100)), T0_MS)
    assert s.state is State.STREAMING and s.expected_seq == 100
    [commit] = s.notification(frame(100, 5), T0_MS)
    [ack] = s.committed(104, T0_MS)
    assert operand_u32(ack) == 104


@pytest.mark.parametrize("forge", [
    pytest.param(lambda s, good: good[:-8], id="untagged"),
    pytest.param(lambda s, good: good[:-1] + bytes([good[-1] ^ 1]), id="tag_flipped"),
    pytest.param(lambda s, good: tagged_response(s.pending_request, ids.Opcode.REPLAY, 0,
                                                 good[3:11], key=bytes(32)), id="other_key"),
    pytest.param(lambda s, good: tagged_response(s.pending_request, ids.Opcode.REPLAY, 0,
                                                 good[3:11], nonce=NONCE + 1), id="other_boot"),
    pytest.param(lambda s, good: tagged_response(bytes(s.pending_request[:-8]) + bytes(8),
                                                 ids.Opcode.REPLAY, 0, good[3:11]),
                 id="other_request"),
])
def test_untagged_or_wrongly_tagged_answers_are_refused(forge):
    s = replay_pending()
    good = response(s, ids.Opcode.REPLAY, 0, struct.pack("<II", 100, 1100))
    [action] = s.control_response(forge(s, good), T0_MS)
    assert isinstance(action, Disconnect) and action.close.kind is CloseKind.BAD_RESPONSE_TAG
    assert s.stats.responses_rejected == 1 and s.expected_seq == 100


def test_an_earlier_answer_replayed_does_not_answer_a_later_request():
    s = streaming_session()
    s.notification(frame(0, 5), T0_MS)
    s.committed(4, T0_MS)
    first_answer = response(s, ids.Opcode.ACK)
    s.control_response(first_answer, T0_MS)
    s.notification(frame(5, 5), T0_MS)
    [ack2] = s.committed(9, T0_MS)
    [action] = s.control_response(first_answer, T0_MS)     # captured, played back
    assert isinstance(action, Disconnect) and s.stats.responses_rejected == 1
    assert action.close.kind is CloseKind.BAD_RESPONSE_TAG


def test_an_answer_nobody_asked_for_is_counted_and_ignored():
    s = streaming_session()
    assert s.pending_request is None
    assert s.control_response(bytes([0x80, 2, 0]) + bytes(8), T0_MS) == []
    assert s.stats.responses_rejected == 1 and s.state is State.STREAMING


def test_patch_with_another_key_is_named_as_such():
    # The patch answers AUTH_FAILED under its own key: the tag cannot be checked, the reason
    # says what it claimed in the words the link's key-mismatch alarm looks for.
    s = PatchSession(DEVICE, KEY, -1)
    s.start(247, T0_MS)
    s.read_result(SERIAL_NUMBER_UUID, DEVICE.encode(), T0_MS)
    [_, set_time] = s.read_result(ids.STATUS_CHAR_UUID, status_record(), T0_MS)
    answer = tagged_response(set_time.data, ids.Opcode.SET_TIME, ids.Status.AUTH_FAILED,
                             key=b"\x01" * 32)
    [action] = s.control_response(answer, T0_MS)
    assert action.close.kind is CloseKind.AUTH_FAILED   # the technician's retry rule
    assert action.close.detail.startswith("patch answered SET_TIME with AUTH_FAILED (response "
                                          "not authenticated")
    assert s.stats.responses_rejected == 1


def test_replay_answer_with_oldest_beyond_next_is_malformed():
    s = replay_pending()
    [action] = s.control_response(
        response(s, ids.Opcode.REPLAY, 0, struct.pack("<II", 1200, 1100)), T0_MS)
    assert isinstance(action, Disconnect) and action.close.kind is CloseKind.PROTOCOL_ERROR
    assert s.expected_seq == 100


def test_status_record_of_older_firmware_is_refused_clearly():
    s = PatchSession(DEVICE, KEY, -1)
    s.start(247, T0_MS)
    s.read_result(SERIAL_NUMBER_UUID, DEVICE.encode(), T0_MS)
    old = struct.pack("<BBBBHIIIHHHHHHB", 1, 0, 1, 0, BOOT, 0, 0, 1000, 0, 10, 5, 1, 60, 300, 90)
    [action] = s.read_result(ids.STATUS_CHAR_UUID, old, T0_MS)
    assert isinstance(action, Disconnect) and action.close.kind is CloseKind.BAD_STATUS
    assert "predates authenticated" in action.close.detail


@pytest.mark.parametrize("opcode", [ids.Opcode.ACK, ids.Opcode.SET_CONFIG, ids.Opcode.IDENTIFY])
def test_a_stale_counter_reconnects_to_read_the_patchs_again(opcode):
    # The patch ran a request whose answer we never saw: ours is behind. Whatever the request
    # (even a SET_CONFIG, which is not the clinic's configuration failing), the session ends
    # with a kind that retries at once, and the next connection reads the counter from Status.
    s = streaming_session()
    if opcode == ids.Opcode.ACK:
        s.notification(frame(0, 2), T0_MS)
        s.committed(1, T0_MS)
    elif opcode == ids.Opcode.SET_CONFIG:
        s.set_desired(1, {K.TEMP_PERIOD_S: 2}, T0_MS)
    else:
        s.identify(3, T0_MS)
    actions = s.control_response(response(s, opcode, ids.Status.STALE_REQUEST), T0_MS)
    assert [type(a) for a in actions] == [Disconnect]
    assert actions[0].close.kind is CloseKind.PROTOCOL_ERROR
    assert "STALE_REQUEST" in actions[0].close.detail


def test_two_frames_before_a_commit_ack_the_committed_seq_not_the_last_received():
    s = streaming_session()
    assert [type(a) for a in s.notification(frame(0, 5), T0_MS)] == [Commit]
    assert [type(a) for a in s.notification(frame(5, 5, tick0=1050), T0_MS)] == [Commit]
    [ack] = s.committed(4, T0_MS)   # only the first frame is durable so far
    assert operand_u32(ack) == 4
    [ack2] = s.control_response(response(s, ids.Opcode.ACK), T0_MS) or s.committed(9, T0_MS)
    assert operand_u32(ack2) == 9


@pytest.mark.parametrize("payload", [b"", b"\x01\x02\x03", status_record() + b"\x00" * 7])
def test_malformed_get_status_answer_closes_the_handshake_cleanly_and_is_counted(payload):
    s = PatchSession(DEVICE, KEY, -1)
    s.start(247, T0_MS)
    s.read_result(SERIAL_NUMBER_UUID, DEVICE.encode(), T0_MS)
    s.read_result(ids.STATUS_CHAR_UUID, status_record(), T0_MS)
    s.control_response(response(s, ids.Opcode.SET_TIME, 0, struct.pack("<HI", BOOT, 1000)), T0_MS)
    [action] = s.control_response(response(s, ids.Opcode.GET_STATUS, 0, payload), T0_MS)
    assert isinstance(action, Disconnect) and action.close.kind is CloseKind.PROTOCOL_ERROR
    assert "malformed" in action.close.detail
    assert s.state is State.CLOSED and s.stats.malformed_responses == 1


def test_malformed_idle_status_answer_while_streaming_is_counted_and_asked_again():
    s = streaming_session()
    [check] = s.tick(T0_MS + 40 + 10_000)
    assert check.opcode == ids.Opcode.GET_STATUS
    assert s.control_response(response(s, ids.Opcode.GET_STATUS, 0, b"\x05"), T0_MS + 10_050) == []
    assert s.state is State.STREAMING and s.stats.malformed_responses == 1
    [again] = s.tick(T0_MS + 40 + 20_100)
    assert again.opcode == ids.Opcode.GET_STATUS


def test_timeouts_run_on_the_monotonic_clock_whatever_the_utc_offset():
    # now_ms is monotonic (here small numbers); UTC only enters SET_TIME, through the offset
    s = PatchSession(DEVICE, KEY, -1, utc_offset_ms=T0_MS)
    s.start(247, 1_000)
    s.read_result(SERIAL_NUMBER_UUID, DEVICE.encode(), 1_000)
    _, set_time = s.read_result(ids.STATUS_CHAR_UUID, status_record(), 1_000)
    assert struct.unpack_from("<Q", set_time.data, 5)[0] == T0_MS + 1_000
    s.utc_offset_ms += 3_600_000   # a wall-clock step the session is told of does not count
    assert s.tick(1_000 + 4_000) == []
    [timeout] = s.tick(1_000 + 5_001)
    assert isinstance(timeout, Disconnect) and timeout.close.kind is CloseKind.TIMEOUT
    assert "SET_TIME" in timeout.close.detail


def test_clock_step_reanchors_and_flags_times_stamped_against_the_old_clock():
    s = streaming_session()
    [commit] = s.notification(frame(0, 2, tick0=1100), T0_MS + 100)
    assert not commit.batch.time_uncertain
    assert commit.batch.utc_ms[0] == T0_MS + 10 + 100 * 100
    [set_time] = s.clock_stepped(3_600_000, 1, T0_MS + 200)   # the wall clock jumped +1 h
    assert set_time.opcode == ids.Opcode.SET_TIME and request_tag_ok(set_time.data)
    assert struct.unpack_from("<Q", set_time.data, 5)[0] == T0_MS + 200 + 3_600_000
    [commit] = s.notification(frame(2, 2, tick0=1200), T0_MS + 210)
    assert commit.batch.time_uncertain, "stamped against the anchor from before the step"
    assert s.control_response(response(s, ids.Opcode.SET_TIME, 0, struct.pack("<HI", BOOT, 1102)),
                              T0_MS + 220) == []
    assert s.state is State.STREAMING and s.new_anchor is not None
    [commit] = s.notification(frame(4, 2, tick0=1300), T0_MS + 300)
    assert not commit.batch.time_uncertain
    assert commit.batch.utc_ms[0] == T0_MS + 210 + 3_600_000 + 198 * 100


def test_a_link_lost_closes_the_session_the_first_close_wins_and_nothing_is_acked_after():
    s = streaming_session(committed=9, oldest=10, next_seq=20)
    [commit] = s.notification(frame(10, 3), T0_MS + 100)
    assert isinstance(commit, Commit)
    lost = SessionClose(CloseKind.LINK_LOST, "link lost")
    s.disconnected(lost)
    assert s.state is State.CLOSED and s.close == lost
    s.disconnected(SessionClose(CloseKind.BLE_ERROR, "later"))
    assert s.close == lost
    # the commit lands after the link went: nothing to send it on
    assert s.committed(12, T0_MS + 200) == [] and s.tick(T0_MS + 60_000) == []


def test_a_gap_at_large_seqs_is_replayed_once_not_again_after_the_answer():
    base = 1_000_000     # seqs far past the small ints CPython shares (equality, not identity)
    s = streaming_session(committed=base - 1, oldest=base, next_seq=base + 40)
    assert isinstance(s.notification(frame(base, 5), T0_MS)[0], Commit)
    [replay] = s.notification(frame(base + 10, 5), T0_MS)
    assert operand_u32(replay) == base + 5
    assert s.notification(frame(base + 15, 5), T0_MS) == []
    after = s.control_response(
        response(s, ids.Opcode.REPLAY, 0, struct.pack("<II", base + 5, base + 40)), T0_MS)
    assert after == [], "the REPLAY asked once covers both frames past the gap"


def test_set_time_carries_the_gateway_utc_at_the_handshake():
    offset = 1_764_000_000_000 - T0_MS     # UTC = monotonic ms + offset
    s = PatchSession(DEVICE, KEY, -1, utc_offset_ms=offset)
    s.start(247, T0_MS)
    s.read_result(SERIAL_NUMBER_UUID, DEVICE.encode(), T0_MS)
    _, set_time = s.read_result(ids.STATUS_CHAR_UUID, status_record(), T0_MS + 7)
    assert struct.unpack_from("<Q", set_time.data, 5)[0] == 1_764_000_000_007


@pytest.mark.parametrize("seconds, ok", [(0, False), (1, True), (255, True), (256, False)])
def test_identify_takes_1_to_255_seconds(seconds, ok):
    s = streaming_session()
    if ok:
        [request] = s.identify(seconds, T0_MS)
        assert request.opcode == ids.Opcode.IDENTIFY and request.data[5] == seconds
    else:
        with pytest.raises(ValueError, match=f"seconds {seconds}"):
            s.identify(seconds, T0_MS)
