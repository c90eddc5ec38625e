"""Transport-neutral inference requests and responses: what every transport converts to and from.

Plain dataclasses with numpy arrays, so the serving code never sees protobuf (gRPC's converters
live in ``edge_agent/grpc/converters.py``) and a second transport would reuse all of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model_packager.tensors import TensorSpec


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass(slots=True)
class InferenceRequest:
    model_name: str
    model_version: str
    id: str
    inputs: list[InputTensor]
    outputs: list[str] = field(default_factory=list)


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    data: np.ndarray


@dataclass(slots=True)
class InferenceResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]


@dataclass(slots=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    variant: str
