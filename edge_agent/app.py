"""Assemble and run the agent: store, repository, installer, data plane, jobs, servers.

Start-up order matters for the offline-first promise: the gRPC and HTTP ports are bound and
answer liveness at once, committed models load next (active versions first), and only then does
the server report ready and health switch to SERVING.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from edge_agent import __version__
from edge_agent.auth import TokenAuth
from edge_agent.capture import Capturer
from edge_agent.config import AgentSettings
from edge_agent.fsutil import atomic_write_json
from edge_agent.grpc.agent_servicer import AgentIdentity, AgentServicer
from edge_agent.grpc.auth import TokenInterceptor
from edge_agent.grpc.inference_servicer import InferenceServicer
from edge_agent.grpc.server import GrpcServer
from edge_agent.grpc.status import status_name
from edge_agent.http.metrics_route import MAX_BODY, MetricsRoute, error_text
from edge_agent.http.routes import Router, error_response
from edge_agent.http.server import HttpServer
from edge_agent.install.installer import Installer
from edge_agent.install.store import ModelStore
from edge_agent.jobs.batch_jobs import BatchJobManager
from edge_agent.memory import keep_large_buffers, release_free_heap
from edge_agent.metrics import METRICS
from edge_agent.serving.dataplane import DataPlane
from edge_agent.serving.repository import ModelRepository
from edge_agent.serving.shared_memory import SharedMemoryRegistry
from model_packager.runtimes import available_runtimes

if TYPE_CHECKING:
    from edge_agent.fleet import FleetClient

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.version = __version__
        self.identity = AgentIdentity(__version__, settings.device_id, available_runtimes())
        self.store = ModelStore(settings.data_dir)
        self.repo = ModelRepository(settings.max_versions_per_model)
        self.executor = ThreadPoolExecutor(settings.inference_workers, thread_name_prefix="infer")
        self.installer = Installer(settings, self.store, self.repo, self.executor)
        self.capture = Capturer(settings.capture, settings.data_dir / "captures")
        self.dataplane = DataPlane(
            self.repo,
            settings.max_inflight_requests,
            status_name,
            SharedMemoryRegistry(
                settings.shared_memory_max_regions, settings.shared_memory_max_bytes
            ),
            capture=self.capture,
        )
        self.jobs = BatchJobManager(settings.jobs_dir, self.repo, settings.batch_job_workers)
        token = settings.bearer_token()
        self.auth = TokenAuth(token) if token is not None else None
        self.grpc = GrpcServer(
            settings,
            InferenceServicer(self.dataplane),
            AgentServicer(
                identity=self.identity,
                repo=self.repo,
                store=self.store,
                installer=self.installer,
                jobs=self.jobs,
                dataplane=self.dataplane,
            ),
            interceptors=[TokenInterceptor(self.auth)] if self.auth is not None else [],
        )
        self.http: HttpServer | None = None
        if settings.http_port >= 0:
            self.http = HttpServer(
                settings.http_host,
                settings.http_port,
                Router(self.dataplane, settings.http_max_body_bytes),
                error_response,
                settings.http_max_body_bytes,
                self.auth,
                settings.tls,
            )
        self.grpc_port = 0
        self.http_port = 0
        self.metrics_port = 0
        self._metrics_server: HttpServer | None = None
        self._stopped = asyncio.Event()
        self.fleet: FleetClient | None = None

    async def start(self) -> None:
        s = self.settings
        keep_large_buffers()  # installs reuse their buffers' pages (memory.py)
        self.capture.start()
        self.grpc_port = await self.grpc.start()
        if self.http is not None:
            self.http_port = await self.http.start()
        if s.metrics_port >= 0:
            self._metrics_server = HttpServer(
                s.metrics_host, s.metrics_port, MetricsRoute(METRICS.registry), error_text, MAX_BODY
            )
            self.metrics_port = await self._metrics_server.start()
        # A port turned off (-1) is said "off", not shown as port 0.
        http = f"on {s.http_host}:{self.http_port} ({self.http.security})" if self.http else "off"
        metrics = f"on {s.metrics_host}:{self.metrics_port}" if self._metrics_server else "off"
        log.info(
            "gRPC on %s:%d (%s), HTTP %s, metrics %s%s",
            s.grpc_host,
            self.grpc_port,
            self.grpc.security,
            http,
            metrics,
            ", bearer token required" if self.auth is not None else "",
        )

        await self.installer.recover()
        await self.jobs.start()
        release_free_heap()  # what loading freed: ~1.4 MB of RSS, see memory.py
        self.dataplane.ready = True
        await self.grpc.set_serving(True)
        if s.port_file is not None:
            atomic_write_json(
                s.port_file,
                {
                    "grpc": self.grpc_port,
                    "http": self.http_port,
                    "metrics": self.metrics_port,
                    "pid": os.getpid(),
                },
            )
        log.info("ready: %d model versions loaded", len(list(self.repo)))
        if s.fleet is not None:
            # After serving starts and never awaited on the network: offline first.
            from edge_agent.fleet import FleetClient

            self.fleet = FleetClient(
                s,
                self.store,
                self.repo,
                self.installer,
                self.version,
                jobs=self.jobs,
                capture=self.capture,
            )
            await self.fleet.start()

    async def stop(self, grace: float = 5.0) -> None:
        if self.fleet is not None:
            await self.fleet.stop()
        self.dataplane.ready = False
        if self.http is not None:
            await self.http.stop(grace)
        await self.grpc.stop(grace)
        await self.jobs.stop()
        await asyncio.to_thread(self.capture.close)
        if self._metrics_server is not None:
            await self._metrics_server.stop(grace)
        for m in list(self.repo):
            await m.close()
        self.dataplane.shm.close()
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
