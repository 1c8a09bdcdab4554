"""Backlog ingest, decode to commit: a 7-day backlog (~190k samples at the design's default
rates) through the gateway's real path (PatchSession decode + dedupe → Ingest cycle: one
SQLite transaction per batch of frames, twin step, outbox) against a naive baseline (decode
one sample at a time, one INSERT + COMMIT per sample), both measured in this run on the
same machine. Prints samples/s and the ratio. Not a test.

The baseline commits one sample at a time for BASELINE_SAMPLES samples only (at a few
thousand commits/s the whole backlog would take minutes); its rate is what is compared.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_codec import KEY, backlog_samples, frames_for, naive_decode  # noqa: E402
from figures import figure, print_table  # noqa: E402

from gateway import store as store_mod  # noqa: E402
from gateway.inference import default_models_dir, load_models  # noqa: E402
from gateway.ingest import Ingest  # noqa: E402
from gateway.outbox import Outbox  # noqa: E402
from gateway.session import PatchSession, State  # noqa: E402
from gateway.twin import TwinEngine  # noqa: E402

DEVICE = "00112233445566ff"
BASELINE_SAMPLES = int(os.environ.get("BENCH_BASELINE_SAMPLES", "5000"))
FRAMES_PER_CYCLE = 50   # what one 100 ms ingest cycle gathers during a fast drain


class _Link:
    def __init__(self):
        self.acked = -1

    def on_committed(self, seq):
        self.acked = seq

    def on_commit_failed(self, reason):
        raise RuntimeError(reason)


def streaming_session() -> PatchSession:
    session = PatchSession(DEVICE, KEY, -1)
    session.state = State.STREAMING
    session.boot_id = 1
    session.anchors[1] = (0, 1_764_000_000_000.0)
    return session


def bench_gateway_path(frames, db_path: Path) -> float:
    conn = store_mod.connect(db_path)
    store = store_mod.Store(conn)
    models = load_models(default_models_dir())
    engine = TwinEngine(1, {DEVICE: "s-bench"}, lambda n, i: models[n].run(i))
    ingest = Ingest(store, Outbox(conn), engine, lambda *lv: "dermtwin/v1/bench/" + "/".join(lv),
                    lambda: None)
    session, link = streaming_session(), _Link()
    start = time.perf_counter()
    for i, frame in enumerate(frames):
        for action in session.notification(frame, 0):
            ingest.submit(link, action.batch)
        if (i + 1) % FRAMES_PER_CYCLE == 0:
            ingest.cycle(0)
    ingest.cycle(0)
    elapsed = time.perf_counter() - start
    assert link.acked == session.expected_seq - 1
    conn.close()
    return elapsed


def bench_naive(frames, db_path: Path, limit: int) -> tuple[float, int]:
    conn = sqlite3.connect(str(db_path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE samples (device_id TEXT, seq INTEGER, tick INTEGER,"
                 " channel INTEGER, value INTEGER, PRIMARY KEY (device_id, seq))")
    done = 0
    start = time.perf_counter()
    for frame in frames:
        for seq, channel, tick, value in naive_decode(frame, KEY):
            conn.execute("BEGIN")
            conn.execute("INSERT OR IGNORE INTO samples VALUES (?,?,?,?,?)",
                         (DEVICE, seq, tick, channel, value))
            conn.execute("COMMIT")
            done += 1
            if done >= limit:
                elapsed = time.perf_counter() - start
                conn.close()
                return elapsed, done
    conn.close()
    return time.perf_counter() - start, done


def figures() -> dict[str, dict]:
    samples = backlog_samples()
    frames = frames_for(samples)
    rounds = max(1, int(os.environ.get("BENCH_REPEATS", "3")))
    naive_rates, ours_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            naive_s, naive_n = bench_naive(frames, Path(tmp) / f"naive{r}.sqlite3",
                                           BASELINE_SAMPLES)
            naive_rates.append(naive_n / naive_s)
            ours_rates.append(len(samples) / bench_gateway_path(
                frames, Path(tmp) / f"gateway{r}.sqlite3"))
    return {
        "ingest.backlog_rate": figure(
            statistics.median(ours_rates), statistics.median(naive_rates), "samples/s",
            f"a 7-day backlog ({len(samples)} samples, {len(frames)} frames) through "
            "PatchSession decode + Ingest cycles (one SQLite transaction per "
            f"{FRAMES_PER_CYCLE} frames, twin step, outbox) against a naive decode with one "
            f"INSERT + COMMIT per sample ({BASELINE_SAMPLES} samples); interleaved, medians"),
    }


def main() -> int:
    print_table(figures())
    return 0


if __name__ == "__main__":
    sys.exit(main())
