"""ONNX as a conversion target for every source, and an ONNX file as a source of its own.

``OnnxBackedSource`` gives any source its int8 ONNX variants for free: it exports fp32 ONNX once
(``_export_onnx``) and quantises that with onnxruntime's tools. An ONNX file also converts to
TFLite, through onnx2tf in its own environment (``onnx2tf_bridge.py``), so an ONNX model reaches
LiteRT-only devices; its reference stays onnxruntime on the file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from model_packager.convert import onnx2tf_bridge
from model_packager.convert.base import ConversionError, Source, Target
from model_packager.convert.onnx_tools import quantize
from model_packager.errors import PackageError
from model_packager.runtimes import LoadedModel, RuntimeOptions, get_runtime


class OnnxBackedSource(Source):
    _onnx_fp32: Path | None = None

    def _export_onnx(self, out: Path) -> None:
        raise ConversionError("onnx-fp32", f"{self.framework} models cannot be exported to ONNX")

    def _export_tflite(
        self, target: Target, out: Path, calibration: dict[str, np.ndarray] | None, work: Path
    ) -> None:
        raise ConversionError(
            target.name, f"{self.framework} models cannot be converted to TFLite here"
        )

    def supports(self, target: Target) -> bool:
        return True

    def onnx_fp32(self, work: Path) -> Path:
        """The fp32 ONNX export, made once per source and reused by the int8 variants."""
        if self._onnx_fp32 is None:
            path = Path(work) / "source-fp32.onnx"
            self._export_onnx(path)
            self._onnx_fp32 = path
        return self._onnx_fp32

    def convert(
        self,
        target: Target,
        out: Path,
        calibration: dict[str, np.ndarray] | None,
        work: Path,
    ) -> Path:
        if target.runtime == "onnx":
            fp32 = self.onnx_fp32(work)
            if target.precision == "fp32":
                shutil.copyfile(fp32, out)
                return out
            return quantize(fp32, out, target.precision, calibration, f"{target.name}: quantize")
        self._export_tflite(target, out, calibration, work)
        return out


class OnnxSource(OnnxBackedSource):
    """An ONNX file; the reference is onnxruntime running that file unchanged."""

    framework = "onnxruntime"

    def __init__(self, path: Path, onnx2tf_python: Path | None = None) -> None:
        self.path = Path(path)
        self._onnx2tf_python = onnx2tf_python
        try:
            self._model: LoadedModel = get_runtime("onnx").load(self.path, RuntimeOptions())
        except PackageError as exc:
            raise ConversionError("load", str(exc)) from exc
        self.inputs = self._model.inputs
        self.output_names = [o.name for o in self._model.outputs]

    def supports(self, target: Target) -> bool:
        return target.runtime == "onnx" or target.precision in onnx2tf_bridge.PRECISIONS

    def _export_onnx(self, out: Path) -> None:
        shutil.copyfile(self.path, out)

    def _export_tflite(
        self, target: Target, out: Path, calibration: dict[str, np.ndarray] | None, work: Path
    ) -> None:
        onnx2tf_bridge.to_tflite(
            self.path, self.inputs, target, out, calibration, work, self._onnx2tf_python
        )

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._model.infer(inputs)

    def close(self) -> None:
        self._model.close()
