"""``inference.GRPCInferenceService``: converts, calls the data plane, converts back.

Translation only: the data plane owns each request's life (validation, processing, metrics) and
``@aborts_with_status`` maps its errors to status codes.
"""

from __future__ import annotations

import grpc

from edge_agent.auth import grpc_peer_is_local
from edge_agent.errors import Unsupported
from edge_agent.grpc.converters import (
    config_to_proto,
    index_to_proto,
    metadata_to_proto,
    request_from_proto,
    response_to_proto,
    shm_status_to_proto,
    statistics_to_proto,
)
from edge_agent.grpc.status import aborts_with_status
from edge_agent.serving.dataplane import DataPlane
from edge_agent.serving.requests import InferenceRequest
from edge_agent.serving.shared_memory import CUDA_UNSUPPORTED, require_local
from protos.gen import inference_pb2 as pb
from protos.gen import inference_pb2_grpc as pb_grpc


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    @aborts_with_status
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dp.live())

    @aborts_with_status
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dp.server_ready())

    @aborts_with_status
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.dp.model_ready(request.name, request.version))

    @aborts_with_status
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        name, version, extensions = self.dp.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    @aborts_with_status
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        md = self.dp.model_metadata(request.name, request.version)
        response = metadata_to_proto(md)
        # The chosen variant is not part of OIP metadata; trailing metadata carries it.
        context.set_trailing_metadata((("edge-variant", md.variant),))
        return response

    @aborts_with_status
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        def decode(req: pb.ModelInferRequest) -> InferenceRequest:
            return request_from_proto(req, lambda: _local(context))

        return response_to_proto(await self.dp.infer(request, decode))

    @aborts_with_status
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        return config_to_proto(self.dp.model_config(request.name, request.version))

    @aborts_with_status
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        return statistics_to_proto(self.dp.statistics(request.name, request.version))

    @aborts_with_status
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        return index_to_proto(self.dp.repository_index(request.ready))

    # ------------------------------------------------------------ system shared memory
    @aborts_with_status
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryStatusResponse:
        require_local(_local(context))
        return shm_status_to_proto(self.dp.shm.status(request.name))

    @aborts_with_status
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryRegisterResponse:
        require_local(_local(context))
        self.dp.shm.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @aborts_with_status
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        require_local(_local(context))
        self.dp.shm.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @aborts_with_status
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryStatusResponse:
        raise Unsupported(CUDA_UNSUPPORTED)

    @aborts_with_status
    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryRegisterResponse:
        raise Unsupported(CUDA_UNSUPPORTED)

    @aborts_with_status
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        raise Unsupported(CUDA_UNSUPPORTED)


def _local(context: grpc.aio.ServicerContext) -> bool:
    return grpc_peer_is_local(context.peer() or "")
