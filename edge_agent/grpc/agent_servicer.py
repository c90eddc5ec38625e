"""``edgeagent.v1.AgentService``: models, status, installs, traffic and batch jobs over gRPC.

Translation only. The servicer is given the parts it calls (repository, store, installer, batch
jobs, data plane) rather than the whole agent, so what an RPC can reach is visible here, and
``@aborts_with_status`` maps their errors to status codes.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from edge_agent.errors import InstallFailed, InvalidInput
from edge_agent.grpc.status import aborts_with_status
from edge_agent.install.installer import Installer, InstallOutcome
from edge_agent.install.store import ModelStore
from edge_agent.jobs.batch_jobs import BatchJobManager, JobRecord
from edge_agent.serving.dataplane import DataPlane
from edge_agent.serving.repository import ModelRepository
from edge_agent.serving.served_model import ServedModel
from edge_agent.serving.stats import ShadowStats
from edge_agent.serving.traffic import TrafficSplit
from protos.gen import agent_pb2 as pb
from protos.gen import agent_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class AgentIdentity:
    """What ``GetStatus`` says about the agent itself."""

    version: str
    device_id: str
    runtimes: list[str]
    started: float = field(default_factory=time.monotonic)

    def uptime(self) -> float:
        return time.monotonic() - self.started


def version_info(served: ServedModel, active: bool) -> pb.ModelVersionInfo:
    return pb.ModelVersionInfo(
        name=served.name,
        version=served.version,
        state="READY",
        variant=served.variant,
        runtime=served.runtime,
        package_digest=served.digest,
        active=active,
    )


def install_result(o: InstallOutcome | dict | None) -> pb.InstallResult | None:
    if o is None:
        return None
    d = o.to_json() if isinstance(o, InstallOutcome) else o
    return pb.InstallResult(
        package_digest=str(d.get("package_digest", "")),
        name=str(d.get("name", "")),
        version=str(d.get("version", "")),
        outcome=str(d.get("outcome", "")),
        failed_step=str(d.get("failed_step", "")),
        reason=str(d.get("reason", "")),
        finished_at_unix=float(d.get("finished_at", 0.0)),  # type: ignore[arg-type]
    )


def shadow_to_proto(s: ShadowStats) -> pb.ShadowStats:
    return pb.ShadowStats(
        compared=s.compared,
        skipped=s.skipped,
        failed=s.failed,
        rows=s.rows,
        agreed_rows=s.agreed_rows,
        max_abs_diff=s.max_abs_diff,
    )


def traffic_info(repo: ModelRepository, name: str) -> pb.TrafficInfo:
    split = repo.traffic(name)
    active = repo.active_version(name) or ""
    return pb.TrafficInfo(
        model=name,
        weights=dict(split.weights),
        shadow_version=split.shadow_version,
        shadow_fraction=split.shadow_fraction,
        active_version=active,
        versions=[
            pb.VersionTraffic(
                version=m.version,
                weight=split.weights.get(m.version, 0.0),
                active=m.version == active,
                success=m.stats.success.count,
                fail=m.stats.fail.count,
                shadow=shadow_to_proto(m.stats.shadow),
            )
            for m in repo.versions(name)
        ],
    )


def job_to_proto(j: JobRecord) -> pb.BatchJob:
    return pb.BatchJob(
        job_id=j.job_id,
        model_name=j.model_name,
        model_version=j.model_version,
        state=j.state,
        total=j.total,
        done=j.done,
        failed=j.failed,
        results_path=j.results_path,
        error=j.error,
        created_at_unix=j.created_at,
        finished_at_unix=j.finished_at,
    )


class AgentServicer(pb_grpc.AgentServiceServicer):
    def __init__(
        self,
        *,
        identity: AgentIdentity,
        repo: ModelRepository,
        store: ModelStore,
        installer: Installer,
        jobs: BatchJobManager,
        dataplane: DataPlane,
    ) -> None:
        self.identity = identity
        self.repo = repo
        self.store = store
        self.installer = installer
        self.jobs = jobs
        self.dataplane = dataplane

    def _models(self) -> list[pb.ModelInfo]:
        repo = self.repo
        out = []
        for name in repo.names():
            active = repo.active_version(name) or ""
            out.append(
                pb.ModelInfo(
                    name=name,
                    active_version=active,
                    versions=[version_info(m, m.version == active) for m in repo.versions(name)],
                )
            )
        return out

    @aborts_with_status
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=self._models())

    @aborts_with_status
    async def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.AgentStatus:
        me = self.identity
        return pb.AgentStatus(
            agent_version=me.version,
            device_id=me.device_id,
            uptime_seconds=me.uptime(),
            ready=self.dataplane.server_ready(),
            models=self._models(),
            last_install=install_result(self.store.last_install()),
            runtimes=me.runtimes,
        )

    @aborts_with_status
    async def InstallPackage(
        self, request: pb.InstallPackageRequest, context: grpc.aio.ServicerContext
    ) -> pb.InstallPackageResponse:
        activate = request.activate if request.HasField("activate") else True
        which = request.WhichOneof("source")
        if which == "path":
            outcome, served = await self.installer.install(Path(request.path), activate)
        elif which == "archive":
            with tempfile.NamedTemporaryFile(dir=self.store.incoming, suffix=".edgepkg") as tmp:
                tmp.write(request.archive)
                tmp.flush()
                outcome, served = await self.installer.install(Path(tmp.name), activate)
        else:
            raise InvalidInput("give a package path or the archive bytes")
        if outcome.outcome != "COMMITTED":
            raise InstallFailed(outcome.failed_step, outcome.reason)
        assert served is not None
        active = self.repo.active_version(served.name) == served.version
        return pb.InstallPackageResponse(
            result=install_result(outcome), model=version_info(served, active)
        )

    @aborts_with_status
    async def ActivateVersion(
        self, request: pb.ActivateVersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelVersionInfo:
        served = await self.installer.activate(request.name, request.version)
        return version_info(served, True)

    @aborts_with_status
    async def SetTraffic(
        self, request: pb.SetTrafficRequest, context: grpc.aio.ServicerContext
    ) -> pb.TrafficInfo:
        split = TrafficSplit(dict(request.weights), request.shadow_version, request.shadow_fraction)
        await self.installer.set_traffic(request.model, split)
        return traffic_info(self.repo, request.model)

    @aborts_with_status
    async def GetTraffic(
        self, request: pb.GetTrafficRequest, context: grpc.aio.ServicerContext
    ) -> pb.TrafficInfo:
        return traffic_info(self.repo, request.model)

    @aborts_with_status
    async def SubmitBatchJob(
        self, request: pb.SubmitBatchJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchJob:
        job = self.jobs.submit(
            request.model_name,
            request.model_version,
            manifest_path=request.manifest_path,
            input_dir=request.input_dir,
            output_path=request.output_path,
        )
        return job_to_proto(job)

    @aborts_with_status
    async def GetBatchJob(
        self, request: pb.GetBatchJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchJob:
        return job_to_proto(self.jobs.get(request.job_id))

    @aborts_with_status
    async def ListBatchJobs(
        self, request: pb.ListBatchJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListBatchJobsResponse:
        return pb.ListBatchJobsResponse(jobs=[job_to_proto(j) for j in self.jobs.list()])

    @aborts_with_status
    async def CancelBatchJob(
        self, request: pb.GetBatchJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchJob:
        return job_to_proto(self.jobs.cancel(request.job_id))
