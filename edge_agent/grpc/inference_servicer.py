"""``inference.GRPCInferenceService``: converts, calls the data plane, converts back."""

from __future__ import annotations

import time

import grpc
from prometheus_client import Counter, Histogram

from edge_agent.errors import AgentError
from edge_agent.grpc.converters import metadata_to_proto, request_from_proto, response_to_proto
from edge_agent.grpc.status import status_for
from edge_agent.metrics import METRICS
from edge_agent.serving.dataplane import DataPlane
from protos.gen import inference_pb2 as pb
from protos.gen import inference_pb2_grpc as pb_grpc


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane
        # Metric children of successful requests per (model, version): ``.labels()`` validates
        # and looks up its arguments under a lock on every call, a measurable share of a small
        # model's request. Keys are served versions only, so the dict stays small.
        self._ok_metrics: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dp.live())

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dp.server_ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.dp.model_ready(request.name, request.version))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        name, version, extensions = self.dp.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            md = self.dp.model_metadata(request.name, request.version)
        except AgentError as exc:
            await context.abort(status_for(exc), str(exc))
        response = metadata_to_proto(md)
        # The chosen variant is not part of OIP metadata; trailing metadata carries it.
        context.set_trailing_metadata((("edge-variant", md.variant),))
        return response

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        t0 = time.perf_counter()
        try:
            result = await self.dp.infer(request_from_proto(request))
        except AgentError as exc:
            code = status_for(exc)
            # Label by what the client asked for only when it exists, so that arbitrary
            # names from clients cannot grow the metric without bound.
            known = self.dp.model_ready(request.model_name, request.model_version)
            model = request.model_name if known else "_unknown"
            version = request.model_version if known else ""
            METRICS.requests.labels(model, version, code.name).inc()
            await context.abort(code, str(exc))
        key = (result.model_name, result.model_version)
        children = self._ok_metrics.get(key)
        if children is None:
            children = self._ok_metrics[key] = (
                METRICS.requests.labels(key[0], key[1], "OK"),
                METRICS.latency.labels(key[0]),
            )
        children[1].observe(time.perf_counter() - t0)
        children[0].inc()
        return response_to_proto(result)
