"""The virtual cohort and the model lifecycle: deterministic Parquet with true episodes, the
evaluation that writes the cards, and `dermtwin models list|check`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pq = pytest.importorskip("pyarrow.parquet")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "models_onnx"))

import evaluate  # noqa: E402

from simulation.cohort import make_cohort, write_cohort  # noqa: E402


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    write_cohort(make_cohort(6, 3, seed=5), 3, 5, out)
    return out


def test_the_cohort_is_deterministic_per_seed(cohort, tmp_path):
    write_cohort(make_cohort(6, 3, seed=5), 3, 5, tmp_path)
    for name in ("subjects.parquet", "samples.parquet", "episodes.parquet", "DATASHEET.md"):
        assert (tmp_path / name).read_bytes() == (cohort / name).read_bytes(), name
    other = tmp_path / "other"
    write_cohort(make_cohort(6, 3, seed=6), 3, 6, other)
    assert (other / "samples.parquet").read_bytes() != (cohort / "samples.parquet").read_bytes()


def test_the_cohort_has_its_rates_splits_and_labelled_truth(cohort):
    subjects = pq.read_table(cohort / "subjects.parquet").to_pylist()
    assert {s["split"] for s in subjects} == {"train", "test"}
    assert all(1 <= s["skin_type"] <= 6 for s in subjects)
    samples = pq.read_table(cohort / "samples.parquet")
    sid = subjects[0]["subject"]
    t, temp = evaluate._series(samples, sid, "skin_temp_c")
    assert len(t) == 3 * 86_400 // 10 and np.all(np.diff(t) == 10)
    assert 20.0 < temp.min() and temp.max() < 42.0
    episodes = pq.read_table(cohort / "episodes.parquet").to_pylist()
    kinds = {e["kind"] for e in episodes}
    assert {"outdoor", "bath"} <= kinds
    # A loose patch is visible in the readings where the label says it is.
    for e in (e for e in episodes if e["kind"] == "loose" and e["end_s"] - e["start_s"] > 1800):
        ht, hyd = evaluate._series(samples, e["subject"], "hydration_au")
        inside = (ht > e["start_s"] + 600) & (ht < e["end_s"])
        assert hyd[inside].max() < 5.0
    assert "Synthetic" in (cohort / "DATASHEET.md").read_text()


def test_the_evaluation_scores_both_models_on_the_held_out_subjects(cohort):
    result = evaluate.evaluate_temp_anomaly(cohort)
    assert result["subjects"] == 3 and result["days"] == 3
    assert set(result["models"]) == {"threshold 1.0 (running mean)",
                                     "personal 2.0 (time of day + hydration)"}
    table = evaluate.temp_anomaly_table(result)
    assert table.count("\n| ") == 3          # header + two models


def test_every_card_has_the_block_make_eval_writes():
    for name in ("temp_anomaly", "uv_dose", "hydration"):
        text = (REPO / "models_onnx" / "cards" / f"{name}.md").read_text()
        assert f"<!-- eval:{name} -->\n" in text and f"\n<!-- /eval:{name} -->" in text
        assert "| " in text.split(f"<!-- eval:{name} -->")[1]   # a table, from a real run


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "models", *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_models_list_and_check_the_shipped_models():
    listed = _cli("list")
    assert listed.returncode == 0, listed.stderr
    assert "temp_anomaly  2.0.0" in listed.stdout and "uv_dose" in listed.stdout
    checked = _cli("check", "models_onnx/temp_anomaly.onnx")
    assert checked.returncode == 0 and "meets its contract" in checked.stdout


def test_models_check_refuses_a_model_that_gives_nan(tmp_path):
    # uv_dose's contract, but dose_sed = uvi / 0 -> inf/NaN: loads, fails its self-test.
    node = helper.make_node
    nodes = [node("Div", ["uvi", "zero"], ["dose_sed"]),
             node("Identity", ["dt_s"], ["med_fraction"]),
             node("Identity", ["med_sed"], ["minutes_to_med"])]
    io = {n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 1])
          for n in ("uvi", "dt_s", "dose_sed_in", "med_sed", "dose_sed", "med_fraction",
                    "minutes_to_med")}
    graph = helper.make_graph(
        nodes, "uv_dose", [io[n] for n in ("uvi", "dt_s", "dose_sed_in", "med_sed")],
        [io[n] for n in ("dose_sed", "med_fraction", "minutes_to_med")],
        initializer=[onnx.numpy_helper.from_array(np.zeros((1, 1), np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    units = '{"uvi":"1","dt_s":"s","dose_sed_in":"1","med_sed":"1","dose_sed":"1",' \
            '"med_fraction":"1","minutes_to_med":"min"}'
    helper.set_model_props(model, {"name": "uv_dose", "version": "9.0.0", "units": units,
                                   "description": "divides by zero"})
    path = tmp_path / "uv_dose.onnx"
    onnx.save_model(model, path)
    checked = _cli("check", str(path))
    assert checked.returncode != 0
    assert "self-test output 'dose_sed' is not finite" in checked.stderr
    assert "Traceback" not in checked.stderr
