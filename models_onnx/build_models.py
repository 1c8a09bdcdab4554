"""Build the reference twin models as ONNX graphs from first principles.

    python models_onnx/build_models.py [--out DIR] [--check]

Without options the models are written next to this script. `--check`
rebuilds into a temporary directory and exits 1 if any committed .onnx file
differs byte for byte (builds are deterministic: fixed opset, IR version,
producer string and metadata order; no timestamps).

Each model's basis, units and limits are in cards/{name}.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Run as a script from a checkout, the repo root is not on sys.path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gateway.model_contracts import (  # noqa: E402
    CONTRACTS,
    TEMP_ANOMALY_THRESHOLD,
    ModelContract,
)

# Opset 17 / IR 8 load on every onnxruntime >= 1.13, i.e. older Pi wheels too.
OPSET_VERSION = 17
IR_VERSION = 8
PRODUCER_NAME = "dermtwin models_onnx/build_models.py"
MODELS_DIR = Path(__file__).resolve().parent

# --- temp_anomaly (design.md §4; basis in cards/temp_anomaly.md) -------------
TEMP_RECENT_SAMPLES = 6  # last 6 samples = 1 min at the 10 s default period
TEMP_MEANINGFUL_SHIFT_C = 0.6  # personally meaningful shift from baseline
TEMP_INFLAMMATION_DELTA_C = 2.2  # 4 °F: Lavery 2004 / Armstrong 2007 cue
# 2.x: surface hydration tells exertion and a loose patch from fever (cards/temp_anomaly.md).
EXERTION_HYDRATION_EXCESS_AU = 8.0  # sweat or a bath: wet skin reads high
DETACHED_HYDRATION_BELOW_AU = 5.0  # electrode off the skin reads ~0 AU
DETACHED_COOLING_C = -1.0  # ...and the sensor cools towards the air

# --- uv_dose (basis in cards/uv_dose.md) ------------------------------------
# WHO 2002 Global Solar UV Index guide: UVI = 40 m²/W × erythemal irradiance.
ERYTHEMAL_IRRADIANCE_W_M2_PER_UVI = 0.025
# CIE S 007/E:1998: 1 standard erythema dose (SED) = 100 J/m² erythemal.
SED_J_M2 = 100.0
SECONDS_PER_MINUTE = 60.0
MINUTES_TO_MED_CAP_MIN = 1440.0  # one day: "not today" when UV is ~0
# Rates below this are treated as this rate so the division stays finite;
# the 1440 min cap then applies (any remaining dose ≥ 1.44e-3 SED).
MIN_DOSE_RATE_SED_PER_MIN = 1e-6
MIN_MED_SED = 1e-3  # guards med_fraction against a zero/negative med_sed

# --- hydration (ASSUMED electrode; see cards/hydration.md) --------------------
HYDRATION_OFFSET_PF = 10.0  # electrode capacitance reading 0 AU (very dry skin)
HYDRATION_GAIN_AU_PER_PF = 20.0  # AU per pF of skin-water capacitance
HYDRATION_REF_TEMP_C = 32.0  # typical resting skin surface temperature
# Relative temperature coefficient of water's permittivity at 32 °C, from
# Malmberg & Maryott 1956: eps(t) = 87.740 - 0.40008 t + 9.398e-4 t² - 1.410e-6 t³
# -> (deps/dt)/eps = -0.3443 / 75.85 = -0.00454 per K.
WATER_PERMITTIVITY_TEMPCO_PER_K = 0.00454
CORNEOMETER_MIN_AU = 0.0
CORNEOMETER_MAX_AU = 120.0  # Corneometer CM 825 measuring range 0..120 AU
HYDRATION_DRY_MIN_AU = 30.0  # below: very dry (state 0)
HYDRATION_NORMAL_MIN_AU = 45.0  # at or above: normal (state 2); between: dry (1)


def _const(name: str, value: float | list[int], dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def _value_infos(tensors: dict[str, int]) -> list[onnx.ValueInfoProto]:
    return [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width])
        for name, width in tensors.items()
    ]


def _finish_model(
    contract: ModelContract,
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto],
    *,
    version: str,
    units: dict[str, str],
    description: str,
    parameters: dict[str, float],
) -> onnx.ModelProto:
    missing_units = (set(contract.inputs) | set(contract.outputs)) - set(units)
    if missing_units:
        raise ValueError(f"{contract.name}: no unit for {sorted(missing_units)}")
    graph = helper.make_graph(
        nodes,
        contract.name,
        _value_infos(dict(contract.inputs)),
        _value_infos(dict(contract.outputs)),
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET_VERSION)],
        producer_name=PRODUCER_NAME,
        producer_version=version,
        doc_string=description,
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(
        model,
        {
            "name": contract.name,
            "version": version,
            "units": json.dumps(units, sort_keys=True),
            "description": description,
            "parameters": json.dumps(parameters, sort_keys=True),
            "card": f"models_onnx/cards/{contract.name}.md",
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def _recent_mean_nodes(window: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    recent_cols = [f"recent_{i}_c" for i in range(TEMP_RECENT_SAMPLES)]
    # Mean as an explicit chain of element-wise Adds, oldest first: ReduceMean
    # vectorises differently by batch size, so a row's result could change in
    # the last bit with the number of patches batched alongside it.
    partial_sums = [recent_cols[0]] + [f"recent_sum_{i}_c" for i in range(1, TEMP_RECENT_SAMPLES)]
    nodes = [
        helper.make_node(
            "Slice", ["temp_window_c", "recent_start", "recent_end", "axis_1"], ["recent_c"]
        ),
        helper.make_node("Split", ["recent_c"], recent_cols, axis=1),
        *(
            helper.make_node("Add", [partial_sums[i - 1], recent_cols[i]], [partial_sums[i]])
            for i in range(1, TEMP_RECENT_SAMPLES)
        ),
        helper.make_node("Div", [partial_sums[-1], "recent_count"], ["recent_mean_c"]),
    ]
    initializers = [
        _const("recent_start", [window - TEMP_RECENT_SAMPLES], np.int64),
        _const("recent_end", [window], np.int64),
        _const("axis_1", [1], np.int64),
        _const("recent_count", float(TEMP_RECENT_SAMPLES)),
    ]
    return nodes, initializers


def build_temp_anomaly() -> onnx.ModelProto:
    contract = CONTRACTS["temp_anomaly"]
    window = contract.inputs["temp_window_c"]
    node = helper.make_node
    mean_nodes, mean_initializers = _recent_mean_nodes(window)
    nodes = [
        *mean_nodes,
        node("Sub", ["recent_mean_c", "baseline_c"], ["delta_c"]),
        node("Greater", ["hydration_excess_au", "exertion_excess_au"], ["exerting"]),
        node("Less", ["hydration_au", "detached_below_au"], ["dry_electrode"]),
        node("Less", ["delta_c", "detached_cooling_c"], ["cooled"]),
        node("And", ["dry_electrode", "cooled"], ["is_detached"]),
        node("Or", ["exerting", "is_detached"], ["suppressed"]),
        node("Not", ["suppressed"], ["trusted"]),
        node("Cast", ["trusted"], ["trusted_f"], to=TensorProto.FLOAT),
        node("Div", ["delta_c", "meaningful_shift_c"], ["raw_score"]),
        node("Mul", ["raw_score", "trusted_f"], ["anomaly_score"]),
        node("Greater", ["delta_c", "inflammation_delta_c"], ["hot"]),
        node("And", ["hot", "trusted"], ["inflamed"]),
        node("Cast", ["inflamed"], ["inflammation"], to=TensorProto.FLOAT),
        node("Cast", ["exerting"], ["exertion"], to=TensorProto.FLOAT),
        node("Cast", ["is_detached"], ["detached"], to=TensorProto.FLOAT),
    ]
    initializers = [
        *mean_initializers,
        _const("meaningful_shift_c", TEMP_MEANINGFUL_SHIFT_C),
        _const("inflammation_delta_c", TEMP_INFLAMMATION_DELTA_C),
        _const("exertion_excess_au", EXERTION_HYDRATION_EXCESS_AU),
        _const("detached_below_au", DETACHED_HYDRATION_BELOW_AU),
        _const("detached_cooling_c", DETACHED_COOLING_C),
    ]
    return _finish_model(
        contract,
        nodes,
        initializers,
        version="2.0.0",
        units={
            "temp_window_c": "Cel",
            "baseline_c": "Cel",
            "hydration_au": "1",
            "hydration_excess_au": "1",
            "delta_c": "K",  # a temperature difference: 1 K = 1 °C step
            "anomaly_score": "1",
            "inflammation": "1",
            "exertion": "1",
            "detached": "1",
        },
        description=(
            "Skin-temperature shift against the subject's time-of-day baseline (kept by the "
            f"gateway): delta_c = mean of the last {TEMP_RECENT_SAMPLES} of {window} samples - "
            f"baseline_c; exertion = hydration_excess_au > {EXERTION_HYDRATION_EXCESS_AU} "
            f"(sweat, bath); detached = hydration_au < {DETACHED_HYDRATION_BELOW_AU} and "
            f"delta_c < {DETACHED_COOLING_C} C (loose patch); anomaly_score = delta_c / "
            f"{TEMP_MEANINGFUL_SHIFT_C} C, 0 while exertion or detached; inflammation = 1 if "
            f"delta_c > {TEMP_INFLAMMATION_DELTA_C} C and neither. Not a medical device."
        ),
        parameters={
            "recent_samples": TEMP_RECENT_SAMPLES,
            "meaningful_shift_c": TEMP_MEANINGFUL_SHIFT_C,
            "inflammation_delta_c": TEMP_INFLAMMATION_DELTA_C,
            "exertion_hydration_excess_au": EXERTION_HYDRATION_EXCESS_AU,
            "detached_hydration_below_au": DETACHED_HYDRATION_BELOW_AU,
            "detached_cooling_c": DETACHED_COOLING_C,
        },
    )


def build_temp_anomaly_threshold() -> onnx.ModelProto:
    """temp_anomaly 1.0.0, the fixed threshold on a running-mean baseline: kept for
    evaluation against 2.x (models_onnx/evaluate.py), no longer shipped."""
    contract = TEMP_ANOMALY_THRESHOLD
    window = contract.inputs["temp_window_c"]
    mean_nodes, mean_initializers = _recent_mean_nodes(window)
    nodes = [
        *mean_nodes,
        helper.make_node("Sub", ["recent_mean_c", "baseline_c"], ["delta_c"]),
        helper.make_node("Div", ["delta_c", "meaningful_shift_c"], ["anomaly_score"]),
        helper.make_node("Greater", ["delta_c", "inflammation_delta_c"], ["inflamed"]),
        helper.make_node("Cast", ["inflamed"], ["inflammation"], to=TensorProto.FLOAT),
    ]
    initializers = [
        *mean_initializers,
        _const("meaningful_shift_c", TEMP_MEANINGFUL_SHIFT_C),
        _const("inflammation_delta_c", TEMP_INFLAMMATION_DELTA_C),
    ]
    return _finish_model(
        contract,
        nodes,
        initializers,
        version="1.0.0",
        units={
            "temp_window_c": "Cel",
            "baseline_c": "Cel",
            "delta_c": "K",  # a temperature difference: 1 K = 1 °C step
            "anomaly_score": "1",
            "inflammation": "1",
        },
        description=(
            "Skin-temperature shift against the subject's own baseline: delta_c = mean of the "
            f"last {TEMP_RECENT_SAMPLES} of {window} samples - baseline_c; anomaly_score = "
            f"delta_c / {TEMP_MEANINGFUL_SHIFT_C} C; inflammation = 1 if delta_c > "
            f"{TEMP_INFLAMMATION_DELTA_C} C else 0. Not a medical device."
        ),
        parameters={
            "recent_samples": TEMP_RECENT_SAMPLES,
            "meaningful_shift_c": TEMP_MEANINGFUL_SHIFT_C,
            "inflammation_delta_c": TEMP_INFLAMMATION_DELTA_C,
        },
    )


def build_uv_dose() -> onnx.ModelProto:
    contract = CONTRACTS["uv_dose"]
    node = helper.make_node
    nodes = [
        # Negative UVI or elapsed time (sensor noise, clock step) adds no dose.
        node("Max", ["uvi", "zero"], ["uvi_pos"]),
        node("Max", ["dt_s", "zero"], ["dt_pos_s"]),
        node("Mul", ["uvi_pos", "w_m2_per_uvi"], ["irradiance_w_m2"]),
        node("Mul", ["irradiance_w_m2", "dt_pos_s"], ["dose_increment_j_m2"]),
        node("Div", ["dose_increment_j_m2", "sed_j_m2"], ["dose_increment_sed"]),
        node("Add", ["dose_sed_in", "dose_increment_sed"], ["dose_sed"]),
        node("Max", ["med_sed", "min_med_sed"], ["med_safe_sed"]),
        node("Div", ["dose_sed", "med_safe_sed"], ["med_fraction"]),
        node("Sub", ["med_safe_sed", "dose_sed"], ["remaining_signed_sed"]),
        node("Max", ["remaining_signed_sed", "zero"], ["remaining_sed"]),
        node("Mul", ["irradiance_w_m2", "seconds_per_minute"], ["rate_j_m2_per_min"]),
        node("Div", ["rate_j_m2_per_min", "sed_j_m2"], ["rate_sed_per_min"]),
        node("Max", ["rate_sed_per_min", "min_rate_sed_per_min"], ["rate_safe_sed_per_min"]),
        node("Div", ["remaining_sed", "rate_safe_sed_per_min"], ["minutes_uncapped"]),
        node("Min", ["minutes_uncapped", "minutes_cap"], ["minutes_to_med"]),
    ]
    initializers = [
        _const("zero", 0.0),
        _const("w_m2_per_uvi", ERYTHEMAL_IRRADIANCE_W_M2_PER_UVI),
        _const("sed_j_m2", SED_J_M2),
        _const("seconds_per_minute", SECONDS_PER_MINUTE),
        _const("min_med_sed", MIN_MED_SED),
        _const("min_rate_sed_per_min", MIN_DOSE_RATE_SED_PER_MIN),
        _const("minutes_cap", MINUTES_TO_MED_CAP_MIN),
    ]
    return _finish_model(
        contract,
        nodes,
        initializers,
        version="1.0.0",
        units={
            "uvi": "{UVI}",
            "dt_s": "s",
            "dose_sed_in": "100.J/m2",  # 1 SED
            "med_sed": "100.J/m2",
            "dose_sed": "100.J/m2",
            "med_fraction": "1",
            "minutes_to_med": "min",
        },
        description=(
            "Erythemally weighted UV dose: dose_sed = dose_sed_in + uvi * 0.025 W/m2 * dt_s / "
            "100 J/m2; med_fraction = dose_sed / med_sed; minutes_to_med = remaining SED at the "
            f"current rate, capped at {MINUTES_TO_MED_CAP_MIN:g} min. Not a medical device."
        ),
        parameters={
            "erythemal_irradiance_w_m2_per_uvi": ERYTHEMAL_IRRADIANCE_W_M2_PER_UVI,
            "sed_j_m2": SED_J_M2,
            "minutes_to_med_cap_min": MINUTES_TO_MED_CAP_MIN,
            "min_dose_rate_sed_per_min": MIN_DOSE_RATE_SED_PER_MIN,
            "min_med_sed": MIN_MED_SED,
        },
    )


def build_hydration(
    offset_pf: float = HYDRATION_OFFSET_PF,
    gain_au_per_pf: float = HYDRATION_GAIN_AU_PER_PF,
) -> onnx.ModelProto:
    """Hydration model; pass a per-electrode two-point calibration to rebuild it."""
    if not gain_au_per_pf > 0:
        raise ValueError(f"gain_au_per_pf must be > 0, got {gain_au_per_pf!r}")
    contract = CONTRACTS["hydration"]
    node = helper.make_node
    nodes = [
        node("Sub", ["capacitance_pf", "offset_pf"], ["skin_water_pf"]),
        # Water's permittivity falls as it warms; scale back to HYDRATION_REF_TEMP_C.
        node("Sub", ["skin_temp_c", "ref_temp_c"], ["temp_above_ref_k"]),
        node("Mul", ["temp_above_ref_k", "tempco_per_k"], ["temp_correction_rel"]),
        node("Add", ["one", "temp_correction_rel"], ["temp_factor"]),
        node("Mul", ["skin_water_pf", "temp_factor"], ["skin_water_at_ref_pf"]),
        node("Mul", ["skin_water_at_ref_pf", "gain_au_per_pf"], ["corneometer_raw_au"]),
        node("Clip", ["corneometer_raw_au", "min_au", "max_au"], ["corneometer_au"]),
        node("GreaterOrEqual", ["corneometer_au", "dry_min_au"], ["at_least_dry"]),
        node("GreaterOrEqual", ["corneometer_au", "normal_min_au"], ["at_least_normal"]),
        node("Cast", ["at_least_dry"], ["at_least_dry_f"], to=TensorProto.FLOAT),
        node("Cast", ["at_least_normal"], ["at_least_normal_f"], to=TensorProto.FLOAT),
        node("Add", ["at_least_dry_f", "at_least_normal_f"], ["state"]),
    ]
    initializers = [
        _const("offset_pf", offset_pf),
        _const("ref_temp_c", HYDRATION_REF_TEMP_C),
        _const("tempco_per_k", WATER_PERMITTIVITY_TEMPCO_PER_K),
        _const("one", 1.0),
        _const("gain_au_per_pf", gain_au_per_pf),
        _const("min_au", CORNEOMETER_MIN_AU),
        _const("max_au", CORNEOMETER_MAX_AU),
        _const("dry_min_au", HYDRATION_DRY_MIN_AU),
        _const("normal_min_au", HYDRATION_NORMAL_MIN_AU),
    ]
    return _finish_model(
        contract,
        nodes,
        initializers,
        version="0.1.0",  # 0.x: the electrode calibration is assumed, not measured
        units={
            "capacitance_pf": "pF",
            "skin_temp_c": "Cel",
            "corneometer_au": "{Corneometer_AU}",
            "state": "{state}",
        },
        description=(
            "Corneometer-equivalent skin hydration from electrode capacitance: au = clip(("
            f"C - {offset_pf:g} pF) * (1 + {WATER_PERMITTIVITY_TEMPCO_PER_K} /K * (T - "
            f"{HYDRATION_REF_TEMP_C:g} C)) * {gain_au_per_pf:g} AU/pF, 0, 120); state 0 very dry "
            "(< 30), 1 dry (30-45), 2 normal (>= 45). ASSUMED electrode calibration: recalibrate "
            "per electrode. Not a medical device."
        ),
        parameters={
            "offset_pf": offset_pf,
            "gain_au_per_pf": gain_au_per_pf,
            "ref_temp_c": HYDRATION_REF_TEMP_C,
            "water_permittivity_tempco_per_k": WATER_PERMITTIVITY_TEMPCO_PER_K,
            "dry_min_au": HYDRATION_DRY_MIN_AU,
            "normal_min_au": HYDRATION_NORMAL_MIN_AU,
        },
    )


BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "temp_anomaly": build_temp_anomaly,
    "uv_dose": build_uv_dose,
    "hydration": build_hydration,
}


def model_bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


def build_all(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in BUILDERS.items():
        path = out_dir / f"{name}.onnx"
        path.write_bytes(model_bytes(build()))
        written.append(path)
    return written


def check_committed(models_dir: Path) -> list[str]:
    """Return one line per model whose committed file differs from a fresh build."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for fresh in build_all(Path(tmp)):
            committed = models_dir / fresh.name
            if not committed.is_file():
                problems.append(f"{committed}: missing (run build_models.py)")
            elif committed.read_bytes() != fresh.read_bytes():
                problems.append(f"{committed}: differs from a fresh build (run build_models.py)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="output directory")
    parser.add_argument(
        "--check",
        action="store_true",
        help="rebuild into a temp dir and fail if the .onnx files in --out differ",
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check_committed(args.out)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            return 1
        print(f"{len(BUILDERS)} models in {args.out} match a fresh build")
        return 0
    for path in build_all(args.out):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
