"""FastAPI application assembly and lifespan.

Startup order: database migrations, the registry's signing key (trusted, so every device bundle
carries it), the embedded broker (only when no broker URL is configured),
the fleet service, the training runtime, the registry's conversion executor. Shutdown reverses it.
``create_app`` takes a ``Settings`` so tests and the CLI build independent apps.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI

from control_plane import health
from control_plane.core import http_errors
from control_plane.core.context import AppContext
from control_plane.core.database import upgrade
from control_plane.core.deps import require_token
from control_plane.core.settings import Settings
from control_plane.datasets import routes as datasets
from control_plane.datasets.versions import routes as dataset_versions
from control_plane.deployments import routes as deployments
from control_plane.devices import routes as devices
from control_plane.fleet.embedded_broker import EmbeddedBroker, Identities
from control_plane.fleet.service import FleetService
from control_plane.registry import routes as models
from control_plane.registry.conversions import Conversions
from control_plane.registry.keys import load_signing_key
from control_plane.registry.packages import routes as packages
from control_plane.services import routes as services
from control_plane.services.supervisor import Supervisor
from control_plane.training import routes as training_jobs
from control_plane.training import visualization_routes as visualizations
from control_plane.training.runtime import TrainingRuntime

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"

DESCRIPTION = """\
The cloud side of an edge-first ML runtime, from data to devices:

- **datasets**: datasets, labelling and annotations, imports and exports, published versions;
- **training**: training jobs (built-in algorithms or uploaded scripts), logs and metrics, and
  TensorBoard servers over them;
- **model registry**: model versions with lineage, converted into signed, parity-checked packages;
- **fleet**: signed packages, devices and their telemetry, deployments to devices over MQTT.

Every route under `/api/v1` needs `Authorization: Bearer <api token>`; `/health` does not.
"""

# One entry per router tag, in the order the interactive docs list them.
OPENAPI_TAGS: list[dict[str, str]] = [
    {"name": "health", "description": "Liveness and broker connection (no token)."},
    {
        "name": "datasets",
        "description": "Datasets, label sets, samples and annotations (labelling); imports from "
        "uploaded files, zip archives and server folders.",
    },
    {
        "name": "dataset versions",
        "description": "Immutable published versions of a dataset (the input of training jobs); "
        "manifests and exports.",
    },
    {
        "name": "training",
        "description": "Built-in algorithms, uploaded training code, training jobs (create, "
        "re-run, cancel, delete), live logs and scalar metrics.",
    },
    {
        "name": "visualizations",
        "description": "TensorBoard servers over training jobs' event files.",
    },
    {
        "name": "models",
        "description": "The model registry: model versions from training jobs or uploads, "
        "converted into signed packages; lineage from a package back to its dataset version.",
    },
    {
        "name": "packages",
        "description": "Signed model packages: verified uploads, stored by sha256.",
    },
    {
        "name": "devices",
        "description": "Device registry (broker credentials, config bundle, status, reported "
        "state) and device telemetry.",
    },
    {
        "name": "deployments",
        "description": "A package as the desired state of a device or a label-selected group, with "
        "per-device progress.",
    },
    {
        "name": "services",
        "description": "Online services: registered models served by supervised agent replicas "
        "on the control plane's machine, with rolling updates.",
    },
]


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = AppContext.from_settings(settings)
        upgrade(ctx.engine)
        # Before any device can register: its bundle must carry the registry's key.
        load_signing_key(ctx)
        broker: EmbeddedBroker | None = None
        if not settings.mqtt.url:
            broker = EmbeddedBroker(
                Identities.from_context(ctx), port=settings.mqtt.embedded_broker_port
            )
            broker.start()
            ctx.broker_url = broker.url
        fleet = FleetService(ctx, ctx.broker_url)
        ctx.publisher = fleet
        fleet.devices_changed()
        fleet.start()
        app.state.ctx, app.state.fleet, app.state.broker = ctx, fleet, broker
        # Training: marks jobs orphaned by an earlier run failed, then runs the queue.
        app.state.training = TrainingRuntime.start(ctx)
        # Registry: marks conversions interrupted by an earlier run failed.
        app.state.conversions = Conversions.start(ctx)
        # Services: starts (or adopts) the replicas of every online service.
        app.state.services = Supervisor.start(ctx)
        try:
            yield
        finally:
            app.state.services.stop()
            app.state.conversions.stop()
            app.state.training.stop()
            fleet.stop()
            if broker is not None:
                broker.stop()
            ctx.close()

    app = FastAPI(
        title="Edge inference control plane",
        version="0.1.0",
        summary="Datasets, training, model registry and device fleet of an edge inference runtime.",
        description=DESCRIPTION,
        openapi_tags=OPENAPI_TAGS,
        lifespan=lifespan,
    )
    http_errors.install(app)
    app.include_router(health.router)
    api = APIRouter(prefix=API_PREFIX, dependencies=[Depends(require_token)])
    api.include_router(devices.router)
    api.include_router(packages.router)
    api.include_router(deployments.router)
    api.include_router(datasets.router)
    api.include_router(dataset_versions.router)
    api.include_router(training_jobs.router)
    api.include_router(visualizations.router)
    api.include_router(models.router)
    api.include_router(services.router)
    app.include_router(api)
    return app
