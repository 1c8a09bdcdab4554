"""Durable store and the ingest cycle: commit before ACK, duplicates once, disk full stops
acknowledging without losing what was stored."""

import json

import numpy as np
import pytest

from gateway import samples_message
from gateway import store as store_mod
from gateway.inference import default_models_dir, load_models
from gateway.ingest import Ingest
from gateway.outbox import Outbox
from gateway.store import DiskFullError, Store
from gateway.twin import TwinEngine
from gateway.values import LostSamples, RegisteredDevice, SampleBatch


def batch(device, seqs, temp_c=33.0):
    seqs = np.asarray(seqs, dtype=np.int64)
    n = len(seqs)
    return SampleBatch(device, 1, seqs, seqs * 10, 1_700_000_000_000 + seqs * 1000,
                       np.zeros(n, dtype=np.uint8), np.full(n, int(temp_c * 128), np.int32))


class FakeLink:
    def __init__(self):
        self.committed = []
        self.failed = []

    def on_committed(self, seq):
        self.committed.append(seq)

    def on_commit_failed(self, reason):
        self.failed.append(reason)


@pytest.fixture
def store(tmp_path):
    s = Store(store_mod.connect(tmp_path / "gw.sqlite3"))
    with s.transaction():
        s.register(RegisteredDevice("a" * 16, b"k" * 32, "s-a", 2, None), 0)
    yield s
    s.conn.close()


@pytest.fixture
def ingest(store):
    models = load_models(default_models_dir())
    engine = TwinEngine(1, {"a" * 16: "s-a"}, lambda n, i: models[n].run(i))
    kicks, alarm_changes = [], []
    topic = lambda *levels: "dermtwin/v1/gw/" + "/".join(levels)  # noqa: E731
    pipeline = Ingest(store, Outbox(store.conn), engine, topic, lambda: kicks.append(1),
                      lambda: alarm_changes.append(pipeline.stats.store_alarm))
    pipeline.kicks = kicks
    pipeline.alarm_changes = alarm_changes
    return pipeline


def test_database_is_wal_and_fully_synchronous(store):
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_registry_round_trip(store):
    [dev] = store.devices()
    assert (dev.device_id, dev.key, dev.subject, dev.skin_type) == ("a" * 16, b"k" * 32, "s-a", 2)
    with store.transaction():
        assert store.unregister("a" * 16)
    assert store.devices() == []


def test_duplicates_are_stored_once(store):
    with store.transaction():
        assert store.insert_samples([batch("a" * 16, range(0, 10))]) == 10
    with store.transaction():
        assert store.insert_samples([batch("a" * 16, range(5, 15))]) == 5
    assert store.sample_seqs("a" * 16) == list(range(15))
    assert store.committed_seq("a" * 16) == 14
    assert store.committed_seq("b" * 16) == -1


def test_batches_of_several_devices_boots_and_kinds_store_every_column(store):
    """insert_samples groups batches and writes several hundred rows per statement: every
    row keeps its own columns, unknown times become NULL, a replayed overlap counts once."""
    rng = np.random.default_rng(3)

    def made(device, boot, seqs, historical=False, time_uncertain=False, unknown_time=False):
        seqs = np.asarray(seqs, dtype=np.int64)
        n = len(seqs)
        utc = np.full(n, -1, np.int64) if unknown_time else 1_700_000_000_000 + seqs * 100
        return SampleBatch(device, boot, seqs, seqs * 3, utc,
                           rng.integers(0, 4, n).astype(np.uint8),
                           rng.integers(-2**23, 2**23, n).astype(np.int32), historical,
                           time_uncertain=time_uncertain)

    a, b = "a" * 16, "it's-b"   # a quote in the id: the inlined literal must escape it
    batches = [made(a, 1, range(0, 700), historical=True),
               made(a, 1, range(700, 1400), historical=True),   # joins the group above
               made(b, 2, range(0, 1203), time_uncertain=True),
               made(a, 1, range(1400, 1410)),                    # live: a group of its own
               made(a, 4, range(1410, 1420), unknown_time=True)]
    with store.transaction():
        assert store.insert_samples(batches) == 1400 + 1203 + 10 + 10
    with store.transaction():   # a REPLAY overlapping what is stored
        assert store.insert_samples([made(a, 4, range(1415, 1425), unknown_time=True)]) == 5
    rows = {(r[0], r[1]): r[2:] for r in store.conn.execute(
        "SELECT device_id, seq, boot_id, tick, utc_ms, channel, value, historical,"
        " time_uncertain FROM samples")}
    assert len(rows) == 1400 + 1203 + 10 + 15
    for batch_ in batches:
        for i, seq in enumerate(batch_.seq.tolist()):
            utc = int(batch_.utc_ms[i])
            assert rows[(batch_.device_id, seq)] == (
                batch_.boot_id, seq * 3, None if utc < 0 else utc, int(batch_.channel[i]),
                int(batch_.value[i]), int(batch_.historical), int(batch_.time_uncertain))
    assert store.committed_seq(a) == 1424 and store.committed_seq(b) == 1202


def test_cycle_commits_then_acknowledges_and_queues_messages(store, ingest):
    link = FakeLink()
    ingest.submit(link, batch("a" * 16, range(0, 5)))
    ingest.submit(link, batch("a" * 16, range(5, 8)))
    ingest.cycle(now_ms=1)
    assert link.committed == [7] and link.failed == []
    assert store.sample_count() == 8
    topics = [m.topic for m in ingest.outbox.pending(100)]
    assert "dermtwin/v1/gw/s-a/delta" in topics and "dermtwin/v1/gw/s-a/twin" in topics
    delta = json.loads(next(m.payload for m in ingest.outbox.pending(100)
                            if m.topic.endswith("/delta")))
    assert delta["rev"] == 1 and "skin_temp_c" in delta["set"]
    assert store.load_twins()["s-a"][0] == 1
    assert ingest.kicks


def test_raw_samples_are_published_once_in_si_units(store, ingest):
    link = FakeLink()
    first = batch("a" * 16, range(0, 4), temp_c=33.5)
    mixed = SampleBatch("a" * 16, 1, np.array([4, 5, 6, 7]), np.array([40, 50, 60, 70]),
                        np.array([1_700_000_004_000, -1, 1_700_000_006_000, 1_700_000_007_000]),
                        np.array([1, 2, 3, 0], dtype=np.uint8),
                        np.array([35, 45_123, 20_480, 4300], dtype=np.int32), historical=True)
    ingest.submit(link, first)
    ingest.submit(link, mixed)
    ingest.submit(link, batch("a" * 16, range(2, 6)))     # overlaps: nothing new in it
    ingest.cycle(now_ms=1)
    raw = [json.loads(m.payload) for m in ingest.outbox.pending(100)
           if m.topic == "dermtwin/v1/gw/s-a/samples"]
    # one message per device, boot and kind per cycle; split where the time is unknown
    assert [m.get("hist", False) for m in raw] == [False, True, True, True]
    assert ingest.stats.sample_messages == 4
    assert raw[0] == {"schema": 3, "boot": 1, "seq": 0, "t": 1_700_000_000_000, "tu": 1000,
                      "c": "0000", "dt": [[0, 1]], "v": [[4288]]}
    rows = [(s.seq, samples_message.PROPERTIES[s.prop], s.utc_ms,
             round(samples_message.to_si(s), 8))
            for m in raw for s in samples_message.decode(m)]
    assert rows == [(i, "skin_temp_c", 1_700_000_000_000 + 1000 * i, 33.5) for i in range(4)] + [
        (4, "uv_index", 1_700_000_004_000, 0.35),
        (5, "capacitance_pf", None, 45.123),
        (6, "battery_pct", 1_700_000_006_000, 80.0),
        (7, "skin_temp_c", 1_700_000_007_000, 33.59375)]
    ingest.submit(link, batch("a" * 16, range(6, 9)))     # 6 and 7 were published already
    ingest.cycle(now_ms=2)
    later = [json.loads(m.payload) for m in ingest.outbox.pending(100)
             if m.topic == "dermtwin/v1/gw/s-a/samples"][4:]
    assert [[s.seq for s in samples_message.decode(m)] for m in later] == [[8]]


def test_raw_samples_can_be_switched_off(store, ingest):
    ingest.publish_samples = False
    ingest.submit(FakeLink(), batch("a" * 16, range(0, 4)))
    ingest.cycle(now_ms=1)
    assert not [m for m in ingest.outbox.pending(100) if m.topic.endswith("/samples")]
    assert store.sample_count() == 4


def test_gaps_commit_with_their_batch_once_and_raise_a_data_loss_alert(store, ingest):
    link = FakeLink()
    lost = LostSamples(boot_id=1, seq_at=5, first_tick=20, last_tick=49,
                       first_utc_ms=1_700_000_002_000, last_utc_ms=1_700_000_004_900,
                       counts=(3, 6, 0, 1))
    first = batch("a" * 16, range(5, 8))
    ingest.submit(link, SampleBatch(**{**first.__dict__, "gaps": (lost,)}))
    ingest.cycle(now_ms=1)
    assert link.committed == [7]
    assert store.gaps("a" * 16) == [lost]
    [alert] = [json.loads(m.payload) for m in ingest.outbox.pending(100)
               if m.topic == "dermtwin/v1/gw/s-a/alert"]
    assert alert == {"schema": 3, "ts": 1, "kind": "data_loss", "from": 1_700_000_002_000,
                     "to": 1_700_000_004_900, "samples": {"skin_temp_c": 3, "uv_index": 6,
                                                          "capacitance_pf": 0, "battery_pct": 1}}
    # replayed: the same gap again with its samples is neither stored nor announced twice
    ingest.submit(link, SampleBatch(**{**first.__dict__, "gaps": (lost,)}))
    ingest.cycle(now_ms=2)
    assert store.gaps("a" * 16) == [lost] and ingest.stats.gaps == 1
    assert sum(m.topic.endswith("/alert") for m in ingest.outbox.pending(100)) == 1
    # retention removes gap records with the samples of their time
    store.prune_samples(older_than_utc_ms=1_700_000_005_000)
    assert store.gaps("a" * 16) == []


def test_disk_full_acknowledges_nothing_and_keeps_what_was_stored(store, ingest):
    link = FakeLink()
    ingest.submit(link, batch("a" * 16, range(0, 5)))
    ingest.cycle(now_ms=1)
    assert link.committed == [4]
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count={pages}")   # the disk is now full
    ingest.submit(link, batch("a" * 16, range(5, 5000)))
    ingest.cycle(now_ms=2)
    assert link.committed == [4], "nothing may be acknowledged that is not durable"
    assert len(link.failed) == 1 and "full" in link.failed[0]
    assert ingest.stats.commit_failures == 1 and ingest.stats.store_alarm
    assert store.sample_seqs("a" * 16) == list(range(5))
    store.conn.execute("PRAGMA max_page_count=1073741823")   # space freed
    ingest.submit(link, batch("a" * 16, range(5, 10)))
    ingest.cycle(now_ms=3)
    assert link.committed == [4, 9] and not ingest.stats.store_alarm
    assert ingest.alarm_changes == [True, False]    # raised once, cleared once


async def test_frames_after_a_refused_commit_are_not_committed_when_space_returns(store, ingest):
    # Seen as a flaky loss in tests/test_resilience.py under load: the store refuses a batch,
    # the session goes on decoding frames until it sees the failure, and the batch after the
    # refused one used to commit once space was back, leaving a hole under the watermark
    # that the next connection's ACK covered: the patch deleted samples never stored.
    from gateway.patch_link import PatchLink
    from gateway.session import Commit

    device = RegisteredDevice("a" * 16, b"k" * 32, "s-a", 2, None)
    link = PatchLink(device, radio=None, submit=ingest.submit, committed_seq=store.committed_seq)
    await link._execute(None, None, [Commit(batch("a" * 16, range(0, 5)))])
    ingest.cycle(now_ms=1)
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count={pages}")          # the disk is now full
    await link._execute(None, None, [Commit(batch("a" * 16, range(5, 5000)))])
    ingest.cycle(now_ms=2)                                        # refused
    await link._execute(None, None, [Commit(batch("a" * 16, range(5000, 5100)))])   # late
    store.conn.execute("PRAGMA max_page_count=1073741823")        # space is back
    ingest.cycle(now_ms=3)
    assert store.committed_seq("a" * 16) == 4
    assert store.sample_seqs("a" * 16) == list(range(5))
    events = []
    while not link.events.empty():
        events.append(type(link.events.get_nowait()).__name__)
    assert events == ["Committed", "CommitFailed"]               # nothing acknowledges 5099


def test_transaction_classifies_disk_full(store):
    store.conn.execute("PRAGMA max_page_count=1")
    with pytest.raises(DiskFullError), store.transaction():
        store.insert_samples([batch("a" * 16, range(0, 5000))])


def test_retention_prunes_old_samples_but_not_the_watermark(store):
    with store.transaction():
        store.insert_samples([batch("a" * 16, range(0, 10))])   # utc = base + seq s
    removed = store.prune_samples(older_than_utc_ms=1_700_000_000_000 + 5_000)
    assert removed == 5
    assert store.sample_seqs("a" * 16) == [5, 6, 7, 8, 9]
    assert store.committed_seq("a" * 16) == 9


def test_desired_config_round_trip_survives_reopening(store, tmp_path):
    from gateway.values import DesiredConfig
    device = "a" * 16
    assert store.desired(device) is None
    with store.transaction():
        store.save_desired(device, 3, {1: 20, 6: 5}, 1000)
    assert store.desired(device) == DesiredConfig(3, {1: 20, 6: 5}, None)
    with store.transaction():
        store.mark_config_applied(device, 3, {1: 20, 6: 5})
        store.save_desired(device, 4, {2: 7}, 2000)     # a newer version keeps applied_ver
    reopened = Store(store_mod.connect(tmp_path / "gw.sqlite3"))
    desired = reopened.desired(device)
    assert desired == DesiredConfig(4, {2: 7}, 3, {1: 20, 6: 5}) and not desired.applied
    with reopened.transaction():
        reopened.mark_config_applied(device, 4, {2: 7})
    assert reopened.desired(device).applied
    with reopened.transaction():
        reopened.unregister(device)
    assert reopened.desired(device) is None
    reopened.conn.close()


async def test_a_cancel_that_meets_a_wake_up_still_ends_the_ingest_loop(ingest):
    """Gateway.run stops by cancelling Ingest.run. A cancel arriving as a batch wakes it must
    not be lost (asyncio.wait_for loses it on Python 3.11, gh-86296: the stop hung forever)."""
    import asyncio

    for steps in range(4):
        task = asyncio.create_task(ingest.run())
        await asyncio.sleep(0.01)
        ingest._wake.set()
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2)
        if not done:
            task.cancel()
        assert done, f"Ingest.run ignored a cancel {steps} loop steps after a wake-up"


def test_disk_full_alarm_stays_through_cycles_with_nothing_to_write(store, ingest):
    link = FakeLink()
    ingest.submit(link, batch("a" * 16, range(0, 5)))
    ingest.cycle(now_ms=1)
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count={pages}")
    ingest.submit(link, batch("a" * 16, range(5, 5000)))
    ingest.cycle(now_ms=2)
    assert ingest.alarms.is_up("store")
    for now in range(3, 20):   # idle cycles commit nothing: they prove nothing about the disk
        ingest.cycle(now_ms=now)
    assert ingest.stats.store_alarm and ingest.alarms.is_up("store")
    assert ingest.alarm_changes == [True], "no flapping"
    store.conn.execute("PRAGMA max_page_count=1073741823")
    ingest.submit(link, batch("a" * 16, range(5, 10)))
    ingest.cycle(now_ms=30)
    assert not ingest.alarms.is_up("store") and ingest.alarm_changes == [True, False]


def test_a_cycle_failing_for_another_reason_fails_its_sessions_and_propagates(store, ingest):
    link = FakeLink()

    def broken_step(now_ms):
        raise ZeroDivisionError("a bug in the twin engine")

    ingest.engine.step = broken_step
    ingest.submit(link, batch("a" * 16, range(0, 5)))
    with pytest.raises(ZeroDivisionError):
        ingest.cycle(now_ms=1)
    assert link.committed == [] and len(link.failed) == 1
    assert "ZeroDivisionError" in link.failed[0]
    assert store.sample_seqs("a" * 16) == [], "rolled back: nothing acknowledged or kept"


@pytest.mark.parametrize("failure", ["raises", "nan"])
def test_failing_model_never_stops_storage_and_marks_its_properties_bad(store, failure):
    import numpy as np

    from gateway.alarms import Alarms
    from gateway.model_set import ModelSet

    alarms = Alarms()
    models = ModelSet(default_models_dir(), ("temp_anomaly", "uv_dose", "hydration"), alarms)
    engine = TwinEngine(1, {"a" * 16: "s-a"}, models.run)
    topic = lambda *levels: "dermtwin/v1/gw/" + "/".join(levels)  # noqa: E731
    pipeline = Ingest(store, Outbox(store.conn), engine, topic, lambda: None, alarms=alarms)
    link = FakeLink()
    pipeline.submit(link, batch("a" * 16, range(0, 5)))
    pipeline.cycle(now_ms=1)
    assert engine.twins["s-a"].state["temp_delta_c"]["q"] in ("good", "uncertain")

    real = models.models["temp_anomaly"]

    class Broken:
        version = real.version

        def run(self, inputs):
            if failure == "raises":
                raise RuntimeError("onnxruntime: bad allocation")
            out = real.run(inputs)
            out["delta_c"] = np.full_like(out["delta_c"], np.nan)
            return out

    models.models["temp_anomaly"] = Broken()
    pipeline.submit(link, batch("a" * 16, range(5, 10), temp_c=34.0))
    pipeline.cycle(now_ms=2)
    assert link.committed == [4, 9], "samples still committed and acknowledged"
    assert store.sample_seqs("a" * 16) == list(range(10))
    alarm = alarms.get("model", "temp_anomaly")
    assert alarm is not None and "temp_anomaly" in alarm.describe()
    state = engine.twins["s-a"].state
    assert state["temp_delta_c"]["q"] == "bad" and state["inflammation"]["q"] == "bad"
    assert state["skin_temp_c"]["v"] == 34.0 and state["skin_temp_c"]["q"] == "good"
    deltas = [json.loads(m.payload) for m in pipeline.outbox.pending(100)
              if m.topic.endswith("/delta")]
    assert deltas[-1]["set"]["temp_delta_c"][2] == "b"   # [v, age, "b"]: bad

    models.models["temp_anomaly"] = real   # the model answers again: the alarm clears
    pipeline.submit(link, batch("a" * 16, range(10, 15), temp_c=34.5))
    pipeline.cycle(now_ms=3)
    assert not alarms.is_up("model", "temp_anomaly")
    assert engine.twins["s-a"].state["temp_delta_c"]["q"] != "bad"


def test_twin_rev_and_state_round_trip_through_the_store_and_a_reopen(store, tmp_path):
    with store.transaction():
        store.save_twin("s-a", 5, {"state": {"uv_index": {"v": 1.0, "t": 1, "q": "good"}}})
    with store.transaction():
        store.save_twin("s-a", 6, {"state": {"uv_index": {"v": 2.0, "t": 2, "q": "good"}}})
    reopened = Store(store_mod.connect(tmp_path / "gw.sqlite3"))
    assert reopened.load_twins() == {
        "s-a": (6, {"state": {"uv_index": {"v": 2.0, "t": 2, "q": "good"}}})}
    reopened.conn.close()


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 4 MB filesystem (tmpfs): real ENOSPC, not a page limit. Needs mount rights."""
    import subprocess
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


async def test_real_disk_full_keeps_the_alarm_until_a_write_succeeds_and_retention_survives(
        small_filesystem, monkeypatch):
    import asyncio
    import types

    from gateway import service
    from gateway.alarms import Alarms

    store = Store(store_mod.connect(small_filesystem / "gw.sqlite3"))
    with store.transaction():
        store.register(RegisteredDevice("a" * 16, b"k" * 32, "s-a", 2, None), 0)
    models = load_models(default_models_dir())
    alarms = Alarms()
    engine = TwinEngine(1, {"a" * 16: "s-a"}, lambda n, i: models[n].run(i))
    ingest = Ingest(store, Outbox(store.conn), engine,
                    lambda *levels: "dermtwin/v1/gw/" + "/".join(levels), lambda: None,
                    alarms=alarms)
    link = FakeLink()
    with store.transaction():   # old samples, for retention to delete
        store.insert_samples([batch("a" * 16, range(0, 20_000))])
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    filler = small_filesystem / "filler"
    with open(filler, "wb", buffering=0) as f:   # fill the disk
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:
            pass
    seq = 20_000
    while not alarms.is_up("store"):
        ingest.submit(link, batch("a" * 16, range(seq, seq + 500)))
        ingest.cycle(now_ms=seq)
        seq = store.committed_seq("a" * 16) + 1
        assert seq < 100_000, "the disk never filled"
    assert "full" in alarms.get("store").detail and link.failed
    for now in range(5):
        ingest.cycle(now_ms=now)
    assert alarms.is_up("store"), "idle cycles do not clear a disk-full alarm"

    # retention on the full disk: an alarm, and the task keeps going
    monkeypatch.setattr(service, "PRUNE_RETRY_S", 0.05)
    gateway = types.SimpleNamespace(
        config=types.SimpleNamespace(retention_days=1e-9, archive_days=1e-9), store=store,
        alarms=alarms)
    prune = asyncio.create_task(service.Gateway._prune(gateway))
    await asyncio.sleep(0.5)
    assert not prune.done()
    full_while_pruning = alarms.is_up("retention")

    filler.unlink()   # space is back
    ingest.submit(link, batch("a" * 16, range(seq, seq + 5)))
    ingest.cycle(now_ms=10**6)
    assert not alarms.is_up("store") and link.committed[-1] == seq + 4
    await asyncio.sleep(0.3)
    assert not alarms.is_up("retention") and not prune.done()
    prune.cancel()
    store.conn.close()
    assert full_while_pruning, "a retention pass on a full disk fails, raising its alarm"


def test_overlapping_batches_of_two_sessions_in_one_cycle_publish_each_sample_once(store, ingest):
    # The link dropped with 0..9 received but not yet committed; the new session replayed from
    # the store's watermark, so its batch overlaps the old one's in the same cycle.
    old, new = FakeLink(), FakeLink()
    ingest.submit(old, batch("a" * 16, range(0, 10)))
    ingest.submit(new, batch("a" * 16, range(5, 15)))
    ingest.cycle(now_ms=1)
    published = [s.seq for m in ingest.outbox.pending(100) if m.topic.endswith("/samples")
                 for s in samples_message.decode(json.loads(m.payload))]
    assert sorted(published) == list(range(15)), "each sample on MQTT once"
    assert store.sample_seqs("a" * 16) == list(range(15))
    assert (old.committed, new.committed) == ([9], [14])


def test_ingest_counters_match_what_was_stored_and_written_to_the_outbox(store, ingest):
    link = FakeLink()
    for now, seqs in enumerate((range(0, 40), range(30, 60), range(60, 70)), start=1):
        ingest.submit(link, batch("a" * 16, seqs, temp_c=33.0 + now))
        ingest.cycle(now_ms=now * 60_000)
    leaves = [m.topic.rsplit("/", 1)[1] for m in ingest.outbox.pending(1000)]
    stats = ingest.stats
    assert (stats.cycles, stats.samples_committed, stats.samples_duplicate) == (3, 70, 10)
    assert stats.sample_messages == leaves.count("samples") > 0
    assert stats.deltas == leaves.count("delta") > 0
    assert stats.snapshots == leaves.count("twin")
    assert stats.alerts == leaves.count("alert")
    assert stats.commit_failures == 0
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count={pages}")
    ingest.submit(link, batch("a" * 16, range(70, 5000)))
    ingest.cycle(now_ms=10 * 60_000)
    assert (stats.commit_failures, stats.cycles, stats.samples_committed) == (1, 3, 70)
