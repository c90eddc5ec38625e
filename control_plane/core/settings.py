"""The control plane's settings: one class in sections, read from ``CONTROL_PLANE_*`` variables.

Sections (``settings.database``, ``.storage``, ``.mqtt``, ``.datasets``, ``.training``,
``.registry``, ``.services``) keep each domain's knobs together; every model is strict and refuses
unknown keys, so a misspelt setting fails at start instead of being ignored. The environment
names stay flat (``CONTROL_PLANE_MQTT_URL``, ``CONTROL_PLANE_DATASET_MAX_FILE_BYTES``):
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
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
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
    """Blobs (packages by sha256) and package uploads."""

    blob_dir: Path | None = Field(
        None, description="Folder holding package blobs by sha256. Default: <data_dir>/blobs."
    )
    max_upload_bytes: int = Field(4 << 30, description="Largest package upload accepted, in bytes.")


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


# Flat setting name (environment variable without the prefix, lower case) -> (section, field).
FLAT_NAMES: dict[str, tuple[str, str]] = {
    "database_url": ("database", "url"),
    "blob_dir": ("storage", "blob_dir"),
    "max_upload_bytes": ("storage", "max_upload_bytes"),
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
    "training_code_max_archive_bytes": ("training", "code_max_archive_bytes"),
    "training_code_max_archive_members": ("training", "code_max_archive_members"),
    "model_max_archive_bytes": ("registry", "model_max_archive_bytes"),
    "model_max_archive_members": ("registry", "model_max_archive_members"),
    "services_dir": ("services", "dir"),
    "service_restart_backoff_max_s": ("services", "backoff_max_s"),
    "service_proxy_max_body_bytes": ("services", "proxy_max_body_bytes"),
    "service_proxy_timeout_s": ("services", "proxy_timeout_s"),
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
    port: int = Field(8000, description="Port `control-plane serve` listens on (0 = any free).")
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

    @property
    def resolved_database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'control-plane.db'}"

    @property
    def resolved_blob_dir(self) -> Path:
        return self.storage.blob_dir or self.data_dir / "blobs"

    @property
    def staging_dir(self) -> Path:
        return self.data_dir / "staging"

    @property
    def resolved_dataset_dir(self) -> Path:
        return self.datasets.dir or self.data_dir / "datasets"

    @property
    def resolved_training_dir(self) -> Path:
        return self.training.dir or self.data_dir / "training"

    @property
    def resolved_services_dir(self) -> Path:
        return self.services.dir or self.data_dir / "services"


SECTIONS: dict[str, type[Section]] = {
    "database": DatabaseSettings,
    "storage": StorageSettings,
    "mqtt": MqttSettings,
    "datasets": DatasetSettings,
    "training": TrainingSettings,
    "registry": RegistrySettings,
    "services": ServiceSettings,
}
