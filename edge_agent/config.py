"""Agent settings: one record (``model_packager.records``), read from a YAML file then overridden
by env.

Environment variables use the ``EDGE_AGENT_`` prefix and ``__`` for nesting, e.g.
``EDGE_AGENT_GRPC_PORT=9001`` or ``EDGE_AGENT_MODELS__mlp__MAX_BATCH_SIZE=16``; ``load_settings``
merges the sources (``config_sources.py`` says how, and why not pydantic-settings). Every field
is described here and in ``edge_agent/README.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from edge_agent.config_sources import EnvValueError, env_values, merged
from model_packager.records import FilePath, Record, Secret, field
from protos.fleet_topics import MAX_TELEMETRY_BATCH_RECORDS


@dataclass(kw_only=True)
class ModelSettings(Record):
    """Serving options for one model name (all versions)."""

    unknown_keys: ClassVar = "ignore"  # a model section's unknown keys were always dropped

    max_batch_size: int = field(
        default=0,
        ge=0,
        description="Largest batch the dynamic batcher forms; 0 or 1 disables batching. Only "
        "models whose inputs all have a dynamic first dimension are batched.",
    )
    max_queue_delay_ms: float = field(
        default=0.0,
        ge=0,
        description="How long a batch may wait for more requests once the runtime is free. 0 "
        "batches greedily: whatever queued while the previous batch ran goes together, so a lone "
        "request never waits.",
    )
    max_queue_size: int = field(
        default=1024, ge=1, description="Requests waiting per model; beyond it RESOURCE_EXHAUSTED."
    )


@dataclass(kw_only=True)
class FleetSettings(Record):
    """How the agent joins the fleet channel (MQTT). Absent: the agent runs stand-alone.

    The first five fields have the names of the ``mqtt`` object in the config bundle the control
    plane returns when a device is registered, so ``fleet: <bundle.mqtt>`` is a valid section
    (``edge-agent join`` writes the whole YAML file from a bundle).
    """

    url: str = field(
        description="Broker URL: mqtt://host[:1883] or mqtts://host[:8883] (TLS, see ca_file)."
    )
    client_id: str | None = field(
        default=None, description="MQTT client id. Default: the device id."
    )
    username: str | None = field(
        default=None, description="Broker user name (the device's credentials from the bundle)."
    )
    password: Secret | None = field(default=None, description="Broker password.")
    topic_prefix: str | None = field(
        default=None,
        description="The device's topic subtree. Default: edge/<device_id>.",
    )
    ca_file: Path | None = field(
        default=None,
        description="CA bundle that signs the broker's certificate (mqtts://). Default: the "
        "system's trust store.",
    )
    client_cert: Path | None = field(
        default=None,
        description="Client certificate (PEM, CN = the device id) for a broker listener that "
        "authenticates by certificate instead of password (mqtts:// only; needs client_key).",
    )
    client_key: Path | None = field(default=None, description="Private key (PEM) of client_cert.")
    keepalive_s: int = field(
        default=30,
        ge=5,
        description="MQTT keepalive; the broker publishes the Last Will "
        "(OFFLINE) after 1.5x this without traffic.",
    )
    reconnect_min_s: float = field(
        default=0.5, gt=0, description="First delay before reconnecting (jittered exponential)."
    )
    reconnect_max_s: float = field(
        default=30.0, gt=0, description="Longest delay between reconnection attempts."
    )
    chunk_window: int = field(
        default=4,
        ge=1,
        le=64,
        description="Chunk requests in flight at once while pulling a package.",
    )
    chunks_per_request: int = field(
        default=8,
        ge=1,
        le=64,
        description="Chunk indexes per request (the protocol allows at most 64).",
    )
    chunk_timeout_s: float = field(
        default=10.0,
        gt=0,
        description="A request with chunks still unanswered after this is sent again for them.",
    )
    max_chunk_rejects: int = field(
        default=3,
        ge=1,
        description="Times one chunk may fail its sha256 check (or the control plane may refuse "
        "a request) before the deployment is reported FAILED.",
    )
    delta_updates: bool = field(
        default=True,
        description="Fetch only the chunks of a new package that installed packages lack "
        "(when the control plane offers a chunk index); off: always pull whole packages.",
    )
    max_install_attempts: int = field(
        default=3,
        ge=1,
        description="Install attempts per deployment; an agent restarted in the middle of an "
        "install retries it, up to this many times, then reports FAILED.",
    )
    progress_interval_s: float = field(
        default=1.0, ge=0, description="Least time between two download progress reports."
    )
    telemetry_interval_s: float = field(
        default=60.0,
        ge=0,
        description="Period of metric snapshots written to the telemetry outbox; 0 disables them.",
    )
    outbox_max_records: int = field(
        default=10000,
        ge=1,
        description="Telemetry records kept on disk while undelivered; when full the oldest are "
        "dropped and counted.",
    )
    outbox_batch_size: int = field(
        default=100,
        ge=1,
        le=MAX_TELEMETRY_BATCH_RECORDS,
        description="Most telemetry records per TelemetryBatch message (at most 500, the "
        "protocol's limit); a batch takes fewer when more would pass 256 KiB encoded.",
    )

    def _check(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("fleet client_cert and client_key go together")
        if self.client_cert is not None and not self.url.startswith(("mqtts:", "ssl:")):
            raise ValueError("a client certificate is presented over TLS only: use mqtts://")


@dataclass(kw_only=True)
class CaptureSettings(Record):
    """The on-device store of captured inputs (the data flywheel) and how it is uploaded.

    What is captured is the model's policy (its package's ``capture`` block, or the deployment's
    own): without one, nothing is. These settings only bound what a device keeps and sends.
    """

    max_records: int = field(
        default=1000,
        ge=1,
        description="Records kept at most in data_dir/captures; beyond, the oldest are dropped "
        "(and counted in captures/stat).",
    )
    max_bytes: int = field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Bytes of records kept at most; beyond, the oldest are dropped (and counted).",
    )
    queue_size: int = field(
        default=64,
        ge=1,
        description="Captures waiting for the background writer; when full, a capture is "
        "skipped and counted (the request is never held).",
    )
    upload_window: int = field(
        default=8, ge=1, le=64, description="Records being uploaded at once, awaiting their ack."
    )
    ack_timeout_s: float = field(
        default=30.0,
        gt=0,
        description="A record sent without an answer after this is sent again (the control "
        "plane stores a record once per digest, so a resend is harmless).",
    )
    status_interval_s: float = field(
        default=1.0,
        ge=0,
        description="Least time between two captures/stat messages (sent after changes only).",
    )


@dataclass(kw_only=True)
class TlsSettings(Record):
    """The agent's server identity: TLS on its gRPC port and its HTTP/REST port.

    Files are checked to exist here; their contents (PEM, a key that matches the certificate)
    are checked when the server starts (``edge_agent.tls``), because the command line also loads
    these settings and may run as a user who cannot read the private key.
    """

    cert_file: FilePath = field(
        description="The server's certificate (PEM), followed by any intermediate certificates."
    )
    key_file: FilePath = field(description="The private key of cert_file (PEM, unencrypted).")
    client_ca_file: FilePath | None = field(
        default=None,
        description="CA certificates (PEM) that sign client certificates. Set: every client "
        "must present a certificate they sign (mutual TLS). Absent: any client may connect.",
    )


@dataclass(kw_only=True)
class ClientTlsSettings(Record):
    """How ``edge-agent install``, ``status`` and ``batch`` reach a running agent over TLS.

    Used when this section is present or the agent's own ``tls`` is (the command line reading
    the agent's config talks to that agent); ``--ca-file``, ``--cert-file``, ``--key-file`` and
    ``--server-name`` override it.
    """

    ca_file: FilePath | None = field(
        default=None,
        description="CA certificates (PEM) trusted for the agent's certificate. Default: the "
        "system's trust store.",
    )
    cert_file: FilePath | None = field(
        default=None,
        description="Client certificate (PEM) to present, for an agent with tls.client_ca_file.",
    )
    key_file: FilePath | None = field(
        default=None, description="The private key of cert_file (PEM, unencrypted)."
    )
    server_name: str | None = field(
        default=None,
        description="Name the agent's certificate is checked against, when it differs from the "
        "host in the address (e.g. connecting to 127.0.0.1, certificate for cam-1.local).",
    )

    def _check(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")


@dataclass(kw_only=True)
class AgentSettings(Record):
    """Every setting of the agent. Built by ``load_settings`` (file, environment, overrides);
    constructing it directly validates the given values alone."""

    device_id: str = field(default="local", description="Name of this device in reports.")
    data_dir: Path = field(
        default=Path("./var/edge-agent"),
        description="Where packages, the committed state, install journals and batch jobs live.",
    )
    grpc_host: str = field(default="127.0.0.1", description="Address the gRPC server binds.")
    grpc_port: int = field(default=8001, ge=0, description="gRPC port; 0 picks a free one.")
    tls: TlsSettings | None = field(
        default=None,
        description="TLS on the gRPC and HTTP ports (certificate, key, optional client CA for "
        "mutual TLS); absent: plaintext. See `tls.*` below.",
    )
    cli_tls: ClientTlsSettings | None = field(
        default=None,
        description="How the command line connects to a running agent over TLS. See "
        "`cli_tls.*` below.",
    )
    metrics_host: str = field(default="127.0.0.1", description="Address of the metrics endpoint.")
    metrics_port: int = field(
        default=8002, ge=-1, description="Prometheus HTTP port; 0 picks a free one, -1 disables."
    )
    port_file: Path | None = field(
        default=None,
        description="If set, the agent writes its bound ports here as JSON once it serves "
        "(useful with port 0).",
    )
    http_host: str = field(
        default="127.0.0.1", description="Address the HTTP/REST (KServe v2) server binds."
    )
    http_port: int = field(
        default=8000, ge=-1, description="HTTP/REST port; 0 picks a free one, -1 disables."
    )
    http_max_body_bytes: int = field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest HTTP request body (after decompression); beyond, 413.",
    )
    auth_token: Secret | None = field(
        default=None,
        description="Bearer token every client must send (HTTP `Authorization: Bearer <token>`, "
        "gRPC metadata `authorization`); health checks stay open. Required when gRPC or HTTP "
        "binds a non-loopback address. At least 16 characters.",
    )
    auth_token_file: Path | None = field(
        default=None,
        description="File holding the token instead of `auth_token` (surrounding whitespace "
        "is ignored), read at start.",
    )
    trusted_keys: list[Path] = field(
        default_factory=list,
        description="Ed25519 public key files (PEM), or folders of *.pub / *.pem, whose "
        "package signatures the agent accepts. Nothing installs without one.",
    )
    intra_op_threads: int = field(default=0, ge=0, description="Runtime threads per inference.")
    inter_op_threads: int = field(default=0, ge=0, description="Runtime parallel operators.")
    inference_workers: int = field(
        default=2, ge=1, description="Threads that run inferences off the gRPC event loop."
    )
    inline_threshold_ms: float = field(
        default=0.3,
        ge=0,
        description="Models whose self-test inference took less than this run on the event "
        "loop itself (a thread hop would cost more than the inference).",
    )
    variant_preference: list[str] = field(
        default_factory=lambda: ["onnx", "tflite"],
        description="Variant or runtime names in order of preference; the agent loads the first "
        "that this machine can run and that passes its golden vectors.",
    )
    allow_python_handlers: bool = field(
        default=False,
        description="Run Python pre/post-processing handlers that a package carries (ModelArts "
        "customize_service.py). They are arbitrary code: off, such packages are refused at "
        "install; on, they still install only when signed by a trusted key.",
    )
    max_versions_per_model: int = field(
        default=2, ge=1, description="Versions kept loaded per model; older ones are unloaded."
    )
    max_message_bytes: int = field(
        default=64 * 1024 * 1024, ge=1024, description="Largest gRPC request or response."
    )
    max_inflight_requests: int = field(
        default=512, ge=1, description="Concurrent inference requests; beyond, RESOURCE_EXHAUSTED."
    )
    batch_job_workers: int = field(default=1, ge=1, description="Batch jobs run at once.")
    signature_check_in_child: bool = field(
        default=True,
        description="Check package signatures without loading cryptography (about 7 MB "
        "resident) into the agent: through the OpenSSL library the agent already maps, or where "
        "that cannot check Ed25519, in a short-lived child process (about 0.05 CPU seconds per "
        "install). Off: checked with cryptography in the agent itself.",
    )
    shared_memory_max_regions: int = field(
        default=64,
        ge=0,
        description="System shared memory regions registered at once (0 turns the extension "
        "off); beyond, registering fails.",
    )
    shared_memory_max_bytes: int = field(
        default=1 << 30,
        ge=0,
        description="Bytes of system shared memory the agent maps at most, over all regions.",
    )
    models: dict[str, ModelSettings] = field(
        default_factory=dict, description="Per-model serving options by model name."
    )
    default_model: ModelSettings = field(
        default_factory=ModelSettings, description="Options for models not named in `models`."
    )
    log_level: str = field(default="INFO", description="Python logging level.")
    capture: CaptureSettings = field(
        default_factory=CaptureSettings,
        description="Quotas and upload of captured inputs (data_dir/captures). See `capture.*` "
        "below.",
    )
    fleet: FleetSettings | None = field(
        default=None,
        description="Fleet channel (MQTT) settings; absent: no fleet connection. See "
        "`fleet.*` below.",
    )

    #: Resolved by ``_check`` from ``auth_token`` or ``auth_token_file`` (not a setting itself).
    _token: ClassVar[str | None] = None

    def for_model(self, name: str) -> ModelSettings:
        return self.models.get(name, self.default_model)

    def _check(self) -> None:
        """Resolve the token once, and refuse to expose a server without one."""
        from edge_agent.auth import exposed_without_token, resolve_token

        self._token = resolve_token(self.auth_token, self.auth_token_file)
        exposed_without_token(self, self._token)

    def bearer_token(self) -> str | None:
        """The token clients must present, from `auth_token` or `auth_token_file`."""
        return self._token

    @property
    def packages_dir(self) -> Path:
        return self.data_dir / "packages"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"


class ConfigFileError(ValueError):
    """The settings file is not YAML or not a mapping of settings, or a structured setting's
    environment variable is not JSON."""


def _read_yaml(path: Path) -> dict[str, Any]:
    """The file's settings, or a readable message for a broken file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"config file {path} is not valid YAML: {exc}") from None
    if doc is not None and not isinstance(doc, dict):
        raise ConfigFileError(
            f"config file {path} must be a mapping of setting names to values, "
            f"not a {type(doc).__name__}"
        )
    return doc or {}


def load_settings(config_file: Path | None = None, **overrides: Any) -> AgentSettings:
    """Settings from an optional YAML file, the environment, then explicit overrides."""
    values: dict[str, Any] = {}
    if config_file is not None:
        if not Path(config_file).is_file():
            raise FileNotFoundError(f"config file {config_file} does not exist")
        values = _read_yaml(Path(config_file))
    try:
        env = env_values(AgentSettings, os.environ)
    except EnvValueError as exc:
        raise ConfigFileError(str(exc)) from None
    return AgentSettings.from_dict(merged(merged(values, env), overrides))
