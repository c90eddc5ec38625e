"""Convert trained models (Keras, SavedModel, MXNet, ONNX) into gated multi-variant packages.

Importing this package is cheap and framework-free: TensorFlow, tf2onnx, onnx and MXNet (through
its own virtual environment) are reached only when a conversion runs.
"""

from model_packager.convert.base import DEFAULT_TARGETS, TARGETS, ConversionError, Target
from model_packager.convert.pipeline import (
    ConversionReport,
    ConvertSpec,
    ParityGateFailed,
    VariantReport,
    convert,
    detect_kind,
)

__all__ = [
    "DEFAULT_TARGETS",
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
