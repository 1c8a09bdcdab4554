"""Reference ONNX models against numpy references, and the gateway's contract checks."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper, numpy_helper

from gateway.inference import ModelError, default_models_dir, load_model, load_models
from gateway.model_contracts import CONTRACTS, MED_SED_BY_FITZPATRICK, ModelContract

MODELS_DIR = default_models_dir()
BUILD_SCRIPT = MODELS_DIR / "build_models.py"
F32 = np.float32
HYPOTHESIS = settings(max_examples=60, deadline=None)


def _import_build_script():
    spec = importlib.util.spec_from_file_location("build_models", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_models = _import_build_script()


@pytest.fixture(scope="module")
def models():
    return load_models()


def _col(values) -> np.ndarray:
    return np.asarray(values, dtype=F32).reshape(-1, 1)


# --- numpy references (float32, same operation order as the graphs) ---------


def neutral_hydration(n: int) -> dict[str, np.ndarray]:
    """Normal skin, no sweat: temp_anomaly 2.x's gates stay open."""
    return {"hydration_au": _col([50.0] * n), "hydration_excess_au": _col([0.0] * n)}


def ref_temp_anomaly(window: np.ndarray, baseline: np.ndarray, hydration: np.ndarray,
                     excess: np.ndarray) -> dict[str, np.ndarray]:
    recent_sum = window[:, -6:-5].copy()
    for col in range(-5, 0):  # float32, oldest first, as the graph adds
        recent_sum = recent_sum + window[:, col : col + 1 if col < -1 else None]
    delta = recent_sum / F32(6) - baseline
    exertion = excess > F32(8.0)
    detached = (hydration < F32(5.0)) & (delta < F32(-1.0))
    trusted = ~(exertion | detached)
    return {
        "delta_c": delta,
        "anomaly_score": delta / F32(0.6) * trusted.astype(F32),
        "inflammation": ((delta > F32(2.2)) & trusted).astype(F32),
        "exertion": exertion.astype(F32),
        "detached": detached.astype(F32),
    }


def ref_uv_dose(uvi, dt_s, dose_in, med) -> dict[str, np.ndarray]:
    irradiance = np.maximum(uvi, F32(0)) * F32(0.025)
    dose = dose_in + irradiance * np.maximum(dt_s, F32(0)) / F32(100)
    med_safe = np.maximum(med, F32(1e-3))
    remaining = np.maximum(med_safe - dose, F32(0))
    rate = np.maximum(irradiance * F32(60) / F32(100), F32(1e-6))
    return {
        "dose_sed": dose,
        "med_fraction": dose / med_safe,
        "minutes_to_med": np.minimum(remaining / rate, F32(1440)),
    }


def ref_hydration(capacitance_pf, skin_temp_c) -> dict[str, np.ndarray]:
    water_pf = capacitance_pf - F32(10.0)
    factor = F32(1) + (skin_temp_c - F32(32.0)) * F32(0.00454)
    au = np.clip(water_pf * factor * F32(20.0), F32(0), F32(120))
    state = (au >= 30).astype(F32) + (au >= 45).astype(F32)
    return {"corneometer_au": au, "state": state}


# --- temp_anomaly --------------------------------------------------------------

temp_rows = st.integers(min_value=1, max_value=16)


@HYPOTHESIS
@given(data=st.data(), n=temp_rows)
def test_temp_anomaly_matches_reference(models, data, n):
    window = data.draw(arrays(F32, (n, 30), elements=st.floats(20, 42, width=32)))
    baseline = data.draw(arrays(F32, (n, 1), elements=st.floats(28, 38, width=32)))
    hydration = data.draw(arrays(F32, (n, 1), elements=st.floats(0, 120, width=32)))
    excess = data.draw(arrays(F32, (n, 1), elements=st.floats(-30, 40, width=32)))
    got = models["temp_anomaly"].run({"temp_window_c": window, "baseline_c": baseline,
                                      "hydration_au": hydration, "hydration_excess_au": excess})
    want = ref_temp_anomaly(window, baseline, hydration, excess)
    for name, value in want.items():  # same float32 operations in the same order
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    for out in got.values():
        assert out.dtype == F32 and out.shape == (n, 1)


def test_temp_anomaly_uses_only_last_six_samples(models):
    window = np.full((1, 30), 99.0, dtype=F32)  # older samples are ignored
    window[0, -6:] = [34.0, 34.0, 35.0, 35.0, 36.0, 36.0]
    got = models["temp_anomaly"].run({"temp_window_c": window, "baseline_c": _col([33.0]),
                                      **neutral_hydration(1)})
    assert got["delta_c"][0, 0] == pytest.approx(2.0, abs=1e-5)
    assert got["anomaly_score"][0, 0] == pytest.approx(2.0 / 0.6, abs=1e-4)
    assert got["inflammation"][0, 0] == 0.0


@pytest.mark.parametrize(
    ("recent_c", "baseline_c", "inflammation"),
    [(35.3, 33.0, 1.0), (35.1, 33.0, 0.0), (33.0, 33.0, 0.0), (30.0, 33.0, 0.0)],
)
def test_temp_anomaly_inflammation_cue(models, recent_c, baseline_c, inflammation):
    window = np.full((1, 30), recent_c, dtype=F32)
    got = models["temp_anomaly"].run({"temp_window_c": window, "baseline_c": _col([baseline_c]),
                                      **neutral_hydration(1)})
    assert got["inflammation"][0, 0] == inflammation
    assert got["delta_c"][0, 0] == pytest.approx(recent_c - baseline_c, abs=1e-4)


# --- uv_dose ---------------------------------------------------------------------


@HYPOTHESIS
@given(data=st.data(), n=st.integers(1, 16))
def test_uv_dose_matches_reference(models, data, n):
    col = lambda lo, hi: data.draw(arrays(F32, (n, 1), elements=st.floats(lo, hi, width=32)))  # noqa: E731
    uvi, dt_s, dose_in = col(0, 16), col(0, 600), col(0, 20)
    med = data.draw(
        arrays(F32, (n, 1), elements=st.sampled_from(list(MED_SED_BY_FITZPATRICK.values())))
    )
    got = models["uv_dose"].run({"uvi": uvi, "dt_s": dt_s, "dose_sed_in": dose_in, "med_sed": med})
    want = ref_uv_dose(uvi, dt_s, dose_in, med)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
        assert np.isfinite(got[name]).all(), name


def test_uv_dose_known_values(models):
    # UVI 4 for one hour: 4 × 0.025 W/m² × 3600 s = 360 J/m² = 3.6 SED.
    got = models["uv_dose"].run(
        {
            "uvi": _col([4.0]),
            "dt_s": _col([3600.0]),
            "dose_sed_in": _col([0.0]),
            "med_sed": _col([3.0]),
        }
    )
    assert got["dose_sed"][0, 0] == pytest.approx(3.6, rel=1e-6)
    assert got["med_fraction"][0, 0] == pytest.approx(1.2, rel=1e-6)
    assert got["minutes_to_med"][0, 0] == 0.0  # already past MED
    # Fitzpatrick II (2.5 SED), 1 SED so far, UVI 10: 1.5 SED / (0.15 SED/min) = 10 min.
    got = models["uv_dose"].run(
        {
            "uvi": _col([10.0]),
            "dt_s": _col([0.0]),
            "dose_sed_in": _col([1.0]),
            "med_sed": _col([2.5]),
        }
    )
    assert got["minutes_to_med"][0, 0] == pytest.approx(10.0, rel=1e-5)


def test_uv_dose_zero_uvi_gives_finite_capped_minutes(models):
    uvi = _col([0.0, 0.0, 1e-9, -0.2])
    got = models["uv_dose"].run(
        {
            "uvi": uvi,
            "dt_s": _col([10.0] * 4),
            "dose_sed_in": _col([0.0, 2.0, 1.0, 1.0]),
            "med_sed": _col([2.0, 2.0, 3.0, 3.0]),
        }
    )
    np.testing.assert_array_equal(got["minutes_to_med"], _col([1440.0, 0.0, 1440.0, 1440.0]))
    np.testing.assert_array_equal(
        got["dose_sed"], _col([0.0, 2.0, 1.0, 1.0])
    )  # negative UVI adds nothing
    for value in got.values():
        assert np.isfinite(value).all()


def test_med_table_is_the_design_table():
    assert dict(MED_SED_BY_FITZPATRICK) == {1: 2.0, 2: 2.5, 3: 3.0, 4: 4.5, 5: 6.0, 6: 10.0}


# --- hydration -------------------------------------------------------------------


@HYPOTHESIS
@given(data=st.data(), n=st.integers(1, 16))
def test_hydration_matches_reference(models, data, n):
    cap = data.draw(arrays(F32, (n, 1), elements=st.floats(0, 30, width=32)))
    temp = data.draw(arrays(F32, (n, 1), elements=st.floats(20, 40, width=32)))
    got = models["hydration"].run({"capacitance_pf": cap, "skin_temp_c": temp})
    want = ref_hydration(cap, temp)
    np.testing.assert_allclose(got["corneometer_au"], want["corneometer_au"], rtol=1e-5, atol=1e-4)
    au = got["corneometer_au"]
    assert ((au >= 0) & (au <= 120)).all()
    np.testing.assert_array_equal(got["state"], (au >= 30).astype(F32) + (au >= 45).astype(F32))


def test_hydration_state_bands_and_clipping(models):
    # At the 32 °C reference temperature: au = (C - 10 pF) × 20 AU/pF.
    cap = _col([5.0, 11.45, 11.5, 12.2, 12.25, 13.0, 20.0])
    got = models["hydration"].run({"capacitance_pf": cap, "skin_temp_c": _col([32.0] * 7)})
    np.testing.assert_allclose(got["corneometer_au"], _col([0, 29, 30, 44, 45, 60, 120]), atol=1e-3)
    np.testing.assert_array_equal(got["state"], _col([0, 0, 1, 1, 2, 2, 2]))


def test_hydration_temperature_correction_direction(models):
    # Warmer water has lower permittivity: the same reading means wetter skin.
    got = models["hydration"].run(
        {"capacitance_pf": _col([12.0, 12.0]), "skin_temp_c": _col([28.0, 36.0])}
    )
    cool, warm = got["corneometer_au"][:, 0]
    assert cool < 40.0 < warm
    assert warm == pytest.approx(40.0 * (1 + 4 * 0.00454), rel=1e-5)


# --- every model -----------------------------------------------------------------


def _random_batch(
    contract: ModelContract, n: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    return {
        name: rng.uniform(0.5, 40.0, size=(n, w)).astype(F32) for name, w in contract.inputs.items()
    }


@pytest.mark.parametrize("name", list(CONTRACTS))
def test_batch_of_one_equals_batch_of_64(models, name):
    batch = _random_batch(CONTRACTS[name], 64, np.random.default_rng(7))
    together = models[name].run(batch)
    for row in range(64):
        alone = models[name].run({k: v[row : row + 1] for k, v in batch.items()})
        for out in together:
            np.testing.assert_array_equal(
                alone[out][0], together[out][row], err_msg=f"{out} row {row}"
            )


@pytest.mark.parametrize("name", list(CONTRACTS))
def test_metadata_carries_name_version_units(models, name):
    model = models[name]
    assert model.name == name
    assert model.version.count(".") == 2
    assert set(model.units) == set(CONTRACTS[name].inputs) | set(CONTRACTS[name].outputs)
    assert "Not a medical device" in model.description


def test_run_casts_float64_and_handles_empty_batch(models):
    model = models["temp_anomaly"]
    got = model.run({"temp_window_c": np.full((2, 30), 34.0), "baseline_c": [[33.0], [34.0]],
                     **neutral_hydration(2)})
    assert got["delta_c"].dtype == F32
    np.testing.assert_allclose(got["delta_c"], _col([1.0, 0.0]), atol=1e-5)
    empty = model.run({"temp_window_c": np.zeros((0, 30)), "baseline_c": np.zeros((0, 1)),
                       **neutral_hydration(0)})
    assert empty["anomaly_score"].shape == (0, 1)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"temp_window_c": np.zeros((2, 30))}, "input 'baseline_c' not given"),
        (
            {"temp_window_c": np.zeros((2, 29)), "baseline_c": np.zeros((2, 1)),
             **neutral_hydration(2)},
            "input 'temp_window_c' has shape [2, 29], contract needs [N, 30]",
        ),
        (
            {"temp_window_c": np.zeros((2, 30)), "baseline_c": np.zeros((3, 1)),
             **neutral_hydration(2)},
            "input 'baseline_c' has 3 rows but 'temp_window_c' has 2",
        ),
        (
            {"temp_window_c": np.zeros(30), "baseline_c": np.zeros((1, 1)),
             **neutral_hydration(1)},
            "input 'temp_window_c' has shape [30]",
        ),
        (
            {"temp_window_c": np.zeros((1, 30)), "baseline_c": [["warm"]],
             **neutral_hydration(1)},
            "input 'baseline_c' is not convertible",
        ),
        (
            {
                "temp_window_c": np.zeros((1, 30)),
                "baseline_c": np.zeros((1, 1)),
                **neutral_hydration(1),
                "x": np.zeros((1, 1)),
            },
            "input 'x' is not in the contract",
        ),
    ],
)
@pytest.mark.parametrize("as_float32", [False, True])
def test_run_refuses_bad_batches(models, inputs, message, as_float32):
    if as_float32:   # arrays as the engine hands them over: LoadedModel.run's ready path
        inputs = {k: v.astype(F32) if isinstance(v, np.ndarray) else v
                  for k, v in inputs.items()}
    with pytest.raises(ModelError) as err:
        models["temp_anomaly"].run(inputs)
    assert message in str(err.value)
    assert str(err.value).startswith("temp_anomaly.onnx: ")


def test_run_gives_the_same_answers_for_ready_and_converted_inputs(models):
    """float32 C-contiguous inputs skip the conversion; strided, float64 and list inputs are
    converted first: the same numbers either way."""
    rng = np.random.default_rng(7)
    wide = rng.normal(33.0, 1.0, (5, 31)).astype(F32)
    ready = {"temp_window_c": np.ascontiguousarray(wide[:, 1:]), "baseline_c": wide[:, :1].copy(),
             **neutral_hydration(5)}
    strided = {**ready, "temp_window_c": wide[:, 1:]}
    assert not strided["temp_window_c"].flags.c_contiguous
    as_float64 = {k: v.astype(np.float64) for k, v in ready.items()}
    as_lists = {k: v.tolist() for k, v in ready.items()}
    model = models["temp_anomaly"]
    want = model.run(ready)
    for inputs in (strided, as_float64, as_lists):
        got = model.run(inputs)
        assert got.keys() == want.keys()
        for name in want:
            assert got[name].dtype == F32 and got[name].shape == (5, 1)
            assert got[name].tobytes() == want[name].tobytes()


# --- contract checks at load -----------------------------------------------------


def _fake_model(
    inputs: dict[str, list],
    outputs: dict[str, int],
    props: dict[str, str] | None,
    elem=TensorProto.FLOAT,
) -> onnx.ModelProto:
    """Each output = its width copies of the row mean of the first input."""
    first = next(iter(inputs))
    nodes = [helper.make_node("ReduceMean", [first], ["row_mean"], axes=[1], keepdims=1)]
    inits = []
    for name, width in outputs.items():
        inits.append(numpy_helper.from_array(np.array([1, width], dtype=np.int64), f"{name}_reps"))
        nodes.append(helper.make_node("Tile", ["row_mean", f"{name}_reps"], [name]))
    graph = helper.make_graph(
        nodes,
        "fake",
        [helper.make_tensor_value_info(n, elem, shape) for n, shape in inputs.items()],
        [helper.make_tensor_value_info(n, elem, ["N", w]) for n, w in outputs.items()],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if props is not None:
        helper.set_model_props(model, props)
    return model


GOOD_PROPS = {
    "name": "temp_anomaly",
    "version": "2.0.0",
    "units": json.dumps(
        {
            n: "1"
            for n in ["temp_window_c", "baseline_c", "hydration_au", "hydration_excess_au",
                      "delta_c", "anomaly_score", "inflammation", "exertion", "detached"]
        }
    ),
    "description": "test double",
}
GOOD_INPUTS = {"temp_window_c": ["N", 30], "baseline_c": ["N", 1], "hydration_au": ["N", 1],
               "hydration_excess_au": ["N", 1]}
GOOD_OUTPUTS = {"delta_c": 1, "anomaly_score": 1, "inflammation": 1, "exertion": 1,
                "detached": 1}


def _save(tmp_path: Path, model: onnx.ModelProto) -> Path:
    path = tmp_path / "temp_anomaly.onnx"
    onnx.save_model(model, path)
    return path


def test_drop_in_model_meeting_contract_loads(tmp_path):
    path = _save(tmp_path, _fake_model(GOOD_INPUTS, GOOD_OUTPUTS, GOOD_PROPS))
    model = load_model(path, CONTRACTS["temp_anomaly"])
    assert model.version == "2.0.0"
    out = model.run({"temp_window_c": np.full((3, 30), 2.0), "baseline_c": np.zeros((3, 1)),
                     **neutral_hydration(3)})
    np.testing.assert_allclose(out["delta_c"], np.full((3, 1), 2.0))


NO_VERSION = {k: v for k, v in GOOD_PROPS.items() if k != "version"}
DOUBLE = TensorProto.DOUBLE

# (overrides of the good fake model, message the refusal must contain)
CONTRACT_VIOLATIONS = [
    ({"inputs": {**GOOD_INPUTS, "baseline_c": ["N", 2]}},
     "input 'baseline_c' has shape [N, 2], contract needs [N, 1]"),
    ({"inputs": {"temp_window_c": ["N", 30]}}, "input 'baseline_c' missing"),
    ({"inputs": {**GOOD_INPUTS, "baseline_c": [1, 1]}},
     "input 'baseline_c' has fixed batch dimension [1, 1]"),
    ({"inputs": {**GOOD_INPUTS, "extra": ["N", 1]}}, "input 'extra' is not in the contract"),
    ({"outputs": {**GOOD_OUTPUTS, "inflammation": 2}},
     "output 'inflammation' has shape [N, 2], contract needs [N, 1]"),
    ({"outputs": {"delta_c": 1, "anomaly_score": 1}}, "output 'inflammation' missing"),
    ({"elem": DOUBLE}, "input 'temp_window_c' has type tensor(double)"),
    ({"props": NO_VERSION}, "metadata 'version' missing"),
    ({"props": None}, "metadata 'name' missing"),
    ({"props": {**GOOD_PROPS, "version": "v2"}}, "metadata 'version' 'v2' is not semver"),
    ({"props": {**GOOD_PROPS, "units": "Cel"}}, "metadata 'units' is not JSON"),
    ({"props": {**GOOD_PROPS, "units": json.dumps({"delta_c": "K"})}},
     "metadata 'units' has no unit for input 'temp_window_c'"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "message"), CONTRACT_VIOLATIONS)
def test_contract_violations_are_refused(tmp_path, overrides, message):
    fake = {"inputs": GOOD_INPUTS, "outputs": GOOD_OUTPUTS, "props": GOOD_PROPS, **overrides}
    path = _save(tmp_path, _fake_model(**fake))
    with pytest.raises(ModelError) as err:
        load_model(path, CONTRACTS["temp_anomaly"])
    assert str(err.value).startswith("temp_anomaly.onnx: ")
    assert message in str(err.value)


def test_garbage_and_missing_files_are_refused(tmp_path):
    garbage = tmp_path / "temp_anomaly.onnx"
    garbage.write_bytes(b"\x00\xffnot an onnx model\x13" * 10)
    with pytest.raises(ModelError, match=r"^temp_anomaly\.onnx: not a loadable ONNX model"):
        load_model(garbage, CONTRACTS["temp_anomaly"])
    truncated = tmp_path / "uv_dose.onnx"
    truncated.write_bytes((MODELS_DIR / "uv_dose.onnx").read_bytes()[:300])
    with pytest.raises(ModelError, match=r"^uv_dose\.onnx: "):
        load_model(truncated, CONTRACTS["uv_dose"])
    with pytest.raises(ModelError, match=r"^hydration\.onnx: cannot read model file"):
        load_models(tmp_path / "nowhere", names=["hydration"])
    with pytest.raises(ModelError, match="no contract for model 'skin_ph'"):
        load_models(names=["skin_ph"])


def test_reference_model_checked_against_the_wrong_contract_is_refused():
    with pytest.raises(ModelError, match=r"^uv_dose\.onnx: input 'temp_window_c' missing"):
        load_model(MODELS_DIR / "uv_dose.onnx", CONTRACTS["temp_anomaly"])


# --- the build ---------------------------------------------------------------------


def test_build_is_deterministic(tmp_path):
    first = build_models.build_all(tmp_path / "a")
    second = build_models.build_all(tmp_path / "b")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
        assert a.read_bytes() == (MODELS_DIR / a.name).read_bytes(), (
            f"{a.name}: committed file is stale"
        )


def test_check_flag_passes_on_committed_models_and_fails_on_a_stale_one(tmp_path):
    ok = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--check"], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    build_models.build_all(tmp_path)
    (tmp_path / "hydration.onnx").write_bytes(
        build_models.model_bytes(build_models.build_hydration(offset_pf=9.0))
    )
    stale = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--check", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert stale.returncode == 1
    assert "hydration.onnx: differs from a fresh build" in stale.stderr
