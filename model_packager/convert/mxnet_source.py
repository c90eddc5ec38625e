"""MXNet symbol/params -> ONNX, through the MXNet virtual environment as a subprocess.

MXNet 1.9.1 cannot share a process with TensorFlow 2.21 or the agent's protobuf 6, so the work is
done by ``mxnet_worker.py`` running on ``.venv-mxnet``'s python (made by ``scripts/setup-mxnet``).
Inputs and outputs cross the boundary as ``.npz`` files, results as one JSON line on stdout.
The reference outputs for the parity gate come from MXNet itself (``SymbolBlock``) in that venv.
TFLite targets are not offered: there is no maintained ONNX -> TFLite path in this toolchain.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from model_packager.convert import venv_worker
from model_packager.convert.base import ConversionError, Target
from model_packager.convert.onnx_source import OnnxBackedSource
from model_packager.convert.onnx_tools import rename_io
from model_packager.tensors import TensorSpec

WORKER = Path(__file__).with_name("mxnet_worker.py")
_TIMEOUT_S = 600


def default_python() -> Path:
    """``EDGE_MXNET_PYTHON``, else ``<repo>/.venv-mxnet/bin/python``."""
    return venv_worker.default_python("EDGE_MXNET_PYTHON", ".venv-mxnet")


def find_pair(path: Path) -> tuple[Path, Path]:
    """``X-symbol.json`` and its newest ``X-NNNN.params``, from either file, prefix or folder."""
    path = Path(path)
    if path.is_dir():
        symbols = sorted(path.glob("*-symbol.json"))
        if len(symbols) != 1:
            raise ConversionError(
                "load", f"{path}: expected one *-symbol.json, found {len(symbols)}"
            )
        symbol = symbols[0]
    elif path.name.endswith("-symbol.json"):
        symbol = path
    elif path.suffix == ".params":
        symbol = path.with_name(path.name.rsplit("-", 1)[0] + "-symbol.json")
    else:
        symbol = path.with_name(path.name + "-symbol.json")
    if not symbol.is_file():
        raise ConversionError("load", f"{symbol}: no such MXNet symbol file")
    prefix = symbol.name[: -len("-symbol.json")]
    if path.suffix == ".params":
        params = path
    else:
        found = sorted(symbol.parent.glob(f"{prefix}-*.params"))
        if not found:
            raise ConversionError("load", f"no {prefix}-NNNN.params next to {symbol.name}")
        params = found[-1]
    return symbol, params


class MXNetSource(OnnxBackedSource):
    framework = "mxnet"

    def __init__(
        self,
        path: Path,
        input_shapes: Mapping[str, tuple[int, ...]] | None,
        python: Path | None = None,
    ) -> None:
        self.path = Path(path)
        self._python = Path(python) if python else default_python()
        if not self._python.exists():
            raise ConversionError(
                "load",
                f"the MXNet environment is missing ({self._python} does not exist); create it "
                "with scripts/setup-mxnet, or point --mxnet-python / EDGE_MXNET_PYTHON at one",
            )
        self._symbol, self._params = find_pair(self.path)
        found = self._call("load", "info", str(self._symbol), str(self._params))
        names: list[str] = found["inputs"]
        shapes = dict(input_shapes or {})
        missing = [n for n in names if n not in shapes]
        if missing:
            raise ConversionError(
                "load",
                f"MXNet symbols carry no input shapes: pass --input-shape for {missing} "
                "(e.g. data=-1,3,32,32; -1 marks the batch dimension)",
            )
        self.inputs = [TensorSpec(n, "FP32", tuple(shapes[n])) for n in names]
        # MXNet names outputs <layer>_output; the package keeps the layer name.
        self.output_names = [o.removesuffix("_output") for o in found["outputs"]]

    def _call(self, step: str, *args: str) -> dict[str, Any]:
        return venv_worker.call_worker(self._python, WORKER, step, "MXNet", args, _TIMEOUT_S)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with tempfile.TemporaryDirectory(prefix="mxnet-") as tmp:
            src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
            np.savez(src, **inputs)
            result = self._call(
                "reference", "run", str(self._symbol), str(self._params), str(src), str(dst)
            )
            with np.load(dst) as data:
                outs = [data[n] for n in result["outputs"]]
        return dict(zip(self.output_names, outs, strict=True))

    def _export_onnx(self, out: Path) -> None:
        shapes = json.dumps({s.name: list(s.shape) for s in self.inputs})
        self._call(
            "onnx-fp32: mxnet.onnx.export_model",
            "export",
            str(self._symbol),
            str(self._params),
            shapes,
            str(out),
        )
        rename_io(out, [s.name for s in self.inputs], self.output_names)

    def supports(self, target: Target) -> bool:
        return target.runtime == "onnx"
