"""The one interface every inference runtime implements.

A runtime turns an artifact file into a ``LoadedModel``; a ``LoadedModel`` maps named numpy inputs
to named numpy outputs. Nothing above this layer knows which runtime runs a model, so adding one is
a new module here plus a line in ``registry.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_packager.tensors import TensorSpec


@dataclass(frozen=True)
class RuntimeOptions:
    """Thread settings; 0 lets the runtime choose."""

    intra_op_threads: int = 0
    inter_op_threads: int = 0


class LoadedModel(ABC):
    """A model ready to run. ``infer`` must be safe to call from several threads at once."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @abstractmethod
    def infer(
        self, inputs: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run once; inputs are already validated against ``self.inputs``."""

    def close(self) -> None:  # noqa: B027 - optional hook, most runtimes free on GC
        """Release native resources early."""


class Runtime(ABC):
    name: str

    @abstractmethod
    def load(self, path: Path, options: RuntimeOptions) -> LoadedModel:
        """Load an artifact; raises ``ModelLoadError`` (or ``RuntimeUnavailable``)."""
