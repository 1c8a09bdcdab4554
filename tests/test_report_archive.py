"""Raw-sample retention with a downsampled archive: samples become 15-minute aggregates
before they are pruned, and reports and exports of old ranges read the archive."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest
import report_data as rd

from gateway import cli
from gateway import store as store_mod
from gateway.inference import load_models
from gateway.model_registry import CHANNEL_SCALE
from gateway.mqtt.config import MqttConfig
from gateway.protocol.constants import Channel
from gateway.report.analysis import analyse
from gateway.report.archive import BUCKET_MS, archive_and_prune
from gateway.report.history import load_history, open_readonly
from gateway.service import GatewayConfig
from gateway.values import SampleBatch

HYDRATION = load_models(names=("hydration",))
DAYS = 3
# Retention cutoff in the middle of a bucket on day 2 (01:07): the bucket holding it stays raw.
CUTOFF_MS = rd.DAY0_MS + 2 * rd.DAY_MS + 67 * 60_000
CUT_MS = CUTOFF_MS - CUTOFF_MS % BUCKET_MS


def _analyse(db: Path, from_ms: int, to_ms: int):
    conn = open_readonly(db)
    try:
        history = load_history(conn, rd.SUBJECT, from_ms, to_ms)
    finally:
        conn.close()
    return analyse(history, lambda name, inputs: HYDRATION[name].run(inputs))


@pytest.fixture
def pruned(tmp_path):
    """(db, before): the whole range analysed before pruning, then pruned at CUTOFF_MS."""
    db = tmp_path / "gateway.sqlite3"
    rd.fill(db, days=DAYS)
    before = _analyse(db, rd.DAY0_MS, rd.DAY0_MS + DAYS * rd.DAY_MS)
    store = store_mod.Store(store_mod.connect(db))
    result = archive_and_prune(store, CUTOFF_MS, archive_cutoff_ms=rd.DAY0_MS - rd.DAY_MS)
    readings = rd.readings(DAYS)
    old = sum(1 for r in readings if r[0] < CUT_MS)
    assert result.samples_deleted == result.archived_samples == old
    assert store.sample_count() == len(readings) - old
    store.conn.close()
    return db, before


def test_archive_holds_min_mean_max_count_per_15_minutes(pruned):
    db, _ = pruned
    conn = store_mod.connect(db)
    rows = {(r[0], r[1]): r[2:] for r in conn.execute(
        "SELECT property, bucket_ms, n, min, sum / n, max FROM archive WHERE subject=?",
        (rd.SUBJECT,))}
    expected: dict[tuple[str, int], list[float]] = {}
    for t, channel, wire in rd.readings(DAYS):
        if t < CUT_MS:
            scale, prop = CHANNEL_SCALE[Channel(channel)]
            expected.setdefault((prop, t - t % BUCKET_MS), []).append(wire * scale)
    assert rows.keys() == expected.keys()
    for key, values in expected.items():
        n, lo, mean, hi = rows[key]
        assert n == len(values)
        assert (lo, mean, hi) == pytest.approx((min(values), np.mean(values), max(values))), key
    # the silent stretch has no buckets; everything archived is gone from the raw table
    assert not [k for k in rows if rd.SILENT[0] <= k[1] < rd.SILENT[1] - BUCKET_MS]
    assert conn.execute("SELECT COUNT(*) FROM samples WHERE utc_ms < ?", (CUT_MS,)
                        ).fetchone()[0] == 0
    assert conn.execute("SELECT MIN(utc_ms) FROM samples").fetchone()[0] == CUT_MS


def test_report_of_the_pruned_range_still_plots_it_with_the_same_uv_doses(pruned, tmp_path):
    db, before = pruned
    after = _analyse(db, rd.DAY0_MS, rd.DAY0_MS + DAYS * rd.DAY_MS)
    # the archive's time integral gives the raw samples' daily dose
    assert [d.dose_sed for d in after.daily_uv] == pytest.approx(
        [d.dose_sed for d in before.daily_uv], rel=1e-9)
    temp = after.temperature.series
    assert temp.archived[temp.t_ms < CUT_MS].all() and not temp.archived[temp.t_ms >= CUT_MS].any()
    # bucket means stay within their min..max and near the raw readings' daily swing
    assert np.all((temp.lo <= temp.value + 1e-9) & (temp.value <= temp.hi + 1e-9))
    # the stretch without data ends where it did, and starts where its last bucket ends
    assert after.no_data == [(rd.SILENT[0], rd.SILENT[1])]
    assert before.no_data == [(rd.SILENT[0] - 30_000, rd.SILENT[1])]
    assert after.history.gaps == before.history.gaps    # gap records are kept with the archive

    out = tmp_path / "old.html"
    assert cli.main(["report", rd.SUBJECT, "--from", "2026-12-01", "--to", "2026-12-01",
                     "--db", str(db), "--out", str(out)]) == 0
    html = out.read_text()
    plots = dict(re.findall(r'data-plot="([^"]+)"(.*?)</svg>', html, re.S))
    for name, body in plots.items():
        assert 'class="data ' in body, f"{name} not drawn from the archive"
    assert 'class="data band"' in plots["skin-temperature"]       # min..max of the buckets
    assert "archived-cover" in plots["data-gaps"]
    assert "15-minute archive" in html


def test_export_of_an_archived_range_has_the_aggregates(pruned, tmp_path):
    db, _ = pruned
    out = tmp_path / "old.csv"
    assert cli.main(["export", rd.SUBJECT, "--from", "2026-12-01T00:00", "--to",
                     "2026-12-01T01:00", "--db", str(db), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    rows = [dict(zip(lines[0].split(","), line.split(","), strict=True)) for line in lines[1:]]
    assert {r["source"] for r in rows} == {"archive_15min"}
    temp = [r for r in rows if r["property"] == "skin_temp_c"]
    assert [r["utc"][11:16] for r in temp] == ["00:00", "00:15", "00:30", "00:45"]
    assert all(int(r["count"]) == 30 and r["seq"] == "" for r in temp)   # 30 s readings
    assert temp[0]["utc_end"] == "2026-12-01T00:15:00.000Z"


def test_a_late_sample_for_an_archived_bucket_is_merged_on_the_next_prune(pruned):
    db, _ = pruned
    store = store_mod.Store(store_mod.connect(db))
    bucket = rd.DAY0_MS + BUCKET_MS
    n, lo, total = store.conn.execute(
        "SELECT n, min, sum FROM archive WHERE property='skin_temp_c' AND bucket_ms=?",
        (bucket,)).fetchone()
    wire = 3000                                   # 23.4 °C: lower than anything in it
    with store.transaction():
        store.insert_samples([SampleBatch(
            rd.DEVICE, 2, np.array([10**6]), np.array([5]), np.array([bucket + 1000]),
            np.array([int(Channel.TEMPERATURE)]), np.array([wire]), historical=True)])
    result = archive_and_prune(store, CUTOFF_MS, rd.DAY0_MS - rd.DAY_MS)
    assert result.samples_deleted == 1 and result.buckets_written == 1
    row = store.conn.execute(
        "SELECT n, min, sum FROM archive WHERE property='skin_temp_c' AND bucket_ms=?",
        (bucket,)).fetchone()
    scale = CHANNEL_SCALE[Channel.TEMPERATURE][0]
    assert row == pytest.approx((n + 1, wire * scale, total + wire * scale))
    assert store.committed_seq(rd.DEVICE) == 10**6      # the watermark does not move back


def test_archive_days_drops_old_summaries_and_gap_records(pruned):
    db, _ = pruned
    store = store_mod.Store(store_mod.connect(db))
    keep_from = rd.DAY0_MS + rd.DAY_MS + 21 * 3_600_000     # after day 1's gap record
    result = archive_and_prune(store, CUTOFF_MS, archive_cutoff_ms=keep_from)
    assert result.archive_rows_deleted > 0 and result.gaps_deleted == 1
    assert store.conn.execute("SELECT MIN(bucket_ms) FROM archive").fetchone()[0] == keep_from
    assert store.gaps(rd.DEVICE) == []


def test_run_takes_archive_days_and_refuses_one_shorter_than_retention(tmp_path):
    args = cli.build_parser().parse_args(["run", "--broker", "mqtt://localhost",
                                          "--retention-days", "7", "--archive-days", "365"])
    assert (args.retention_days, args.archive_days) == (7.0, 365.0)
    mqtt = MqttConfig.from_url("mqtt://localhost")
    with pytest.raises(ValueError, match="archive_days 5: must be at least retention_days"):
        GatewayConfig(tmp_path / "db", mqtt, tmp_path, retention_days=7, archive_days=5)


def test_the_running_gateway_archives_before_it_prunes(tmp_path, monkeypatch):
    """Gateway._prune (every hour in `dermtwin run`) with --retention-days 1 --archive-days 2
    at 2026-12-03 12:00: day 0 and half of day 1 become archive rows, the rest stays raw."""
    from gateway import service
    from gateway.ble.radio import BleRadio
    from gateway.inference import default_models_dir

    db = tmp_path / "gateway.sqlite3"
    readings = rd.fill(db, days=DAYS)
    now = rd.DAY0_MS + 2 * rd.DAY_MS + 12 * 3_600_000
    monkeypatch.setattr(service, "now_ms", lambda: now)
    gateway = service.Gateway(GatewayConfig(
        db, MqttConfig.from_url("mqtt://127.0.0.1:1"), default_models_dir(),
        retention_days=1, archive_days=2), BleRadio())

    async def one_pass() -> None:
        task = asyncio.create_task(gateway._prune())
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(one_pass())
        conn = gateway.store.conn
        cut = now - rd.DAY_MS
        assert conn.execute("SELECT MIN(utc_ms) FROM samples").fetchone()[0] == cut
        assert gateway.store.sample_count() == sum(1 for r in readings if r[0] >= cut)
        first, last, total = conn.execute(
            "SELECT MIN(bucket_ms), MAX(bucket_ms), SUM(n) FROM archive").fetchone()
        # archive_days 2: buckets before 2026-12-01 12:00 are already gone
        assert (first, last) == (now - 2 * rd.DAY_MS, cut - BUCKET_MS)
        assert total == sum(1 for r in readings if now - 2 * rd.DAY_MS <= r[0] < cut)
    finally:
        gateway.close()


def test_pruning_holds_the_write_lock_for_a_day_of_samples_at_most(tmp_path):
    db = tmp_path / "gateway.sqlite3"
    rd.fill(db, days=DAYS)
    store = store_mod.Store(store_mod.connect(db))
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    archive_and_prune(store, CUTOFF_MS, rd.DAY0_MS - rd.DAY_MS)
    deletes = [int(s.rsplit("<", 1)[1]) for s in statements if s.startswith("DELETE FROM samples")]
    assert deletes == [rd.DAY0_MS + rd.DAY_MS, rd.DAY0_MS + 2 * rd.DAY_MS, CUT_MS]
    # one per day, and one each for the schema and for the old summaries and gap records
    assert statements.count("BEGIN IMMEDIATE") == len(deletes) + 2 == statements.count("COMMIT")


def test_a_full_disk_while_archiving_keeps_the_samples_and_the_prune_loop(tmp_path, monkeypatch,
                                                                          caplog):
    from gateway import service
    from gateway.ble.radio import BleRadio
    from gateway.inference import default_models_dir

    db = tmp_path / "gateway.sqlite3"
    readings = rd.fill(db, days=DAYS)
    monkeypatch.setattr(service, "now_ms", lambda: rd.DAY0_MS + 3 * rd.DAY_MS)
    gateway = service.Gateway(GatewayConfig(
        db, MqttConfig.from_url("mqtt://127.0.0.1:1"), default_models_dir(),
        retention_days=1, archive_days=2), BleRadio())
    conn = gateway.store.conn
    # SQLite's own "database or disk is full": no page may be added to the file
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")

    async def one_pass() -> bool:
        task = asyncio.create_task(gateway._prune())
        await asyncio.sleep(0.3)
        alive = not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return alive

    try:
        assert asyncio.run(one_pass()), "the prune loop ended"
        assert gateway.store.sample_count() == len(readings)
        assert "retention: archiving old samples failed, kept them" in caplog.text
        assert "full" in caplog.text
    finally:
        gateway.close()
