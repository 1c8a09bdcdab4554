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
from gateway.values import CloseKind

KEY = bytes(range(32))
DEVICE = "3f2a0c11d4e59b07"
BOOT = 7
T0_MS = 1_800_000_000_000


def status_record(boot_id=BOOT, oldest=0, next_seq=0, tick=1000):
    return struct.pack("<BBBBHIIIHHHHHHB", 1, 0, 1, 0, boot_id, oldest, next_seq, tick, 0,
                       10, 5, 1, 60, 300, 90)


def response(opcode, status=0, payload=b""):
    return bytes([0x80, int(opcode), int(status)]) + payload


def request_tag_ok(data: bytes, boot_id=BOOT) -> bool:
    body, tag = data[:-8], data[-8:]
    expected = hmac.new(KEY, b"dtcp" + struct.pack("<H", boot_id) + body, hashlib.sha256)
    return hmac.compare_digest(expected.digest()[:8], tag)


def streaming_session(committed=-1, oldest=0, next_seq=0, tick_at_set=1000):
    s = PatchSession(DEVICE, KEY, committed)
    assert s.start(247, T0_MS) == [ReadChar(SERIAL_NUMBER_UUID), ReadChar(ids.STATUS_CHAR_UUID)]
    assert s.read_result(SERIAL_NUMBER_UUID, DEVICE.encode(), T0_MS) == []
    actions = s.read_result(ids.STATUS_CHAR_UUID, status_record(), T0_MS)
    assert actions[0] == Subscribe(ids.CONTROL_POINT_CHAR_UUID)
    set_time = actions[1]
    assert isinstance(set_time, WriteControl) and set_time.opcode == ids.Opcode.SET_TIME
    assert request_tag_ok(set_time.data)
    assert struct.unpack_from("<Q", set_time.data, 1)[0] == T0_MS
    actions = s.control_response(
        response(ids.Opcode.SET_TIME, 0, struct.pack("<HI", BOOT, tick_at_set)), T0_MS + 20)
    [get_status] = actions
    assert get_status.opcode == ids.Opcode.GET_STATUS and request_tag_ok(get_status.data)
    actions = s.control_response(
        response(ids.Opcode.GET_STATUS, 0, status_record(oldest=oldest, next_seq=next_seq)),
        T0_MS + 30)
    assert actions[0] == Subscribe(ids.SAMPLES_CHAR_UUID)
    replay = actions[1]
    assert replay.opcode == ids.Opcode.REPLAY and request_tag_ok(replay.data)
    assert struct.unpack_from("<I", replay.data, 1)[0] == committed + 1
    s.control_response(response(ids.Opcode.REPLAY, 0, struct.pack("<II", oldest, next_seq)),
                       T0_MS + 40)
    assert s.state is State.STREAMING
    return s


def frame(first_seq, n, tick0=1000, boot_id=BOOT, key=KEY, gaps_before=False):
    samples = [(0, tick0 + 10 * i, 4224 + i) for i in range(n)]
    return encode_frame(key, boot_id, first_seq, tick0, samples, gaps_before=gaps_before)


def gap_notice(seq_at, counts=(2, 4, 0, 0), first_tick=900, last_tick=990, boot_id=BOOT):
    return encode_gap_frame(KEY, boot_id, seq_at, first_tick, last_tick, counts)


def test_handshake_reaches_streaming():
    s = streaming_session(committed=41, oldest=30, next_seq=60)
    assert s.expected_seq == 42


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
    assert struct.unpack_from("<I", replay.data, 1)[0] == 5
    assert s.notification(frame(15, 5), T0_MS) == []   # same gap: no second REPLAY
    assert s.stats.missing == 2
    s.control_response(response(ids.Opcode.REPLAY, 0, struct.pack("<II", 0, 20)), T0_MS)
    [commit] = s.notification(frame(5, 5), T0_MS)
    assert commit.batch.seq[0] == 5


@pytest.mark.parametrize("data, code", [
    (b"\x01\x00", "TRUNCATED"),
    (b"\x02" + bytes(29), "BAD_VERSION"),
])
def test_malformed_frames_are_counted_and_dropped(data, code):
    s = streaming_session()
    assert s.notification(data, T0_MS) == []
    assert s.stats.frames_rejected[code] == 1
    [commit] = s.notification(frame(0, 3), T0_MS)   # the session goes on
    assert len(commit.batch) == 3


def test_frame_under_another_key_is_rejected():
    s = streaming_session()
    assert s.notification(frame(0, 3, key=b"\x00" * 32), T0_MS) == []
    assert s.stats.frames_rejected["BAD_TAG"] == 1
    assert s.expected_seq == 0


def test_ack_only_after_commit_and_one_request_at_a_time():
    s = streaming_session()
    s.notification(frame(0, 5), T0_MS)
    [ack] = s.committed(4, T0_MS)
    assert ack.opcode == ids.Opcode.ACK and struct.unpack_from("<I", ack.data, 1)[0] == 4
    assert request_tag_ok(ack.data)
    s.notification(frame(5, 5), T0_MS)
    assert s.committed(9, T0_MS) == []     # previous ACK not yet answered
    [ack2] = s.control_response(response(ids.Opcode.ACK), T0_MS)
    assert struct.unpack_from("<I", ack2.data, 1)[0] == 9
    assert s.committed(9, T0_MS) == []     # already acknowledged


def test_error_status_closes_naming_the_request():
    s = PatchSession(DEVICE, KEY, -1)
    s.start(247, T0_MS)
    s.read_result(SERIAL_NUMBER_UUID, DEVICE.encode(), T0_MS)
    s.read_result(ids.STATUS_CHAR_UUID, status_record(), T0_MS)
    [action] = s.control_response(response(ids.Opcode.SET_TIME, ids.Status.AUTH_FAILED), T0_MS)
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
    assert struct.unpack_from("<I", replay.data, 1)[0] == 100
    s.control_response(response(ids.Opcode.REPLAY, 0, struct.pack("<II", 116, 140)), T0_MS)
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
    s.control_response(response(ids.Opcode.REPLAY, 0, struct.pack("<II", 116, 140)), T0_MS)
    [replay] = s.notification(frame(124, 4), T0_MS)     # sent before the patch rewound
    assert struct.unpack_from("<I", replay.data, 1)[0] == 116
    s.control_response(response(ids.Opcode.REPLAY, 0, struct.pack("<II", 116, 140)), T0_MS)
    [commit] = s.notification(frame(116, 8), T0_MS)
    assert commit.batch.seq.tolist() == list(range(116, 124))


def test_quiet_link_with_samples_missing_is_resynced():
    s = streaming_session()
    s.notification(frame(0, 3), T0_MS + 100)
    assert s.tick(T0_MS + 5_000) == []                       # not quiet long enough
    [check] = s.tick(T0_MS + 11_000)                           # nothing for 10 s: ask
    assert check.opcode == ids.Opcode.GET_STATUS
    actions = s.control_response(
        response(ids.Opcode.GET_STATUS, 0, status_record(oldest=0, next_seq=8)), T0_MS + 11_050)
    [replay] = actions                                         # it holds 3..7, we never got them
    assert replay.opcode == ids.Opcode.REPLAY
    assert struct.unpack_from("<I", replay.data, 1)[0] == 3
    assert s.stats.resyncs == 1


def test_quiet_link_with_nothing_missing_just_checks():
    s = streaming_session()
    s.notification(frame(0, 3), T0_MS + 100)
    [check] = s.tick(T0_MS + 11_000)
    assert s.control_response(
        response(ids.Opcode.GET_STATUS, 0, status_record(oldest=0, next_seq=3)),
        T0_MS + 11_050) == []
    assert s.tick(T0_MS + 12_000) == []                        # not again right away


def test_samples_of_an_earlier_boot_get_utc_from_its_stored_anchor():
    s = PatchSession(DEVICE, KEY, -1, anchors={BOOT - 1: (500, float(T0_MS - 3_600_000))})
    s.start(247, T0_MS)
    s.read_result(SERIAL_NUMBER_UUID, DEVICE.encode(), T0_MS)
    s.read_result(ids.STATUS_CHAR_UUID, status_record(), T0_MS)
    s.control_response(response(ids.Opcode.SET_TIME, 0, struct.pack("<HI", BOOT, 1000)),
                       T0_MS + 20)
    assert s.new_anchor == (BOOT, 1000, T0_MS + 10)
    s.control_response(response(ids.Opcode.GET_STATUS, 0, status_record()), T0_MS + 30)
    s.control_response(response(ids.Opcode.REPLAY, 0, struct.pack("<II", 0, 10)), T0_MS + 40)
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
    assert struct.unpack_from("<I", replay.data, 1)[0] == 5
    assert s.expected_seq == 5 and s.stats.gap_notices_missed == 1
    s.control_response(response(ids.Opcode.REPLAY, 0, struct.pack("<II", 5, 8)), T0_MS)
    s.notification(gap_notice(5), T0_MS)
    [commit] = s.notification(frame(5, 3, gaps_before=True), T0_MS)
    assert [g.seq_at for g in commit.batch.gaps] == [5]


def test_gap_in_a_hole_arrives_with_the_first_held_sample_and_replays_dedupe():
    # A gap at seq 5 of boot 6, then a reboot: seqs 5..20 hold nothing, boot 7 resumes at 21.
    s = streaming_session(committed=4)
    s.notification(gap_notice(5, boot_id=6, counts=(1, 0, 0, 0)), T0_MS)
    s.notification(gap_notice(5, boot_id=6, counts=(1, 0, 0, 0)), T0_MS)   # replayed twice
    [replay] = s.notification(frame(21, 2, gaps_before=True), T0_MS)
    assert struct.unpack_from("<I", replay.data, 1)[0] == 5
    s.control_response(response(ids.Opcode.REPLAY, 0, struct.pack("<II", 21, 23)), T0_MS)
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
# status_record() periods: temp 10, uv 5, uv_fast 1, hydration 60, battery 300
K = ids.ConfigKey


def set_config_of(action):
    assert isinstance(action, WriteControl) and action.opcode == ids.Opcode.SET_CONFIG
    assert request_tag_ok(action.data)
    return struct.unpack_from("<BI", action.data, 1)


def test_desired_config_sends_only_differing_keys_one_at_a_time_then_applied():
    s = streaming_session()
    [first] = s.set_desired(3, {K.TEMP_PERIOD_S: 10, K.UV_PERIOD_S: 7, K.BATTERY_PERIOD_S: 600},
                            T0_MS)
    assert set_config_of(first) == (K.UV_PERIOD_S, 7)        # temp is 10 already: not sent
    assert s.set_desired(3, {K.TEMP_PERIOD_S: 10, K.UV_PERIOD_S: 7, K.BATTERY_PERIOD_S: 600},
                         T0_MS) == []                         # the same version again: nothing
    [second] = s.control_response(response(ids.Opcode.SET_CONFIG), T0_MS)
    assert set_config_of(second) == (K.BATTERY_PERIOD_S, 600)
    [done] = s.control_response(response(ids.Opcode.SET_CONFIG), T0_MS)
    assert done == ConfigApplied(3, {K.TEMP_PERIOD_S: 10, K.UV_PERIOD_S: 7,
                                     K.BATTERY_PERIOD_S: 600})
    assert s.status.config[K.UV_PERIOD_S] == 7
    assert s.state is State.STREAMING


def test_acks_go_first_while_configuration_is_sent():
    s = streaming_session()
    [cfg1] = s.set_desired(1, {K.TEMP_PERIOD_S: 2, K.UV_PERIOD_S: 3}, T0_MS)
    s.notification(frame(0, 5), T0_MS)
    assert s.committed(4, T0_MS) == []                         # SET_CONFIG in flight
    [ack] = s.control_response(response(ids.Opcode.SET_CONFIG), T0_MS)
    assert ack.opcode == ids.Opcode.ACK                        # waiting ACK before the next key
    [cfg2] = s.control_response(response(ids.Opcode.ACK), T0_MS)
    assert set_config_of(cfg2) == (K.UV_PERIOD_S, 3)
    s.notification(frame(5, 5), T0_MS)
    assert s.committed(9, T0_MS) == []
    [ack2] = s.control_response(response(ids.Opcode.SET_CONFIG), T0_MS)
    assert ack2.opcode == ids.Opcode.ACK
    [done] = s.control_response(response(ids.Opcode.ACK), T0_MS)
    assert isinstance(done, ConfigApplied) and done.ver == 1


def test_desired_given_before_connecting_is_sent_once_streaming():
    s = PatchSession(DEVICE, KEY, -1)
    assert s.set_desired(5, {K.HYDRATION_PERIOD_S: 60, K.FLUSH_INTERVAL_S: 2}) == []
    s.start(247, T0_MS)
    s.read_result(SERIAL_NUMBER_UUID, DEVICE.encode(), T0_MS)
    s.read_result(ids.STATUS_CHAR_UUID, status_record(), T0_MS)
    s.control_response(response(ids.Opcode.SET_TIME, 0, struct.pack("<HI", BOOT, 1000)), T0_MS)
    s.control_response(response(ids.Opcode.GET_STATUS, 0, status_record()), T0_MS)
    [cfg] = s.control_response(response(ids.Opcode.REPLAY, 0, struct.pack("<II", 0, 0)), T0_MS)
    assert set_config_of(cfg) == (K.FLUSH_INTERVAL_S, 2)   # not in the status record: sent
    [done] = s.control_response(response(ids.Opcode.SET_CONFIG), T0_MS)
    assert done == ConfigApplied(5, {K.HYDRATION_PERIOD_S: 60, K.FLUSH_INTERVAL_S: 2})


def test_desired_already_applied_and_matching_sends_nothing():
    s = streaming_session()
    assert s.set_desired(5, {K.TEMP_PERIOD_S: 10, K.FLUSH_INTERVAL_S: 2}, T0_MS,
                         already_applied=True) == []
    s = streaming_session()
    [cfg] = s.set_desired(5, {K.TEMP_PERIOD_S: 20, K.FLUSH_INTERVAL_S: 2}, T0_MS,
                          already_applied=True)            # the patch lost it: send again
    assert set_config_of(cfg) == (K.TEMP_PERIOD_S, 20)
    [done] = s.control_response(response(ids.Opcode.SET_CONFIG), T0_MS)
    assert isinstance(done, ConfigApplied)


def test_desired_matching_the_patch_is_applied_at_once():
    s = streaming_session()
    assert s.set_desired(2, {K.UV_PERIOD_S: 5}, T0_MS) == [ConfigApplied(2, {K.UV_PERIOD_S: 5})]


def test_set_config_error_is_reported_without_closing_and_not_retried():
    s = streaming_session()
    [cfg] = s.set_desired(4, {K.TEMP_PERIOD_S: 2, K.UV_PERIOD_S: 3}, T0_MS)
    [failed] = s.control_response(
        response(ids.Opcode.SET_CONFIG, ids.Status.INVALID_OPERAND), T0_MS)
    assert failed == ConfigFailed(4, K.TEMP_PERIOD_S, 2, ids.Status.INVALID_OPERAND)
    assert "temp_period_s" in failed.detail and "INVALID_OPERAND" in failed.detail
    assert s.state is State.STREAMING and s.close is None
    s.notification(frame(0, 2), T0_MS)
    [ack] = s.committed(1, T0_MS)                              # the session goes on
    assert ack.opcode == ids.Opcode.ACK
    assert s.control_response(response(ids.Opcode.ACK), T0_MS) == []   # no retry loop
    assert s.tick(T0_MS + 1000) == []


def test_other_error_answers_still_close():
    s = streaming_session()
    s.notification(frame(0, 2), T0_MS)
    s.committed(1, T0_MS)
    [action] = s.control_response(response(ids.Opcode.ACK, ids.Status.BUSY), T0_MS)
    assert isinstance(action, Disconnect) and "ACK" in action.close.detail
    assert action.close.kind is CloseKind.REQUEST_REFUSED


def test_newer_desired_replaces_what_is_left_to_send():
    s = streaming_session()
    [cfg] = s.set_desired(1, {K.TEMP_PERIOD_S: 2, K.UV_PERIOD_S: 3}, T0_MS)
    assert s.set_desired(2, {K.TEMP_PERIOD_S: 4}, T0_MS) == []     # one request at a time
    [cfg2] = s.control_response(response(ids.Opcode.SET_CONFIG), T0_MS)
    assert set_config_of(cfg2) == (K.TEMP_PERIOD_S, 4)
    [done] = s.control_response(response(ids.Opcode.SET_CONFIG), T0_MS)
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
    [ident] = s.control_response(response(ids.Opcode.ACK), T0_MS)
    assert ident.opcode == ids.Opcode.IDENTIFY and request_tag_ok(ident.data)
    assert ident.data[1] == 9
    assert s.control_response(response(ids.Opcode.IDENTIFY, ids.Status.BUSY), T0_MS) == []
    assert s.state is State.STREAMING and s.identify_refusals == 1
