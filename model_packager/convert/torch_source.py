"""PyTorch -> ONNX (and through it TFLite), gated against the PyTorch model itself.

Needs the optional ``pytorch`` extra (``pip install .[pytorch]``); torch is imported here only,
when such a source is opened. Two self-contained file formats are accepted, since a bare
``state_dict`` cannot run without the code of its class:

- ``.pt2``: a ``torch.export`` program (``torch.export.save``). Input names and shapes come from
  the program (a dimension marked dynamic at export becomes ``-1``).
- ``.pt`` / ``.pth``: a TorchScript module (``torch.jit.script`` or ``torch.jit.trace``, then
  ``torch.jit.save``). TorchScript keeps input names but not shapes: pass ``input_shapes``
  (``--input-shape x=-1,3,32,32``; ``-1`` marks the batch dimension).

Export uses ``torch.onnx.export`` with the TorchScript-based exporter (``dynamo=False``), which
needs only ``onnx``, with the batch dimension dynamic and opset 17. The reference for the parity
gate is the loaded module run by torch on the same samples. Known not to convert: data-dependent
Python control flow in a traced module (it is frozen to the traced path; script it instead),
in-place ops on inputs, custom autograd functions and ops without an ONNX symbolic (e.g.
``torch.ops`` from extensions), and complex or sparse tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from model_packager.convert import onnx2tf_bridge
from model_packager.convert.base import ConversionError, Target
from model_packager.convert.onnx_source import OnnxBackedSource
from model_packager.tensors import TensorSpec

OPSET = 17
_DTYPES = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32"}


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ConversionError(
            "load", f"PyTorch sources need the pytorch extra (pip install .[pytorch]): {exc}"
        ) from exc
    return torch


class TorchSource(OnnxBackedSource):
    framework = "pytorch"

    def __init__(self, path: Path, input_shapes: Mapping[str, tuple[int, ...]] | None) -> None:
        self.path = Path(path)
        torch = _torch()
        self._torch = torch
        try:
            if self.path.suffix.lower() == ".pt2":
                program = torch.export.load(str(self.path))
                self._module = program.module()
                self.inputs = self._program_inputs(program)
            else:
                self._module = torch.jit.load(str(self.path), map_location="cpu")
                self._module.eval()
                self.inputs = self._script_inputs(self._module, input_shapes or {})
        except ConversionError:
            raise
        except Exception as exc:  # torch raises many kinds for a bad file
            raise ConversionError("load", f"{self.path.name}: {exc}") from exc
        shapes = dict(input_shapes or {})
        self.inputs = [
            TensorSpec(s.name, s.datatype, tuple(shapes.get(s.name, s.shape))) for s in self.inputs
        ]
        example = self._example()
        with torch.no_grad():
            out = self._module(*example)
        count = len(out) if isinstance(out, tuple | list) else 1
        self.output_names = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]

    @staticmethod
    def _program_inputs(program: Any) -> list[TensorSpec]:
        specs = []
        by_name = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        for name in program.graph_signature.user_inputs:
            val = by_name[name].meta.get("val")
            shape = tuple(d if isinstance(d, int) else -1 for d in val.shape)
            dtype = _DTYPES.get(str(val.dtype).removeprefix("torch."), "FP32")
            specs.append(TensorSpec(name, dtype, shape))
        return specs

    @staticmethod
    def _script_inputs(module: Any, shapes: Mapping[str, tuple[int, ...]]) -> list[TensorSpec]:
        names = [a.name for a in module.forward.schema.arguments[1:]]  # [0] is self
        missing = [n for n in names if n not in shapes]
        if missing:
            raise ConversionError(
                "load",
                f"TorchScript carries no input shapes: pass --input-shape for {missing} "
                "(e.g. x=-1,3,32,32; -1 marks the batch dimension)",
            )
        return [TensorSpec(n, "FP32", tuple(shapes[n])) for n in names]

    def _example(self, batch: int = 2) -> list[Any]:
        dtypes = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32}
        return [
            self._torch.from_numpy(
                np.zeros([batch if d == -1 else d for d in s.shape], dtype=dtypes[s.datatype])
            )
            for s in self.inputs
        ]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [self._torch.from_numpy(np.ascontiguousarray(inputs[s.name])) for s in self.inputs]
        with self._torch.no_grad():
            out = self._module(*args)
        outs = out if isinstance(out, tuple | list) else (out,)
        return {n: o.detach().cpu().numpy() for n, o in zip(self.output_names, outs, strict=True)}

    def _export_onnx(self, out: Path) -> None:
        names = [s.name for s in self.inputs]
        dynamic = {n: {0: "batch"} for n in [*names, *self.output_names]}
        try:
            self._torch.onnx.export(
                self._module,
                tuple(self._example()),
                str(out),
                input_names=names,
                output_names=self.output_names,
                dynamic_axes=dynamic,
                opset_version=OPSET,
                dynamo=False,
                # Keep the mode as loaded (eval): a torch.export module refuses train().
                training=self._torch.onnx.TrainingMode.PRESERVE,
            )
        except Exception as exc:
            raise ConversionError("onnx-fp32: torch.onnx.export", str(exc)) from exc

    def _export_tflite(
        self, target: Target, out: Path, calibration: dict[str, np.ndarray] | None, work: Path
    ) -> None:
        onnx2tf_bridge.to_tflite(self.onnx_fp32(work), self.inputs, target, out, calibration, work)

    def supports(self, target: Target) -> bool:
        return target.runtime == "onnx" or target.precision in onnx2tf_bridge.PRECISIONS
