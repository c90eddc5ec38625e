"""The transport-neutral inference API. gRPC servicers (and any future REST route) call this.

It owns request validation, so every transport rejects bad tensors with the same precise errors,
and it bounds the number of requests in flight so overload turns into a fast
``RESOURCE_EXHAUSTED`` instead of an unbounded queue.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

import numpy as np

from edge_agent import __version__
from edge_agent.errors import InvalidInput, ModelNotFound, Overloaded
from edge_agent.metrics import METRICS
from edge_agent.serving.python_handlers import RESPONSE_OUTPUT
from edge_agent.serving.repository import ModelRepository
from edge_agent.serving.served_model import ServedModel
from model_packager.processing import ProcessingError
from model_packager.tensors import TensorSpec

SERVER_NAME = "edge-agent"
EXTENSIONS = ["model_repository", "batch_jobs", "health", "metrics"]


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


class DataPlane:
    def __init__(self, repo: ModelRepository, max_inflight: int) -> None:
        self.repo = repo
        self.max_inflight = max_inflight
        self.inflight = 0
        self.ready = False
        # The gauge reads the counter when scraped: no lock round trip per request.
        METRICS.inflight.set_function(lambda: self.inflight)

    # health and metadata
    def live(self) -> bool:
        return True

    def server_ready(self) -> bool:
        return self.ready

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.repo.get(name, version)
        except ModelNotFound:
            return False
        return True

    def server_metadata(self) -> tuple[str, str, list[str]]:
        return SERVER_NAME, __version__, EXTENSIONS

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        served = self.repo.get(name, version)
        return ModelMetadata(
            name=served.name,
            versions=[m.version for m in self.repo.versions(name)],
            platform=served.platform,
            inputs=served.inputs,
            outputs=served.outputs,
            variant=served.variant,
        )

    # inference
    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        if self.inflight >= self.max_inflight:
            raise Overloaded(f"{self.inflight} requests in flight (limit {self.max_inflight})")
        served = self.repo.get(request.model_name, request.model_version)
        if served.hooks is not None and not _is_tensor_request(served, request.inputs):
            return await self._infer_with_hooks(served, request)
        inputs = _validate_inputs(served, request.inputs)
        wanted = _validate_outputs(served, request.outputs)
        self.inflight += 1
        try:
            results = await served.infer(inputs, wanted)
        finally:
            self.inflight -= 1
        if wanted is None:
            specs = served.outputs
        else:
            specs = [s for n in wanted for s in served.outputs if s.name == n]
        return InferenceResponse(
            model_name=served.name,
            model_version=served.version,
            id=request.id,
            outputs=[OutputTensor(s.name, s.datatype, results[s.name]) for s in specs],
        )

    async def _infer_with_hooks(
        self, served: ServedModel, request: InferenceRequest
    ) -> InferenceResponse:
        """Files or JSON -> ``_preprocess`` -> model -> ``_postprocess`` -> JSON ``response``.

        Both hooks run in the inference thread pool: they are arbitrary Python (image decoding,
        loops over lists) and must not stall the event loop that serves every other model.
        """
        hooks = served.hooks
        assert hooks is not None
        if request.outputs and request.outputs != [RESPONSE_OUTPUT]:
            raise InvalidInput(
                f"model {served.name!r} answers file and JSON requests with one output, "
                f"{RESPONSE_OUTPUT!r}"
            )
        data = hooks.request_data(request.inputs)
        loop = asyncio.get_running_loop()
        self.inflight += 1
        try:
            arrays = await loop.run_in_executor(served.executor, hooks.preprocess, data)
            specs = served.input_by_name  # unknown names: _validate_inputs names the real ones
            tensors = [
                InputTensor(n, specs[n].datatype if n in specs else "", a.shape, a)
                for n, a in arrays.items()
            ]
            try:
                inputs = _validate_inputs(served, tensors)
            except InvalidInput as exc:
                raise InvalidInput(f"{hooks.module} _preprocess returned: {exc}") from exc
            results = await served.infer(inputs, None)
            body = await loop.run_in_executor(served.executor, hooks.postprocess, results)
        finally:
            self.inflight -= 1
        return InferenceResponse(
            model_name=served.name,
            model_version=served.version,
            id=request.id,
            outputs=[OutputTensor(RESPONSE_OUTPUT, "BYTES", np.array([body], dtype=np.object_))],
        )


def _is_tensor_request(served: ServedModel, tensors: list[InputTensor]) -> bool:
    """Whether a request sends the model's own tensors (names and datatypes), bypassing hooks."""
    specs = served.input_by_name
    return bool(tensors) and all(
        t.name in specs and t.datatype == specs[t.name].datatype for t in tensors
    )


def _validate_inputs(served: ServedModel, tensors: list[InputTensor]) -> dict[str, np.ndarray]:
    specs = served.input_by_name
    out: dict[str, np.ndarray] = {}
    for t in tensors:
        spec = specs.get(t.name)
        if spec is None:
            raise InvalidInput(
                f"model {served.name!r} has no input {t.name!r} (inputs: {', '.join(specs)})"
            )
        if t.name in out:
            raise InvalidInput(f"input {t.name!r} is given twice")
        pre = served.preprocessing
        if pre is not None and t.name == pre.input and t.datatype == "BYTES" != spec.datatype:
            # Encoded images: the manifest's preprocessing turns them into the model's tensor.
            try:
                data = pre.apply(t.data)
            except ProcessingError as exc:
                raise InvalidInput(str(exc)) from exc
            t = InputTensor(t.name, spec.datatype, data.shape, data)
        if t.datatype != spec.datatype:
            raise InvalidInput(f"input {t.name!r} must be {spec.datatype}, got {t.datatype}")
        if not spec.accepts(t.shape):
            raise InvalidInput(
                f"input {t.name!r} has shape {list(t.shape)}, model expects {list(spec.shape)} "
                "(-1 = any size)"
            )
        if math.prod(t.shape) == 0:
            raise InvalidInput(f"input {t.name!r} is empty (shape {list(t.shape)})")
        out[t.name] = t.data
    missing = [n for n in specs if n not in out]
    if missing:
        raise InvalidInput(f"missing input(s) {', '.join(missing)} for model {served.name!r}")
    if served.batcher is not None and len(out) > 1:
        rows = {a.shape[0] for a in out.values()}
        if len(rows) > 1:
            raise InvalidInput("all inputs must have the same batch size")
    return out


def _validate_outputs(served: ServedModel, names: list[str]) -> list[str] | None:
    if not names:
        return None
    for n in names:
        if n not in served.output_names:
            raise InvalidInput(
                f"model {served.name!r} has no output {n!r} "
                f"(outputs: {', '.join(o.name for o in served.outputs)})"
            )
    if len(set(names)) != len(names):
        raise InvalidInput("an output is requested twice")
    return list(names)
