"""Hot swap: a changed model file is loaded, contract-checked and self-tested before it
replaces the running model; a failing one is refused with an alarm and the old one serves."""

import shutil

import numpy as np
import onnx
import pytest

from gateway.alarms import Alarms
from gateway.inference import ModelError, default_models_dir
from gateway.model_contracts import CONTRACTS, SELF_TEST_INPUTS
from gateway.model_set import ModelSet

NAMES = ("temp_anomaly", "uv_dose", "hydration")
WINDOW = {name: np.asarray(rows, dtype=np.float32) for name, rows in SELF_TEST_INPUTS.items()
          if name in CONTRACTS["temp_anomaly"].inputs}


def _models_dir(tmp_path):
    directory = tmp_path / "models"
    directory.mkdir()
    for name in NAMES:
        shutil.copy(default_models_dir() / f"{name}.onnx", directory)
    return directory


def _with_version(version: str, *, scale_delta: float | None = None) -> onnx.ModelProto:
    """The reference temp_anomaly, re-versioned; `scale_delta` multiplies its delta_c output
    (a model whose answers leave the card's range)."""
    model = onnx.load(default_models_dir() / "temp_anomaly.onnx")
    for prop in model.metadata_props:
        if prop.key == "version":
            prop.value = version
    if scale_delta is not None:
        graph = model.graph
        for node in graph.node:
            node.output[:] = ["raw_delta_c" if o == "delta_c" else o for o in node.output]
            node.input[:] = ["raw_delta_c" if i == "delta_c" else i for i in node.input]
        graph.initializer.append(onnx.numpy_helper.from_array(
            np.array([scale_delta], dtype=np.float32), "delta_scale"))
        graph.node.append(onnx.helper.make_node("Mul", ["raw_delta_c", "delta_scale"],
                                                ["delta_c"]))
    return model


def _poll_twice(models: ModelSet) -> list[str]:
    """A change is acted on once the file has stayed the same for a whole poll."""
    return models.check_for_changes() + models.check_for_changes()


def test_good_model_is_swapped_in_and_a_bad_one_refused_while_the_old_serves(tmp_path):
    directory = _models_dir(tmp_path)
    alarms = Alarms()
    swapped = []
    models = ModelSet(directory, NAMES, alarms, on_swap=lambda n, m: swapped.append((n, m)))
    assert models.check_for_changes() == [], "nothing changed"
    before = models.run("temp_anomaly", WINDOW)

    onnx.save_model(_with_version("1.1.0"), directory / "temp_anomaly.onnx")
    assert models.check_for_changes() == [], "still settling: not loaded on the first look"
    assert models.check_for_changes() == ["temp_anomaly"]
    assert models["temp_anomaly"].version == "1.1.0" and swapped[0][0] == "temp_anomaly"
    np.testing.assert_allclose(models.run("temp_anomaly", WINDOW)["delta_c"], before["delta_c"])

    # answers outside the card's range (delta 3 °C read as 300 °C): refused by the self-test
    onnx.save_model(_with_version("1.2.0", scale_delta=100.0), directory / "temp_anomaly.onnx")
    assert _poll_twice(models) == []
    alarm = alarms.get("model_swap", "temp_anomaly")
    assert alarm is not None and "self-test" in alarm.detail and "delta_c" in alarm.detail
    assert "still serving 1.1.0" in alarm.detail
    assert models["temp_anomaly"].version == "1.1.0"
    np.testing.assert_allclose(models.run("temp_anomaly", WINDOW)["delta_c"], before["delta_c"])

    # not a model at all, and a model breaking its contract: refused, naming the problem
    (directory / "temp_anomaly.onnx").write_bytes(b"\x00garbage" * 40)
    assert _poll_twice(models) == []
    assert "not a loadable ONNX model" in alarms.get("model_swap", "temp_anomaly").detail
    shutil.copy(default_models_dir() / "uv_dose.onnx", directory / "temp_anomaly.onnx")
    assert _poll_twice(models) == []
    assert "input 'temp_window_c' missing" in alarms.get("model_swap", "temp_anomaly").detail
    assert models["temp_anomaly"].version == "1.1.0" and models.refusals == 3

    onnx.save_model(_with_version("1.3.0"), directory / "temp_anomaly.onnx")
    assert _poll_twice(models) == ["temp_anomaly"]
    assert not alarms.is_up("model_swap", "temp_anomaly")
    assert models["temp_anomaly"].version == "1.3.0"


def test_a_model_failing_its_self_test_is_refused_at_start(tmp_path):
    directory = _models_dir(tmp_path)
    onnx.save_model(_with_version("1.0.0", scale_delta=100.0), directory / "temp_anomaly.onnx")
    with pytest.raises(ModelError, match=r"temp_anomaly\.onnx: self-test: output 'delta_c'"):
        ModelSet(directory, NAMES, Alarms())
