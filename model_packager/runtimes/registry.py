"""Which runtime runs which artifact kind. Adding a runtime is one line here."""

from __future__ import annotations

import importlib.util

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


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_runtimes() -> list[str]:
    """Runtimes whose library is installed on this machine.

    Found, not imported: importing LiteRT alone adds ~8 MB to a process that only serves ONNX
    (the agent calls this at start and when ranking variants). A library that is present but
    fails to import makes its runtime's ``load`` raise ``RuntimeUnavailable``, and the loader
    moves on to the next variant.
    """
    found = []
    if _installed("onnxruntime"):
        found.append("onnx")
    # Top-level names only: finding a submodule would import its package (LiteRT loads its
    # native library in `ai_edge_litert/__init__`).
    if _installed("ai_edge_litert") or _installed("tflite_runtime"):
        found.append("tflite")
    return found
