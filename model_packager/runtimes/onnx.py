"""onnxruntime backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model_packager.errors import InferenceError, ModelLoadError, RuntimeUnavailable
from model_packager.runtimes.base import LoadedModel, Runtime, RuntimeOptions
from model_packager.tensors import TensorSpec

# onnxruntime's type strings -> OIP datatypes.
_ORT_TYPES = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


def _spec(arg: object) -> TensorSpec:
    name = arg.name  # type: ignore[attr-defined]
    ort_type = arg.type  # type: ignore[attr-defined]
    if ort_type not in _ORT_TYPES:
        raise ModelLoadError(f"tensor {name!r} has unsupported type {ort_type}")
    dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in arg.shape)  # type: ignore[attr-defined]
    return TensorSpec(name, _ORT_TYPES[ort_type], dims)


class OnnxModel(LoadedModel):
    def __init__(self, session: object) -> None:
        self._session = session
        self.inputs = [_spec(a) for a in session.get_inputs()]  # type: ignore[attr-defined]
        self.outputs = [_spec(a) for a in session.get_outputs()]  # type: ignore[attr-defined]
        self._all_outputs = [o.name for o in self.outputs]

    def infer(
        self, inputs: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        names = output_names or self._all_outputs
        try:
            results = self._session.run(names, inputs)  # type: ignore[attr-defined]
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InferenceError(f"onnxruntime failed: {exc}") from exc
        return dict(zip(names, results, strict=True))


class OnnxRuntime(Runtime):
    name = "onnx"

    def load(self, path: Path, options: RuntimeOptions) -> LoadedModel:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeUnavailable("onnxruntime is not installed") from exc
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(path), sess_options=so, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelLoadError(f"onnxruntime cannot load {Path(path).name}: {exc}") from exc
        return OnnxModel(session)
