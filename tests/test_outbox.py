"""Outbox: durable, ordered, transactional with the caller, never commits itself."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.outbox import NewMessage, Outbox, OutboxError, OutboxMessage


@pytest.fixture
def db_path(tmp_path):
    path = tmp_path / "gateway.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    return path


def open_outbox(db_path, **kwargs) -> tuple[sqlite3.Connection, Outbox]:
    conn = sqlite3.connect(db_path)
    return conn, Outbox(conn, **kwargs)


def test_pending_returns_rows_in_insertion_order_with_cursor_and_limit(db_path):
    conn, outbox = open_outbox(db_path)
    ids = [outbox.put(f"t/{i % 3}", b"p%d" % i) for i in range(10)]
    conn.commit()

    assert ids == sorted(ids)
    assert [m.id for m in outbox.pending(100)] == ids
    assert [m.id for m in outbox.pending(4)] == ids[:4]
    assert [m.id for m in outbox.pending(100, after_id=ids[6])] == ids[7:]
    assert outbox.pending(0) == []
    first = outbox.pending(1)[0]
    assert (first.topic, first.payload, first.qos, first.retain, first.expiry_s) == (
        "t/0",
        b"p0",
        1,
        False,
        None,
    )


def test_put_joins_the_callers_transaction_and_does_not_commit(db_path):
    writer, outbox = open_outbox(db_path)
    reader, reader_outbox = open_outbox(db_path)

    writer.execute("CREATE TABLE samples (seq INTEGER)")
    writer.commit()
    writer.execute("INSERT INTO samples VALUES (1)")
    outbox.put("t", b"with sample 1")
    assert writer.in_transaction
    assert reader_outbox.count() == 0, "an uncommitted row must not be visible to the publisher"

    writer.rollback()
    assert outbox.count() == 0
    assert writer.execute("SELECT count(*) FROM samples").fetchone()[0] == 0

    writer.execute("INSERT INTO samples VALUES (2)")
    outbox.put_many([("t", b"a"), NewMessage("t", b"b", retain=True, expiry_s=60)])
    writer.commit()
    assert [(m.payload, m.retain, m.expiry_s) for m in reader_outbox.pending(10)] == [
        (b"a", False, None),
        (b"b", True, 60),
    ]


def test_rows_survive_reopening_the_database(db_path):
    conn, outbox = open_outbox(db_path)
    outbox.put_many([("a", b"1"), ("b", b"2", 0, True, 30)])
    conn.commit()
    conn.close()

    _, reopened = open_outbox(db_path)
    assert [(m.topic, m.payload, m.qos, m.retain, m.expiry_s) for m in reopened.pending(10)] == [
        ("a", b"1", 1, False, None),
        ("b", b"2", 0, True, 30),
    ]


def test_delete_counts_existing_rows_and_ids_are_never_reused(db_path):
    conn, outbox = open_outbox(db_path)
    ids = outbox.put_many([("t", b"%d" % i) for i in range(1200)])
    conn.commit()

    assert outbox.delete(ids[:1100] + [999_999]) == 1100  # more ids than one DELETE chunk
    assert outbox.delete(ids[1100:]) == 100
    conn.commit()
    assert outbox.count() == 0

    new_id = outbox.put("t", b"after")
    assert new_id > max(ids), "a cursor past old ids must never skip a new row"


def test_put_many_validates_everything_before_inserting_anything(db_path):
    conn, outbox = open_outbox(db_path)
    with pytest.raises(OutboxError, match="qos 2"):
        outbox.put_many([("t", b"good"), ("t", b"bad", 2)])
    assert outbox.count() == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"topic": ""}, "topic"),
        ({"topic": "a/+/b"}, "topic"),
        ({"topic": "a/#"}, "topic"),
        ({"payload": "text"}, "payload"),
        ({"qos": 2}, "qos 2"),
        ({"expiry_s": 0}, "expiry_s 0"),
        ({"expiry_s": True}, "expiry_s True"),
        ({"expiry_s": 2**32}, "expiry_s"),
    ],
)
def test_invalid_messages_are_refused_naming_the_field(db_path, kwargs, field):
    _, outbox = open_outbox(db_path)
    message = {"topic": "dermtwin/v1/gw/state", "payload": b"{}", **kwargs}
    with pytest.raises(OutboxError, match=field.replace("+", r"\+")):
        outbox.put(**message)


def test_park_moves_a_row_out_of_pending_keeping_the_reason(db_path):
    conn, outbox = open_outbox(db_path, clock_ms=lambda: 1_000)
    first, second = outbox.put_many([("t", b"big"), ("t", b"small")])
    assert outbox.park(first, "PUBACK 0x95 Packet too large") is True
    assert outbox.park(first, "again") is False
    conn.commit()

    assert [m.id for m in outbox.pending(10)] == [second]
    (parked,) = outbox.parked()
    assert (parked.message.id, parked.message.payload, parked.reason) == (
        first,
        b"big",
        "PUBACK 0x95 Packet too large",
    )
    assert outbox.parked_count() == 1


def test_remaining_expiry_counts_time_spent_in_the_outbox():
    message = OutboxMessage(1, "t", b"", 1, True, expiry_s=60, created_ms=10_000)
    assert message.remaining_expiry_s(10_000) == 60
    assert message.remaining_expiry_s(25_999) == 45
    assert message.remaining_expiry_s(70_000) == 0
    assert message.remaining_expiry_s(5_000) == 60, "a clock that went backwards costs nothing"
    never = OutboxMessage(2, "t", b"", 1, False, expiry_s=None, created_ms=0)
    assert never.remaining_expiry_s(10**12) is None


operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.binary(max_size=8)),
        st.tuples(st.just("delete_oldest"), st.integers(min_value=1, max_value=3)),
        st.tuples(st.just("reopen"), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(operations)
def test_outbox_behaves_like_an_ordered_queue_across_reopens(tmp_path_factory, ops):
    path = tmp_path_factory.mktemp("prop") / "o.db"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA synchronous=OFF")  # closing is what matters here, not power loss
        return conn

    conn = connect()
    outbox = Outbox(conn)
    model: list[tuple[int, bytes]] = []
    for op, arg in ops:
        if op == "put":
            model.append((outbox.put("t", arg), arg))
        elif op == "delete_oldest":
            gone, model = model[:arg], model[arg:]
            assert outbox.delete([i for i, _ in gone]) == len(gone)
        else:
            conn.commit()
            conn.close()
            conn = connect()
            outbox = Outbox(conn)
        conn.commit()
        assert [(m.id, m.payload) for m in outbox.pending(1000)] == model
    conn.close()


def test_delete_of_scattered_ids_takes_every_one_of_them_across_delete_chunks(db_path):
    # PUBACKs out of order leave no runs: every id goes through the chunked IN (...) path.
    conn, outbox = open_outbox(db_path)
    ids = outbox.put_many([("t", b"%d" % i) for i in range(2600)])
    scattered = ids[::2]        # 1300 ids, no two consecutive: more than two chunks
    assert outbox.delete(reversed(scattered)) == 1300
    conn.commit()
    assert [m.id for m in outbox.pending(5000)] == ids[1::2]


def test_unpark_puts_rows_back_in_their_place_and_parked_rows_keep_their_kind(db_path):
    conn, outbox = open_outbox(db_path, clock_ms=lambda: 2_000)
    first, second, third = outbox.put_many([("t", b"a"), ("t", b"b"), ("t", b"c")])
    assert outbox.park(first, "over the size limit", kind="too_large")
    assert outbox.park(third, "PUBACK 0x97", kind="refused")
    assert [(p.message.id, p.kind, p.parked_ms) for p in outbox.parked()] == [
        (first, "too_large", 2_000), (third, "refused", 2_000)]
    assert outbox.unpark([third, 999_999, first]) == [third, first]
    conn.commit()
    assert [m.id for m in outbox.pending(10)] == [first, second, third]
    assert outbox.parked_count() == 0
    assert outbox.unpark([first]) == [], "not parked: nothing moved"


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(1, 40)))
def test_delete_takes_exactly_the_ids_given(chosen):
    # Runs of consecutive ids are deleted as ranges: a range must never take an id in
    # between that was not given (e.g. ids 3 and 6 are not a run).
    conn = sqlite3.connect(":memory:")
    outbox = Outbox(conn)
    ids = outbox.put_many([("t", b"%d" % i) for i in range(40)])
    assert ids == list(range(1, 41))
    assert outbox.delete(chosen) == len(chosen)
    assert [m.id for m in outbox.pending(100)] == [i for i in ids if i not in chosen]
