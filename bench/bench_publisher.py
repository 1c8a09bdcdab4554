"""Outbox publisher throughput: MqttPublisher draining N outbox rows against a naive paho loop
publishing the same N QoS 1 messages and waiting for every PUBACK, both measured in this run
against the same private mosquitto, in interleaved rounds (medians).

- naive: one paho client (MQTT 5, paho's in-flight limit 20 = mosquitto's Receive Maximum),
  `publish()` of every message in a loop, then wait for the last PUBACK. No database.
- publisher: the rows are committed to a WAL SQLite outbox first and checkpointed (not
  timed); timed from `kick()` until every row is acknowledged and deleted (`pending == 0`).
CPU is the whole process's CPU time (all threads) over the same span, per message.

`figures()` returns {name: {value, baseline, ratio, unit, better, how}} (bench/figures.py) for
bench/results.json (bench/run_all.py); run as a script it prints the table. BENCH_REPEATS rounds (default 7:
the machine is shared, a round moves by +-30 %), BENCH_PUBLISHER_MESSAGES (20000).
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import paho.mqtt.client as paho  # noqa: E402
from figures import figure, print_table  # noqa: E402

from gateway.mqtt.config import MqttConfig  # noqa: E402
from gateway.mqtt.publisher import MqttPublisher  # noqa: E402
from gateway.outbox import Outbox  # noqa: E402
from simulation.broker import LocalBroker  # noqa: E402

TOPIC = "dermtwin/v1/bench/s-0001/delta"
# About a delta's size (docs/mqtt.md): ~140 bytes of JSON.
PAYLOAD = (b'{"rev":%d,"schema":1,"sess":3,"set":{"skin_temp_c":{"q":"good","t":1764262800000,'
           b'"v":33.51}},"ts":1764262800123,"unset":[]}')
TIMEOUT_S = 120.0
NAIVE_INFLIGHT = 20   # paho's default, and mosquitto's Receive Maximum


def messages(n: int) -> list[bytes]:
    return [PAYLOAD % i for i in range(n)]


def run_naive(broker: LocalBroker, payloads: list[bytes]) -> tuple[float, float]:
    """(seconds, CPU seconds) for a plain paho loop: publish all, wait for every PUBACK."""
    done = threading.Event()
    connected = threading.Event()
    acked = 0
    total = len(payloads)

    def on_connect(client, userdata, flags, reason_code, properties):
        connected.set()

    def on_publish(client, userdata, mid, reason_code, properties):
        nonlocal acked
        acked += 1
        if acked == total:
            done.set()

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-naive",
                         protocol=paho.MQTTv5)
    client.max_inflight_messages_set(NAIVE_INFLIGHT)
    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise RuntimeError("naive client did not connect")
        start, cpu = time.perf_counter(), time.process_time()
        for payload in payloads:
            client.publish(TOPIC, payload, qos=1)
        if not done.wait(TIMEOUT_S):
            raise RuntimeError(f"naive loop: {acked} of {total} PUBACKs")
        return time.perf_counter() - start, time.process_time() - cpu
    finally:
        client.disconnect()
        client.loop_stop()


def run_publisher(broker: LocalBroker, payloads: list[bytes], workdir: Path) -> tuple[float, float]:
    """(seconds, CPU seconds) for MqttPublisher to drain the same messages from its outbox."""
    db_path = workdir / f"outbox-{time.monotonic_ns()}.db"
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA journal_mode=WAL")
    outbox = Outbox(conn)
    conn.commit()
    config = MqttConfig.from_url(broker.url, gateway_id="bench", client_id="bench-publisher")
    publisher = MqttPublisher(config, db_path, will_topic=config.state_topic,
                              will_payload=b'{"online":false}',
                              birth_payload_fn=lambda: b'{"online":true}', will_delay_s=0)
    publisher.start_sync()
    try:
        if not publisher.wait_connected(10):
            raise RuntimeError(f"publisher did not connect: {publisher.last_error}")
        outbox.put_many((TOPIC, payload) for payload in payloads)
        conn.commit()
        # The writer's share of the WAL is checkpointed by the writer, not the publisher.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        start, cpu = time.perf_counter(), time.process_time()
        publisher.kick()
        deadline = start + TIMEOUT_S
        while publisher.published < len(payloads) or publisher.pending:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"publisher: {publisher.published} of {len(payloads)} "
                                   f"acknowledged, {publisher.pending} pending")
            time.sleep(0.01)
        elapsed, used = time.perf_counter() - start, time.process_time() - cpu
    finally:
        publisher.stop_sync()
    left = outbox.count()
    conn.close()
    db_path.unlink()
    if left:
        raise RuntimeError(f"publisher left {left} rows in the outbox")
    return elapsed, used


def measure(rounds: int, count: int) -> dict[str, dict[str, list[float]]]:
    payloads = messages(count)
    results: dict[str, dict[str, list[float]]] = {
        name: {"rate": [], "cpu_us": []} for name in ("naive", "publisher")}
    with tempfile.TemporaryDirectory(prefix="bench-publisher-") as tmp, \
            LocalBroker(data_dir=Path(tmp) / "broker") as broker:
        workdir = Path(tmp)
        run_naive(broker, payloads[:500])   # warm up both paths and the broker
        run_publisher(broker, payloads[:500], workdir)
        for r in range(rounds):
            order = ("naive", "publisher") if r % 2 == 0 else ("publisher", "naive")
            for name in order:
                if name == "naive":
                    seconds, cpu = run_naive(broker, payloads)
                else:
                    seconds, cpu = run_publisher(broker, payloads, workdir)
                results[name]["rate"].append(count / seconds)
                results[name]["cpu_us"].append(cpu / count * 1e6)
    return results


def figures() -> dict[str, dict]:
    rounds = int(os.environ.get("BENCH_REPEATS", "7"))
    count = int(os.environ.get("BENCH_PUBLISHER_MESSAGES", "20000"))
    results = measure(rounds, count)
    rate = {k: statistics.median(v["rate"]) for k, v in results.items()}
    cpu = {k: statistics.median(v["cpu_us"]) for k, v in results.items()}
    how = (f"{count} QoS 1 messages of {len(PAYLOAD)} bytes to a private mosquitto; median of "
           f"{rounds} interleaved rounds; baseline: a naive paho loop publishing the same "
           "messages and waiting for every PUBACK (no database). Goal (issue 16): >= 0.8x the "
           "baseline")
    return {
        "publisher.throughput": figure(
            rate["publisher"], rate["naive"], "msgs/s",
            "MqttPublisher from a WAL SQLite outbox, every row deleted after its PUBACK; " + how,
            better="higher"),
        "publisher.cpu_per_message": figure(
            cpu["publisher"], cpu["naive"], "us CPU/msg",
            "process CPU time (all threads) per message, lower is better (0.8x the baseline's "
            "efficiency is a ratio of at most 1.25); " + how, better="lower"),
    }


def main() -> int:
    table = figures()
    print_table(table)
    f = table["publisher.throughput"]
    c = table["publisher.cpu_per_message"]
    print(f"ratio publisher/naive: throughput {f['ratio']:.2f}x, "
          f"CPU per message {c['ratio']:.2f}x (efficiency {1 / c['ratio']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
