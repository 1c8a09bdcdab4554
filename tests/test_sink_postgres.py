"""`dermtwin sink` against real parts: a throwaway PostgreSQL server (the distribution's
binaries, tests/postgres_server.py), a real mosquitto, a gateway with virtual patches, and
three `dermtwin sink` processes in one consumer group (MQTT 5 shared subscription).

One member is SIGKILLed while it holds a batch it has not committed, and restarted with the
same client id (as a service manager would). At the end the database holds exactly what the
gateway stored: every sample (compared with the gateway's SQLite store, value for value),
every twin revision and snapshot, the alerts, and no row twice, although the broker
redelivered the killed member's unacknowledged messages and a samples message and an alert
were published a second time.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from postgres_server import PostgresServer, find_bin_dir

BIN_DIR = find_bin_dir()
pytestmark = pytest.mark.skipif(
    BIN_DIR is None, reason="PostgreSQL server binaries (initdb, postgres) not found on PATH or "
                            "in /usr/lib/postgresql/*/bin: run tools/ensure-postgres.sh")

ROOT = "dermtwin/v1/rig"
REPO = Path(__file__).resolve().parents[1]
GROUP = "research"
BATCH_LINE = re.compile(r"batch committed: (\d+) messages, (\d+) acknowledged; new/offered: "
                        r"samples (\d+)/(\d+), revisions (\d+)/(\d+), snapshots (\d+)/(\d+), "
                        r"alerts (\d+)/(\d+)")
SUMMARY_LINE = re.compile(r"stopped \(pid \d+\): (\d+) messages \((\d+) redelivered\)")


@pytest.fixture(scope="module")
def postgres():
    with PostgresServer(BIN_DIR) as server:
        yield server


def new_database(server: PostgresServer, name: str) -> str:
    import psycopg

    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.url.rsplit("/", 1)[0] + f"/{name}"


def dermtwin(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


ENV = {**os.environ, "PYTHONPATH": str(REPO)}


class SinkProcess:
    def __init__(self, db_url: str, broker_url: str, client_id: str, log_path: Path,
                 *extra: str):
        self.args = dermtwin("-v", "sink", "--db", db_url, "--broker", broker_url,
                             "--gateway-id", "rig", "--group", GROUP, "--client-id", client_id,
                             "--session-expiry", "300", *extra)
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=ENV, cwd=REPO)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def batches(self) -> list[tuple[int, ...]]:
        return [tuple(map(int, m.groups())) for m in BATCH_LINE.finditer(self.log())]

    async def wait_log(self, pattern: str, count: int = 1, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(re.findall(pattern, self.log())) < count:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"sink exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} (x{count}) in {timeout_s} s:\n{self.log()}")
            await asyncio.sleep(0.05)

    async def wait_in_flight(self, timeout_s: float = 20.0) -> int:
        """Wait until the sink has taken messages it has not committed yet; how many."""
        deadline = time.monotonic() + timeout_s
        while True:
            after_commit = self.log().rsplit("batch committed", 1)[-1]
            received = after_commit.count("sink: received ")
            if received:
                return received
            if time.monotonic() > deadline:
                raise AssertionError(f"no message received in {timeout_s} s:\n{self.log()}")
            await asyncio.sleep(0.02)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout_s: float = 15.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def query(url: str, sql: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.slow
async def test_three_members_one_killed_mid_batch_end_complete_and_duplicate_free(
        tmp_path, postgres, mqtt_collector):
    from gateway_harness import GatewayRig, mqtt5_publish, wait_for

    from gateway import payload_encoding, twin_message
    from gateway.ingest import data_loss_alert, encode
    from gateway.mqtt import topics
    from gateway.values import LostSamples
    from simulation.demo import DEMO_PATCH_CONFIG, DEMO_TIME_SCALE

    db = new_database(postgres, "members")
    started = time.monotonic()
    async with GatewayRig(tmp_path, patches=3, time_scale=DEMO_TIME_SCALE,
                          patch_config={**DEMO_PATCH_CONFIG, 6: 1}) as rig:
        alerts_seen = mqtt_collector(rig.broker, f"{ROOT}/+/alert")
        samples_seen = mqtt_collector(rig.broker, f"{ROOT}/+/samples")
        # member 1 commits only every 5 s: whenever it is killed it holds a batch in flight
        sinks = [SinkProcess(db, rig.broker.url, f"sink-{i}", tmp_path / f"sink-{i}.log",
                             *(["--batch-wait", "5", "--batch-messages", "10000"] if i == 1
                               else []))
                 for i in range(3)]
        try:
            for sink in sinks:
                sink.start()
            for sink in sinks:
                await sink.wait_log("session new")
            gateway = await rig.start_gateway(samples_format="zlib")   # compressed samples
            victim = sinks[1]
            await victim.wait_in_flight(timeout_s=30)
            await asyncio.sleep(2.5)           # a few more into the open batch (5 s)
            in_flight = await victim.wait_in_flight()
            victim.kill()                      # SIGKILL mid-batch: nothing acknowledged
            killed_after = victim.batches()
            await asyncio.sleep(1.5)           # the broker keeps its share for its session
            victim.start()                     # same client id: the session is resumed
            await victim.wait_log("session resumed")

            # at least once from the gateway's side: a samples message and an alert again
            again = samples_seen.messages[0]
            again_json = payload_encoding.json_bytes(
                again.payload, payload_encoding.content_type(again.payload))
            await asyncio.to_thread(mqtt5_publish, rig.broker, again.topic, again_json)
            subject = rig.identities[0][2]
            loss = encode(data_loss_alert(LostSamples(1, 50, 10, 20, 1_700_000_000_000,
                                                      1_700_000_060_000, (3, 6, 0, 1)), 5))
            for _ in range(2):
                await asyncio.to_thread(mqtt5_publish, rig.broker,
                                        topics.ALERT.path(ROOT, subject), loss)
            await asyncio.sleep(2.0)
            await wait_for(lambda: sum(gateway.store.sample_count(d) for d, _, _ in rig.identities)
                           > 50, timeout_s=30, what="more than 50 samples stored")
            await rig.stop_gateway()
            # the engine's twin as it travels: values at their wire resolution, exact times
            final = {s: (gateway.engine.twins[s].rev,
                         twin_message.as_received(gateway.engine.twins[s].state))
                     for _, _, s in rig.identities}
            devices = {d: s for d, _, s in rig.identities}
            conn = sqlite3.connect(rig.db_path)
            stored = {(devices[d], boot, seq): (channel, value, utc)
                      for d, boot, seq, channel, value, utc in conn.execute(
                          "SELECT device_id, boot_id, seq, channel, value, utc_ms FROM samples")}
            conn.close()

            def caught_up() -> bool:
                [(n,)] = query(db, "SELECT count(*) FROM samples")
                revs = dict(query(db, "SELECT subject, max(rev) FROM twin_history "
                                      "GROUP BY subject"))
                return n >= len(stored) and all(revs.get(s) == rev
                                                for s, (rev, _) in final.items())

            await wait_for(caught_up, timeout_s=20, what="the database to catch up")
            for sink in sinks:
                sink.signal(signal.SIGTERM)
            codes = [await asyncio.to_thread(sink.wait) for sink in sinks]
        finally:
            for sink in sinks:
                sink.kill()
    elapsed = time.monotonic() - started
    logs = {i: sink.log() for i, sink in enumerate(sinks)}
    assert codes == [0, 0, 0], logs

    # every sample the gateway stored, once, with its value and time
    props = ("skin_temp_c", "uv_index", "capacitance_pf", "battery_pct")
    rows = query(db, "SELECT subject, boot, seq, property, raw, utc_ms FROM samples")
    assert len(rows) == len(stored) > 50
    assert {(s, b, q): (props.index(p), raw, utc) for s, b, q, p, raw, utc in rows} == stored
    # every twin revision, and the history folds into the gateway's final twin
    for s, (rev, state) in final.items():
        history = query(db, f"SELECT rev, changed, removed FROM twin_history "
                            f"WHERE subject = '{s}' ORDER BY rev")
        assert [r for r, _, _ in history] == list(range(1, rev + 1)), s
        snapshots = query(db, f"SELECT rev, state FROM twin_snapshots WHERE subject = '{s}' "
                              f"ORDER BY rev")
        assert [r for r, _ in snapshots][-1] == rev
        assert snapshots[-1][1] == json.loads(json.dumps(state))
        folded = dict(snapshots[0][1])
        for r, changed, removed in history:
            if r > snapshots[0][0]:
                folded.update(changed)
                for prop in removed:
                    folded.pop(prop, None)
        assert folded == json.loads(json.dumps(state)), s
    # the alerts that went out, each once (the data_loss event was published twice)
    published = {(m.topic.split("/")[3], json.loads(m.payload)["ts"],
                  json.loads(m.payload)["kind"]) for m in alerts_seen.messages}
    stored_alerts = query(db, "SELECT subject, ts_ms, kind FROM alerts")
    assert sorted(stored_alerts) == sorted(published)
    assert (subject, 5, "data_loss") in published
    assert query(db, "SELECT count(*) FROM rejected_messages") == [(0,)]
    zlib_samples = sum(payload_encoding.content_type(m.payload) is not None
                       for m in samples_seen.messages)
    assert zlib_samples > 0, "no compressed samples message was published"

    # the killed member had messages in flight: the broker sent them again (DUP) on restart
    summary = SUMMARY_LINE.findall(logs[1])
    assert len(summary) == 1, logs[1]
    assert int(summary[0][1]) >= in_flight > 0, "the in-flight messages were not redelivered"
    assert len(victim.batches()) > len(killed_after)
    # all three members stored something: the group shared the work
    batches = {i: sink.batches() for i, sink in enumerate(sinks)}
    assert all(sum(b[2] for b in batches[i]) > 0 for i in range(3)), batches
    # redelivered and republished rows were offered again and skipped, never stored twice
    offered = sum(b[3] for bs in batches.values() for b in bs)
    new = sum(b[2] for bs in batches.values() for b in bs)
    assert new <= len(rows)
    assert offered - new >= len(json.loads(again_json)["c"])
    print(f"\nsink test: {len(rows)} samples, {sum(r for r, _ in final.values())} twin revs, "
          f"{len(stored_alerts)} alerts; {offered - new} duplicate sample rows skipped; "
          f"{summary[0][1]} messages redelivered to the restarted member; {elapsed:.1f} s")


def run_sink(*args: str, timeout_s: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(dermtwin("sink", "--gateway-id", "gw1", *args), capture_output=True,
                          text=True, env=ENV, cwd=REPO, timeout=timeout_s)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    *progress, last = result.stderr.strip().splitlines()
    assert last.startswith("dermtwin sink: "), result.stderr
    assert all(re.search(r" (INFO|WARNING) gateway\.sink[.\w]*: sink: ", line)
               for line in progress), result.stderr
    return last


def test_bad_url_unreachable_database_or_broker_end_with_one_clear_line(postgres):
    from simulation.broker import LocalBroker, free_loopback_port

    dead = f"mqtt://127.0.0.1:{free_loopback_port()}"
    line = one_line_error(run_sink("--db", "mysql://u:secret@db/x", "--broker", dead))
    assert "give a PostgreSQL URL" in line and "secret" not in line
    line = one_line_error(run_sink("--db", "postgresql://db:port/x", "--broker", dead))
    assert "port 'port' is not a number" in line
    line = one_line_error(run_sink("--db", f"postgresql://u:secret@127.0.0.1:"
                                           f"{free_loopback_port()}/x", "--broker", dead))
    assert "cannot connect to PostgreSQL" in line and "Connection refused" in line
    assert "secret" not in line
    missing = postgres.url.rsplit("/", 1)[0] + "/no_such_db"
    line = one_line_error(run_sink("--db", missing, "--broker", dead))
    assert 'database "no_such_db" does not exist' in line and "createdb" in line
    line = one_line_error(run_sink("--db", postgres.url, "--broker", dead))
    assert f"cannot connect to {dead}: connection refused" in line
    with LocalBroker(users={"sink": "right"}) as broker:
        result = subprocess.run(
            dermtwin("sink", "--gateway-id", "gw1", "--db", postgres.url, "--broker", broker.url,
                     "--username", "sink", "--password-env", "SINK_PW"), capture_output=True,
            text=True, env={**ENV, "SINK_PW": "wrong"}, cwd=REPO, timeout=30)
    line = one_line_error(result)
    assert line.endswith(f"cannot connect to {broker.url}: the broker refused the connection "
                         "(Not authorized)") and "wrong" not in result.stderr


def test_tables_are_created_once_and_a_newer_schema_is_refused(postgres):
    from gateway.sink import schema
    from gateway.sink.postgres import PostgresStore, SinkDbError
    from gateway.sink.rows import MessageDecoder

    db = new_database(postgres, "schema_check")
    first, second = PostgresStore(db), PostgresStore(db)
    first.open()
    second.open()   # idempotent: nothing to create the second time
    rows = MessageDecoder(ROOT).decode(f"{ROOT}/s-1/delta", json.dumps(
        {"schema": 2, "sess": 1, "rev": 7, "ts": 5, "set": {}, "unset": []}).encode())
    assert first.write(rows)["revisions"] == 1
    assert second.write(rows)["revisions"] == 0   # the key (subject, rev) is taken
    first.close()
    second.close()
    indexes = {name for (name,) in query(db, "SELECT indexname FROM pg_indexes "
                                             "WHERE schemaname = 'public'")}
    assert {"samples_pkey", "samples_by_time", "twin_history_pkey", "alerts_pkey"} <= indexes
    import psycopg

    with psycopg.connect(db) as conn:
        conn.execute("INSERT INTO sink_schema (version) VALUES (%s)", (schema.VERSION + 1,))
    with pytest.raises(SinkDbError, match="version 2; this dermtwin writes version 1"):
        PostgresStore(db).open()


@pytest.mark.slow
def test_leave_stores_what_the_session_kept_and_ends_it(tmp_path, postgres):
    import paho.mqtt.client as paho
    from gateway_harness import mqtt5_publish
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from gateway import samples_message
    from simulation.broker import LocalBroker

    db = new_database(postgres, "leaving")

    def publish(seqs: range) -> None:
        for seq in seqs:
            doc = samples_message.encode(1, [seq], [1_700_000_000_000 + seq], [0], [4200 + seq])
            mqtt5_publish(broker, f"{ROOT}/s-1/samples", json.dumps(doc).encode())

    with LocalBroker() as broker:
        stay = SinkProcess(db, broker.url, "stay", tmp_path / "stay.log")
        leaver = SinkProcess(db, broker.url, "leaver", tmp_path / "leaver.log")
        try:
            for sink in (stay, leaver):
                sink.start()
                asyncio.run(sink.wait_log("session new"))
            leaver.kill()
            publish(range(0, 10))          # half of them wait in the leaver's session
            result = subprocess.run(leaver.args + ["--leave"], capture_output=True, text=True,
                                    env=ENV, cwd=REPO, timeout=30)
            assert result.returncode == 0, result.stderr
            assert "session resumed" in result.stderr and "left group" in result.stderr
            taken = int(re.search(r"stored (\d+) samples", result.stderr).group(1))
            assert taken > 0
            publish(range(10, 20))         # all to the member that stayed
            deadline = time.monotonic() + 15
            while query(db, "SELECT count(*) FROM samples") != [(20,)]:
                assert time.monotonic() < deadline, query(db, "SELECT seq FROM samples")
                time.sleep(0.1)
            stay.signal(signal.SIGTERM)
            assert stay.wait() == 0
        finally:
            stay.kill()
            leaver.kill()
        # the broker holds no session for the member that left
        present = []
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="leaver",
                             protocol=paho.MQTTv5)
        client.on_connect = lambda c, u, flags, rc, p: present.append(flags.session_present)
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 0
        client.connect(broker.host, broker.port, clean_start=False, properties=properties)
        client.loop_start()
        deadline = time.monotonic() + 5
        while not present and time.monotonic() < deadline:
            time.sleep(0.05)
        client.disconnect()
        client.loop_stop()
        assert present == [False]
    assert sorted(seq for (seq,) in query(db, "SELECT seq FROM samples")) == list(range(20))


def test_a_database_outage_holds_the_messages_unacknowledged_until_it_is_back(tmp_path,
                                                                             postgres):
    from gateway_harness import mqtt5_publish

    from gateway import samples_message
    from simulation.broker import LocalBroker

    db = new_database(postgres, "outage")

    def publish(seqs: range) -> None:
        for seq in seqs:
            doc = samples_message.encode(1, [seq], [1_700_000_000_000 + seq], [0], [4200 + seq])
            mqtt5_publish(broker, f"{ROOT}/s-1/samples", json.dumps(doc).encode())

    def count() -> int:
        return query(db, "SELECT count(*) FROM samples")[0][0]

    with LocalBroker() as broker:
        sink = SinkProcess(db, broker.url, "solo", tmp_path / "solo.log")
        try:
            sink.start()
            asyncio.run(sink.wait_log("session new"))
            publish(range(0, 5))
            deadline = time.monotonic() + 10
            while count() < 5:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            postgres.stop_server()
            publish(range(5, 10))
            asyncio.run(sink.wait_log(r"holding \d+ messages unacknowledged, retrying"))
            postgres.start_server()
            asyncio.run(sink.wait_log("PostgreSQL is back", timeout_s=40))
            assert count() == 10
            sink.signal(signal.SIGTERM)
            assert sink.wait() == 0
        finally:
            sink.kill()
    log = sink.log()
    assert len(re.findall("messages unacknowledged", log)) == 1   # one line per outage
    assert "Traceback" not in log


@pytest.mark.slow
def test_two_members_with_one_client_id_end_with_a_line_naming_it(tmp_path, postgres):
    from simulation.broker import LocalBroker

    with LocalBroker() as broker:
        first = SinkProcess(postgres.url, broker.url, "same", tmp_path / "first.log")
        second = SinkProcess(postgres.url, broker.url, "same", tmp_path / "second.log")
        try:
            first.start()
            asyncio.run(first.wait_log("session new"))
            second.start()
            # mosquitto closes the older connection; the two take the session in turns
            codes = {}
            deadline = time.monotonic() + 30
            while not codes and time.monotonic() < deadline:
                for name, sink in (("first", first), ("second", second)):
                    if sink.process.poll() is not None:
                        codes[name] = sink.process.returncode
                time.sleep(0.1)
        finally:
            first.kill()
            second.kill()
    assert list(codes.values()) == [1], codes
    log = (first if "first" in codes else second).log()
    assert ("most likely another client connected with client id 'same' and took this "
            "session over: give each member of the group its own --client-id") in log
    assert "Traceback" not in log
