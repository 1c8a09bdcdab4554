"""`dermtwin report` and `dermtwin export` on a gateway database filled as the gateway fills
it (tests/report_data.py): what the report computes, what the HTML holds, the exported
tables, and one-line errors for bad input."""

from __future__ import annotations

import csv
import re
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
import report_data as rd

from gateway import cli
from gateway.inference import load_models
from gateway.model_registry import TMP117_C_PER_LSB
from gateway.report.analysis import analyse
from gateway.report.history import load_history, open_readonly
from gateway.report.page import PLOTS, render

HYDRATION = load_models(names=("hydration",))


def run_model(name, inputs):
    return HYDRATION[name].run(inputs)


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "gateway.sqlite3"
    rd.fill(path, days=3)
    return path


@pytest.fixture(scope="module")
def data(db):
    conn = open_readonly(db)
    history = load_history(conn, rd.SUBJECT, rd.DAY0_MS, rd.DAY0_MS + 3 * rd.DAY_MS)
    conn.close()
    return analyse(history, run_model)


def test_daily_uv_dose_is_the_erythemal_integral_against_the_subjects_med(data):
    doses = [d.dose_sed for d in data.daily_uv]
    assert doses == pytest.approx([rd.expected_dose_sed(d) for d in range(3)], rel=1e-6)
    med = 2.5                                   # Fitzpatrick II
    assert [d.med_fraction for d in data.daily_uv] == pytest.approx([x / med for x in doses])
    assert [d.hours_measured for d in data.daily_uv] == [24, 21, 24]   # day 1: 3 h silent


def test_temperature_departures_are_the_episode_and_only_it(data):
    view = data.temperature
    t = view.series.t_ms
    in_episode = (t >= rd.EPISODE[0]) & (t < rd.EPISODE[1])
    assert view.inflammation[in_episode].all()
    assert not view.anomaly[~in_episode].any()
    # the baseline did not learn the episode: it stays on the daily swing
    expected = np.array([rd.skin_temp_c(int(x)) for x in t[in_episode]]) - 2.6
    assert np.abs(view.baseline_c[in_episode] - expected).max() < 0.25


def test_hydration_goes_through_the_twin_model_and_rises_with_capacitance(data):
    view = data.hydration
    assert view.by_model
    pf = data.history.series["capacitance_pf"].value
    au = view.series.value
    assert np.all((au > 0) & (au < 120))
    order = np.argsort(pf)
    assert np.all(np.diff(au[order]) >= -1.0)   # skin temperature varies a little


def test_gaps_are_the_silent_stretch_and_the_patch_record(data):
    assert data.no_data == [(rd.SILENT[0] - 30_000, rd.SILENT[1])]   # last reading to next
    [gap] = data.history.gaps
    assert gap.from_ms == rd.GAP_AT_MS
    assert list(gap.lost.values()) == list(rd.GAP_COUNTS)


def _plot_marks(html: str) -> dict[str, int]:
    plots = re.findall(r'<svg class="plot" data-plot="([^"]+)"(.*?)</svg>', html, re.S)
    return {name: body.count('class="data ') for name, body in plots}


def test_report_page_is_self_contained_names_only_the_subject_and_draws_every_plot(data):
    html = render(data, rd.DAY0_MS + 4 * rd.DAY_MS)
    for external in ("http://", "https://", "<script", " src=", "url(", "<link", "@import"):
        assert external not in html, external
    assert rd.SUBJECT in html
    assert rd.DEVICE not in html and "DT-" not in html
    marks = _plot_marks(html)
    assert list(marks) == list(PLOTS)
    assert all(n > 0 for n in marks.values()), marks
    assert marks["uv-dose"] == 3                 # one bar per day
    assert "MED 2.5 SED" in html


def test_report_cli_writes_the_file(db, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert cli.main(["report", rd.SUBJECT, "--from", "2026-12-01", "--to", "2026-12-02",
                     "--db", str(db), "--out", str(out)]) == 0
    html = out.read_text()
    assert "2026-12-01 00:00 UTC to 2026-12-03 00:00 UTC" in html   # --to DATE: the whole day
    assert all(n > 0 for n in _plot_marks(html).values())
    assert f"-> {out}" in capsys.readouterr().out


def test_a_day_without_uv_readings_has_no_bar_rather_than_a_zero_dose(data):
    history = data.history
    history_before = type(history)(history.subject, history.from_ms - rd.DAY_MS, history.to_ms,
                                   history.skin_type, history.series, history.gaps)
    html = render(analyse(history_before, run_model), rd.DAY0_MS + 4 * rd.DAY_MS)
    assert _plot_marks(html)["uv-dose"] == 3      # 2026-11-30 has none
    assert "2026-11-30 00:00 UTC to" in html


@pytest.mark.parametrize("argv, message", [
    (["report", "s-nobody"], "subject 's-nobody': not paired and not in the archive (known: "
                             "s-rep01)"),
    (["report", rd.SUBJECT, "--from", "yesterday"], "--from 'yesterday': use a date"),
    (["report", rd.SUBJECT, "--from", "2026-12-03", "--to", "2026-12-01"], "is not before"),
    (["export", rd.SUBJECT, "--out", "x.txt"], "name it .csv or .parquet"),
    (["export", rd.SUBJECT, "--out", "/nonexistent/x.csv"], "--out /nonexistent/x.csv: no "
                                                           "directory /nonexistent"),
])
def test_bad_input_is_one_line_naming_the_field(db, tmp_path, capsys, argv, message):
    argv = [*argv, "--db", str(db)] + ([] if "--out" in argv else ["--out",
                                                                    str(tmp_path / "r.html")])
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err


def test_missing_database_is_named_and_not_created(tmp_path, capsys):
    missing = tmp_path / "none.sqlite3"
    assert cli.main(["report", "s-1", "--db", str(missing), "--out", str(tmp_path / "r.html")]) == 1
    assert f"--db {missing}: no such database" in capsys.readouterr().err
    assert not missing.exists()


def test_export_csv_has_every_sample_in_si_units_and_the_gap_record(db, tmp_path):
    out = tmp_path / "s.csv"
    assert cli.main(["export", rd.SUBJECT, "--from", "2026-12-01", "--to", "2026-12-03",
                     "--db", str(db), "--out", str(out)]) == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["subject", "utc", "property", "value", "seq", "boot", "historical",
                             "source", "count", "min", "max", "utc_end"]
    samples = [r for r in rows if r["source"] == "sample"]
    readings = rd.readings(3)
    assert len(samples) == len(readings)
    first_temp = next(r for r in samples if r["property"] == "skin_temp_c")
    assert first_temp["utc"] == "2026-12-01T00:00:00.000Z"
    assert float(first_temp["value"]) == pytest.approx(
        round(rd.skin_temp_c(rd.DAY0_MS) / TMP117_C_PER_LSB) * TMP117_C_PER_LSB)
    assert {r["subject"] for r in rows} == {rd.SUBJECT}
    assert sorted(int(r["seq"]) for r in samples) == list(range(len(readings)))
    lost = {r["property"]: int(float(r["value"])) for r in rows if r["source"] == "data_loss"}
    assert lost == {"skin_temp_c": 12, "uv_index": 6, "capacitance_pf": 1}


def test_export_parquet_reads_back_typed(db, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "s.parquet"
    assert cli.main(["export", rd.SUBJECT, "--from", "2026-12-02T00:00", "--to",
                     "2026-12-02T06:00Z", "--db", str(db), "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert table.column_names[:7] == ["subject", "utc", "property", "value", "seq", "boot",
                                      "historical"]
    assert str(table.schema.field("utc").type) == "timestamp[ms, tz=UTC]"
    expected = [r for r in rd.readings(3)
                if rd.DAY0_MS + rd.DAY_MS <= r[0] < rd.DAY0_MS + rd.DAY_MS + 6 * 3_600_000]
    assert table.num_rows == len(expected)
    battery = [v for v, p in zip(table.column("value").to_pylist(),
                                 table.column("property").to_pylist(), strict=True)
               if p == "battery_pct"]
    assert battery and all(70 < v < 76 for v in battery)


def test_export_parquet_without_pyarrow_says_how_to_get_it(db, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    out = tmp_path / "s.parquet"
    assert cli.main(["export", rd.SUBJECT, "--db", str(db), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "needs pyarrow: pip install 'dermtwin[export]'" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_report_opens_the_database_read_only(db, tmp_path):
    before = sqlite3.connect(db).execute("SELECT name FROM sqlite_master").fetchall()
    assert cli.main(["report", rd.SUBJECT, "--db", str(db), "--out", str(tmp_path / "r.html")]
                    ) == 0
    assert sqlite3.connect(db).execute("SELECT name FROM sqlite_master").fetchall() == before


@pytest.mark.parametrize("longitude, doses", [
    (-75.0, [0.0, *(rd.expected_dose_sed(d) for d in range(3))]),    # days start 05:00 UTC
    (90.0, [*(rd.expected_dose_sed(d) for d in range(3)), 0.0]),     # days start 18:00 UTC
])
def test_with_a_location_uv_days_start_at_local_solar_midnight(data, longitude, doses):
    local = analyse(data.history, run_model, (10.0, longitude))
    offset = int(longitude / 15 * 3_600_000)
    assert [d.day_ms + offset for d in local.daily_uv] == [
        rd.DAY0_MS + k * rd.DAY_MS for k in range(-1 if longitude < 0 else 0, len(doses) - (
            1 if longitude < 0 else 0))]
    assert [d.dose_sed for d in local.daily_uv] == pytest.approx(doses, rel=1e-6, abs=1e-9)
    assert "local solar time, UTC" in render(local, rd.DAY0_MS)


def test_report_cli_takes_the_location(db, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert cli.main(["report", rd.SUBJECT, "--from", "2026-12-01", "--to", "2026-12-03",
                     "--location", "45.5,-75", "--db", str(db), "--out", str(out)]) == 0
    assert "UV dose per day (local solar time, UTC-5.0 h)" in out.read_text()
    with pytest.raises(SystemExit) as exit_:         # argparse's usage error
        cli.main(["report", rd.SUBJECT, "--location", "45.5", "--db", str(db), "--out", str(out)])
    assert exit_.value.code == 2
    assert "'45.5': give LAT,LON in degrees" in capsys.readouterr().err
