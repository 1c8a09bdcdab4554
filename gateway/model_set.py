"""The running twin models, each isolated and hot-swappable.

`run(name, inputs)` is what the twin engine calls. A model that raises, or answers with a
non-finite value, raises a `model` alarm naming it and `ModelUnavailable` to the engine, which
marks that model's properties bad: sample storage and acknowledgement never depend on a model.
The alarm clears on the model's next good answer.

`check_for_changes()` (polled by the service) notices a model file that changed and stayed
unchanged for one more poll (a copy in progress is not loaded half-written). The new file is
loaded, checked against its contract and self-tested (model_contracts.SELF_TEST_INPUTS
must give finite outputs inside the card's range) before it replaces the running model. A file
that fails is refused with a `model_swap` alarm naming it, and the old model keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from gateway.alarms import Alarms
from gateway.clock import now_ms
from gateway.inference import LoadedModel, ModelError, load_model, load_models
from gateway.model_contracts import (
    CONTRACTS,
    SELF_TEST_INPUTS,
    SELF_TEST_OUTPUT_RANGES,
    ModelContract,
    ModelUnavailable,
)

log = logging.getLogger(__name__)

FileStamp = tuple[int, int, int] | None   # inode, size, mtime_ns; None: missing


def _stamp(path: Path) -> FileStamp:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def non_finite(outputs: Mapping[str, np.ndarray]) -> list[str]:
    return [name for name, value in outputs.items() if not np.isfinite(value).all()]


def self_test(model: LoadedModel) -> None:
    """Raise ModelError unless the model's known-input answers are finite and in range."""
    inputs = {name: np.asarray(SELF_TEST_INPUTS[name], dtype=np.float32)
              for name in model.contract.inputs}
    outputs = model.run(inputs)
    file_name = model.path.name
    for name in non_finite(outputs):
        raise ModelError(f"{file_name}: self-test: output {name!r} is not finite "
                         f"({outputs[name].ravel().tolist()})")
    for name, (low, high) in SELF_TEST_OUTPUT_RANGES.get(model.contract.name, {}).items():
        if name not in outputs:
            continue
        values = outputs[name]
        if values.min() < low or values.max() > high:
            raise ModelError(f"{file_name}: self-test: output {name!r} "
                             f"{values.ravel().tolist()} outside its card's range "
                             f"[{low}, {high}]")


class ModelSet:
    def __init__(self, directory: Path, names: Iterable[str], alarms: Alarms,
                 contracts: Mapping[str, ModelContract] = CONTRACTS,
                 on_swap: Callable[[str, LoadedModel], None] = lambda name, model: None):
        self.directory = Path(directory)
        self.alarms = alarms
        self.contracts = contracts
        self.on_swap = on_swap
        # At start a bad model is refused outright (ModelError names file and field).
        self.models: dict[str, LoadedModel] = load_models(directory, names, contracts)
        for model in self.models.values():
            self_test(model)
        self._stamps: dict[str, FileStamp] = {
            name: _stamp(m.path) for name, m in self.models.items()}
        self._seen: dict[str, FileStamp] = dict(self._stamps)
        self.swaps = 0
        self.refusals = 0
        self.failures = 0

    def __getitem__(self, name: str) -> LoadedModel:
        return self.models[name]

    def items(self):
        return self.models.items()

    def run(self, name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        model = self.models[name]
        try:
            outputs = model.run(inputs)
        except Exception as e:   # the model's failure, isolated here: alarmed, then reported
            self._failed(name, model, f"{type(e).__name__}: {e}")
            raise ModelUnavailable(name, str(e)) from e
        bad = non_finite(outputs)
        if bad:
            detail = f"non-finite {', '.join(bad)}"
            self._failed(name, model, detail)
            raise ModelUnavailable(name, detail)
        if self.alarms.clear("model", name):
            log.warning("model %s %s answers again", name, model.version)
        return outputs

    def _failed(self, name: str, model: LoadedModel, detail: str) -> None:
        self.failures += 1
        if self.alarms.raise_("model", f"{model.version} failed: {detail}; its twin "
                              "properties are marked bad, samples are still stored",
                              now_ms(), name):
            log.error("model %s %s failed: %s", name, model.version, detail)

    # -- hot swap -------------------------------------------------------------------
    def check_for_changes(self) -> list[str]:
        """Swap in every model file that changed and has settled; returns the names swapped."""
        swapped = []
        for name, running in list(self.models.items()):
            stamp = _stamp(running.path)
            previous, self._seen[name] = self._seen[name], stamp
            if stamp == self._stamps[name] or stamp != previous:
                continue   # unchanged, or still changing: look again next poll
            self._stamps[name] = stamp
            if self._try_swap(name, running):
                swapped.append(name)
        return swapped

    def _try_swap(self, name: str, running: LoadedModel) -> bool:
        path = running.path
        try:
            if not path.exists():
                raise ModelError(f"{path.name}: file removed")
            candidate = load_model(path, self.contracts[name])
            self_test(candidate)
        except ModelError as e:
            self.refusals += 1
            self.alarms.raise_("model_swap", f"refused {e}; still serving {running.version}",
                               now_ms(), name)
            log.error("model %s: refused the changed file: %s; still serving %s", name, e,
                      running.version)
            return False
        self.models[name] = candidate
        self.swaps += 1
        self.alarms.clear("model_swap", name)
        log.warning("model %s: swapped %s for %s from %s", name, running.version,
                    candidate.version, path)
        self.on_swap(name, candidate)
        return True
