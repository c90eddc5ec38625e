"""The gRPC server: inference and agent services, health and reflection, on one port.

Health starts NOT_SERVING for the whole server and the inference service, so load balancers and
``grpc_health_probe`` wait until the committed models are loaded; ``set_serving`` flips both.

With ``tls`` set the port speaks only TLS (the same port, not a second one, so no plaintext path
is left open), and with ``tls.client_ca_file`` it requires a client certificate signed by that
CA. The files are read and checked by ``edge_agent.tls`` before binding.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from edge_agent.config import AgentSettings
from edge_agent.grpc.agent_servicer import AgentServicer
from edge_agent.grpc.inference_servicer import InferenceServicer
from edge_agent.tls import ServerTls, load_server_tls
from protos.gen import agent_pb2, agent_pb2_grpc, inference_pb2, inference_pb2_grpc

_INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
_AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


class GrpcServer:
    def __init__(
        self, settings: AgentSettings, inference: InferenceServicer, agent: AgentServicer
    ) -> None:
        self.settings = settings
        self._inference = inference
        self._agent = agent
        self.health = HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.security = "plaintext"  # or "TLS", "mutual TLS": for the start-up log line

    async def start(self) -> int:
        """Bind and serve (health NOT_SERVING); returns the bound port."""
        s = self.settings
        opts = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self.server = grpc.aio.server(options=opts)
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self._inference, self.server)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(self._agent, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (_INFERENCE_SERVICE, _AGENT_SERVICE, "grpc.health.v1.Health", reflection.SERVICE_NAME),
            self.server,
        )
        await self.set_serving(False)
        address = f"{s.grpc_host}:{s.grpc_port}"
        if s.tls is None:
            self.port = self.server.add_insecure_port(address)
        else:
            tls = load_server_tls(s.tls)
            self.port = self.server.add_secure_port(address, _credentials(tls))
            self.security = "mutual TLS" if tls.mutual else "TLS"
        if self.port == 0:
            raise OSError(f"cannot bind gRPC on {s.grpc_host}:{s.grpc_port}")
        await self.server.start()
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for svc in ("", _INFERENCE_SERVICE):
            await self.health.set(svc, status)

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(grace)


def _credentials(tls: ServerTls) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.cert_chain)],
        root_certificates=tls.client_ca,
        require_client_auth=tls.mutual,
    )
