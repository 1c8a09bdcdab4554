"""The research sink's sans-I/O core (gateway/sink/rows.py): messages → keyed rows, batches."""

from __future__ import annotations

import json
import zlib

from gateway import samples_message
from gateway.sink.rows import Batcher, MessageDecoder, Rows

ROOT = "dermtwin/v1/gw1"


def payload(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def test_samples_decode_with_the_scales_meta_names():
    decoder = MessageDecoder(ROOT)
    doc = samples_message.encode(3, [10, 11, 13], [1000, 1100, -1], [0, 1, 0], [4290, 12, 4291])
    # times known and unknown do not share a message: encode_runs splits them
    docs = samples_message.encode_runs(3, [10, 11, 13], [1000, 1100, -1], [0, 1, 0],
                                       [4290, 12, 4291], historical=True)
    assert len(docs) == 2 and doc["seq"] == 10
    rows = [r for d in docs for r in decoder.decode(f"{ROOT}/s-1/samples", payload(d)).samples]
    assert [(r.seq, r.prop, r.utc_ms, r.raw) for r in rows] == [
        (10, "skin_temp_c", 1000, 4290), (11, "uv_index", 1100, 12),
        (13, "skin_temp_c", None, 4291)]
    assert rows[0].value == 4290 * 0.0078125 and all(r.historical for r in rows)
    decoder.decode(f"{ROOT}/s-1/meta", payload(
        {"schema": 2, "samples": {"properties": ["uv_index", "skin_temp_c"], "scale": [0.5, 2]}}))
    [first, *_] = decoder.decode(f"{ROOT}/s-1/samples", payload(docs[0])).samples
    assert (first.prop, first.value) == ("uv_index", 2145.0)
    # another subject keeps the defaults
    [other, *_] = decoder.decode(f"{ROOT}/s-2/samples", payload(docs[0])).samples
    assert other.prop == "skin_temp_c"
    # compressed samples (run --samples-format zlib) by their MQTT 5 Content Type
    packed = zlib.compress(payload(docs[0]))
    zrows = decoder.decode(f"{ROOT}/s-2/samples", packed, content_type="application/zlib")
    assert zrows.samples == decoder.decode(f"{ROOT}/s-2/samples", payload(docs[0])).samples


def test_twin_alerts_and_keys_that_make_a_redelivery_one_row():
    decoder = MessageDecoder(ROOT)
    # schema 3 leaves [v, age, q?] are stored decoded: {"v", "t" (UTC ms, -1 unknown), "q"}
    delta = {"schema": 3, "sess": 2, "rev": 8, "ts": 5000, "set": {"a": [1, 200]},
             "unset": ["b"]}
    [rev] = decoder.decode(f"{ROOT}/s-1/delta", payload(delta)).revisions
    assert (rev.subject, rev.rev, rev.sess, rev.ts_ms, json.loads(rev.removed)) == (
        "s-1", 8, 2, 5000, ["b"])
    assert json.loads(rev.changed) == {"a": {"v": 1, "t": 4800, "q": "good"}}
    [rev] = decoder.decode(f"{ROOT}/s-1/delta", payload(
        {"schema": 3, "sess": 2, "rev": 9, "ts": 6000, "set": {}})).revisions
    assert json.loads(rev.removed) == []                       # unset absent: nothing removed
    twin = {"schema": 3, "sess": 2, "rev": 8, "ts": 5000,
            "state": {"a": [1, 200], "b": [2.5, None, "u"]}}
    [snap] = decoder.decode(f"{ROOT}/s-1/twin", payload(twin)).snapshots
    assert (snap.rev, json.loads(snap.state)) == (8, {"a": {"v": 1, "t": 4800, "q": "good"},
                                                      "b": {"v": 2.5, "t": -1, "q": "uncertain"}})
    alert = {"schema": 2, "ts": 9, "kind": "inflammation", "active": True, "delta_c": 2.4}
    [a] = decoder.decode(f"{ROOT}/s-1/alert", payload(alert)).alerts
    # the same alert in another key order is the same row; another alert is another
    [again] = decoder.decode(f"{ROOT}/s-1/alert", json.dumps(alert, sort_keys=True,
                                                             indent=1).encode()).alerts
    [other] = decoder.decode(f"{ROOT}/s-1/alert", payload({**alert, "delta_c": 2.5})).alerts
    assert a.digest == again.digest != other.digest and a.active is True
    loss = {"schema": 2, "ts": 9, "kind": "data_loss", "from": None, "to": None,
            "samples": {"uv_index": 3}}
    [event] = decoder.decode(f"{ROOT}/s-1/alert", payload(loss)).alerts
    assert event.active is None and event.kind == "data_loss"
    # nothing for the sink: state, reported, a cleared retained message
    for leaf, body in (("state", b'{"online": true}'), ("s-1/reported", b'{"ver": 1}'),
                       ("s-1/twin", b"")):
        assert len(decoder.decode(f"{ROOT}/{leaf}", body)) == 0


def test_what_cannot_be_read_is_rejected_naming_the_field():
    decoder = MessageDecoder(ROOT)
    cases = {
        (f"{ROOT}/s-1/samples", b"{not json"): "samples: Expecting property name",
        (f"{ROOT}/s-1/samples", b'{"boot": 1, "seq": 1}'): "samples: missing field 'c'",
        (f"{ROOT}/s-1/delta", payload({"rev": "8", "sess": 1, "ts": 1, "set": {}})):
            "delta: rev: '8' is not an integer",
        (f"{ROOT}/s-1/alert", payload({"ts": 1})): "alert: kind: None is not a string",
        (f"{ROOT}/s-1/twin", b"[1, 2]"): "twin: payload is not a JSON object",
        ("elsewhere/s-1/samples", b"{}"): "not a topic of dermtwin/v1/gw1",
    }
    for (topic, body), reason in cases.items():
        rows = decoder.decode(topic, body)
        assert len(rows) == 1 and rows.rejected[0].reason.startswith(reason), rows
        assert rows.rejected[0].payload == body
    rows = decoder.decode(f"{ROOT}/s-1/samples", b"\x00\x01", content_type="application/cbor")
    assert rows.rejected[0].reason == "samples: unknown content type 'application/cbor'"
    rows = decoder.decode(f"{ROOT}/s-1/samples", b"x\x9c broken", content_type="application/zlib")
    assert rows.rejected[0].reason.startswith("samples: content type application/zlib: ")
    rows = decoder.decode(f"{ROOT}/s-1/twin", payload({"sess": 1, "rev": 1, "ts": 1,
                                                       "state": {"a": [1, 2, "x"]}}))
    assert rows.rejected[0].reason == "twin: missing field 'x'"
    # the same bad message twice is one key
    a, b = (decoder.decode(f"{ROOT}/s-1/samples", b"{x").rejected[0] for _ in range(2))
    assert a.digest == b.digest


def test_batcher_is_due_on_messages_rows_or_age_and_keeps_arrival_order():
    batcher = Batcher(max_messages=3, max_rows=5, max_wait_s=1.0)
    assert not batcher.due(0.0) and batcher.seconds_until_due(0.0) is None
    one = MessageDecoder(ROOT).decode(f"{ROOT}/s-1/delta", payload(
        {"sess": 1, "rev": 1, "ts": 1, "set": {}, "unset": []}))
    batcher.add(one, "t1", 10.0)
    assert not batcher.due(10.5) and batcher.seconds_until_due(10.5) == 0.5
    assert batcher.due(11.0)
    batcher.add(Rows(), "t2", 10.6)
    batcher.add(one, "t3", 10.7)
    assert batcher.due(10.7)                                 # three messages
    batch = batcher.take()
    assert batch.tokens == ["t1", "t2", "t3"] and len(batch.rows.revisions) == 2
    assert len(batcher) == 0 and not batcher.due(99.0)
    many = Rows(revisions=one.revisions * 5)
    batcher.add(many, "t4", 20.0)
    assert batcher.due(20.0)                                 # five rows
