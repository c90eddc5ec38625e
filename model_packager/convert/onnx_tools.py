"""ONNX graph helpers shared by every source: tensor renaming and int8 quantisation.

Needs the ``onnx`` package and ``onnxruntime.quantization`` (control-plane side only); both are
imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from model_packager.convert.base import ConversionError


def rename_io(path: Path, inputs: list[str] | None, outputs: list[str] | None) -> None:
    """Give the graph's inputs/outputs these names, by position, rewriting every reference.

    Converters name tensors after their own internals (tf2onnx: ``Identity:0``); the package should
    carry the names the user gave the model, so clients and every variant agree on them.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in init_names]
    mapping: dict[str, str] = {}
    for values, names in ((real_inputs, inputs), (list(graph.output), outputs)):
        if names is None:
            continue
        if len(values) != len(names):
            raise ConversionError(
                "rename", f"graph has {len(values)} tensors, {len(names)} names were given"
            )
        for value, new in zip(values, names, strict=True):
            if value.name != new:
                mapping[value.name] = new
    if not mapping:
        return
    taken = {n for node in graph.node for n in (*node.input, *node.output)} - set(mapping)
    clash = taken & set(mapping.values())
    if clash:
        raise ConversionError("rename", f"names {sorted(clash)} are already used inside the graph")
    for value in (*graph.input, *graph.output):
        value.name = mapping.get(value.name, value.name)
    for node in graph.node:
        for i, n in enumerate(node.input):
            node.input[i] = mapping.get(n, n)
        for i, n in enumerate(node.output):
            node.output[i] = mapping.get(n, n)
    onnx.save(model, str(path))


def _rows(samples: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    count = next(iter(samples.values())).shape[0]
    for i in range(count):
        yield {k: v[i : i + 1] for k, v in samples.items()}


def quantize(
    src: Path, out: Path, precision: str, calibration: dict[str, np.ndarray] | None, step: str
) -> Path:
    """ONNX fp32 -> int8 with onnxruntime's tools.

    ``int8-dynamic`` quantises weights ahead of time and activations at run time (no data
    needed); ``int8`` is static QDQ quantisation calibrated on ``calibration``.
    """
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
    except ImportError as exc:
        raise ConversionError(step, f"onnxruntime.quantization is not available: {exc}") from exc
    try:
        if precision == "int8-dynamic":
            quantize_dynamic(str(src), str(out), weight_type=QuantType.QUInt8)
        else:
            if calibration is None:
                raise ConversionError(step, "static int8 needs calibration samples")
            rows = _rows(calibration)

            class Reader(CalibrationDataReader):  # type: ignore[misc]
                def get_next(self) -> dict[str, np.ndarray] | None:
                    return next(rows, None)

            reader = Reader()
            quantize_static(
                str(src),
                str(out),
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
    except ConversionError:
        raise
    except Exception as exc:  # onnxruntime's quantiser raises whatever its passes raise
        raise ConversionError(step, f"onnxruntime quantisation failed: {exc}") from exc
    return out
