"""Online services: create, read, update (rolling) and delete; the supervisor does the running.

Creating a service records it and its replicas, registers each replica as a fleet device
(``svc-<name>-<n>``, labelled ``service=<name>``) and writes its agent config; the supervisor
then starts the agents and deploys the models to them. Nothing long runs inside a request except
a delete, which waits for the replicas to stop.

An edge service (``type: edge``) runs on fleet devices instead: creating or updating it records
a staged rollout (``rollouts/``) that the rollout engine carries out; it has no replicas.

A batch service (``type: batch``) is the same with one replica and an input: creating it
selects the dataset version's samples (a bad reference fails the request) and writes them where
the supervisor's batch follower finds them; its results are read back here.
"""

from __future__ import annotations

import json
import logging
import shutil
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.core.context import AppContext
from control_plane.core.database import utcnow
from control_plane.core.errors import Conflict, InvalidRequest, NotFound
from control_plane.datasets.versions.service import VersionService
from control_plane.deployments.service import DeploymentService
from control_plane.devices.service import DeviceService
from control_plane.devices.telemetry.service import TelemetryService
from control_plane.registry.service import ModelService
from control_plane.services import batch, device_batch
from control_plane.services.device_batch import DeviceBatches
from control_plane.services.inputs import InputStore
from control_plane.services.models import Service, ServiceReplica
from control_plane.services.rollouts.engine import latest_rollout
from control_plane.services.rollouts.service import RolloutService
from control_plane.services.schemas import (
    BatchInput,
    BatchProgress,
    CaptureSpec,
    DetectionEvaluation,
    EdgeTargets,
    Evaluation,
    InputUpload,
    ReplicaPublic,
    ResultPage,
    ResultRow,
    ServiceCreate,
    ServiceModel,
    ServicePublic,
    ServiceUpdate,
    ServiceVersions,
)
from control_plane.services.supervisor import Supervisor
from control_plane.services.version_figures import MetricsRecord, version_figures

logger = logging.getLogger(__name__)

#: Newest ``metrics`` records read per replica: enough to still hold a version replaced by a
#: rolling update some minutes ago, few enough to read in one cheap query.
METRICS_RECORDS = 200
#: The kind a batch service is recorded under among its dataset version's uses.
BATCH_USE = "batch_service"


def replica_device_id(service: str, index: int) -> str:
    return f"svc-{service}-{index}"


class ServiceManager:
    def __init__(
        self,
        session: Session,
        ctx: AppContext,
        supervisor: Supervisor,
        device_batches: DeviceBatches | None = None,
    ) -> None:
        """``device_batches`` is needed to create and delete batch services on devices."""
        self.session = session
        self.ctx = ctx
        self.supervisor = supervisor
        self.device_batches = device_batches

    # --- queries -----------------------------------------------------------------------------

    def list(self) -> list[Service]:
        return list(self.session.scalars(select(Service).order_by(Service.name)).all())

    def get(self, name: str) -> Service:
        service = self.session.get(Service, name)
        if service is None:
            raise NotFound(f"service {name} not found")
        return service

    def http_addresses(self, name: str) -> list[str]:
        """The OIP REST addresses of the service's running replicas (``NotFound`` if none such
        service)."""
        service = self.get(name)
        host = self.agent_host(service)
        return [
            f"{host}:{r.http_port}"
            for r in service.replicas
            if r.state == "running" and r.http_port
        ]

    def agent_host(self, service: Service) -> str:
        """Where the service's agents listen: its owner's address (with several control-plane
        replicas), else this machine's ``services.agent_host``."""
        if self.ctx.settings.replicas.id is not None and service.owner_address:
            return service.owner_address
        return self.ctx.settings.services.agent_host

    def public(self, service: Service) -> ServicePublic:
        replicas = []
        host = self.agent_host(service)
        for r in service.replicas:
            view = self.supervisor.view(self.session, service, r)
            public = ReplicaPublic.model_validate(r)
            public.installed = view.installed
            if r.grpc_port and r.state == "running":
                public.grpc_address = f"{host}:{r.grpc_port}"
            if r.http_port and r.state == "running":
                public.http_address = f"{host}:{r.http_port}"
            replicas.append(public)
        return ServicePublic(
            name=service.name,
            type=service.type,
            state=service.state,
            reason=service.reason,
            models=[ServiceModel(**m) for m in service.spec["models"]],
            generation=service.generation,
            replicas=replicas,
            grpc_addresses=[r.grpc_address for r in replicas if r.grpc_address],
            input=BatchInput(**service.spec["input"]) if "input" in service.spec else None,
            device=service.spec.get("device"),
            batch=BatchProgress(**_progress(service.spec)) if service.type == "batch" else None,
            evaluation=(
                Evaluation(**service.spec["evaluation"]) if "evaluation" in service.spec else None
            ),
            detection_evaluation=(
                DetectionEvaluation(**service.spec["detection_evaluation"])
                if "detection_evaluation" in service.spec
                else None
            ),
            targets=EdgeTargets(**service.spec["targets"]) if "targets" in service.spec else None,
            capture=CaptureSpec(**service.spec["capture"]) if service.spec.get("capture") else None,
            rollout=(
                RolloutService(self.session, self.ctx).public(rollout)
                if (rollout := latest_rollout(self.session, service.name)) is not None
                else None
            ),
            owner=service.owner,
            created_at=service.created_at,
            updated_at=service.updated_at,
        )

    def results(self, name: str) -> list[ResultRow]:
        """A batch service's result rows (empty until its job has ended)."""
        service = self.get(name)
        if service.type != "batch":
            raise InvalidRequest(f"service {name} is an online service; it has no results")
        return batch.result_rows(self.supervisor.service_dir(name))

    def result_page(self, name: str, offset: int, limit: int) -> ResultPage:
        rows = self.results(name)
        return ResultPage(total=len(rows), offset=offset, items=rows[offset : offset + limit])

    def versions(self, name: str, baseline: str | None = None) -> ServiceVersions:
        """Per model version figures from the replicas' newest ``metrics`` telemetry."""
        service = self.get(name)
        telemetry = TelemetryService(self.session, self.ctx)
        records = [
            MetricsRecord(r.device_id, r.seq, r.recorded_at, _json_object(r.payload))
            for replica in service.replicas
            for r in telemetry.latest(replica.device_id, "metrics", METRICS_RECORDS)
        ]
        serving: dict[str, str] = {}
        weights: dict[tuple[str, str], int | None] = {}
        for m in service.spec["models"]:
            serving.setdefault(m["model"], m["version"])  # the active (first listed) version
            weights[(m["model"], m["version"])] = m.get("weight")
        return ServiceVersions(
            service=name,
            telemetry_interval_s=self.ctx.settings.services.telemetry_interval_s,
            items=version_figures(records, serving, baseline, weights),
        )

    # --- changes -----------------------------------------------------------------------------

    def create(self, spec: ServiceCreate) -> Service:
        if self.session.get(Service, spec.name) is not None:
            raise Conflict(f"service {spec.name} already exists")
        if spec.type == "edge":
            return self._create_edge(spec)
        if spec.device is not None:
            self._check_device(spec.device, spec.models[0])
        else:
            self._check_models(spec.models)
        service = Service(
            name=spec.name,
            type=spec.type,
            spec={"models": [m.model_dump() for m in spec.models], "replicas": spec.replicas},
        )
        if self.ctx.settings.replicas.id is not None and spec.device is None:
            # This replica writes the agents' configs, so it runs them (services/ownership.py).
            service.owner = self.ctx.settings.replicas.id
            service.owner_address = self.ctx.settings.services.agent_host
        if spec.input is not None:
            folder = self.supervisor.service_dir(spec.name)
            shutil.rmtree(folder, ignore_errors=True)  # a deleted namesake's leftovers
            try:
                info = batch.prepare_inputs(
                    self.session,
                    self.ctx,
                    spec.input,
                    folder,
                    self.supervisor.replica_dir(spec.name, 0),
                )
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            service.spec = {
                **service.spec,
                "input": spec.input.stored(),
                "input_info": info,
                "batch": {"total": info["count"]},
            }
            if spec.detection is not None:
                if not info.get("detection_labels"):
                    shutil.rmtree(folder, ignore_errors=True)
                    raise InvalidRequest(
                        "detection: the input is not an object detection dataset version"
                    )
                service.spec = {**service.spec, "detection": spec.detection.model_dump()}
            if spec.device is not None:
                # No replica: the job and its input travel to the device (device_batch.py).
                chunk_size = self.ctx.settings.mqtt.chunk_size
                service.spec = {
                    **service.spec,
                    "replicas": 0,
                    "device": spec.device,
                    "device_job": device_batch.new_job(folder, chunk_size),
                }
        devices = DeviceService(self.session, self.ctx)
        for index in range(0 if spec.device else spec.replicas):
            device_id = replica_device_id(spec.name, index)
            reg = devices.register(device_id, {"service": spec.name}, device_id)
            bundle = devices.bundle(reg).model_dump()
            self.supervisor.write_config(spec.name, index, bundle, _model_settings(spec.models))
            service.replicas.append(ServiceReplica(index=index, device_id=device_id))
        self.session.add(service)
        self.session.commit()
        if spec.input is not None and spec.input.dataset_id and spec.input.dataset_version:
            # The version's files are the batch's inputs and its results' sources: it must
            # outlive the service (deleting it answers 409 until the service is deleted).
            VersionService(self.session, self.ctx).add_use(
                spec.input.dataset_id, spec.input.dataset_version, BATCH_USE, spec.name
            )
        if spec.device is not None and self.device_batches is not None:
            self.device_batches.publish(spec.device)
        logger.info("service %s: %d replica(s) of %s", spec.name, spec.replicas, _names(spec))
        self.supervisor.wake()
        return service

    def _create_edge(self, spec: ServiceCreate) -> Service:
        assert spec.targets is not None
        rollouts = RolloutService(self.session, self.ctx)
        rollouts.package_of(spec.models[0].model, spec.models[0].version)  # refuse unknown
        if not rollouts.targets(spec.targets) and spec.targets.device_ids is not None:
            raise InvalidRequest("no target device")
        service = Service(
            name=spec.name,
            type="edge",
            spec={
                "models": [{"model": m.model, "version": m.version} for m in spec.models],
                "targets": spec.targets.model_dump(exclude_none=True),
                "strategy": (spec.strategy.model_dump() if spec.strategy else None),
                "gates": (spec.gates.model_dump() if spec.gates else None),
                "guard": (spec.guard.model_dump() if spec.guard else None),
                "warmup": (spec.warmup.model_dump() if spec.warmup else None),
                "capture": (spec.capture.model_dump() if spec.capture else None),
            },
        )
        self.session.add(service)
        self.session.flush()
        rollouts.start(service)
        self.session.commit()
        return service

    def update(self, name: str, change: ServiceUpdate) -> Service:
        """New model versions or weights, rolled out one replica at a time by the supervisor (a
        new staged rollout for an edge service)."""
        service = self.get(name)
        if service.type == "batch":
            raise InvalidRequest("a batch service runs one model version; create another one")
        if service.type == "edge":
            return self._update_edge(service, change)
        if change.capture is not None:
            raise InvalidRequest("capture is for edge services (their devices capture)")
        assert change.models is not None  # the schema asks for models or capture
        self._check_models(change.models)
        service.spec = {**service.spec, "models": [m.model_dump() for m in change.models]}
        service.generation += 1
        service.state, service.reason = "deploying", "rolling update"
        service.updated_at = utcnow()
        self.session.commit()
        self.supervisor.wake()
        return service

    def edge_version(self, service: Service) -> str:
        """The version an edge service's devices run: the one it names, or after a rollout that
        failed or was rolled back, the stable version they went back to."""
        version = str(service.spec["models"][0]["version"])
        latest = latest_rollout(self.session, service.name)
        stable = service.spec.get("stable")
        if latest is not None and latest.state in ("failed", "rolled_back") and stable:
            return str(stable["version"])
        return version

    def _update_edge(self, service: Service, change: ServiceUpdate) -> Service:
        """A new version starts a staged rollout; a new capture block goes to the devices with
        the versions they run (and to the rest of a running rollout)."""
        rollouts = RolloutService(self.session, self.ctx)
        if change.models is not None:
            if len(change.models) != 1:
                raise InvalidRequest("an edge service rolls out one model version")
            m = change.models[0]
            rollouts.package_of(m.model, m.version)
        touched: list[str] = []
        if change.capture is not None:
            touched = rollouts.change_capture(service, change.capture.model_dump())
        if change.models is not None:
            m = change.models[0]
            service.spec = {**service.spec, "models": [{"model": m.model, "version": m.version}]}
            service.generation += 1
            rollouts.start(service)
        service.updated_at = utcnow()
        self.session.commit()
        if touched:
            DeploymentService(self.session, self.ctx).publish(touched)
        return service

    def delete(self, name: str) -> None:
        """Stop the replicas, remove their devices and files, forget the service."""
        service = self.get(name)
        replicas = [(r.index, r.device_id) for r in service.replicas]
        self.supervisor.stop_service(name, [i for i, _ in replicas])
        devices = DeviceService(self.session, self.ctx)
        for _, device_id in replicas:
            if devices.find(device_id) is not None:
                devices.delete(device_id)
        source = self.get(name).spec.get("input") or {}
        if source.get("dataset_id") and source.get("dataset_version"):
            versions = VersionService(self.session, self.ctx)
            if versions.find(source["dataset_id"], source["dataset_version"]) is not None:
                versions.remove_use(
                    source["dataset_id"], source["dataset_version"], BATCH_USE, name
                )
        device = self.get(name).spec.get("device")
        self.session.delete(self.get(name))
        self.session.commit()
        if device and self.device_batches is not None:
            self.device_batches.forget(name)
            self.device_batches.publish(device)  # off the list: the device cancels the job
        shutil.rmtree(self.supervisor.service_dir(name), ignore_errors=True)
        logger.info("deleted service %s", name)

    # --- uploaded batch inputs ----------------------------------------------------------------

    def upload_input(self, stream: BinaryIO, filename: str) -> InputUpload:
        return InputStore(self.ctx).upload(stream, filename)

    def list_inputs(self) -> list[InputUpload]:
        return InputStore(self.ctx).list()

    def get_input(self, upload_id: str) -> InputUpload:
        return InputStore(self.ctx).get(upload_id)

    def delete_input(self, upload_id: str) -> None:
        """Remove an uploaded input no batch service uses (their rows name its files)."""
        store = InputStore(self.ctx)
        store.get(upload_id)
        users = [
            s.name for s in self.list() if (s.spec.get("input") or {}).get("upload") == upload_id
        ]
        if users:
            raise Conflict(
                f"batch input {upload_id} is used by service(s) {', '.join(users)}; "
                "delete them first"
            )
        store.delete(upload_id)

    def _check_device(self, device_id: str, model: ServiceModel) -> None:
        """A device batch runs a model version the device already runs (deployments put it
        there); the job never installs anything."""
        device = DeviceService(self.session, self.ctx).find(device_id)
        if device is None:
            raise InvalidRequest(f"device {device_id} is not registered")
        if self.device_batches is None:
            raise InvalidRequest("batch jobs on devices need the fleet channel")
        running = {
            (m.get("name"), m.get("version")) for m in (device.reported or {}).get("models", [])
        }
        if (model.model, model.version) not in running:
            raise InvalidRequest(
                f"device {device_id} does not report running {model.model} version "
                f"{model.version}; deploy it there first"
            )

    def _check_models(self, models: list[ServiceModel]) -> None:
        pairs = [(m.model, m.version) for m in models]
        if len(set(pairs)) != len(pairs):
            raise InvalidRequest("a service names each model version once")
        registry = ModelService(self.session, self.ctx)
        for m in models:
            mv = registry.get(m.model, m.version)
            if mv.state != "ready" or not mv.package_digest:
                raise InvalidRequest(
                    f"model {m.model} version {m.version} is {mv.state}, not ready to serve"
                )


def _json_object(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _model_settings(models: list[ServiceModel]) -> dict[str, Any]:
    """Each model's batching settings, from its first (active) version."""
    out: dict[str, Any] = {}
    for m in models:
        out.setdefault(
            m.model,
            {"max_batch_size": m.max_batch_size, "max_queue_delay_ms": m.max_queue_delay_ms},
        )
    return out


def _progress(spec: dict[str, Any]) -> dict[str, Any]:
    job = spec.get("batch") or {}
    return {k: job[k] for k in ("job_id", "state", "total", "done", "failed") if k in job}


def _names(spec: ServiceCreate) -> str:
    return ", ".join(f"{m.model}:{m.version}" for m in spec.models)
