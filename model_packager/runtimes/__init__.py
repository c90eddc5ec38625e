"""Inference runtimes behind one interface (see ``base.py``)."""

from model_packager.runtimes.base import LoadedModel, Runtime, RuntimeOptions
from model_packager.runtimes.registry import available_runtimes, get_runtime, runtime_names

__all__ = [
    "LoadedModel",
    "Runtime",
    "RuntimeOptions",
    "available_runtimes",
    "get_runtime",
    "runtime_names",
]
