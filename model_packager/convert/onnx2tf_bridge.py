"""ONNX -> TFLite through onnx2tf, run in ``.venv-onnx2tf`` as a subprocess.

onnx2tf pins TensorFlow 2.19 and protobuf 4, which would downgrade the main environment, so
``onnx2tf_worker.py`` runs on that environment's python (made by ``scripts/setup-onnx2tf``),
like MXNet. Calibration samples cross as ``.npy`` files, the answer as one JSON line on stdout.
Channels-first inputs keep their layout (the worker's ``keep_layout``), so the TFLite model takes
the ONNX model's inputs unchanged and the parity gate feeds both the same samples.

Known not to convert (onnx2tf 1.29): control flow (``Loop``, ``If``, ``Scan``), sequence and
optional types, ``NonMaxSuppression`` with dynamic counts, string tensors, and inputs with more
than one dynamic dimension besides the batch (TFLite reshapes need static shapes). A target that
fails is dropped with onnx2tf's reason, like any failed conversion.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from model_packager.convert import venv_worker
from model_packager.convert.base import ConversionError, Target
from model_packager.tensors import TensorSpec

WORKER = Path(__file__).with_name("onnx2tf_worker.py")
#: TFLite precisions onnx2tf writes (``int8``: full integer, float inputs and outputs).
PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8")
_TIMEOUT_S = 900


def default_python() -> Path:
    """``EDGE_ONNX2TF_PYTHON``, else ``<repo>/.venv-onnx2tf/bin/python``."""
    return venv_worker.default_python("EDGE_ONNX2TF_PYTHON", ".venv-onnx2tf")


def to_tflite(
    model: Path,
    inputs: list[TensorSpec],
    target: Target,
    out: Path,
    calibration: dict[str, np.ndarray] | None,
    work: Path,
    python: Path | None = None,
) -> Path:
    """Write ``target`` (a TFLite precision) converted from the ONNX file ``model`` to ``out``."""
    step = f"{target.name}: onnx2tf"
    python = Path(python) if python else default_python()
    if not python.exists():
        raise ConversionError(
            step,
            f"the onnx2tf environment is missing ({python} does not exist); create it with "
            "scripts/setup-onnx2tf, or point EDGE_ONNX2TF_PYTHON at one",
        )
    if target.precision not in PRECISIONS:
        raise ConversionError(step, f"onnx2tf does not write {target.precision}")
    folder = Path(work) / f"onnx2tf-{target.name}"
    folder.mkdir(parents=True, exist_ok=True)
    request: dict[str, Any] = {
        "keep_layout": [s.name for s in inputs if len(s.shape) in (3, 4, 5)],
        "calibration": {},
    }
    if target.precision == "int8":
        if not calibration:
            raise ConversionError(step, "int8 needs calibration samples")
        for name, array in calibration.items():
            path = folder / f"calibration-{len(request['calibration'])}.npy"
            np.save(path, np.ascontiguousarray(array, dtype=np.float32))
            request["calibration"][name] = str(path)
    local = folder / "model.onnx"  # onnx2tf names its outputs after the input file
    local.write_bytes(Path(model).read_bytes())
    result = _call(
        python, step, "convert", str(local), str(folder / "out"), target.precision,
        json.dumps(request),
    )  # fmt: skip
    Path(result["tflite"]).replace(out)
    return out


def _call(python: Path, step: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": "", "CUDA_VISIBLE_DEVICES": "-1"}
    return venv_worker.call_worker(python, WORKER, step, "onnx2tf", args, _TIMEOUT_S, env)
