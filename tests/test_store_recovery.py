"""Database integrity: a file that is not a database is refused with one clear line; a
damaged database is moved aside and a fresh one starts with the registry (from its own file)
and every table that can still be read; SQLite's "damaged" errors while running are told
apart from a full disk."""

import json
import sqlite3

import numpy as np
import pytest

from gateway import store as store_mod
from gateway.store import DatabaseCorrupt, Store
from gateway.store_recovery import NotADatabase, open_checked
from gateway.values import RegisteredDevice, SampleBatch

DEVICE = "ab" * 8


def _batch(seqs):
    seqs = np.asarray(seqs, dtype=np.int64)
    n = len(seqs)
    return SampleBatch(DEVICE, 1, seqs, seqs * 10, 1_700_000_000_000 + seqs * 1000,
                       np.zeros(n, dtype=np.uint8), np.full(n, 33 * 128, np.int32))


def _populated(path, samples=3000):
    store = Store(store_mod.connect(path))
    with store.transaction():
        store.register(RegisteredDevice(DEVICE, bytes(range(32)), "subj-1", 4, None), 5)
        store.insert_samples([_batch(range(samples))])
        store.save_twin("subj-1", 41, {"state": {"skin_temp_c": {"v": 33.0, "t": 1, "q": "good"}}})
    for _ in range(6):
        store.next_gateway_session()
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.conn.close()


def _garble_table(path, table):
    conn = sqlite3.connect(path)
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name=?", (table,)).fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(bytes([0x5A]) * page_size)


def test_registry_copy_follows_every_change_and_holds_keys_for_the_owner_only(tmp_path):
    db = tmp_path / "gw.sqlite3"
    store = Store(store_mod.connect(db))
    with store.transaction():
        store.register(RegisteredDevice(DEVICE, b"k" * 32, "s1", 2, None), 7)
    copy = store_mod.registry_copy_path(db)
    saved = json.loads(copy.read_text())
    assert [d["device_id"] for d in saved["devices"]] == [DEVICE]
    assert bytes.fromhex(saved["devices"][0]["key"]) == b"k" * 32
    assert copy.stat().st_mode & 0o077 == 0
    store.unregister(DEVICE)   # outside a transaction: written at once
    assert json.loads(copy.read_text())["devices"] == []


def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path):
    path = tmp_path / "gw.sqlite3"
    path.write_text("these are my notes, not a database\n" * 50)
    with pytest.raises(NotADatabase, match=r"not an SQLite database .*left untouched"):
        open_checked(path)
    assert path.read_text().startswith("these are my notes")
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("table", ["samples", "outbox", "devices"])
def test_damaged_database_is_moved_aside_and_a_fresh_one_keeps_registry_and_readable_tables(
        tmp_path, table):
    db = tmp_path / "gw.sqlite3"
    _populated(db)
    from gateway.outbox import Outbox
    conn = store_mod.connect(db)
    Outbox(conn).put("dermtwin/v1/gw/subj-1/delta", b"{}")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    _garble_table(db, table)

    conn, recovery = open_checked(db)
    assert recovery is not None
    assert table in recovery.lost or table == "devices"   # the registry has its own file
    assert recovery.moved_to.name.startswith("gw.sqlite3.corrupt-")
    assert recovery.moved_to.read_bytes()[:16] == b"SQLite format 3\x00", "kept for a look"
    store = Store(conn)
    assert store_mod.is_corruption(sqlite3.DatabaseError("database disk image is malformed"))
    assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    assert [d.device_id for d in store.devices()] == [DEVICE], "registry recovered"
    assert store.devices()[0].key == bytes(range(32)) and store.devices()[0].skin_type == 4
    if table != "samples":
        assert store.sample_count() == 3000, "readable tables salvaged"
    if table != "outbox":
        assert Outbox(conn).count() == 1
    assert store.load_twins()["subj-1"][0] == 41, "twin revs continue"
    assert store.next_gateway_session() == 7, "the session counter continues"
    assert "registered patches" in recovery.describe()


def test_damage_found_while_running_is_told_apart_from_a_full_disk(tmp_path):
    db = tmp_path / "gw.sqlite3"
    _populated(db, samples=20000)
    _garble_table(db, "samples")
    store = Store(store_mod.connect(db))
    with pytest.raises(DatabaseCorrupt, match="database damaged"), store.transaction():
        store.insert_samples([_batch(range(20000, 20100))])


def test_run_on_a_file_that_is_not_a_database_exits_with_one_clear_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    notes = tmp_path / "notes.txt"
    notes.write_text("hello, these are notes\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "--db", str(notes), "--broker",
         "mqtt://127.0.0.1:1"], cwd=Path(__file__).resolve().parents[1],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"dermtwin run: database {notes}: not an SQLite database (it starts with "
        "b'hello, t'); left untouched: move it away or give another --db"]
    assert notes.read_text() == "hello, these are notes\n"
