"""The input/output contract of each twin model, as data.

A model file `{name}.onnx` meets its contract when every input and output
named here exists, is float32 and has shape [N, width] with a dynamic batch
dimension N, and its metadata_props carry every key in `required_metadata`.
Users may drop in their own models; `gateway.inference.load_model` checks
them against these contracts at load time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

REQUIRED_METADATA_KEYS: tuple[str, ...] = ("name", "version", "units", "description")

# Minimal erythema dose by Fitzpatrick skin type I..VI, in SED (1 SED = 100 J/m²
# erythemally weighted, CIE S 007/E:1998). Values from design.md §4; the card
# models_onnx/cards/uv_dose.md gives the published basis and its spread.
MED_SED_BY_FITZPATRICK: Mapping[int, float] = MappingProxyType(
    {1: 2.0, 2: 2.5, 3: 3.0, 4: 4.5, 5: 6.0, 6: 10.0}
)


@dataclass(frozen=True)
class ModelContract:
    """Names and widths of a model's float32 [N, width] inputs and outputs."""

    name: str
    inputs: Mapping[str, int]
    outputs: Mapping[str, int]
    required_metadata: tuple[str, ...] = field(default=REQUIRED_METADATA_KEYS)

    def __post_init__(self) -> None:
        # Freeze the mappings so a shared contract cannot be edited by a caller.
        object.__setattr__(self, "inputs", MappingProxyType(dict(self.inputs)))
        object.__setattr__(self, "outputs", MappingProxyType(dict(self.outputs)))
        for kind, tensors in (("input", self.inputs), ("output", self.outputs)):
            for tensor_name, width in tensors.items():
                if not isinstance(width, int) or width < 1:
                    raise ValueError(
                        f"contract {self.name!r}: {kind} {tensor_name!r} width must be a "
                        f"positive int, got {width!r}"
                    )
        overlap = set(self.inputs) & set(self.outputs)
        if overlap:
            raise ValueError(
                f"contract {self.name!r}: names both input and output: {sorted(overlap)}"
            )

    @property
    def file_name(self) -> str:
        return f"{self.name}.onnx"


TEMP_WINDOW_SAMPLES = 30

TEMP_ANOMALY = ModelContract(
    name="temp_anomaly",
    inputs={"temp_window_c": TEMP_WINDOW_SAMPLES, "baseline_c": 1, "hydration_au": 1,
            "hydration_excess_au": 1},
    outputs={"delta_c": 1, "anomaly_score": 1, "inflammation": 1, "exertion": 1, "detached": 1},
)

# temp_anomaly 1.x (fixed threshold on a running mean): evaluated against 2.x, not loaded.
TEMP_ANOMALY_THRESHOLD = ModelContract(
    name="temp_anomaly",
    inputs={"temp_window_c": TEMP_WINDOW_SAMPLES, "baseline_c": 1},
    outputs={"delta_c": 1, "anomaly_score": 1, "inflammation": 1},
)

UV_DOSE = ModelContract(
    name="uv_dose",
    inputs={"uvi": 1, "dt_s": 1, "dose_sed_in": 1, "med_sed": 1},
    outputs={"dose_sed": 1, "med_fraction": 1, "minutes_to_med": 1},
)

HYDRATION = ModelContract(
    name="hydration",
    inputs={"capacitance_pf": 1, "skin_temp_c": 1},
    outputs={"corneometer_au": 1, "state": 1},
)

# Plausible inputs (two rows each) for a self-test: a model the gateway runs must give finite
# outputs for them (`dermtwin models check`, and before a model file replaces a running one).
SELF_TEST_INPUTS: Mapping[str, list[list[float]]] = MappingProxyType({
    "temp_window_c": [[33.0] * TEMP_WINDOW_SAMPLES, [34.5] * TEMP_WINDOW_SAMPLES],
    "baseline_c": [[33.0], [33.2]],
    "hydration_au": [[50.0], [3.0]],
    "hydration_excess_au": [[0.0], [12.0]],
    "uvi": [[0.0], [7.5]],
    "dt_s": [[60.0], [5.0]],
    "dose_sed_in": [[0.0], [1.2]],
    "med_sed": [[2.0], [10.0]],
    "capacitance_pf": [[12.5], [10.5]],
    "skin_temp_c": [[32.0], [35.0]],
})

CONTRACTS: Mapping[str, ModelContract] = MappingProxyType(
    {c.name: c for c in (TEMP_ANOMALY, UV_DOSE, HYDRATION)}
)


class ModelUnavailable(RuntimeError):
    """A model could not give an answer this time (it raised, or returned non-finite values).
    The twin engine marks that model's properties bad and carries on; the caller that raised
    it has already raised the alarm."""

    def __init__(self, model: str, detail: str):
        super().__init__(f"model {model}: {detail}")
        self.model = model
        self.detail = detail


# The range each output must fall in for SELF_TEST_INPUTS, from the models' cards: a changed
# model file replaces the running one only if its answers are finite and inside them
# (gateway/model_set.py).
SELF_TEST_OUTPUT_RANGES: Mapping[str, Mapping[str, tuple[float, float]]] = MappingProxyType({
    # models_onnx/cards/temp_anomaly.md: delta = recent mean − baseline; score = delta / 0.6;
    # the cues are 0 or 1
    "temp_anomaly": {"delta_c": (-15.0, 15.0), "anomaly_score": (-25.0, 25.0),
                     "inflammation": (0.0, 1.0), "exertion": (0.0, 1.0), "detached": (0.0, 1.0)},
    # models_onnx/cards/uv_dose.md: minutes_to_med is capped at 1440
    "uv_dose": {"dose_sed": (0.0, 100.0), "med_fraction": (0.0, 50.0),
                "minutes_to_med": (0.0, 1440.0)},
    # models_onnx/cards/hydration.md: 0..120 AU, state 0, 1 or 2
    "hydration": {"corneometer_au": (0.0, 120.0), "state": (0.0, 2.0)},
})
