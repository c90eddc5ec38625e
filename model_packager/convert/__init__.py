"""Convert trained models into gated multi-variant packages.

Sources (``SOURCE_KINDS``): Keras, SavedModel, MXNet, ONNX, PyTorch (optional `pytorch` extra)
and ModelArts model folders.

Importing this package is cheap and framework-free: TensorFlow, tf2onnx, onnx and MXNet (through
its own virtual environment) are reached only when a conversion runs.
"""

from model_packager.convert.base import DEFAULT_TARGETS, TARGETS, ConversionError, Target
from model_packager.convert.pipeline import (
    SOURCE_KINDS,
    ConversionReport,
    ConvertSpec,
    ParityGateFailed,
    VariantReport,
    convert,
    detect_kind,
)

__all__ = [
    "DEFAULT_TARGETS",
    "SOURCE_KINDS",
    "TARGETS",
    "ConversionError",
    "ConversionReport",
    "ConvertSpec",
    "ParityGateFailed",
    "Target",
    "VariantReport",
    "convert",
    "detect_kind",
]
