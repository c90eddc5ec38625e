"""The control plane's settings: one class in sections, read from ``CONTROL_PLANE_*`` variables.

Sections (``settings.database``, ``.storage``, ``.mqtt``, ``.datasets``, ``.training``,
``.registry``, ``.services``, ``.auth``) keep each domain's knobs together; every model is
strict and refuses unknown keys, so a misspelt setting fails at start instead of being ignored. The
environment names stay flat (``CONTROL_PLANE_MQTT_URL``, ``CONTROL_PLANE_DATASET_MAX_FILE_BYTES``):
``FLAT_NAMES`` says which section field each one sets, and the same flat names work as keyword
arguments (``Settings(mqtt_url=...)``), which is what the CLI, scripts and tests use. A
``CONTROL_PLANE_*`` variable that names no setting is refused too, with the closest known name.

Every field is described here and in docs/control-plane.md. Secrets that ship with a default value
(the API token and the broker password) are refused unless ``dev_mode`` is on, so a production
deployment cannot start with a secret that is printed in the documentation.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_SECRET = "changethis"
ENV_PREFIX = "CONTROL_PLANE_"


class Section(BaseModel):
    """A group of settings; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


class DatabaseSettings(Section):
    """Where state lives: SQLite by default, PostgreSQL by URL."""

    url: str | None = Field(
        None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://u:p@host/db. "
        "Default: SQLite file <data_dir>/control-plane.db.",
    )


class StorageSettings(Section):
    """Blobs (packages by sha256), package uploads, and the optional S3-compatible store."""

    blob_dir: Path | None = Field(
        None, description="Folder holding package blobs by sha256. Default: <data_dir>/blobs."
    )
    max_upload_bytes: int = Field(4 << 30, description="Largest package upload accepted, in bytes.")
    url: str | None = Field(
        None,
        description="s3://bucket/prefix: keep package blobs and dataset files and published "
        "versions in this S3-compatible store instead of local folders (the bucket must exist). "
        "Unset: local folders (blob_dir, dataset_dir).",
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="Endpoint of the S3-compatible service, e.g. http://minio:9000. "
        "Unset: AWS S3 of s3_region.",
    )
    s3_region: str = Field("us-east-1", description="Region name sent to the S3 service.")
    s3_access_key_id: str | None = Field(
        None, description="Access key id. Unset: boto3's usual sources (AWS_* variables, ...)."
    )
    s3_secret_access_key: SecretStr | None = Field(
        None, description="Secret access key that goes with s3_access_key_id."
    )
    s3_multipart_threshold_bytes: int = Field(
        64 << 20,
        ge=5 << 20,
        description="Objects at least this large are uploaded in parts (multipart upload).",
    )
    s3_part_bytes: int = Field(
        16 << 20, ge=5 << 20, description="Size of each part of a multipart upload (S3: >= 5 MiB)."
    )

    @model_validator(mode="after")
    def _s3_url(self) -> Self:
        if self.url is not None:
            from control_plane.core.s3 import S3Location

            S3Location.parse(self.url)  # a clear error at start for anything but s3://bucket/...
        return self

    def s3_options(self) -> Any:
        """The connection options of ``control_plane.core.s3`` (imported only when used)."""
        from control_plane.core.s3 import S3Options

        secret = self.s3_secret_access_key
        return S3Options(
            endpoint_url=self.s3_endpoint_url,
            region=self.s3_region,
            access_key_id=self.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            multipart_threshold=self.s3_multipart_threshold_bytes,
            part_size=self.s3_part_bytes,
        )


class MqttSettings(Section):
    """The fleet channel: the broker, the control plane's identity, chunk serving."""

    url: str | None = Field(
        None,
        description="Broker the control plane connects to, mqtt://host:port or mqtts://host:port. "
        "Unset: run an embedded broker on loopback (development, one machine).",
    )
    username: str = Field(
        "control-plane", description="The control plane's own broker identity (user name)."
    )
    password: SecretStr = Field(
        SecretStr(DEFAULT_SECRET), description="Password of the control plane's broker identity."
    )
    ca_file: Path | None = Field(
        None, description="CA bundle to verify the broker's TLS certificate (mqtts://)."
    )
    client_cert: Path | None = Field(
        None,
        description="Client certificate (PEM) the control plane presents to a broker listener "
        "that authenticates by certificate; its CN must be `username`. Needs client_key and "
        "an mqtts:// URL.",
    )
    client_key: Path | None = Field(None, description="Private key (PEM) of client_cert.")
    device_broker_url: str | None = Field(
        None,
        description="Broker URL written into device config bundles, when devices reach the "
        "broker by another address than the control plane does. Default: mqtt_url.",
    )
    embedded_broker_port: int = Field(
        1883, description="Loopback port of the embedded broker (0 = any free port)."
    )
    topic_root: str = Field("edge", description="First topic level of the fleet channel.")
    broker_config_dir: Path | None = Field(
        None,
        description="When set, the Mosquitto password and ACL files in this folder are rewritten "
        "whenever a device is registered or deleted (see `control-plane broker-config`).",
    )
    broker_reload_command: str | None = Field(
        None,
        description="Command run after the broker files are rewritten so the broker rereads "
        "them, e.g. `systemctl reload mosquitto` or `kill -HUP <pid>`.",
    )
    package_topics: bool = Field(
        True,
        description="Publish a package's chunks once on its shared topic "
        "(<topic_root>/_packages/<digest>) for all the devices pulling it, when the control "
        "plane sets who may read it: with the embedded broker, with broker_config_dir and "
        "broker_reload_command (the generated Mosquitto ACL), or with hook_token (EMQX asks "
        "the control plane's authorization hook). Otherwise, or when false, each "
        "device gets its chunks on its own topic.",
    )
    chunk_size: int = Field(
        256 * 1024,
        ge=1024,
        le=16 << 20,
        description="Bytes per package chunk served over MQTT (fixed per package at upload).",
    )
    chunk_queue_size: int = Field(
        256,
        ge=1,
        description="Chunk requests waiting to be served, all devices together; beyond it the "
        "oldest request of the device with the most waiting is dropped (it asks again).",
    )
    chunk_queue_per_device: int = Field(
        64,
        ge=1,
        description="Chunk requests one device may have waiting (at least the agents' "
        "chunk_window); its further requests are dropped and counted, so a flooding device "
        "slows only itself.",
    )
    hook_token: SecretStr | None = Field(
        None,
        description="Bearer token EMQX sends to the control plane's broker hooks "
        "(/broker/emqx/authn and /broker/emqx/authz). Unset: the hooks answer 404. Only for an "
        "EMQX broker; see docs/deployment.md.",
    )

    @model_validator(mode="after")
    def _client_cert_with_key(self) -> Self:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("mqtt client_cert and client_key go together")
        if self.client_cert is not None and not (self.url or "").startswith(("mqtts:", "ssl:")):
            raise ValueError("a client certificate is presented over TLS only: use mqtts://")
        return self


class DatasetSettings(Section):
    """Dataset files, imports and their limits."""

    dir: Path | None = Field(
        None,
        description="Folder of dataset sample files (by sha256), thumbnails and published "
        "versions. Default: <data_dir>/datasets.",
    )
    import_roots: list[Path] = Field(
        default_factory=list,
        description="Server-side folders that dataset imports may read from (the folder named "
        "in a request must lie inside one). Empty: server-side import is disabled.",
    )
    max_upload_bytes: int = Field(
        2 << 30, ge=1, description="Largest dataset upload request (files or archive), in bytes."
    )
    max_file_bytes: int = Field(
        64 << 20, ge=1, description="Largest single sample file (uploaded, extracted, imported)."
    )
    max_archive_members: int = Field(
        200_000, ge=1, description="Most members a dataset zip archive may hold."
    )
    max_archive_bytes: int = Field(
        8 << 30,
        ge=1,
        description="Largest total uncompressed size of a dataset zip (declared sizes are checked "
        "before reading and actual sizes while reading, so a zip bomb stops early).",
    )
    max_image_pixels: int = Field(
        64_000_000, ge=1, description="Largest image (width x height) accepted as a sample."
    )
    thumbnail_size: int = Field(
        128, ge=16, le=1024, description="Longest side of sample thumbnails, in pixels."
    )


class TrainingSettings(Section):
    """Training jobs, uploaded training code, TensorBoard."""

    dir: Path | None = Field(
        None,
        description="Folder of training job work folders, uploaded training code and model "
        "conversions. Default: <data_dir>/training.",
    )
    max_concurrent: int = Field(
        1, ge=1, description="Training jobs running at once; more wait in the queued state."
    )
    timeout_s: float = Field(
        6 * 3600.0,
        gt=0,
        description="Default wall-clock limit of a training job (a job may ask for less or more).",
    )
    mxnet_python: Path | None = Field(
        None,
        description="Python of the MXNet environment that MXNet training jobs and conversions "
        "run on. Default: <repo>/.venv-mxnet/bin/python (made by scripts/setup-mxnet).",
    )
    tensorboard_idle_s: float = Field(
        1800.0,
        gt=0,
        description="A visualization job (TensorBoard server) with no API access and no open "
        "connection for this long is stopped.",
    )
    code_max_archive_bytes: int = Field(
        1 << 30,
        ge=1,
        description="Largest total uncompressed size of an uploaded training-code zip (also its "
        "per-file limit: members are streamed to disk, so only the total matters).",
    )
    code_max_archive_members: int = Field(
        10_000, ge=1, description="Most members an uploaded training-code zip may hold."
    )
    executor: Literal["local", "ray"] = Field(
        "local",
        description="Where jobs run: 'local' worker processes of the control plane, or 'ray' "
        "actors on a Ray cluster (needs the ray extra and a filesystem the Ray nodes share "
        "with the control plane, see docs/control-plane.md 'Training on Ray').",
    )
    ray_address: str | None = Field(
        None,
        description="Ray cluster address for executor 'ray', e.g. 'ray-head:6379'. Unset: a "
        "Ray instance started by the control plane on this machine (ray.init()).",
    )
    ray_namespace: str = Field(
        "edge-training",
        min_length=1,
        description="Ray namespace of the job actors; a restarted control plane finds its "
        "running jobs there by name.",
    )
    ray_num_cpus: float = Field(
        1.0, ge=0, description="CPUs a job asks Ray for (its actor's resource request)."
    )
    ray_num_gpus: float = Field(0.0, ge=0, description="GPUs a job asks Ray for.")
    ray_memory_bytes: int | None = Field(
        None, ge=1, description="Memory a job asks Ray for, bytes (unset: no memory request)."
    )


class RegistrySettings(Section):
    """Signing and trusting packages; model directory imports."""

    signing_key: Path | None = Field(
        None,
        description="Ed25519 private key (PEM) the model registry signs packages with; its public "
        "key is trusted by the control plane and in every device bundle. Loaded at start; it "
        "must exist when set. Default: <data_dir>/keys/signing.key, generated at start in dev "
        "mode only (kept across restarts).",
    )
    trusted_keys: list[Path] = Field(
        default_factory=list,
        description="Ed25519 public key PEM files (or folders of *.pub/*.pem) whose package "
        "signatures uploads must carry. Also handed to devices in their config bundle.",
    )
    key_grace_period_s: float = Field(
        7 * 24 * 3600.0,
        ge=0,
        description="After `POST /registry/keys/rotate`, how long packages signed by the retired "
        "key are still accepted (by the registry when deploying, and by devices); after it they "
        "are refused. Seconds.",
    )
    model_max_archive_bytes: int = Field(
        8 << 30,
        ge=1,
        description="Largest total uncompressed size of an imported model directory zip (also its "
        "per-file limit: weights are often one file holding nearly all of it).",
    )
    model_max_archive_members: int = Field(
        10_000, ge=1, description="Most members an imported model directory zip may hold."
    )


class ServiceSettings(Section):
    """Online services: their replicas' folders and how crashed replicas are restarted."""

    dir: Path | None = Field(
        None,
        description="Folder of service replicas (agent config, data, log). "
        "Default: <data_dir>/services.",
    )
    backoff_max_s: float = Field(
        30.0,
        gt=0,
        description="Longest wait before restarting a crashed replica (the wait doubles per "
        "restart, from 2 s).",
    )
    proxy_max_body_bytes: int = Field(
        64 << 20,
        ge=1024,
        description="Largest request body the REST proxy (/services/{name}/v2/...) forwards.",
    )
    proxy_timeout_s: float = Field(
        60.0, gt=0, description="How long the REST proxy waits for a replica's answer."
    )
    rollout_tick_s: float = Field(
        0.5,
        gt=0,
        le=60,
        description="How often the edge rollout engine looks at running rollouts (stage "
        "progress, bake time, health gates, devices joining or leaving a label selector).",
    )
    telemetry_interval_s: float = Field(
        10.0,
        gt=0,
        description="How often each replica sends its per-version request figures (the window "
        "of the p50 / p99 that GET /services/{name}/versions shows).",
    )
    agent_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the online services' agents listen on and are reached at by the "
        "REST proxy. With control-plane replicas on several machines, this machine's address "
        "that the other replicas can reach (the agents then accept requests from that network).",
    )


class NotebookSettings(Section):
    """Managed notebooks: JupyterLab servers started by the control plane."""

    dir: Path | None = Field(
        None,
        description="Folder of notebook work folders (one per notebook, kept across stop/start). "
        "Default: <data_dir>/notebooks.",
    )
    idle_s: float = Field(
        3600.0,
        gt=0,
        description="Default idle time before a notebook server is stopped: no request through "
        "the proxy, no API call about it and no busy kernel for this long.",
    )
    start_timeout_s: float = Field(
        120.0, gt=0, description="How long a JupyterLab server may take to answer before it fails."
    )


class AuthSettings(Section):
    """Users: the bootstrap admin and the dashboard's sessions."""

    admin_username: str = Field(
        "admin",
        min_length=1,
        max_length=64,
        description="The bootstrap admin, created at first start; the settings' api_token is "
        "also this user's token.",
    )
    admin_password: SecretStr | None = Field(
        None,
        description="The bootstrap admin's password at creation. Unset: a random one-time "
        "password is written to <data_dir>/admin-password (0600) and must be changed at the "
        "first sign-in.",
    )
    session_ttl_s: int = Field(
        12 * 3600, ge=60, description="Lifetime of a dashboard session cookie, in seconds."
    )
    cookie_secure: bool = Field(
        False,
        description="Mark the session cookie Secure (only sent over HTTPS): set it when the "
        "control plane is served behind TLS.",
    )


class ReplicaSettings(Section):
    """Several control-plane processes on one database, one object store and one broker."""

    id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]{1,32}$",
        description="This process's name among several replicas (e.g. `a`, `b`). Set: it "
        "connects to the broker as `<mqtt_username>-<id>`, shares the fleet's chunk requests "
        "and telemetry with the other replicas (MQTT shared subscriptions), heartbeats in the "
        "database, and takes over what a replica whose heartbeat stopped left behind. Needs "
        "an external broker (mqtt_url). Unset: a single control plane.",
    )
    peers: list[str] = Field(
        default_factory=list,
        description="Every replica's id, so `control-plane broker-config` and the registry's "
        "broker files give each one its broker identity.",
    )
    heartbeat_s: float = Field(
        2.0, gt=0, description="How often a replica records that it is alive."
    )
    lease_s: float = Field(
        15.0,
        gt=0,
        description="A replica silent for this long is taken as dead: its running training jobs "
        "are marked failed by a survivor.",
    )

    @model_validator(mode="after")
    def _lease_longer_than_heartbeat(self) -> Self:
        if self.lease_s <= 2 * self.heartbeat_s:
            raise ValueError("replica lease_s must exceed twice heartbeat_s")
        return self


# Flat setting name (environment variable without the prefix, lower case) -> (section, field).
FLAT_NAMES: dict[str, tuple[str, str]] = {
    "database_url": ("database", "url"),
    "blob_dir": ("storage", "blob_dir"),
    "max_upload_bytes": ("storage", "max_upload_bytes"),
    "storage_url": ("storage", "url"),
    "s3_endpoint_url": ("storage", "s3_endpoint_url"),
    "s3_region": ("storage", "s3_region"),
    "s3_access_key_id": ("storage", "s3_access_key_id"),
    "s3_secret_access_key": ("storage", "s3_secret_access_key"),
    "s3_multipart_threshold_bytes": ("storage", "s3_multipart_threshold_bytes"),
    "s3_part_bytes": ("storage", "s3_part_bytes"),
    "mqtt_url": ("mqtt", "url"),
    "mqtt_username": ("mqtt", "username"),
    "mqtt_password": ("mqtt", "password"),
    "mqtt_ca_file": ("mqtt", "ca_file"),
    "mqtt_client_cert": ("mqtt", "client_cert"),
    "mqtt_client_key": ("mqtt", "client_key"),
    "device_broker_url": ("mqtt", "device_broker_url"),
    "embedded_broker_port": ("mqtt", "embedded_broker_port"),
    "topic_root": ("mqtt", "topic_root"),
    "broker_config_dir": ("mqtt", "broker_config_dir"),
    "broker_reload_command": ("mqtt", "broker_reload_command"),
    "package_topics": ("mqtt", "package_topics"),
    "chunk_size": ("mqtt", "chunk_size"),
    "chunk_queue_size": ("mqtt", "chunk_queue_size"),
    "chunk_queue_per_device": ("mqtt", "chunk_queue_per_device"),
    "dataset_dir": ("datasets", "dir"),
    "dataset_import_roots": ("datasets", "import_roots"),
    "dataset_max_upload_bytes": ("datasets", "max_upload_bytes"),
    "dataset_max_file_bytes": ("datasets", "max_file_bytes"),
    "dataset_max_archive_members": ("datasets", "max_archive_members"),
    "dataset_max_archive_bytes": ("datasets", "max_archive_bytes"),
    "dataset_max_image_pixels": ("datasets", "max_image_pixels"),
    "dataset_thumbnail_size": ("datasets", "thumbnail_size"),
    "training_dir": ("training", "dir"),
    "training_max_concurrent": ("training", "max_concurrent"),
    "training_timeout_s": ("training", "timeout_s"),
    "mxnet_python": ("training", "mxnet_python"),
    "tensorboard_idle_s": ("training", "tensorboard_idle_s"),
    "signing_key": ("registry", "signing_key"),
    "trusted_keys": ("registry", "trusted_keys"),
    "key_grace_period_s": ("registry", "key_grace_period_s"),
    "training_code_max_archive_bytes": ("training", "code_max_archive_bytes"),
    "training_code_max_archive_members": ("training", "code_max_archive_members"),
    "training_executor": ("training", "executor"),
    "training_ray_address": ("training", "ray_address"),
    "training_ray_namespace": ("training", "ray_namespace"),
    "training_ray_num_cpus": ("training", "ray_num_cpus"),
    "training_ray_num_gpus": ("training", "ray_num_gpus"),
    "training_ray_memory_bytes": ("training", "ray_memory_bytes"),
    "model_max_archive_bytes": ("registry", "model_max_archive_bytes"),
    "model_max_archive_members": ("registry", "model_max_archive_members"),
    "admin_username": ("auth", "admin_username"),
    "admin_password": ("auth", "admin_password"),
    "session_ttl_s": ("auth", "session_ttl_s"),
    "cookie_secure": ("auth", "cookie_secure"),
    "replica_id": ("replicas", "id"),
    "replica_peers": ("replicas", "peers"),
    "replica_heartbeat_s": ("replicas", "heartbeat_s"),
    "replica_lease_s": ("replicas", "lease_s"),
    "services_dir": ("services", "dir"),
    "service_restart_backoff_max_s": ("services", "backoff_max_s"),
    "service_proxy_max_body_bytes": ("services", "proxy_max_body_bytes"),
    "service_proxy_timeout_s": ("services", "proxy_timeout_s"),
    "rollout_tick_s": ("services", "rollout_tick_s"),
    "service_telemetry_interval_s": ("services", "telemetry_interval_s"),
    "service_agent_host": ("services", "agent_host"),
    "broker_hook_token": ("mqtt", "hook_token"),
    "notebooks_dir": ("notebooks", "dir"),
    "notebook_idle_s": ("notebooks", "idle_s"),
    "notebook_start_timeout_s": ("notebooks", "start_timeout_s"),
}


class _FlatEnvironment(PydanticBaseSettingsSource):
    """Reads the flat ``CONTROL_PLANE_<NAME>`` variables of ``FLAT_NAMES``; lists as JSON."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        known = set(FLAT_NAMES) | set(Settings.model_fields)  # a section also whole, as JSON
        for var in os.environ:
            name = var[len(ENV_PREFIX) :].lower()
            if var.startswith(ENV_PREFIX) and name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f" (did you mean {ENV_PREFIX}{close[0].upper()}?)" if close else ""
                raise ValueError(f"unknown setting {var}{hint}")
        found: dict[str, Any] = {}
        for flat, (section, name) in FLAT_NAMES.items():
            raw = os.environ.get(ENV_PREFIX + flat.upper())
            if raw is None:
                continue
            annotation = str(SECTIONS[section].model_fields[name].annotation)
            found[flat] = json.loads(raw) if annotation.startswith("list") else raw
        return found


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=None, extra="forbid")

    dev_mode: bool = Field(
        False,
        description="Development mode: allows the default secrets. Never enable in production.",
    )
    api_token: SecretStr = Field(
        SecretStr(DEFAULT_SECRET),
        description="Bearer token every REST call except /health must present.",
    )
    host: str = Field("127.0.0.1", description="Address `control-plane serve` listens on.")
    port: int = Field(
        8080,
        description="Port `control-plane serve` listens on (0 = any free). Not 8000: that is the "
        "agent's OIP REST port (8000 HTTP, 8001 gRPC, 8002 metrics, as Triton), so an agent and "
        "the control plane run side by side on one machine with their defaults.",
    )
    data_dir: Path = Field(
        Path("var/control-plane"),
        description="Folder for the default SQLite database, blobs and staging files.",
    )

    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    datasets: DatasetSettings = Field(default_factory=DatasetSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    services: ServiceSettings = Field(default_factory=ServiceSettings)
    notebooks: NotebookSettings = Field(default_factory=NotebookSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    replicas: ReplicaSettings = Field(default_factory=ReplicaSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FlatEnvironment(settings_cls))

    @model_validator(mode="before")
    @classmethod
    def _fold_flat_names(cls, data: Any) -> Any:
        """Move flat keys (``mqtt_url``) into their sections (``mqtt.url``)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for flat, (section, name) in FLAT_NAMES.items():
            if flat in data:
                value = data.pop(flat)
                current = data.get(section)
                if isinstance(current, BaseModel):
                    current = current.model_dump()
                sec = dict(current or {})
                sec.setdefault(name, value)
                data[section] = sec
        return data

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        """Absolute at start: training jobs, conversions and notebooks run in folders of their
        own, so a relative default (``var/control-plane``) would point elsewhere for them."""
        return value.absolute()

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Self:
        if self.dev_mode:
            return self
        for label, secret in (("api_token", self.api_token), ("mqtt_password", self.mqtt.password)):
            if secret.get_secret_value() == DEFAULT_SECRET:
                raise ValueError(
                    f"{label} is the default secret {DEFAULT_SECRET!r}; set "
                    f"{ENV_PREFIX}{label.upper()} (or {ENV_PREFIX}DEV_MODE=true for development)"
                )
        return self

    @model_validator(mode="after")
    def _replicas_need_a_broker(self) -> Self:
        if self.replicas.id is not None and not self.mqtt.url:
            raise ValueError(
                "replica_id needs an external broker (mqtt_url): replicas share one broker"
            )
        return self

    @property
    def mqtt_identity(self) -> str:
        """The broker user name (and client id) of this process: one per replica."""
        base = self.mqtt.username
        return f"{base}-{self.replicas.id}" if self.replicas.id else base

    @property
    def mqtt_identities(self) -> list[str]:
        """Every control-plane identity the broker files must hold (all replicas)."""
        ids = {self.replicas.id, *self.replicas.peers} - {None}
        return [self.mqtt.username, *sorted(f"{self.mqtt.username}-{i}" for i in ids)]

    @property
    def resolved_database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'control-plane.db'}"

    @property
    def resolved_blob_dir(self) -> Path:
        return (self.storage.blob_dir or self.data_dir / "blobs").absolute()

    @property
    def staging_dir(self) -> Path:
        return self.data_dir / "staging"

    @property
    def resolved_dataset_dir(self) -> Path:
        return (self.datasets.dir or self.data_dir / "datasets").absolute()

    @property
    def resolved_training_dir(self) -> Path:
        return (self.training.dir or self.data_dir / "training").absolute()

    @property
    def resolved_services_dir(self) -> Path:
        return (self.services.dir or self.data_dir / "services").absolute()

    @property
    def resolved_notebooks_dir(self) -> Path:
        return (self.notebooks.dir or self.data_dir / "notebooks").absolute()


SECTIONS: dict[str, type[Section]] = {
    "database": DatabaseSettings,
    "storage": StorageSettings,
    "mqtt": MqttSettings,
    "datasets": DatasetSettings,
    "training": TrainingSettings,
    "registry": RegistrySettings,
    "services": ServiceSettings,
    "notebooks": NotebookSettings,
    "auth": AuthSettings,
    "replicas": ReplicaSettings,
}
