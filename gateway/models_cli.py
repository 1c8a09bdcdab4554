"""`dermtwin models list|check FILE|eval`: the twin's models, as a technician or a modeller
sees them.

- `list`: each model the gateway loads: file, version, inputs -> outputs, its card;
- `check FILE`: is FILE a model the gateway would run? The contract (named by the file's
  metadata, else its file name), then a self-test: plausible inputs must give finite outputs;
- `eval`: in a checkout, score the models on the virtual cohort and print the cards' tables
  (`make cohort` first; `make eval` also writes them into the cards).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.model_contracts import CONTRACTS, SELF_TEST_INPUTS

if TYPE_CHECKING:        # onnxruntime and numpy load only for the verbs that use them
    import numpy as np

    from gateway.inference import LoadedModel

REPO = Path(__file__).resolve().parent.parent


def add_parser(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="list, check and evaluate the twin's ONNX models")
    verbs = models.add_subparsers(dest="models_command", required=True, metavar="VERB")
    ls = verbs.add_parser("list", help="the models the gateway loads")
    ls.add_argument("--models-dir", type=Path, help="(the models shipped with the gateway)")
    check = verbs.add_parser("check", help="would the gateway run this .onnx file?")
    check.add_argument("file", type=Path)
    ev = verbs.add_parser("eval", help="score the models on the virtual cohort (checkout only)")
    ev.add_argument("--cohort", type=Path, default=REPO / "build" / "cohort")


def self_test(model: LoadedModel) -> dict[str, np.ndarray]:
    """Run the contract's plausible inputs; every output must be finite. Raises ModelError."""
    import numpy as np

    from gateway.inference import ModelError
    inputs = {name: np.asarray(SELF_TEST_INPUTS[name], dtype=np.float32)
              for name in model.contract.inputs}
    outputs = model.run(inputs)
    for name, value in outputs.items():
        if not np.all(np.isfinite(value)):
            raise ModelError(f"{model.path.name}: self-test output {name!r} is not finite "
                             f"({value.ravel()[:4].tolist()})")
    return outputs


def _contract_for(path: Path):
    import onnxruntime as ort

    from gateway.inference import ModelError

    try:
        name = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) \
            .get_modelmeta().custom_metadata_map.get("name") or path.stem
    except Exception:     # unreadable or not ONNX: load_model names the problem
        name = path.stem
    if name not in CONTRACTS:
        raise ModelError(f"{path.name}: no contract for a model named {name!r} "
                         f"(known: {', '.join(CONTRACTS)})")
    return CONTRACTS[name]


def cmd_models(args: argparse.Namespace) -> int:
    from gateway.inference import ModelError, default_models_dir, load_model

    if args.models_command == "list":
        directory = args.models_dir or default_models_dir()
        for name, contract in CONTRACTS.items():
            path = directory / contract.file_name
            try:
                model = load_model(path, contract)
            except ModelError as exc:
                print(f"{name:<13} REFUSED  {exc}")
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            print(f"{name:<13} {model.version:<8} {path}  sha256 {digest}")
            print(f"{'':<13} {', '.join(contract.inputs)} -> {', '.join(contract.outputs)}")
            card = model.metadata.get("card")
            if card:
                print(f"{'':<13} card: {card}")
        return 0
    if args.models_command == "check":
        path = args.file
        model = load_model(path, _contract_for(path))
        outputs = self_test(model)
        shown = ", ".join(f"{k}={float(v[0, 0]):.4g}" for k, v in outputs.items())
        print(f"{path}: {model.name} {model.version} meets its contract; self-test: {shown}")
        return 0
    if args.models_command == "eval":
        script = REPO / "models_onnx" / "evaluate.py"
        if not script.exists():
            raise ModelError("models eval runs from a dermtwin checkout (models_onnx/evaluate.py "
                             "is not installed with the gateway)")
        return subprocess.call([sys.executable, str(script), "--cohort", str(args.cohort)])
    raise AssertionError(args.models_command)
