"""When ingest cycles run (gateway/ingest.py): a live batch is committed without waiting to
gather; a backlog drain commits its first batch at once, then gathers; a live batch arriving
while a drain gathers takes the gathered batches with it. The latency this buys is measured
in bench/bench_latency.py."""

import asyncio

import numpy as np
import pytest

from gateway import store as store_mod
from gateway.inference import default_models_dir, load_models
from gateway.ingest import Ingest
from gateway.outbox import Outbox
from gateway.store import Store
from gateway.twin import TwinEngine
from gateway.values import RegisteredDevice, SampleBatch

DEVICE = "b" * 16


def batch(seqs, historical):
    seqs = np.asarray(seqs, dtype=np.int64)
    n = len(seqs)
    return SampleBatch(DEVICE, 1, seqs, seqs * 10, 1_700_000_000_000 + seqs * 1000,
                       np.zeros(n, dtype=np.uint8), np.full(n, 33 * 128, np.int32),
                       historical=historical)


class Link:
    def __init__(self):
        self.committed = []

    def on_committed(self, seq):
        self.committed.append(seq)

    def on_commit_failed(self, reason):
        raise AssertionError(reason)


@pytest.fixture
def ingest(tmp_path):
    store = Store(store_mod.connect(tmp_path / "gw.sqlite3"))
    with store.transaction():
        store.register(RegisteredDevice(DEVICE, b"k" * 32, "s-b", 2, None), 0)
    models = load_models(default_models_dir())
    engine = TwinEngine(1, {DEVICE: "s-b"}, lambda n, i: models[n].run(i))
    yield Ingest(store, Outbox(store.conn), engine, lambda *lv: "t/" + "/".join(lv),
                 lambda: None)
    store.conn.close()


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


async def test_live_batches_commit_at_once_and_drains_gather(ingest):
    link = Link()
    task = asyncio.create_task(ingest.run())
    try:
        await settle()
        cycles = ingest.stats.cycles
        ingest.submit(link, batch(range(0, 100), historical=True))
        await settle()
        assert link.committed == [99], "a drain's first batch waits for nothing"
        ingest.submit(link, batch(range(100, 200), historical=True))
        ingest.submit(link, batch(range(200, 300), historical=True))
        await settle()
        assert link.committed == [99], "later drain batches gather"
        ingest.submit(link, batch(range(300, 303), historical=False))
        await settle()
        assert link.committed == [99, 302], "a live batch takes the gathered ones along"
        assert ingest.stats.cycles == cycles + 2
        assert ingest.store.sample_count() == 303
        ingest.submit(link, batch(range(303, 305), historical=False))
        await settle()
        assert link.committed[-1] == 304, "live batches never wait for the drain's window"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_drain_gathers_at_most_its_window(ingest):
    link = Link()
    task = asyncio.create_task(ingest.run())
    try:
        ingest.submit(link, batch(range(0, 10), historical=True))
        await settle()
        ingest.submit(link, batch(range(10, 20), historical=True))
        await asyncio.sleep(0.3)   # well past the 100 ms gather window
        assert link.committed == [9, 19]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class FailingLink(Link):
    def __init__(self):
        super().__init__()
        self.failed = []

    def on_commit_failed(self, reason):
        self.failed.append(reason)


def test_batches_sent_after_a_failed_commit_wait_for_the_replay(ingest):
    """A session's later frames, sent before it heard of the failure, must not move the
    watermark past the samples that failed: they would never be replayed."""
    link = FailingLink()
    conn = ingest.store.conn
    conn.execute(f"PRAGMA max_page_count={conn.execute('PRAGMA page_count').fetchone()[0]}")
    ingest.submit(link, batch(range(0, 5000), historical=True))   # more than fits
    ingest.cycle(0)
    assert link.failed and link.committed == []
    conn.execute("PRAGMA max_page_count=1073741823")
    ingest.submit(link, batch(range(5000, 5010), historical=True))   # sent on regardless
    ingest.cycle(0)
    assert link.committed == [] and ingest.store.committed_seq(DEVICE) == -1
    ingest.submit(link, batch(range(0, 5010), historical=True))   # the REPLAY from 0
    ingest.cycle(0)
    assert link.committed == [5009]
    assert ingest.store.sample_seqs(DEVICE) == list(range(5010))
