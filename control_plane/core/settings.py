"""The control plane's settings: one class, read from ``CONTROL_PLANE_*`` environment variables.

Every field is described here and in docs/control-plane.md. Secrets that ship with a default value
(the API token and the broker password) are refused unless ``dev_mode`` is on, so a production
deployment cannot start with a secret that is printed in the documentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET = "changethis"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONTROL_PLANE_", env_file=None, extra="ignore")

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
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://u:p@host/db. "
        "Default: SQLite file <data_dir>/control-plane.db.",
    )
    blob_dir: Path | None = Field(
        None, description="Folder holding package blobs by sha256. Default: <data_dir>/blobs."
    )
    trusted_keys: list[Path] = Field(
        default_factory=list,
        description="Ed25519 public key PEM files (or folders of *.pub/*.pem) whose package "
        "signatures uploads must carry. Also handed to devices in their config bundle.",
    )
    max_upload_bytes: int = Field(4 << 30, description="Largest package upload accepted, in bytes.")
    chunk_size: int = Field(
        256 * 1024,
        ge=1024,
        le=16 << 20,
        description="Bytes per package chunk served over MQTT (fixed per package at upload).",
    )
    mqtt_url: str | None = Field(
        None,
        description="Broker the control plane connects to, mqtt://host:port or mqtts://host:port. "
        "Unset: run an embedded broker on loopback (development, one machine).",
    )
    mqtt_username: str = Field(
        "control-plane", description="The control plane's own broker identity (user name)."
    )
    mqtt_password: SecretStr = Field(
        SecretStr(DEFAULT_SECRET), description="Password of the control plane's broker identity."
    )
    mqtt_ca_file: Path | None = Field(
        None, description="CA bundle to verify the broker's TLS certificate (mqtts://)."
    )
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
    chunk_queue_size: int = Field(
        256,
        ge=1,
        description="Chunk requests waiting to be served; requests beyond it are dropped "
        "(the device asks again after its timeout).",
    )
    dataset_dir: Path | None = Field(
        None,
        description="Folder of dataset sample files (by sha256), thumbnails and published "
        "versions. Default: <data_dir>/datasets.",
    )
    dataset_import_roots: list[Path] = Field(
        default_factory=list,
        description="Server-side folders that dataset imports may read from (the folder named "
        "in a request must lie inside one). Empty: server-side import is disabled.",
    )
    dataset_max_upload_bytes: int = Field(
        2 << 30, ge=1, description="Largest dataset upload request (files or archive), in bytes."
    )
    dataset_max_file_bytes: int = Field(
        64 << 20, ge=1, description="Largest single sample file (uploaded, extracted, imported)."
    )
    dataset_max_archive_members: int = Field(
        200_000, ge=1, description="Most members a dataset zip archive may hold."
    )
    dataset_max_archive_bytes: int = Field(
        8 << 30,
        ge=1,
        description="Largest total uncompressed size of a dataset zip (declared sizes are checked "
        "before reading and actual sizes while reading, so a zip bomb stops early).",
    )
    dataset_max_image_pixels: int = Field(
        64_000_000, ge=1, description="Largest image (width x height) accepted as a sample."
    )
    dataset_thumbnail_size: int = Field(
        128, ge=16, le=1024, description="Longest side of sample thumbnails, in pixels."
    )

    training_dir: Path | None = Field(
        None,
        description="Folder of training job work folders, uploaded training code and model "
        "conversions. Default: <data_dir>/training.",
    )
    training_max_concurrent: int = Field(
        1, ge=1, description="Training jobs running at once; more wait in the queued state."
    )
    training_timeout_s: float = Field(
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
    signing_key: Path | None = Field(
        None,
        description="Ed25519 private key (PEM) the model registry signs packages with; its public "
        "key is trusted by the control plane. Default: <data_dir>/keys/signing.key, generated "
        "on first use in dev mode only.",
    )

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Self:
        if self.dev_mode:
            return self
        for name in ("api_token", "mqtt_password"):
            if getattr(self, name).get_secret_value() == DEFAULT_SECRET:
                raise ValueError(
                    f"{name} is the default secret {DEFAULT_SECRET!r}; set "
                    f"CONTROL_PLANE_{name.upper()} (or CONTROL_PLANE_DEV_MODE=true for development)"
                )
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'control-plane.db'}"

    @property
    def resolved_blob_dir(self) -> Path:
        return self.blob_dir or self.data_dir / "blobs"

    @property
    def staging_dir(self) -> Path:
        return self.data_dir / "staging"

    @property
    def resolved_dataset_dir(self) -> Path:
        return self.dataset_dir or self.data_dir / "datasets"

    @property
    def resolved_training_dir(self) -> Path:
        return self.training_dir or self.data_dir / "training"
