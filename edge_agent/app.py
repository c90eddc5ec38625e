"""Assemble and run the agent: store, repository, installer, data plane, jobs, servers.

Start-up order matters for the offline-first promise: the gRPC port is bound and answers
ServerLive at once, committed models load next (active versions first), and only then does the
server report ready and health switch to SERVING.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from edge_agent import __version__
from edge_agent.config import AgentSettings
from edge_agent.fsutil import atomic_write_json
from edge_agent.grpc.agent_servicer import AgentServicer
from edge_agent.grpc.inference_servicer import InferenceServicer
from edge_agent.install.installer import Installer
from edge_agent.install.store import ModelStore
from edge_agent.jobs.batch_jobs import BatchJobManager
from edge_agent.metrics import METRICS
from edge_agent.serving.dataplane import DataPlane
from edge_agent.serving.repository import ModelRepository
from model_packager.runtimes import available_runtimes
from protos.gen import agent_pb2, agent_pb2_grpc, inference_pb2, inference_pb2_grpc

if TYPE_CHECKING:
    from edge_agent.fleet import FleetClient

log = logging.getLogger(__name__)

_INFERENCE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
_AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.version = __version__
        self.started = time.monotonic()
        self.runtimes = available_runtimes()
        self.store = ModelStore(settings.data_dir)
        self.repo = ModelRepository(settings.max_versions_per_model)
        self.executor = ThreadPoolExecutor(settings.inference_workers, thread_name_prefix="infer")
        self.installer = Installer(settings, self.store, self.repo, self.executor)
        self.dataplane = DataPlane(self.repo, settings.max_inflight_requests)
        self.jobs = BatchJobManager(settings.jobs_dir, self.repo, settings.batch_job_workers)
        self.health = HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.grpc_port = 0
        self.metrics_port = 0
        self._metrics_server = None
        self._stopped = asyncio.Event()
        self.fleet: FleetClient | None = None

    def uptime(self) -> float:
        return time.monotonic() - self.started

    async def start(self) -> None:
        s = self.settings
        opts = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self.server = grpc.aio.server(options=opts)
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.dataplane), self.server
        )
        agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(self), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (_INFERENCE_SERVICE, _AGENT_SERVICE, "grpc.health.v1.Health", reflection.SERVICE_NAME),
            self.server,
        )
        for svc in ("", _INFERENCE_SERVICE):
            await self.health.set(svc, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc_port = self.server.add_insecure_port(f"{s.grpc_host}:{s.grpc_port}")
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC on {s.grpc_host}:{s.grpc_port}")
        await self.server.start()
        if s.metrics_port >= 0:
            self._metrics_server, _ = start_http_server(
                s.metrics_port, addr=s.metrics_host, registry=METRICS.registry
            )
            self.metrics_port = self._metrics_server.server_port
        log.info("gRPC on %s:%d, metrics on %d", s.grpc_host, self.grpc_port, self.metrics_port)

        await self.installer.recover()
        await self.jobs.start()
        self.dataplane.ready = True
        for svc in ("", _INFERENCE_SERVICE):
            await self.health.set(svc, health_pb2.HealthCheckResponse.SERVING)
        if s.port_file is not None:
            atomic_write_json(
                s.port_file,
                {"grpc": self.grpc_port, "metrics": self.metrics_port, "pid": os.getpid()},
            )
        log.info("ready: %d model versions loaded", len(list(self.repo)))
        if s.fleet is not None:
            # After serving starts and never awaited on the network: offline first.
            from edge_agent.fleet import FleetClient

            self.fleet = FleetClient(s, self.store, self.repo, self.installer, self.version)
            await self.fleet.start()

    async def stop(self, grace: float = 5.0) -> None:
        if self.fleet is not None:
            await self.fleet.stop()
        self.dataplane.ready = False
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(grace)
        await self.jobs.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        for m in list(self.repo):
            await m.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()

    async def run_until_signal(self) -> None:
        await self.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping")
        await self.stop()
