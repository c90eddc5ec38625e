"""``edgeagent.v1.AgentService``: models, status, installs and batch jobs over gRPC."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from edge_agent.errors import AgentError, InstallFailed, InvalidInput
from edge_agent.grpc.status import status_for
from edge_agent.install.installer import InstallOutcome
from edge_agent.jobs.batch_jobs import JobRecord
from edge_agent.serving.served_model import ServedModel
from protos.gen import agent_pb2 as pb
from protos.gen import agent_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from edge_agent.app import Agent


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
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def _models(self) -> list[pb.ModelInfo]:
        repo = self.agent.repo
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

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=self._models())

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.AgentStatus:
        a = self.agent
        return pb.AgentStatus(
            agent_version=a.version,
            device_id=a.settings.device_id,
            uptime_seconds=a.uptime(),
            ready=a.dataplane.server_ready(),
            models=self._models(),
            last_install=install_result(a.store.last_install()),
            runtimes=a.runtimes,
        )

    async def InstallPackage(
        self, request: pb.InstallPackageRequest, context: grpc.aio.ServicerContext
    ) -> pb.InstallPackageResponse:
        activate = request.activate if request.HasField("activate") else True
        which = request.WhichOneof("source")
        try:
            if which == "path":
                outcome, served = await self.agent.installer.install(Path(request.path), activate)
            elif which == "archive":
                incoming = self.agent.store.incoming
                with tempfile.NamedTemporaryFile(dir=incoming, suffix=".edgepkg") as tmp:
                    tmp.write(request.archive)
                    tmp.flush()
                    outcome, served = await self.agent.installer.install(Path(tmp.name), activate)
            else:
                raise InvalidInput("give a package path or the archive bytes")
            if outcome.outcome != "COMMITTED":
                raise InstallFailed(outcome.failed_step, outcome.reason)
        except AgentError as exc:
            await context.abort(status_for(exc), str(exc))
        assert served is not None
        active = self.agent.repo.active_version(served.name) == served.version
        return pb.InstallPackageResponse(
            result=install_result(outcome), model=version_info(served, active)
        )

    async def ActivateVersion(
        self, request: pb.ActivateVersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelVersionInfo:
        try:
            served = await self.agent.installer.activate(request.name, request.version)
        except AgentError as exc:
            await context.abort(status_for(exc), str(exc))
        return version_info(served, True)

    async def SubmitBatchJob(
        self, request: pb.SubmitBatchJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchJob:
        try:
            job = self.agent.jobs.submit(
                request.model_name,
                request.model_version,
                manifest_path=request.manifest_path,
                input_dir=request.input_dir,
                output_path=request.output_path,
            )
        except AgentError as exc:
            await context.abort(status_for(exc), str(exc))
        return job_to_proto(job)

    async def GetBatchJob(
        self, request: pb.GetBatchJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchJob:
        try:
            return job_to_proto(self.agent.jobs.get(request.job_id))
        except AgentError as exc:
            await context.abort(status_for(exc), str(exc))

    async def ListBatchJobs(
        self, request: pb.ListBatchJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListBatchJobsResponse:
        return pb.ListBatchJobsResponse(jobs=[job_to_proto(j) for j in self.agent.jobs.list()])

    async def CancelBatchJob(
        self, request: pb.GetBatchJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchJob:
        try:
            return job_to_proto(self.agent.jobs.cancel(request.job_id))
        except AgentError as exc:
            await context.abort(status_for(exc), str(exc))
