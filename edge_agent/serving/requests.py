"""Transport-neutral inference requests and responses: what every transport converts to and from.

Plain dataclasses with numpy arrays, so the serving code never sees protobuf (gRPC's converters
live in ``edge_agent/grpc/converters.py``) and a second transport would reuse all of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_agent.errors import InvalidInput
from edge_agent.serving.shared_memory import ShmRef
from model_packager.tensors import TensorSpec


def classification_refused(output: str) -> InvalidInput:
    """The error both transports give for Triton's ``classification`` output parameter.

    Packages declare top-k in their postprocessing instead; answering the plain tensor would hand
    a client that asked for class strings numbers of another shape, so the request is refused.
    """
    return InvalidInput(
        f"output {output!r}: the classification parameter is not supported; the "
        "package's postprocessing declares top-k outputs (<output>_topk)"
    )


#: The data of an input whose bytes are in shared memory until the data plane reads them.
NO_DATA = np.empty(0, dtype=np.uint8)


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    #: Set when the bytes are in a registered shared memory region (``data`` is ``NO_DATA``
    #: until ``DataPlane`` reads them).
    shm: ShmRef | None = None


@dataclass(slots=True)
class InferenceRequest:
    model_name: str
    model_version: str
    id: str
    inputs: list[InputTensor]
    outputs: list[str] = field(default_factory=list)
    #: The inputs are uploaded files (BYTES, one element per file) named by their form field,
    #: not by the model's inputs: ``validation.route_uploads`` maps them onto the model.
    uploads: bool = False
    #: The version the data plane routed the request to (set once routed), so a failure after
    #: routing counts against the version that was asked to answer, not the active one.
    routed_version: str = ""
    #: Requested outputs to write into shared memory instead of the response, by name.
    output_shm: dict[str, ShmRef] = field(default_factory=dict)
    #: The client asked to keep this request's input for review (request parameter
    #: ``capture: true``); honoured when the model's capture policy has ``on_request``.
    capture: bool = False


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    data: np.ndarray
    #: Where the data was written (``byte_size`` = the bytes written); the response then
    #: carries the tensor's name, datatype and shape only.
    shm: ShmRef | None = None


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


@dataclass(slots=True)
class ModelConfig:
    """What Triton's model configuration extension reports, for clients that size requests.

    ``max_batch_size`` > 0 means requests are batched along the first dimension, which then is
    not part of ``inputs``/``outputs`` dims (Triton's convention); 0 means the dims are the full
    shapes, -1 marking a dimension of any size.
    """

    name: str
    version: str
    platform: str
    backend: str
    max_batch_size: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(slots=True)
class RepositoryEntry:
    """One model version in the repository index (Triton's model repository extension)."""

    name: str
    version: str
    state: str
    reason: str = ""


#: OIP datatype -> the ``DataType`` name of Triton's model configuration.
CONFIG_DATATYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
    "BF16": "TYPE_BF16",
}
