"""What every conversion source provides, and the conversion error.

A *source* is the trained model in its own framework. It knows its input/output signature, can run
itself on samples (the parity gate's reference) and can write the targets it supports. Sources
that need TensorFlow or MXNet import them inside their functions, never at module import, because
the edge agent imports ``model_packager`` and must stay free of both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_packager.errors import BuildError
from model_packager.tensors import TensorSpec

Progress = Callable[[str], None]


class ConversionError(BuildError):
    """A conversion step failed; ``step`` names it (e.g. ``load``, ``tflite-int8: convert``)."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"conversion failed at step '{step}': {reason}")
        self.step = step
        self.reason = reason


@dataclass(frozen=True)
class Target:
    """One variant a conversion can produce."""

    name: str  # variant name in the package
    runtime: str  # onnx | tflite
    precision: str  # fp32 | fp16 | int8-dynamic | int8 (full integer / static)
    needs_calibration: bool = False


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("onnx-fp32", "onnx", "fp32"),
        Target("onnx-int8", "onnx", "int8-dynamic"),
        Target("onnx-int8-static", "onnx", "int8", needs_calibration=True),
        Target("tflite-fp32", "tflite", "fp32"),
        Target("tflite-fp16", "tflite", "fp16"),
        Target("tflite-int8-dynamic", "tflite", "int8-dynamic"),
        Target("tflite-int8", "tflite", "int8", needs_calibration=True),
    )
}
DEFAULT_TARGETS = ("onnx-fp32", "tflite-fp32", "tflite-fp16", "tflite-int8")


class Source(ABC):
    """A trained model in its source framework."""

    framework: str  # what the parity figures were measured against, e.g. "keras"
    path: Path
    inputs: list[TensorSpec]
    output_names: list[str]

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs of the source model itself, by output name, for a batch of samples."""

    @abstractmethod
    def supports(self, target: Target) -> bool:
        """Whether this source can produce ``target`` (directly or through its ONNX)."""

    @abstractmethod
    def convert(
        self,
        target: Target,
        out: Path,
        calibration: dict[str, np.ndarray] | None,
        work: Path,
    ) -> Path:
        """Write ``target`` to ``out``; raise ``ConversionError`` naming the step on failure."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free framework resources."""
