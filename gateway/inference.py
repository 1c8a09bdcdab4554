"""onnxruntime adapter: load twin models, check them against their contract, run batches.

Thin by design: the twin engine hands over a batch (one row per patch) as
{input name: float array [N, width]} and gets {output name: float32 [N, width]}
back, from one `session.run` call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from gateway.model_contracts import CONTRACTS, ModelContract

ONNX_FLOAT_TYPE = "tensor(float)"
_FLOAT32 = np.dtype(np.float32)
# semver.org 2.0.0 (the recommended regex, without the named groups).
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)


class ModelError(ValueError):
    """A model file is unreadable, breaks its contract, or was given a bad batch."""


def default_models_dir() -> Path:
    """The repo's models_onnx/ directory, holding the reference models."""
    return Path(__file__).resolve().parent.parent / "models_onnx"


def _session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    # Batches are tiny (one row per patch); threads only cost wake-ups, and a
    # spinning thread pool burns CPU on a Pi (platform-notes.md).
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only; warnings are ours to raise
    return options


def _shape_text(shape: Iterable[object]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def _check_tensors(
    file_name: str,
    kind: str,
    nodes: list[ort.NodeArg],
    expected: Mapping[str, int],
) -> None:
    by_name = {node.name: node for node in nodes}
    for name, width in expected.items():
        needed = f"[N, {width}]"
        node = by_name.get(name)
        if node is None:
            have = ", ".join(repr(n) for n in by_name) or "none"
            raise ModelError(f"{file_name}: {kind} {name!r} missing (model has {have})")
        if node.type != ONNX_FLOAT_TYPE:
            raise ModelError(
                f"{file_name}: {kind} {name!r} has type {node.type}, contract needs "
                f"{ONNX_FLOAT_TYPE} (float32)"
            )
        shape = list(node.shape)
        if len(shape) != 2 or shape[1] != width:
            raise ModelError(
                f"{file_name}: {kind} {name!r} has shape {_shape_text(shape)}, "
                f"contract needs {needed}"
            )
        if isinstance(shape[0], int):
            raise ModelError(
                f"{file_name}: {kind} {name!r} has fixed batch dimension "
                f"{_shape_text(shape)}, contract needs a dynamic batch {needed}"
            )
    extra = [name for name in by_name if name not in expected]
    if extra and kind == "input":
        # An extra output is harmless (we ask only for ours); an extra input cannot be fed.
        raise ModelError(f"{file_name}: input {extra[0]!r} is not in the contract")


def _check_metadata(
    file_name: str, contract: ModelContract, metadata: Mapping[str, str]
) -> dict[str, str]:
    for key in contract.required_metadata:
        if not metadata.get(key, "").strip():
            raise ModelError(f"{file_name}: metadata {key!r} missing")
    version = metadata["version"]
    if not SEMVER_RE.match(version):
        raise ModelError(f"{file_name}: metadata 'version' {version!r} is not semver (e.g. 1.0.0)")
    try:
        units = json.loads(metadata["units"])
    except json.JSONDecodeError as exc:
        raise ModelError(f"{file_name}: metadata 'units' is not JSON: {exc}") from None
    if not isinstance(units, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in units.items()
    ):
        raise ModelError(
            f"{file_name}: metadata 'units' must be a JSON object of tensor name -> UCUM string"
        )
    for kind, names in (("input", contract.inputs), ("output", contract.outputs)):
        for name in names:
            if name not in units:
                raise ModelError(f"{file_name}: metadata 'units' has no unit for {kind} {name!r}")
    return units


class LoadedModel:
    """A model session that passed its contract check."""

    def __init__(
        self,
        path: Path,
        contract: ModelContract,
        session: ort.InferenceSession,
        metadata: Mapping[str, str],
        units: dict[str, str],
    ) -> None:
        self.path = path
        self.contract = contract
        self.metadata = dict(metadata)
        self.name: str = metadata["name"]
        self.version: str = metadata["version"]
        self.description: str = metadata["description"]
        self.units: dict[str, str] = units
        self._session = session
        self._output_names = list(contract.outputs)
        self._input_items = tuple(contract.inputs.items())
        self._output_items = tuple(contract.outputs.items())
        # The public run(): its private bound session would skip a re-check of the input
        # names (a few µs a call) but is no API a new onnxruntime must keep.
        self._run_session = session.run

    def __repr__(self) -> str:
        return f"LoadedModel({self.name!r} {self.version} from {str(self.path)!r})"

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: every contract input as [N, width]; returns float32 [N, width]."""
        feed = self._ready_feed(inputs)
        if feed is not None:
            return self._run_feed(feed, len(next(iter(feed.values()))))
        return self._run_checked(inputs)

    def _ready_feed(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """`inputs` as they are when they need no conversion (the twin engine's batches):
        exactly the contract's names, each a float32 C-contiguous [N, width] array, one N
        for all. None for anything else, which the checked path converts or rejects."""
        if type(inputs) is not dict or len(inputs) != len(self._input_items):
            return None
        batch = -1
        for name, width in self._input_items:
            array = inputs.get(name)
            if (type(array) is not np.ndarray or array.dtype is not _FLOAT32
                    or not array.flags.c_contiguous):
                return None
            shape = array.shape
            if len(shape) != 2 or shape[1] != width or (shape[0] != batch and batch >= 0):
                return None
            batch = shape[0]
        return None if batch <= 0 else inputs

    def _run_checked(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        file_name = self.path.name
        expected = self.contract.inputs
        missing = [name for name in expected if name not in inputs]
        if missing:
            raise ModelError(f"{file_name}: input {missing[0]!r} not given")
        extra = [name for name in inputs if name not in expected]
        if extra:
            raise ModelError(f"{file_name}: input {extra[0]!r} is not in the contract")

        feed: dict[str, np.ndarray] = {}
        batch: int | None = None
        first_name = ""
        for name, width in expected.items():
            try:
                array = np.ascontiguousarray(inputs[name], dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise ModelError(
                    f"{file_name}: input {name!r} is not convertible to float32: {exc}"
                ) from None
            if array.ndim != 2 or array.shape[1] != width:
                raise ModelError(
                    f"{file_name}: input {name!r} has shape {list(array.shape)}, "
                    f"contract needs [N, {width}]"
                )
            if batch is None:
                batch, first_name = array.shape[0], name
            elif array.shape[0] != batch:
                raise ModelError(
                    f"{file_name}: input {name!r} has {array.shape[0]} rows but "
                    f"{first_name!r} has {batch}"
                )
            feed[name] = array

        if batch == 0:
            return {
                name: np.zeros((0, width), dtype=np.float32)
                for name, width in self.contract.outputs.items()
            }
        assert batch is not None
        return self._run_feed(feed, batch)

    def _run_feed(self, feed: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        """One session run of a checked feed; every output checked against the contract."""
        try:
            results = self._run_session(self._output_names, feed, None)
        except Exception as exc:  # onnxruntime raises its own non-ValueError types
            raise ModelError(f"{self.path.name}: onnxruntime run failed: {exc}") from exc

        outputs: dict[str, np.ndarray] = {}
        for (name, width), value in zip(self._output_items, results, strict=True):
            if type(value) is not np.ndarray:
                value = np.asarray(value)
            if value.shape != (batch, width):
                raise ModelError(
                    f"{self.path.name}: output {name!r} came back with shape "
                    f"{list(value.shape)}, contract needs [{batch}, {width}]"
                )
            outputs[name] = value if value.dtype is _FLOAT32 else value.astype(np.float32)
        return outputs


def load_model(path: str | Path, contract: ModelContract) -> LoadedModel:
    """Open `path` on CPU and check it against `contract`; raise ModelError if it fails."""
    path = Path(path)
    file_name = path.name
    try:
        model_bytes = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{file_name}: cannot read model file {str(path)!r}: {exc}") from exc
    try:
        session = ort.InferenceSession(
            model_bytes, sess_options=_session_options(), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # InvalidProtobuf, Fail, InvalidGraph, ... share no base but Exception
        raise ModelError(f"{file_name}: not a loadable ONNX model: {exc}") from exc

    _check_tensors(file_name, "input", session.get_inputs(), contract.inputs)
    _check_tensors(file_name, "output", session.get_outputs(), contract.outputs)
    metadata = session.get_modelmeta().custom_metadata_map
    units = _check_metadata(file_name, contract, metadata)
    return LoadedModel(path, contract, session, metadata, units)


def load_models(
    directory: str | Path | None = None,
    names: Iterable[str] | None = None,
    contracts: Mapping[str, ModelContract] = CONTRACTS,
) -> dict[str, LoadedModel]:
    """Load `{name}.onnx` from `directory` (default: the repo's models) for each named contract."""
    directory = default_models_dir() if directory is None else Path(directory)
    selected = list(contracts) if names is None else list(names)
    loaded: dict[str, LoadedModel] = {}
    for name in selected:
        contract = contracts.get(name)
        if contract is None:
            raise ModelError(f"no contract for model {name!r} (known: {', '.join(contracts)})")
        loaded[name] = load_model(directory / contract.file_name, contract)
    return loaded
