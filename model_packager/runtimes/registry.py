"""Which runtime runs which artifact kind. Adding a runtime is one line here."""

from __future__ import annotations

from model_packager.errors import RuntimeUnavailable
from model_packager.runtimes.base import Runtime
from model_packager.runtimes.onnx import OnnxRuntime
from model_packager.runtimes.tflite import TFLiteRuntime

_RUNTIMES: dict[str, type[Runtime]] = {
    OnnxRuntime.name: OnnxRuntime,
    TFLiteRuntime.name: TFLiteRuntime,
}


def get_runtime(name: str) -> Runtime:
    try:
        return _RUNTIMES[name]()
    except KeyError:
        raise RuntimeUnavailable(f"no runtime named {name!r}") from None


def runtime_names() -> list[str]:
    return list(_RUNTIMES)


def available_runtimes() -> list[str]:
    """Runtimes whose library imports on this machine."""
    found = []
    try:
        import onnxruntime  # noqa: F401

        found.append("onnx")
    except ImportError:
        pass
    try:
        import ai_edge_litert.interpreter  # noqa: F401

        found.append("tflite")
    except ImportError:
        try:
            import tflite_runtime.interpreter  # type: ignore[import-not-found]  # noqa: F401

            found.append("tflite")
        except ImportError:
            pass
    return found
