"""The MQTT delivery policy without a broker: window, PUBACKs out of order, size limits and
splitting, expiry, poison isolation, parking and its retry (gateway/mqtt/delivery.py)."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import samples_message
from gateway.mqtt.delivery import (
    CONTROL_SLOTS,
    MIN_LEARNED_PAYLOAD_BYTES,
    READ_AHEAD_BYTES,
    DeliveryPolicy,
    ParkedRow,
    ParkKind,
    Refusal,
    publish_packet_bytes,
)
from gateway.outbox_message import OutboxMessage
from gateway.samples_split import split_samples_payload

NOW_MS = 1_764_262_800_000
TOPIC = "dermtwin/v1/gw/s1/delta"
SAMPLES_TOPIC = "dermtwin/v1/gw/s1/samples"
PROTOCOL_ERROR = 0x82


def row(i: int, payload: bytes | None = None, *, topic: str = TOPIC, expiry_s=None,
        created_ms: int = NOW_MS, qos: int = 1) -> OutboxMessage:
    return OutboxMessage(i, topic, payload if payload is not None else b"m%d" % i, qos, False,
                         expiry_s, created_ms)


def _seqs(payload: bytes) -> list[int]:
    return [s.seq for s in samples_message.decode(json.loads(payload))]


def samples_payload(first_seq: int, count: int) -> bytes:
    """A columnar samples message (gateway/samples_message.py): temperature and UV mixed,
    values that do not compress to a repeated difference."""
    seqs = list(range(first_seq, first_seq + count))
    channels = [(s * 7) % 3 % 2 for s in seqs]
    doc = samples_message.encode(7, seqs, [NOW_MS + 1000 * s + (s * s) % 97 for s in seqs],
                                 channels, [4200 + (s * 31) % 57 for s in seqs])
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def connected_policy(rows=(), *, receive_maximum=20, maximum_packet_size=None, **options):
    policy = DeliveryPolicy(splitters={"samples": split_samples_payload}, **options)
    policy.on_connected(receive_maximum, maximum_packet_size)
    feed(policy, rows)
    return policy


def feed(policy: DeliveryPolicy, rows) -> None:
    rows = list(rows)
    wanted = policy.rows_wanted()
    policy.add_rows(rows, max(wanted, len(rows) + 1))


class Client:
    """Stands in for paho: hands out packet ids and remembers what was sent."""

    def __init__(self) -> None:
        self.next_mid = 1
        self.sent = {}   # mid -> Send

    def take(self, policy: DeliveryPolicy, now_ms: int = NOW_MS) -> list[int]:
        mids = []
        for send in policy.take_sends(now_ms):
            mid, self.next_mid = self.next_mid, self.next_mid + 1
            policy.handed(send, mid)
            self.sent[mid] = send
            mids.append(mid)
        return mids


# ---- window ----------------------------------------------------------------------------


def test_window_is_the_receive_maximum_less_control_slots_and_refills_per_puback():
    policy = connected_policy([row(i) for i in range(1, 101)], receive_maximum=20)
    client = Client()
    first = client.take(policy)
    assert len(first) == 20 - CONTROL_SLOTS == policy.in_flight
    assert client.take(policy) == [], "nothing more until a PUBACK"
    for mid in first[:5]:
        policy.on_puback(mid)
    more = client.take(policy)
    assert len(more) == 5
    assert [client.sent[m].id for m in first + more] == list(
        range(1, 20 - CONTROL_SLOTS + 5 + 1))


def test_acknowledged_rows_are_written_in_batches_or_when_nothing_is_left_in_flight():
    policy = connected_policy([row(i) for i in range(1, 4)], receive_maximum=65535)
    assert policy.parked_to_retry([]) == [] and not policy.io_due()
    client = Client()
    first, second, third = client.take(policy)
    policy.on_puback(first)
    policy.on_puback(second)
    assert not policy.io_due(), "PUBACKs still to come: the rows wait for the batch or timer"
    policy.on_puback(third)
    assert policy.io_due(), "the burst is over: no reason to wait"
    assert policy.take_settled().delete_ids == [1, 2, 3]
    assert not policy.io_due()


def test_configured_window_below_the_receive_maximum_wins():
    policy = connected_policy([row(i) for i in range(1, 50)], receive_maximum=65535, window=7)
    assert len(Client().take(policy)) == 7


# ---- PUBACKs in any order: delete only on PUBACK ---------------------------------------


def test_pubacks_out_of_order_settle_exactly_the_acknowledged_rows():
    policy = connected_policy([row(i) for i in range(1, 11)], receive_maximum=65535)
    client = Client()
    mids = client.take(policy)
    assert policy.take_settled().delete_ids == [], "nothing settles before its PUBACK"
    order = mids[:]
    random.Random(3).shuffle(order)
    acked = []
    for mid in order[:6]:
        policy.on_puback(mid)
        acked.append(client.sent[mid].id)
    assert sorted(policy.take_settled().delete_ids) == sorted(acked)
    policy.on_puback(order[0])   # a duplicate PUBACK changes nothing
    policy.on_puback(99_999)     # nor one for a message that is not a row (state, answers)
    assert not policy.take_settled()
    for mid in order[6:]:
        policy.on_puback(mid)
    assert sorted(policy.take_settled().delete_ids) == sorted(set(range(1, 11)) - set(acked))
    assert (policy.published, policy.in_flight) == (10, 0)


def test_a_reconnect_resends_every_unacknowledged_row_oldest_first():
    receive_maximum = 10 + CONTROL_SLOTS
    policy = connected_policy([row(i) for i in range(1, 31)], receive_maximum=receive_maximum)
    client = Client()
    mids = client.take(policy)   # rows 1..10
    policy.on_puback(mids[3])   # row 4 is done
    policy.on_disconnected(0)
    assert client.take(policy) == [], "nothing is sent while disconnected"
    policy.on_connected(receive_maximum, None)
    again = client.take(policy)
    ids = [client.sent[m].id for m in again]
    assert ids == [1, 2, 3, 5, 6, 7, 8, 9, 10, 11]
    policy.on_puback(mids[0])   # a PUBACK of the old connection's packet id: ignored
    assert 1 not in policy.take_settled().delete_ids


def test_rows_are_read_ahead_until_the_outbox_has_no_more():
    policy = DeliveryPolicy(read_ahead_rows=8)
    assert policy.rows_wanted() == 0, "nothing read before a connection"
    policy.on_connected(20, None)
    assert policy.rows_wanted() == 8
    policy.add_rows([row(1), row(2)], asked=8)
    assert (policy.cursor, policy.rows_wanted()) == (2, 0), "the outbox had no more"
    policy.rows_committed()
    assert policy.rows_wanted() == 6


def test_read_ahead_holds_a_bounded_number_of_payload_bytes():
    policy = DeliveryPolicy()
    policy.on_connected(20, None)
    big = b"s" * (READ_AHEAD_BYTES // 4)
    policy.add_rows([row(i, big) for i in range(1, 4)], asked=3)
    policy.rows_committed()
    assert policy.rows_wanted() > 0
    policy.add_rows([row(4, big)], asked=1)
    policy.rows_committed()
    assert policy.rows_wanted() == 0, "4 MiB queued: read no more until some are sent"


def test_read_ahead_bytes_are_given_back_however_a_row_settles():
    """Acknowledged, split into parts, expired, refused by PUBACK, refused by the client,
    parked as too large, resent after a reconnect: once settled, a row's bytes no longer count
    against the read-ahead (a leak would stop reading for good)."""
    quarter = READ_AHEAD_BYTES // 4
    big = b"s" * quarter
    hour_ago = NOW_MS - 3_600_000
    policy = DeliveryPolicy(splitters={"samples": split_samples_payload})
    policy.on_connected(65535, None)
    client = Client()
    samples = samples_payload(1, 4000)
    rows = [row(1, big), row(2, big, expiry_s=60, created_ms=hour_ago), row(3, big),
            row(4, big), row(5, big), row(6, samples, topic=SAMPLES_TOPIC)]
    policy.add_rows(rows, asked=len(rows) + 1)
    assert policy.rows_wanted() == 0, "over the read-ahead bytes"
    mids = client.take(policy)   # row 2 expires on the way
    assert [client.sent[m].id for m in mids] == [1, 3, 4, 5, 6]
    policy.on_disconnected(0)
    policy.on_connected(65535, None)          # everything is sent again
    policy.set_max_payload_bytes(len(samples) // 3)   # row 6 now goes in parts; 1, 3-5 park
    mids = client.take(policy)
    assert {client.sent[m].id for m in mids} == {6}
    for mid in mids:
        policy.on_puback(mid)
    assert policy.split_rows == 1 and policy.published == 1
    policy.set_max_payload_bytes(None)
    for ok in (row(7, big), row(8, big), row(9, big)):
        policy.add_rows([ok], asked=1)
    policy.rows_committed()
    mids = client.take(policy)
    policy.on_puback(mids[0])                          # acknowledged
    policy.on_puback(mids[1], 0x87, "Not authorized")  # refused by the broker
    policy.client_refused(client.sent[mids[2]], "rejected by paho: test")
    settled = policy.take_settled()
    assert len(settled.parks) == 6 and policy.in_flight == 0 and policy.queued == 0
    policy.add_rows([row(i, big) for i in (10, 11, 12)], asked=3)
    policy.rows_committed()
    assert policy.rows_wanted() > 0, "three quarters of the read-ahead held, nothing leaked"


def test_rows_the_client_would_not_take_go_first_next_time():
    policy = connected_policy([row(i) for i in range(1, 6)], receive_maximum=65535)
    sends = policy.take_sends(NOW_MS)
    policy.handed(sends[0], 1)
    policy.not_handed(sends[1:])
    assert [s.id for s in policy.take_sends(NOW_MS)] == [2, 3, 4, 5]


# ---- size limits -----------------------------------------------------------------------


def test_oversize_row_that_cannot_be_split_is_refused_before_publishing_and_counted():
    policy = connected_policy([row(1, b"x" * 101), row(2, b"fits")], max_payload_bytes=100)
    client = Client()
    mids = client.take(policy)
    assert [client.sent[m].payload for m in mids] == [b"fits"]
    (park,) = policy.take_settled().parks
    assert (park.row_id, park.kind) == (1, ParkKind.TOO_LARGE)
    assert "101 bytes over the size limit 100" in park.reason
    assert policy.refusals[Refusal.OVER_SIZE_LIMIT] == 1


def test_brokers_maximum_packet_size_counts_topic_and_properties():
    payload = b"y" * 200
    size = publish_packet_bytes(TOPIC, len(payload), has_expiry=True)
    fits = connected_policy([row(1, payload, expiry_s=60)], maximum_packet_size=size)
    assert len(Client().take(fits)) == 1
    too_small = connected_policy([row(1, payload, expiry_s=60)], maximum_packet_size=size - 1)
    assert Client().take(too_small) == []
    assert too_small.take_settled().parks[0].kind is ParkKind.TOO_LARGE


def test_oversize_samples_row_goes_in_parts_and_settles_after_the_last_parts_puback():
    payload = samples_payload(100, 60)
    policy = connected_policy([row(1, payload, topic=SAMPLES_TOPIC), row(2)],
                              max_payload_bytes=len(payload) // 3, receive_maximum=65535)
    client = Client()
    mids = client.take(policy)
    parts = [client.sent[m] for m in mids if client.sent[m].id == 1]
    assert len(parts) >= 3 and all(len(p.payload) <= len(payload) // 3 for p in parts)
    seqs = [s for p in parts for s in _seqs(p.payload)]
    assert seqs == list(range(100, 160)), "every sample once, in order"
    for mid in mids[:-2]:
        policy.on_puback(mid)
    assert 1 not in policy.take_settled().delete_ids, "a part is still unacknowledged"
    for mid in mids[-2:]:
        policy.on_puback(mid)
    assert 1 in policy.take_settled().delete_ids
    assert (policy.split_rows, policy.published) == (1, 2)


def test_parts_the_client_would_not_take_go_first_and_their_row_settles_once():
    payload = samples_payload(100, 60)
    policy = connected_policy([row(1, payload, topic=SAMPLES_TOPIC), row(2), row(3)],
                              max_payload_bytes=len(payload) // 3, receive_maximum=65535)
    sends = policy.take_sends(NOW_MS)
    parts = [s.payload for s in sends if s.id == 1]
    assert len(parts) >= 3 and [s.id for s in sends[len(parts):]] == [2, 3]
    policy.handed(sends[0], 1)
    policy.not_handed(sends[1:])   # the client took the first part only
    client = Client()
    client.next_mid = 2
    again = client.take(policy)
    assert [client.sent[m].payload for m in again[:len(parts) - 1]] == parts[1:]
    assert [client.sent[m].id for m in again[len(parts) - 1:]] == [2, 3]
    for mid in [1, *again]:
        policy.on_puback(mid)
    assert sorted(policy.take_settled().delete_ids) == [1, 2, 3]
    assert (policy.split_rows, policy.published, policy.idle, policy.queued) == (1, 3, True, 0)


def test_a_reconnect_sends_a_half_sent_split_row_again_from_its_first_part():
    payload = samples_payload(100, 60)
    policy = connected_policy([row(1, payload, topic=SAMPLES_TOPIC), row(2)],
                              max_payload_bytes=len(payload) // 3, receive_maximum=3)
    client = Client()
    first = client.take(policy)
    assert [client.sent[m].id for m in first] == [1, 1], "window 2: two parts of row 1"
    policy.on_puback(first[0])
    policy.on_disconnected(0)
    policy.on_connected(65535, None)
    again = client.take(policy)
    resent = [client.sent[m] for m in again]
    assert [s.id for s in resent] == [1] * (len(resent) - 1) + [2]
    assert [q for s in resent[:-1] for q in _seqs(s.payload)] == list(range(100, 160))
    for mid in again:
        policy.on_puback(mid)
    policy.on_puback(first[1])   # from the old connection: not ours any more
    assert sorted(policy.take_settled().delete_ids) == [1, 2]
    assert policy.published == 2


# ---- expiry ----------------------------------------------------------------------------


def test_expiry_counts_time_spent_in_the_outbox():
    hour_ago = NOW_MS - 3_600_000
    policy = connected_policy([row(1, expiry_s=60, created_ms=hour_ago),
                               row(2, expiry_s=7200, created_ms=hour_ago),
                               row(3)])
    client = Client()
    sent = [client.sent[m] for m in client.take(policy)]
    assert [(s.id, s.expiry_s) for s in sent] == [(2, 3600), (3, None)]
    assert policy.take_settled().delete_ids == [1]
    assert policy.expired == 1


def test_the_clock_is_read_only_when_a_row_to_send_has_an_expiry():
    """The adapter passes its clock instead of the time: the usual row has no expiry, and
    reading the clock once per PUBACK was a measurable share of the publisher's CPU."""
    reads = []

    def clock() -> int:
        reads.append(1)
        return NOW_MS

    hour_ago = NOW_MS - 3_600_000
    policy = connected_policy([row(1), row(2), row(3, expiry_s=7200, created_ms=hour_ago),
                               row(4, expiry_s=60, created_ms=hour_ago), row(5)])
    sent = policy.take_sends(lambda: clock())
    assert [(s.id, s.expiry_s) for s in sent] == [(1, None), (2, None), (3, 3600),
                                                             (5, None)]
    assert len(reads) == 1, "one read for the whole batch, none for rows without expiry"
    assert policy.take_settled().delete_ids == [4]
    for token, send in enumerate(sent):
        policy.handed(send, token)
        policy.on_puback(token)
    policy.add_rows([row(6), row(7)], asked=3)
    assert [s.id for s in policy.take_sends(clock)] == [6, 7]
    assert len(reads) == 1


# ---- poison messages: two strikes, a learned limit, never a reconnect loop -------------


def test_a_message_the_broker_drops_the_connection_over_is_isolated_then_split():
    big = samples_payload(0, 200)
    rows = [row(1), row(2, big, topic=SAMPLES_TOPIC), row(3)]
    policy = connected_policy(rows, receive_maximum=65535)
    client = Client()
    mids = client.take(policy)
    policy.on_puback(mids[0])          # row 1 got through; the broker chokes on row 2
    policy.on_disconnected(PROTOCOL_ERROR)
    assert policy.isolating, "strike one: not yet clear which message"
    policy.on_connected(65535, None)
    (alone,) = client.take(policy)
    assert client.sent[alone].id == 2, "the oldest goes alone on the wire"
    policy.on_disconnected(PROTOCOL_ERROR)   # strike two, with it alone in flight
    assert policy.learned_max_payload_bytes == len(big) - 1
    policy.on_connected(65535, None)
    sent = [client.sent[m] for m in client.take(policy)]
    assert [s.id for s in sent].count(2) >= 2, "row 2 goes split"
    assert all(len(s.payload) < len(big) for s in sent)
    assert policy.refusals[Refusal.DROPPED_CONNECTION] == 1
    for send_mid in list(client.sent)[-len(sent):]:
        policy.on_puback(send_mid)
    assert set(policy.take_settled().delete_ids) == {1, 2, 3}


def test_a_message_many_times_over_the_limit_is_split_to_what_the_broker_took():
    """The message that taught the limit was 8x over it: a quarter of it would still be too
    large. Parts no larger than what the broker has acknowledged get through in one lesson."""
    big = samples_payload(0, 800)          # ~7.7 KB; the broker takes 1000 bytes
    acked = b"d" * 600
    policy = connected_policy([row(1, acked), row(2, big, topic=SAMPLES_TOPIC)],
                              receive_maximum=3)
    client = Client()
    first, second = client.take(policy)
    policy.on_puback(first)
    policy.on_disconnected(PROTOCOL_ERROR)   # row 2 alone in flight: convicted
    assert policy.learned_max_payload_bytes == len(big) - 1 > 4 * 1000
    policy.on_connected(65535, None)
    parts = [client.sent[m] for m in client.take(policy)]
    assert all(p.id == 2 and len(p.payload) <= len(acked) for p in parts)
    assert [q for p in parts for q in _seqs(p.payload)] == list(range(800))


def test_a_small_message_the_broker_drops_the_connection_over_is_parked_as_poison():
    window_of_one = 1 + CONTROL_SLOTS
    policy = connected_policy([row(1, b"tiny"), row(2)], receive_maximum=window_of_one)
    client = Client()
    client.take(policy)
    policy.on_disconnected(PROTOCOL_ERROR)
    assert len(b"tiny") - 1 < MIN_LEARNED_PAYLOAD_BYTES
    assert policy.learned_max_payload_bytes is None
    (park,) = policy.take_settled().parks
    assert (park.row_id, park.kind) == (1, ParkKind.POISON)
    policy.on_connected(window_of_one, None)
    assert [client.sent[m].id for m in client.take(policy)] == [2]


def test_an_ordinary_disconnect_strikes_no_one():
    policy = connected_policy([row(1), row(2)])
    Client().take(policy)
    policy.on_disconnected(0x8D)   # keep alive timeout
    assert not policy.isolating and not policy.take_settled()


# ---- parking and retry -----------------------------------------------------------------


def test_puback_failure_parks_the_row_and_a_reconnect_retries_it():
    policy = connected_policy([row(1), row(2)])
    client = Client()
    first, second = client.take(policy)
    policy.on_puback(first, 0x87, "Not authorized")
    policy.on_puback(second)
    settled = policy.take_settled()
    assert settled.delete_ids == [2]
    assert [(p.row_id, p.kind, p.reason) for p in settled.parks] == [
        (1, ParkKind.REFUSED, "PUBACK 0x87 Not authorized")]
    parked = [ParkedRow(row(1), ParkKind.REFUSED)]
    policy.on_disconnected(0)
    policy.on_connected(20, None)
    assert policy.parked_retry_due
    assert policy.parked_to_retry(parked) == [1]
    policy.rows_unparked([1])
    assert policy.cursor == 0 and policy.rows_wanted() > 0


def test_too_large_rows_are_retried_only_when_they_fit():
    policy = connected_policy([], max_payload_bytes=100)
    parked = [ParkedRow(row(5, b"x" * 150), ParkKind.TOO_LARGE)]
    assert policy.parked_to_retry(parked) == []
    policy.set_max_payload_bytes(200)
    assert policy.parked_retry_due
    assert policy.parked_to_retry(parked) == [5]


def test_poison_rows_are_retried_at_a_new_start_only():
    parked = [ParkedRow(row(9, b"tiny"), ParkKind.POISON)]
    policy = connected_policy([])
    assert policy.parked_to_retry(parked) == [9], "first connection of a start"
    policy.on_disconnected(0)
    policy.on_connected(20, None)
    assert policy.parked_to_retry(parked) == [], "not at a reconnect: it would loop"
    policy.forget_rows()
    policy.on_connected(20, None)
    assert policy.parked_to_retry(parked) == [9]


# ---- samples splitting -----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(count=st.integers(min_value=2, max_value=300), limit=st.integers(min_value=150,
                                                                      max_value=4000))
def test_split_samples_keeps_every_sample_once_in_order_within_the_limit(count, limit):
    payload = samples_payload(1000, count)
    parts = split_samples_payload(payload, limit)
    if len(payload) <= limit:
        assert parts == [payload]
        return
    if parts is None:   # only when a single sample cannot fit
        one = samples_payload(1000, 1)
        assert len(one) > limit - 40
        return
    assert all(len(p) <= limit for p in parts)
    docs = [json.loads(p) for p in parts]
    assert all((d["schema"], d["boot"], d.get("hist")) == (3, 7, None) for d in docs)
    merged = [sample for d in docs for sample in samples_message.decode(d)]
    assert [s.seq for s in merged] == list(range(1000, 1000 + count))
    assert merged == samples_message.decode(json.loads(payload))


@pytest.mark.parametrize("payload", [b"not json", b'{"c": "01", "v": 3}', b"[1, 2]",
                                     json.dumps({"kind": "data_loss", "samples": {
                                         "skin_temp_c": 3}}).encode()])
def test_split_refuses_what_is_not_a_samples_message(payload):
    assert split_samples_payload(payload, 5) is None


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(min_value=10, max_value=9000), min_size=1, max_size=40),
       broker_limit=st.integers(min_value=1500, max_value=5000),
       receive_maximum=st.integers(min_value=3, max_value=30))
def test_a_broker_that_drops_oversize_messages_costs_few_reconnects_and_loses_nothing(
    sizes, broker_limit, receive_maximum
):
    """A stand-in for mosquitto's `message_size_limit`: it answers messages in order and
    drops the connection at the first one over its limit. Every samples row gets through
    (split), other rows get through or are parked as too large, after at most two
    reconnects per lesson, never a loop."""
    rows = []
    for i, size in enumerate(sizes, start=1):
        if i % 2:
            rows.append(row(i, samples_payload(i * 1000, max(1, size // 25)),
                            topic=SAMPLES_TOPIC))
        else:
            rows.append(row(i, b"x" * size))
    policy = connected_policy(rows, receive_maximum=receive_maximum)
    client = Client()
    connects, delivered_seqs = 1, set()
    for _ in range(10_000):
        client.take(policy)
        if not policy.in_flight:
            break
        for mid in sorted(policy._handed):
            send = client.sent[mid]
            if len(send.payload) > broker_limit:
                policy.on_disconnected(PROTOCOL_ERROR)
                policy.on_connected(receive_maximum, None)
                connects += 1
                break
            if send.topic == SAMPLES_TOPIC:
                delivered_seqs.update(_seqs(send.payload))
            policy.on_puback(mid)
    settled = policy.take_settled()
    parked = {p.row_id for p in settled.parks}
    assert set(settled.delete_ids) | parked == {r.id for r in rows}
    assert all(r.topic != SAMPLES_TOPIC for r in rows if r.id in parked)
    assert all(len(r.payload) > broker_limit for r in rows if r.id in parked)
    wanted = {s for r in rows if r.topic == SAMPLES_TOPIC
              for s in _seqs(r.payload)}
    assert delivered_seqs == wanted
    # each lesson halves the split size; an unsplittable convict is one lesson of its own
    largest = max(len(r.payload) for r in rows)
    lessons = math.ceil(math.log2(largest / broker_limit)) + 1 if largest > broker_limit else 0
    assert connects <= 1 + 2 * (lessons + len(parked)), connects


def test_the_policy_imports_no_adapter():
    """Sans-I/O: importing the delivery policy loads neither paho nor sqlite3."""
    import subprocess
    import sys

    probe = ("import sys, gateway.mqtt.delivery, gateway.samples_split; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('paho', 'sqlite3', "
             "'socket')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "[]", out


@pytest.mark.parametrize("seed", range(8))
def test_random_faults_deliver_every_row_and_delete_it_only_after_its_pubacks(seed):
    """The adapter's part played against an outbox and a broker of our own, with faults at
    random: PUBACKs in any order, some refused, the client taking only part of a batch,
    disconnects (some blaming what was in flight), limits that change. A row leaves the
    outbox only after PUBACKs for all of its samples; at the end (a new start, no faults)
    every row is delivered and the outbox is empty."""
    rnd = random.Random(seed)
    ROWS = 150  # noqa: N806
    outbox: dict[int, OutboxMessage] = {}
    for i in range(1, ROWS + 1):
        if i % 2:
            outbox[i] = row(i, samples_payload(i * 1000, rnd.randint(1, 120)),
                            topic=SAMPLES_TOPIC)
        else:
            outbox[i] = row(i, b"m%d-" % i + b"x" * rnd.randint(0, 700))
    parked: dict[int, tuple[OutboxMessage, ParkKind]] = {}
    acked_seqs: dict[int, set[int]] = {i: set() for i in outbox}   # samples rows
    acked_whole: set[int] = set()
    deleted: set[int] = set()
    policy = DeliveryPolicy(splitters={"samples": split_samples_payload},
                            max_payload_bytes=rnd.choice([None, 300, 600]))
    client = Client()
    in_flight: list[int] = []

    def read() -> None:
        while want := policy.rows_wanted():
            rows = sorted((m for i, m in outbox.items() if i > policy.cursor),
                          key=lambda m: m.id)[:want]
            policy.add_rows(rows, want)
            if len(rows) < want:
                return

    def write_settled() -> None:
        settled = policy.take_settled()
        for row_id in settled.delete_ids:
            assert row_id not in deleted, f"row {row_id} deleted twice"
            message = outbox.pop(row_id)
            if message.topic == SAMPLES_TOPIC:
                assert acked_seqs[row_id] >= set(_seqs(message.payload)), row_id
            else:
                assert row_id in acked_whole, f"row {row_id} deleted without its PUBACK"
            deleted.add(row_id)
        for park in settled.parks:
            parked[park.row_id] = (outbox.pop(park.row_id), park.kind)

    def retry_parked() -> None:
        if policy.parked_retry_due:
            ids = policy.parked_to_retry([ParkedRow(m, k) for m, k in parked.values()])
            for row_id in ids:
                outbox[row_id] = parked.pop(row_id)[0]
            policy.rows_unparked(ids)

    def connect(receive_maximum, max_packet) -> None:
        in_flight.clear()   # their PUBACKs are lost with the connection
        for row_id in acked_seqs:   # a row not deleted yet must be acknowledged again
            acked_seqs[row_id].clear()
        acked_whole.clear()
        policy.on_connected(receive_maximum, max_packet)
        retry_parked()

    def ack(mid: int, code: int = 0) -> None:
        send = client.sent[mid]
        if code == 0:
            if send.topic == SAMPLES_TOPIC:
                acked_seqs[send.id].update(_seqs(send.payload))
            else:
                acked_whole.add(send.id)
        policy.on_puback(mid, code, "refused" if code else "")

    connect(20, None)
    for _ in range(400):
        read()
        sends = policy.take_sends(NOW_MS)
        taken = len(sends) if rnd.random() < 0.9 else rnd.randint(0, len(sends))
        for send in sends[:taken]:
            mid, client.next_mid = client.next_mid, client.next_mid + 1
            policy.handed(send, mid)
            client.sent[mid] = send
            in_flight.append(mid)
        if taken < len(sends):
            policy.not_handed(sends[taken:])
        rnd.shuffle(in_flight)
        for _ in range(min(len(in_flight), rnd.randint(0, 4))):
            ack(in_flight.pop(), 0x87 if rnd.random() < 0.02 else 0)
        write_settled()
        fault = rnd.random()
        if fault < 0.04:
            policy.on_disconnected(PROTOCOL_ERROR if rnd.random() < 0.5 else 0)
            connect(rnd.randint(2, 30), rnd.choice([None, None, 700, 2000]))
        elif fault < 0.06:
            policy.set_max_payload_bytes(rnd.choice([None, 300, 600, 1500]))
            retry_parked()
        write_settled()

    def drain() -> None:
        for _ in range(200):
            read()
            for send in policy.take_sends(NOW_MS):
                mid, client.next_mid = client.next_mid, client.next_mid + 1
                policy.handed(send, mid)
                client.sent[mid] = send
                ack(mid)
            write_settled()
            if not outbox:
                return

    # A reconnect without limits or faults: every row but the poison ones gets through.
    policy.set_max_payload_bytes(None)
    policy.on_disconnected(0)
    connect(65535, None)
    drain()
    assert outbox == {} and all(k is ParkKind.POISON for _, k in parked.values())
    # A new start: the poison ones are tried again, and get through.
    policy.forget_rows()
    connect(65535, None)
    drain()
    assert (outbox, parked) == ({}, {})
    assert deleted == set(range(1, ROWS + 1))
    assert policy.idle and policy.queued == 0 and policy.split_rows > 0
