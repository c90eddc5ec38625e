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
from control_plane.captures import routes as captures
from control_plane.captures.deps import make_improver
from control_plane.captures.improve import ImprovementEngine
from control_plane.captures.receiver import CaptureReceiver
from control_plane.core import http_errors
from control_plane.core.context import AppContext
from control_plane.core.database import upgrade
from control_plane.core.deps import require_token
from control_plane.core.replicas import Heartbeat
from control_plane.core.settings import Settings
from control_plane.dashboard import routes as dashboard
from control_plane.datasets import routes as datasets
from control_plane.datasets.versions import routes as dataset_versions
from control_plane.deployments import routes as deployments
from control_plane.devices import routes as devices
from control_plane.fleet import broker_hook_routes as broker_hooks
from control_plane.fleet.batch_channel import BatchChannel
from control_plane.fleet.capture_channel import CaptureChannel
from control_plane.fleet.embedded_broker import EmbeddedBroker, Identities
from control_plane.fleet.package_topics import PackageGrants
from control_plane.fleet.service import FleetService
from control_plane.notebooks import proxy_routes as notebook_proxy
from control_plane.notebooks import routes as notebooks
from control_plane.notebooks.servers import JupyterServers
from control_plane.registry import routes as models
from control_plane.registry.conversions import Conversions
from control_plane.registry.keys.service import load_signing_key
from control_plane.registry.packages import routes as packages
from control_plane.services import routes as services
from control_plane.services.device_batch import DeviceBatches
from control_plane.services.rollouts.engine import RolloutEngine
from control_plane.services.supervisor import Supervisor
from control_plane.training import routes as training_jobs
from control_plane.training import tensorboard_proxy_routes as tensorboard_proxy
from control_plane.training import visualization_routes as visualizations
from control_plane.training.runtime import TrainingRuntime
from control_plane.users import routes as users
from control_plane.users.service import start_users

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"

DESCRIPTION = """\
The cloud side of an edge-first ML runtime, from data to devices:

- **datasets**: datasets, labelling and annotations, imports and exports, published versions;
- **training**: training jobs (built-in algorithms or uploaded scripts), logs and metrics, and
  TensorBoard servers over them;
- **model registry**: model versions with lineage, converted into signed, parity-checked packages;
- **fleet**: signed packages, devices and their telemetry, deployments to devices over MQTT.

Every route under `/api/v1` needs `Authorization: Bearer <api token>` (a user's token, or the
settings' token, which acts as the bootstrap admin); `/health` does not. Reads need the `viewer`
role, writes `engineer`, labelling writes `labeller`, `/users` `admin` (each route's
`x-required-role` says when it differs from its method's default). 401: no or bad credentials;
403: a role without the right.
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
    {
        "name": "notebooks",
        "description": "Managed JupyterLab servers over a dataset version (proxied at "
        "`/notebooks/{id}/`), shipped examples, and export of a notebook into training code.",
    },
    {
        "name": "broker hooks",
        "description": "EMQX's HTTP authentication and authorization hooks (outside /api/v1, "
        "with their own token, CONTROL_PLANE_BROKER_HOOK_TOKEN): the same rules as the "
        "Mosquitto ACL.",
    },
    {
        "name": "captures",
        "description": "The data flywheel: samples devices captured, their review queue "
        "(accept, correct, drop), device capture stores and purges, and the improvement of an "
        "edge service's model from reviewed captures (publish, retrain, register, canary).",
    },
    {
        "name": "users",
        "description": "User accounts with roles (admin only) and each user's own profile and "
        "API tokens (`/users/me`).",
    },
]


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = AppContext.from_settings(settings)
        upgrade(ctx.engine)
        # Users: every API token and session cookie is resolved against the users tables; the
        # settings' admin is created on first start.
        app.state.admin_password = start_users(ctx)
        # Before any device can register: its bundle must carry the registry's key.
        load_signing_key(ctx)
        broker: EmbeddedBroker | None = None
        grants = PackageGrants()  # who may read which shared package topic (fleet/service.py)
        if not settings.mqtt.url:
            broker = EmbeddedBroker(
                Identities.from_context(ctx, grants), port=settings.mqtt.embedded_broker_port
            )
            broker.start()
            ctx.broker_url = broker.url
        # Replicas: this one's heartbeat row, before anything that claims work in its name.
        heartbeat = None
        if settings.replicas.id is not None:
            heartbeat = Heartbeat(ctx.sessions, settings.replicas.id, settings.replicas.heartbeat_s)
            heartbeat.start()
        fleet = FleetService(ctx, ctx.broker_url, grants)
        ctx.publisher = fleet
        # Batch jobs on devices: their own leaves on the fleet connection.
        batch_channel = BatchChannel(fleet)
        fleet.extensions.append(batch_channel)
        app.state.device_batches = DeviceBatches(ctx)
        app.state.device_batches.channel = batch_channel
        batch_channel.handler = app.state.device_batches
        # Captured samples from devices (the data flywheel): their own leaves too.
        capture_channel = CaptureChannel(fleet)
        fleet.extensions.append(capture_channel)
        capture_channel.handler = CaptureReceiver(ctx)
        app.state.capture_channel = capture_channel
        fleet.devices_changed()
        fleet.start()
        app.state.ctx, app.state.fleet, app.state.broker = ctx, fleet, broker
        # Training: marks jobs orphaned by an earlier run failed, then runs the queue.
        app.state.training = TrainingRuntime.start(ctx)
        # Registry: marks conversions interrupted by an earlier run failed.
        app.state.conversions = Conversions.start(ctx)
        # Services: starts (or adopts) the replicas of every online service.
        app.state.services = Supervisor.start(ctx)
        # Edge services: resumes every running rollout from the database.
        app.state.rollouts = RolloutEngine.start(ctx)
        # Captures: resumes every running improvement (reviewed captures to a canary).
        app.state.improvements = ImprovementEngine.start(
            ctx,
            lambda session: make_improver(
                session,
                ctx,
                app.state.training.runner,
                app.state.conversions,
                app.state.services,
            ),
        )
        # Notebooks: adopts the JupyterLab servers an earlier run left running.
        app.state.notebooks = JupyterServers(ctx)
        try:
            yield
        finally:
            app.state.notebooks.close()  # the servers keep running, adopted on the next start
            app.state.improvements.stop()
            app.state.rollouts.stop()
            app.state.services.stop()
            app.state.conversions.stop()
            app.state.training.stop()
            fleet.stop()
            if broker is not None:
                broker.stop()
            if heartbeat is not None:
                heartbeat.stop()
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
    # EMQX's auth hooks: authenticated by their own token, not a user's (fleet/emqx.py).
    app.include_router(broker_hooks.router)
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
    api.include_router(notebooks.router)
    api.include_router(users.router)
    api.include_router(captures.router)
    app.include_router(api)
    # JupyterLab behind the control plane's auth (checked by the proxy itself: browsers
    # authenticate with a cookie there, not only with a bearer header).
    app.include_router(notebook_proxy.router)
    # TensorBoard (bound to loopback) behind the same auth, for reading.
    app.include_router(tensorboard_proxy.router)
    # The web dashboard (/ui), over the same services; its writes call the API above.
    dashboard.install(app)
    return app
