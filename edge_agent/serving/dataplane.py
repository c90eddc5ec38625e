"""The transport-neutral inference API, and the one owner of an inference request's life.

A request passes through here from the moment its transport hands it over: decoding (with the
transport's own decoder), admission against the in-flight limit, validation, pre-processing, the
model, post-processing, and the request count and latency metrics. Every transport therefore
rejects bad tensors with the same precise errors, counts requests the same way, and turns
overload into a fast ``RESOURCE_EXHAUSTED`` instead of an unbounded queue. Servicers only convert
and map errors to their status codes.

Requests without a version are routed by the model's traffic split (``traffic.py``). A request
due to the shadow version is mirrored to it *after* the live answer is complete, as a background
task whose answer is only compared and discarded; at most ``SHADOW_MAX_INFLIGHT`` mirror runs per
candidate are in flight, further ones are skipped and counted, so the shadow neither queues without
bound nor delays or fails a live request.

A ``Capturer`` (``edge_agent/capture``), when given, sees every answered request and every
shadow comparison: it decides on the spot (one lookup for a version without a capture policy)
and hands what it keeps to a background writer, never holding or failing the request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

import numpy as np
from prometheus_client import Counter, Histogram

from edge_agent import __version__
from edge_agent.errors import AgentError, InvalidInput, ModelNotFound, Overloaded
from edge_agent.metrics import METRICS
from edge_agent.serving.batching import Tensors
from edge_agent.serving.python_handlers import RESPONSE_OUTPUT
from edge_agent.serving.repository import ModelRepository
from edge_agent.serving.requests import (
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    ModelConfig,
    ModelMetadata,
    OutputTensor,
    RepositoryEntry,
)
from edge_agent.serving.served_model import ServedModel
from edge_agent.serving.shared_memory import SharedMemoryRegistry, ShmRef
from edge_agent.serving.stats import ModelStats, RequestTiming
from edge_agent.serving.tensor_bytes import tensor_bytes
from edge_agent.serving.traffic import Comparison, compare
from edge_agent.serving.validation import (
    is_tensor_request,
    route_uploads,
    validate_inputs,
    validate_outputs,
)
from model_packager.tensors import TensorSpec

log = logging.getLogger(__name__)

SERVER_NAME = "edge-agent"
#: Shadow runs in flight per candidate version; a request due to the shadow beyond this is skipped
#: (and counted), so a slow candidate costs at most this many inference threads.
SHADOW_MAX_INFLIGHT = 2
#: Triton's names where the agent implements Triton's extension (``model_repository``: the index;
#: models are installed through ``AgentService``, not loaded from a folder).
EXTENSIONS = [
    "model_repository",
    "model_configuration",
    "statistics",
    "binary_tensor_data",
    "system_shared_memory",
    "batch_jobs",
    "health",
    "metrics",
]

#: Runtime -> Triton's backend name, for the model configuration.
_BACKENDS = {"onnx": "onnxruntime", "tflite": "tflite"}


class WireRequest(Protocol):
    """A request as its transport received it: enough to label metrics before decoding."""

    @property
    def model_name(self) -> str: ...

    @property
    def model_version(self) -> str: ...


W = TypeVar("W", bound=WireRequest)


class CaptureHook(Protocol):
    """What the data plane tells the capture wing (``edge_agent.capture.Capturer``): called on
    the event loop, it must return at once and never raise."""

    def after_inference(
        self,
        served: ServedModel,
        requested: bool,
        raw: list[InputTensor],
        results: Mapping[str, np.ndarray],
    ) -> None: ...

    def after_shadow(
        self,
        served: ServedModel,
        shadow_version: str,
        raw: list[InputTensor],
        live: Mapping[str, np.ndarray],
        shadow: Mapping[str, np.ndarray],
    ) -> None: ...


class DataPlane:
    def __init__(
        self,
        repo: ModelRepository,
        max_inflight: int,
        status_name: Callable[[AgentError], str],
        shm: SharedMemoryRegistry | None = None,
        capture: CaptureHook | None = None,
    ) -> None:
        """``status_name`` names a failed request's status in the request counter (the
        transport's code, e.g. ``INVALID_ARGUMENT``); successes count as ``OK``. ``shm`` holds
        the registered system shared memory regions both transports share. ``capture`` keeps
        the inputs the models' capture policies ask for."""
        self.repo = repo
        self.capture = capture
        self.shm = shm if shm is not None else SharedMemoryRegistry()
        self.max_inflight = max_inflight
        self.inflight = 0
        self.ready = False
        self._status_name = status_name
        # Metric children of successful requests per (model, version): ``.labels()`` validates
        # and looks up its arguments under a lock on every call, a measurable share of a small
        # model's request. Keys are served versions only, so the dict stays small.
        self._ok_metrics: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        # Shadow runs in flight per (model, version), and their tasks (held so they are not
        # garbage collected mid-run); both bounded by SHADOW_MAX_INFLIGHT per candidate.
        self._shadow_inflight: dict[tuple[str, str], int] = {}
        self._shadow_tasks: set[asyncio.Task[None]] = set()
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

    def model_config(self, name: str, version: str = "") -> ModelConfig:
        """The version's configuration as Triton reports it (see ``ModelConfig``)."""
        served = self.repo.get(name, version)
        batch = served.batcher.max_batch_size if served.batcher is not None else 0

        def dims(specs: list[TensorSpec]) -> list[TensorSpec]:
            if not batch:
                return list(specs)
            return [TensorSpec(s.name, s.datatype, s.shape[1:]) for s in specs]

        return ModelConfig(
            name=served.name,
            version=served.version,
            platform=served.platform,
            backend=_BACKENDS.get(served.runtime, served.runtime),
            max_batch_size=batch,
            inputs=dims(served.inputs),
            outputs=dims(served.outputs),
        )

    def statistics(self, name: str = "", version: str = "") -> list[tuple[str, str, ModelStats]]:
        """(name, version, stats) of every loaded version, of one model, or of one version."""
        if version:
            served = [self.repo.get(name, version)]
        elif name:
            served = self.repo.versions(name)
            if not served:
                self.repo.get(name)  # raises the precise ModelNotFound
        else:
            served = list(self.repo)
        return [(m.name, m.version, m.stats) for m in served]

    def repository_index(self, ready_only: bool = False) -> list[RepositoryEntry]:
        """Every loaded version. Only loaded versions are known here, and all of them serve,
        so ``ready_only`` changes nothing today; it is accepted because the protocol has it."""
        return [RepositoryEntry(m.name, m.version, "READY") for m in self.repo]

    # inference
    async def infer(self, wire: W, decode: Callable[[W], InferenceRequest]) -> InferenceResponse:
        """Serve one request, given in its wire form with the transport's decoder.

        Decoding happens here so that its errors count like any other rejected request and its
        time is part of the measured latency, as a client experiences it.
        """
        t0 = time.perf_counter_ns()
        request: InferenceRequest | None = None
        try:
            request = decode(wire)
            response = await self._infer(request, t0)
        except AgentError as exc:
            routed = request.routed_version if request is not None else ""
            self._count_failure(wire.model_name, wire.model_version, exc, t0, routed)
            raise
        key = (response.model_name, response.model_version)
        children = self._ok_metrics.get(key)
        if children is None:
            children = self._ok_metrics[key] = (
                METRICS.requests.labels(key[0], key[1], "OK"),
                METRICS.latency.labels(key[0]),
            )
        children[1].observe((time.perf_counter_ns() - t0) / 1e9)
        children[0].inc()
        return response

    def _count_failure(
        self, model_name: str, model_version: str, exc: AgentError, t0: int, routed: str = ""
    ) -> None:
        """Count a failed request: the metric by what the client asked for, the statistics on
        the version that was to answer (``routed``, once the traffic split chose one)."""
        # Label by what the client asked for only when it exists, so that arbitrary names from
        # clients cannot grow the metric without bound.
        try:
            served = self.repo.get(model_name, model_version)
        except ModelNotFound:
            model, version = "_unknown", ""
        else:
            model, version = model_name, model_version
            if routed and routed != served.version and self.repo.has(model_name, routed):
                served = self.repo.get(model_name, routed)
            served.stats.request_failed(time.perf_counter_ns() - t0)
        METRICS.requests.labels(model, version, self._status_name(exc)).inc()

    async def _infer(self, request: InferenceRequest, t0: int) -> InferenceResponse:
        if self.inflight >= self.max_inflight:
            raise Overloaded(f"{self.inflight} requests in flight (limit {self.max_inflight})")
        served, shadow = self.repo.route(request.model_name, request.model_version)
        request.routed_version = served.version
        if request.output_shm or any(t.shm is not None for t in request.inputs):
            self._read_shared(request)
        if request.uploads:
            request.inputs = route_uploads(served, request.inputs)
        if served.hooks is not None and not is_tensor_request(served, request.inputs):
            return await self._infer_with_hooks(served, request, t0)
        raw = request.inputs  # as received: what a capture keeps
        inputs = validate_inputs(served, raw)
        wanted = validate_outputs(served, request.outputs)
        self.inflight += 1
        try:
            t_model = time.perf_counter_ns()
            results, timing = await served.infer_timed(inputs, wanted)
        finally:
            self.inflight -= 1
        if wanted is None:
            specs = served.outputs
        else:
            specs = [s for n in wanted for s in served.outputs if s.name == n]
        outputs = [OutputTensor(s.name, s.datatype, results[s.name]) for s in specs]
        if request.output_shm:
            self._write_shared(request.output_shm, outputs)
        served.stats.request_succeeded(
            time.perf_counter_ns() - t0, t_model - t0, timing, served.rows(inputs)
        )
        if self.capture is not None:
            self.capture.after_inference(served, request.capture, raw, results)
        if shadow is not None:
            live = {s.name: results[s.name] for s in specs}
            self._mirror(shadow, inputs, live, served, raw)
        return InferenceResponse(
            model_name=served.name,
            model_version=served.version,
            id=request.id,
            outputs=outputs,
        )

    # system shared memory
    def _read_shared(self, request: InferenceRequest) -> None:
        """Inputs held in shared memory -> arrays (copied); requested output places checked,
        so a bad reference fails before the model runs."""
        for t in request.inputs:
            if t.shm is not None:
                count = math.prod(t.shape)
                t.data = self.shm.read(t.shm, t.name, t.datatype, t.shape, count).reshape(t.shape)
        unknown = set(request.output_shm) - set(request.outputs)
        if unknown:  # transports only set it for requested outputs; kept as a guard
            raise InvalidInput(f"shared memory given for outputs not requested: {sorted(unknown)}")
        for name, ref in request.output_shm.items():
            self.shm.check(ref, f"output {name!r}")

    def _write_shared(self, places: dict[str, ShmRef], outputs: list[OutputTensor]) -> None:
        for out in outputs:
            ref = places.get(out.name)
            if ref is not None:
                written = self.shm.write(ref, out.name, tensor_bytes(out.data, out.datatype))
                out.shm = ShmRef(ref.region, ref.offset, written)

    # shadow
    def _mirror(
        self,
        shadow: ServedModel,
        inputs: Tensors,
        live: Tensors,
        served: ServedModel,
        raw: list[InputTensor],
    ) -> None:
        """Start a shadow run of an answered request, or count it skipped when the candidate
        already has ``SHADOW_MAX_INFLIGHT`` runs: never waits, never raises."""
        key = (shadow.name, shadow.version)
        busy = self._shadow_inflight.get(key, 0)
        if busy >= SHADOW_MAX_INFLIGHT:
            shadow.stats.shadow.skipped += 1
            return
        self._shadow_inflight[key] = busy + 1
        task = asyncio.get_running_loop().create_task(
            self._shadow_run(shadow, inputs, live, served, raw)
        )
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow_run(
        self,
        shadow: ServedModel,
        inputs: Tensors,
        live: Tensors,
        served: ServedModel,
        raw: list[InputTensor],
    ) -> None:
        key = (shadow.name, shadow.version)
        try:
            loop = asyncio.get_running_loop()
            # Always in the thread pool, even for an inline model: the event loop belongs to
            # live requests. The dynamic batcher is bypassed so mirrors never take queue slots.
            result, own = await loop.run_in_executor(
                shadow.executor, _run_and_compare, shadow, inputs, live
            )
        except Exception as exc:  # the shadow must never take anything else down
            shadow.stats.shadow.failed += 1
            log.debug("shadow run on %s:%s failed: %s", shadow.name, shadow.version, exc)
        else:
            shadow.stats.shadow.record(result.rows, result.agreed, result.max_abs_diff)
            if self.capture is not None and result.agreed < result.rows:
                self.capture.after_shadow(served, shadow.version, raw, live, own)
        finally:
            left = self._shadow_inflight.get(key, 1) - 1
            if left > 0:
                self._shadow_inflight[key] = left
            else:
                self._shadow_inflight.pop(key, None)

    async def _infer_with_hooks(
        self, served: ServedModel, request: InferenceRequest, t0: int
    ) -> InferenceResponse:
        """Files or JSON -> ``_preprocess`` -> model -> ``_postprocess`` -> JSON ``response``.

        Both hooks run in the inference thread pool: they are arbitrary Python (image decoding,
        loops over lists) and must not stall the event loop that serves every other model.
        """
        hooks = served.hooks
        assert hooks is not None
        if request.output_shm:
            raise InvalidInput(
                f"model {served.name!r} answers through its handler; its output cannot be "
                "written to shared memory"
            )
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
            specs = served.input_by_name  # unknown names: validate_inputs names the real ones
            tensors = [
                InputTensor(n, specs[n].datatype if n in specs else "", a.shape, a)
                for n, a in arrays.items()
            ]
            try:
                inputs = validate_inputs(served, tensors)
            except InvalidInput as exc:
                raise InvalidInput(f"{hooks.module} _preprocess returned: {exc}") from exc
            t_model = time.perf_counter_ns()
            results, timing = await served.infer_timed(inputs, None)
            t_post = time.perf_counter_ns()
            body = await loop.run_in_executor(served.executor, hooks.postprocess, results)
        finally:
            self.inflight -= 1
        t_end = time.perf_counter_ns()
        timing = RequestTiming(timing.queue_ns, timing.infer_ns, timing.output_ns + t_end - t_post)
        served.stats.request_succeeded(t_end - t0, t_model - t0, timing, served.rows(inputs))
        return InferenceResponse(
            model_name=served.name,
            model_version=served.version,
            id=request.id,
            outputs=[OutputTensor(RESPONSE_OUTPUT, "BYTES", np.array([body], dtype=np.object_))],
        )


def _run_and_compare(
    shadow: ServedModel, inputs: Tensors, live: Tensors
) -> tuple[Comparison, Tensors]:
    """The candidate's model outputs for ``inputs``, compared with the live answer (in a worker
    thread), and those outputs. Only the model's own outputs run: post-processing adds nothing
    comparable."""
    own = {s.name for s in shadow.manifest.output_specs()}
    names = [n for n in live if n in own]
    if not names:
        raise ValueError("the shadow version has none of the live outputs")
    outputs = shadow.infer_sync(inputs, names)
    return compare({n: live[n] for n in names}, outputs), outputs
