"""LiteRT (TFLite) backend: ``ai_edge_litert``, falling back to ``tflite_runtime``.

A TFLite interpreter is not thread-safe and holds fixed tensor shapes, so this backend keeps a small
pool of interpreters (one per allowed concurrent call) and resizes an interpreter's inputs only when
a request's shape differs from the last one it ran.
"""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

import numpy as np

from model_packager.errors import InferenceError, ModelLoadError, RuntimeUnavailable
from model_packager.runtimes.base import LoadedModel, Runtime, RuntimeOptions
from model_packager.tensors import TensorSpec, dtype_to_datatype


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter
    except ImportError as exc:
        raise RuntimeUnavailable("neither ai_edge_litert nor tflite_runtime is installed") from exc


def _spec(detail: dict[str, Any]) -> TensorSpec:
    sig = detail.get("shape_signature")
    shape = sig if sig is not None and len(sig) == len(detail["shape"]) else detail["shape"]
    return TensorSpec(
        detail["name"], dtype_to_datatype(detail["dtype"]), tuple(int(d) for d in shape)
    )


def _signature_names(interpreter: Any) -> dict[int, str]:
    """Tensor index -> signature name, when the model has exactly one signature.

    Converters give tensors internal names such as ``serving_default_input:0``; the signature
    keeps the names the model's author chose (``input``), which is what clients should see.
    """
    try:
        signatures = interpreter.get_signature_list()
        if len(signatures) != 1:
            return {}
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        details = {**runner.get_input_details(), **runner.get_output_details()}
    except (ValueError, RuntimeError, AttributeError):
        return {}
    names = {int(d["index"]): name for name, d in details.items()}
    return names if len(set(names.values())) == len(names) else {}


class _Slot:
    """One interpreter plus the input shapes it is currently allocated for."""

    def __init__(self, interpreter: Any) -> None:
        self.interpreter = interpreter
        self.inputs = interpreter.get_input_details()
        self.outputs = interpreter.get_output_details()
        names = _signature_names(interpreter)
        for d in (*self.inputs, *self.outputs):
            d["name"] = names.get(int(d["index"]), d["name"])
        self.shapes = {d["index"]: tuple(d["shape"]) for d in self.inputs}


class TFLiteModel(LoadedModel):
    def __init__(self, path: Path, options: RuntimeOptions, pool_size: int) -> None:
        cls = _interpreter_class()
        self._pool: queue.Queue[_Slot] = queue.Queue()
        threads = options.intra_op_threads or None
        try:
            for _ in range(pool_size):
                interp = cls(model_path=str(path), num_threads=threads)
                interp.allocate_tensors()
                self._pool.put(_Slot(interp))
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"LiteRT cannot load {Path(path).name}: {exc}") from exc
        probe = self._pool.queue[0]
        self.inputs = [_spec(d) for d in probe.inputs]
        self.outputs = [_spec(d) for d in probe.outputs]

    def infer(
        self, inputs: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        slot = self._pool.get()
        try:
            return self._run(slot, inputs, output_names)
        except (ValueError, RuntimeError) as exc:
            raise InferenceError(f"LiteRT failed: {exc}") from exc
        finally:
            self._pool.put(slot)

    def _run(
        self, slot: _Slot, inputs: dict[str, np.ndarray], output_names: list[str] | None
    ) -> dict[str, np.ndarray]:
        interp = slot.interpreter
        resized = False
        missing = [d["name"] for d in slot.inputs if d["name"] not in inputs]
        if missing:
            raise InferenceError(f"LiteRT model needs inputs {missing}, got {sorted(inputs)}")
        for d in slot.inputs:
            arr = inputs[d["name"]]
            if slot.shapes[d["index"]] != arr.shape:
                interp.resize_tensor_input(d["index"], list(arr.shape), strict=False)
                slot.shapes[d["index"]] = arr.shape
                resized = True
        if resized:
            interp.allocate_tensors()
        for d in slot.inputs:
            interp.set_tensor(d["index"], np.ascontiguousarray(inputs[d["name"]], dtype=d["dtype"]))
        interp.invoke()
        wanted = set(output_names) if output_names else None
        return {
            d["name"]: interp.get_tensor(d["index"])
            for d in slot.outputs
            if wanted is None or d["name"] in wanted
        }


class TFLiteRuntime(Runtime):
    name = "tflite"

    def load(self, path: Path, options: RuntimeOptions) -> LoadedModel:
        return TFLiteModel(Path(path), options, pool_size=max(1, options.inter_op_threads or 1))
