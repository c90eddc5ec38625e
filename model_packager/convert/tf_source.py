"""TensorFlow sources: a Keras model file (``.keras`` / ``.h5``) or a SavedModel folder.

ONNX comes from tf2onnx (``tf2onnx.convert.from_function``: its ``from_keras`` does not work with
Keras 3) and TFLite from the TFLite converter, in fp32, fp16, int8 dynamic range or full integer
with a representative dataset. TensorFlow is imported only when a source is opened.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from model_packager.convert.base import ConversionError, Target
from model_packager.convert.onnx_source import OnnxBackedSource
from model_packager.convert.onnx_tools import rename_io
from model_packager.convert.tf_graph import rewrite_unsupported
from model_packager.tensors import TensorSpec, dtype_to_datatype

ONNX_OPSET = 17
_RUN_CHUNK = 32


def import_tensorflow(step: str = "load") -> Any:
    """TensorFlow, quietly; a ``ConversionError`` when it is not installed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise ConversionError(
            step, f"TensorFlow is not installed here (control-plane extra): {exc}"
        ) from exc
    return tf


def short(exc: BaseException, limit: int = 600) -> str:
    """A framework exception as one line, with its type; TF's messages run to pages."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > limit:
        text = text[: limit // 2] + " ... " + text[-limit // 2 :]
    return f"{type(exc).__name__}: {text}"


def _spec(name: str, shape: Any, dtype: Any) -> TensorSpec:
    dims = tuple(-1 if d is None else int(d) for d in shape)
    return TensorSpec(name, dtype_to_datatype(np.dtype(str(dtype))), dims)


def _chunks(inputs: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    count = next(iter(inputs.values())).shape[0]
    for start in range(0, count, _RUN_CHUNK):
        yield {k: v[start : start + _RUN_CHUNK] for k, v in inputs.items()}


class _TensorFlowSource(OnnxBackedSource):
    """What Keras and SavedModel sources share: TFLite options, ONNX export from a function."""

    _tf: Any

    def _tf_signature(self) -> list[Any]:
        tf = self._tf
        return [
            tf.TensorSpec([None if d == -1 else d for d in s.shape], s.dtype, name=s.name)
            for s in self.inputs
        ]

    def _function(self) -> Callable[..., Any]:
        raise NotImplementedError

    def _frozen(self) -> Any:
        """The model as one concrete function with every variable folded into a constant.

        tf2onnx's own handling of captured tensors turns some layer state into extra graph
        inputs (Keras ``Normalization`` keeps its mean and variance that way); frozen, the graph's
        inputs are exactly the model's inputs. Freezing also inlines the nested
        ``StatefulPartitionedCall`` functions Keras layers are traced into.
        """
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )

        fn = self._tf.function(self._function(), input_signature=self._tf_signature())
        return convert_variables_to_constants_v2(fn.get_concrete_function())

    def _export_onnx(self, out: Path) -> None:
        step = "onnx-fp32: tf2onnx"
        try:
            import tf2onnx
        except ImportError as exc:
            raise ConversionError(step, f"tf2onnx is not installed: {exc}") from exc
        try:
            frozen = self._frozen()
            graph_def = rewrite_unsupported(frozen.graph.as_graph_def())
            tf2onnx.convert.from_graph_def(
                graph_def,
                input_names=[t.name for t in frozen.inputs],
                output_names=[t.name for t in frozen.outputs],
                opset=ONNX_OPSET,
                output_path=str(out),
            )
        except Exception as exc:  # tf2onnx raises plain exceptions for unsupported ops
            raise ConversionError(step, short(exc)) from exc
        rename_io(out, [s.name for s in self.inputs], self.output_names)

    def _converter(self, work: Path) -> Any:
        raise NotImplementedError

    def _representative(self, calibration: dict[str, np.ndarray]) -> Callable[[], Iterator[Any]]:
        names = [s.name for s in self.inputs]
        count = next(iter(calibration.values())).shape[0]

        def gen() -> Iterator[list[np.ndarray]]:
            for i in range(count):
                yield [calibration[n][i : i + 1] for n in names]

        return gen

    def _export_tflite(
        self, target: Target, out: Path, calibration: dict[str, np.ndarray] | None, work: Path
    ) -> None:
        tf = self._tf
        step = f"{target.name}: TFLite converter"
        try:
            with contextlib.redirect_stdout(sys.stderr):  # Keras export prints its signature
                conv = self._converter(work)
            if target.precision != "fp32":
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
            if target.precision == "fp16":
                conv.target_spec.supported_types = [tf.float16]
            elif target.precision == "int8":
                if calibration is None:
                    raise ConversionError(step, "full-integer int8 needs a representative dataset")
                conv.representative_dataset = self._representative(calibration)
                # Integer kernels inside, float input and output: every variant keeps one
                # signature, so clients need not know which variant the device chose.
                conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            data = conv.convert()
        except ConversionError:
            raise
        except Exception as exc:  # ConverterError, RuntimeError from calibration, ...
            raise ConversionError(step, short(exc)) from exc
        out.write_bytes(data)


class KerasSource(_TensorFlowSource):
    """A Keras 3 model file; the reference outputs are Keras's own ``model(x, training=False)``."""

    framework = "keras"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._tf = tf = import_tensorflow()
        try:
            self._model = tf.keras.models.load_model(str(path), compile=False)
        except Exception as exc:
            raise ConversionError(
                "load", f"{path.name} is not a loadable Keras model: {short(exc)}"
            ) from exc
        model = self._model
        self.inputs = [
            _spec(_name(t, f"input_{i}"), t.shape, t.dtype) for i, t in enumerate(model.inputs)
        ]
        self.output_names = [_name(t, f"output_{i}") for i, t in enumerate(model.outputs)]

    def _call(self, *args: Any) -> Any:
        x = args[0] if len(args) == 1 else list(args)
        y = self._model(x, training=False)
        return list(y) if isinstance(y, list | tuple) else [y]

    def _function(self) -> Callable[..., Any]:
        return self._call

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts: list[list[np.ndarray]] = []
        for chunk in _chunks(inputs):
            ys = self._call(*(chunk[s.name] for s in self.inputs))
            parts.append([np.asarray(y) for y in ys])
        return {
            name: np.concatenate([p[i] for p in parts], axis=0)
            for i, name in enumerate(self.output_names)
        }

    def _converter(self, work: Path) -> Any:
        # One SavedModel export serves every TFLite target (from_keras_model re-exports each time,
        # which costs more than the conversion of a small model).
        exported = Path(work) / "keras-savedmodel"
        if not exported.exists():
            self._model.export(str(exported), format="tf_saved_model", verbose=False)
        return self._tf.lite.TFLiteConverter.from_saved_model(str(exported))


def _name(tensor: Any, fallback: str) -> str:
    """The layer that made a Keras tensor (``predictions``), not ``keras_tensor_12``."""
    history = getattr(tensor, "_keras_history", None)
    op = getattr(history, "operation", None) if history is not None else None
    name = getattr(op, "name", None) or getattr(tensor, "name", None) or fallback
    return str(name).split(":")[0]


class SavedModelSource(_TensorFlowSource):
    """A SavedModel folder; the reference is its serving signature run by TensorFlow."""

    framework = "tensorflow"

    def __init__(self, path: Path, signature: str = "serving_default") -> None:
        self.path = Path(path)
        self._signature_key = signature
        self._tf = tf = import_tensorflow()
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:
            raise ConversionError(
                "load", f"{path.name} is not a loadable SavedModel: {short(exc)}"
            ) from exc
        if signature not in loaded.signatures:
            raise ConversionError(
                "load", f"SavedModel has no signature {signature!r} (has {list(loaded.signatures)})"
            )
        self._loaded = loaded  # keeps the signature's variables alive
        self._sig = loaded.signatures[signature]
        _, kwargs = self._sig.structured_input_signature
        self.inputs = [_spec(n, kwargs[n].shape, kwargs[n].dtype.name) for n in sorted(kwargs)]
        self.output_names = sorted(self._sig.structured_outputs)

    def _call(self, *args: Any) -> list[Any]:
        out = self._sig(**{s.name: a for s, a in zip(self.inputs, args, strict=True)})
        return [out[n] for n in self.output_names]

    def _function(self) -> Callable[..., Any]:
        return self._call

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tf = self._tf
        parts: list[list[np.ndarray]] = []
        for chunk in _chunks(inputs):
            ys = self._call(*(tf.constant(chunk[s.name]) for s in self.inputs))
            parts.append([y.numpy() for y in ys])
        return {
            name: np.concatenate([p[i] for p in parts], axis=0)
            for i, name in enumerate(self.output_names)
        }

    def _converter(self, work: Path) -> Any:
        # Frozen first: from_saved_model keeps resource variables as VAR_HANDLE/READ_VARIABLE ops
        # for many SavedModels, and LiteRT then computes NaN from never-initialised variables.
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )

        frozen = convert_variables_to_constants_v2(self._sig)
        return self._tf.lite.TFLiteConverter.from_concrete_functions([frozen], self._loaded)
