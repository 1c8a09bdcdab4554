"""Schema 3's compact messages (docs/mqtt.md): twin and delta leaves `[v, age, q?]`
(gateway/twin_message.py), and `{subject}/samples` compressed with zlib under the MQTT 5
Content Type `application/zlib` (gateway/payload_encoding.py, `run --samples-format zlib`).
The end-to-end test runs the gateway with virtual patches against a real mosquitto, read by
a plain paho subscriber that goes by the Content Type property, by the documented
mosquitto_sub + python pipe, and by the subscriber library."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import threading
import time
import zlib
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from gateway import payload_encoding, samples_message, twin_message
from gateway.mqtt import topics
from gateway.samples_split import split_samples_payload
from simulation.demo import DEMO_PATCH_CONFIG, DEMO_TIME_SCALE

REPO = Path(__file__).resolve().parents[1]
ROOT = "dermtwin/v1/rig"
LIVELY = {"time_scale": DEMO_TIME_SCALE, "patch_config": {**DEMO_PATCH_CONFIG, 6: 1}}


def schema(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((REPO / "docs" / "schemas" /
                                            f"{name}.schema.json").read_text()))


# ---- twin and delta leaves --------------------------------------------------------------

def test_values_travel_one_decimal_finer_than_their_deadband():
    assert twin_message.DIGITS["skin_temp_c"] == 2          # deadband 0.1 °C
    assert twin_message.DIGITS["capacitance_pf"] == 3       # 0.05 pF
    assert twin_message.DIGITS["minutes_to_med"] == 0       # 10 min
    assert twin_message.DIGITS["hydration_au"] == 1         # 1 AU
    assert twin_message.wire_value("skin_temp_c", 33.5167) == 33.52
    assert twin_message.wire_value("minutes_to_med", 41.4) == 41
    assert twin_message.wire_value("battery_pct", 87.0) == 87
    assert isinstance(twin_message.wire_value("battery_pct", 87.0), int)
    assert twin_message.wire_value("inflammation", True) is True
    assert twin_message.wire_value("contact", "loose") == "loose"
    assert twin_message.wire_value("minutes_to_med_forecast", None) is None


def test_leaves_carry_ages_and_quality_only_when_not_good():
    ts = 1_782_000_060_050
    state = {"skin_temp_c": {"v": 33.5167, "t": ts - 5050, "q": "good"},
             "temp_delta_c": {"v": 0.142, "t": ts - 5050, "q": "uncertain"},
             "hydration_au": {"v": 52.31, "t": ts - 60_000, "q": "bad"},
             "uv_index": {"v": 0.12, "t": -1, "q": "uncertain"}}       # time unknown
    doc = twin_message.twin({"schema": topics.SCHEMA_VERSION, "sess": 2, "rev": 9, "ts": ts,
                             "state": state})
    assert doc["state"] == {"skin_temp_c": [33.52, 5050], "temp_delta_c": [0.14, 5050, "u"],
                            "hydration_au": [52.3, 60_000, "b"], "uv_index": [0.12, None, "u"]}
    assert list(schema("twin").iter_errors(json.loads(json.dumps(doc)))) == []
    back = twin_message.leaves(doc["state"], ts)
    assert back == {"skin_temp_c": {"v": 33.52, "t": ts - 5050, "q": "good"},
                    "temp_delta_c": {"v": 0.14, "t": ts - 5050, "q": "uncertain"},
                    "hydration_au": {"v": 52.3, "t": ts - 60_000, "q": "bad"},
                    "uv_index": {"v": 0.12, "t": -1, "q": "uncertain"}}
    assert back == twin_message.as_received(state)
    delta = twin_message.delta({"schema": topics.SCHEMA_VERSION, "sess": 2, "rev": 9, "ts": ts,
                                "set": {"skin_temp_c": state["skin_temp_c"]}, "unset": []})
    assert "unset" not in delta and delta["set"] == {"skin_temp_c": [33.52, 5050]}
    assert list(schema("delta").iter_errors(json.loads(json.dumps(delta)))) == []
    # the schemas refuse schema 2's object leaves and unknown quality codes
    assert list(schema("twin").iter_errors({**doc, "state": {"skin_temp_c": {
        "v": 33.5, "t": ts, "q": "good"}}}))
    assert list(schema("twin").iter_errors({**doc, "state": {"skin_temp_c": [1, 2, "good"]}}))


# ---- compressed samples -----------------------------------------------------------------

def samples_payload(count: int) -> bytes:
    seqs = list(range(1000, 1000 + count))
    doc = samples_message.encode(7, seqs, [1_782_000_000_000 + 1000 * s + (s * s) % 97
                                           for s in seqs],
                                 [s % 3 % 2 for s in seqs], [4200 + (s * 31) % 57 for s in seqs])
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def test_zlib_form_is_the_same_json_compressed_and_named_by_its_bytes():
    payload = samples_payload(400)
    packed = payload_encoding.encode(payload, "zlib")
    assert len(packed) < len(payload) / 2 and zlib.decompress(packed) == payload
    assert payload_encoding.content_type(packed) == "application/zlib"
    assert payload_encoding.json_bytes(packed, "application/zlib") == payload
    # JSON stays JSON: no Content Type, read as it is
    assert payload_encoding.encode(payload, "json") == payload
    for plain in (payload, b'{"x":1}', b"{}", b""):
        assert payload_encoding.content_type(plain) is None
    assert payload_encoding.json_bytes(payload, None) == payload
    assert payload_encoding.json_bytes(payload, "application/json") == payload
    # compression that would not shrink it: sent as JSON
    tiny = b'{"a":1}'
    assert payload_encoding.encode(tiny, "zlib") == tiny
    with pytest.raises(ValueError, match="'cbor' is not one of json, zlib"):
        payload_encoding.encode(payload, "cbor")
    with pytest.raises(ValueError, match="unknown content type 'application/cbor'"):
        payload_encoding.json_bytes(packed, "application/cbor")
    with pytest.raises(ValueError, match="application/zlib"):
        payload_encoding.json_bytes(b"x\x9cnot a stream", "application/zlib")


def test_a_compressed_samples_message_splits_into_compressed_parts():
    payload = samples_payload(3000)
    packed = payload_encoding.encode(payload, "zlib")
    limit = len(packed) // 3
    parts = split_samples_payload(packed, limit)
    assert parts is not None and len(parts) >= 3 and all(len(p) <= limit for p in parts)
    assert all(payload_encoding.content_type(p) == "application/zlib" for p in parts)
    merged = [s for p in parts for s in samples_message.decode(json.loads(zlib.decompress(p)))]
    assert merged == samples_message.decode(json.loads(payload))
    assert split_samples_payload(packed, len(packed)) == [packed]
    assert split_samples_payload(b"x\x9c" + b"\0" * 40, 10) is None   # not a stream


# ---- against a real mosquitto -----------------------------------------------------------

class PlainSubscriber:
    """paho, MQTT 5, nothing from the project: records (topic, Content Type, payload)."""

    def __init__(self, host: str, port: int, topic_filter: str):
        import paho.mqtt.client as paho

        self.messages: list[tuple[str, str | None, bytes]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=f"plain-{time.time_ns()}", protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, client, userdata, message) -> None:
        content_type = getattr(message.properties, "ContentType", None)
        with self._lock:
            self.messages.append((message.topic, content_type, bytes(message.payload)))

    def on(self, leaf: str) -> list[tuple[str, str | None, bytes]]:
        with self._lock:
            return [m for m in self.messages if m[0].endswith("/" + leaf)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def documented_pipe() -> tuple[list[str], str]:
    """docs/subscribers.md's mosquitto_sub | python pipe for samples in either form."""
    text = (REPO / "docs" / "subscribers.md").read_text()
    block = re.search(r"# samples in either form.*?\n(mosquitto_sub [^|]+)\| python3 -c '(.*?)'\n",
                      text, re.S)
    assert block, "the pipe is in docs/subscribers.md"
    return shlex.split(block[1]), block[2]


@pytest.mark.slow
async def test_compressed_samples_reach_plain_subscribers_by_content_type(tmp_path):
    from gateway_harness import GatewayRig, wait_for

    from gateway.store import Store, connect
    from gateway.subscriber import SampleRow, Subscriber

    async with GatewayRig(tmp_path, patches=1, **LIVELY) as rig:
        device, _, subject = rig.identities[0]
        plain = PlainSubscriber(rig.broker.host, rig.broker.port, f"{ROOT}/#")
        argv, program = documented_pipe()
        argv[argv.index("localhost")] = rig.broker.host
        argv[argv.index("dermtwin/v1/gw1/+/samples")] = f"{ROOT}/+/samples"
        shell = subprocess.Popen([*argv, "-p", str(rig.broker.port), "-C", "6"],
                                 stdout=subprocess.PIPE)
        piped = subprocess.Popen(["python3", "-c", program], stdin=shell.stdout,
                                 stdout=subprocess.PIPE, text=True)
        library_rows: list = []
        try:
            async with Subscriber(rig.broker.url, gateway_id="rig") as library:
                async def drain() -> None:
                    async for item in library.samples():
                        library_rows.append(item)

                task = asyncio.create_task(drain())
                await asyncio.sleep(0.5)
                gateway = await rig.start_gateway(samples_format="zlib")
                await wait_for(lambda: len(plain.on("samples")) >= 8
                               and gateway.engine.twins.get(subject) is not None
                               and gateway.engine.twins[subject].rev >= 2,
                               timeout_s=30, what="samples messages and a few revs")
                await rig.stop_gateway()
                store = Store(connect(rig.db_path))
                stored = set(store.sample_seqs(device))
                store.conn.close()
                await wait_for(lambda: {r.seq for r in library_rows
                                        if isinstance(r, SampleRow)} == stored,
                               what="the library to decode every stored sample")
                task.cancel()
            piped_out, _ = await asyncio.to_thread(piped.communicate, timeout=30)
        finally:
            plain.close()
            shell.kill()
            piped.kill()

    seqs, compressed = set(), 0
    for _, content_type, payload in plain.on("samples"):
        assert content_type in (None, "application/zlib")
        if content_type == "application/zlib":
            compressed += 1
            payload = zlib.decompress(payload)
        doc = json.loads(payload)
        assert list(schema("samples").iter_errors(doc)) == []
        seqs |= {s.seq for s in samples_message.decode(doc)}
    assert compressed >= 1, "a flush of samples compresses"
    assert seqs == stored
    # twins, deltas, meta and state stay plain JSON with no Content Type (Home Assistant
    # and every schema-2 reader go on reading them as text)
    for leaf in ("twin", "delta", "meta", "state"):
        assert plain.on(leaf), leaf
        assert all(ct is None and json.loads(p) for _, ct, p in plain.on(leaf)), leaf
    # the documented shell pipe printed six samples messages as JSON text
    lines = piped_out.splitlines()
    assert len(lines) == 6
    for line in lines:
        topic, text = line.split(" ", 1)
        assert topic == f"{ROOT}/{subject}/samples" and json.loads(text)["c"]
