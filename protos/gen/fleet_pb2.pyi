from protos.gen import fleet_capture_pb2 as _fleet_capture_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DesiredState(_message.Message):
    __slots__ = ("device_id", "generation", "deployment_id", "models", "issued_at_ms", "removals")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REMOVALS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    generation: int
    deployment_id: str
    models: _containers.RepeatedCompositeFieldContainer[DesiredModel]
    issued_at_ms: int
    removals: _containers.RepeatedCompositeFieldContainer[ModelRemoval]
    def __init__(self, device_id: _Optional[str] = ..., generation: _Optional[int] = ..., deployment_id: _Optional[str] = ..., models: _Optional[_Iterable[_Union[DesiredModel, _Mapping]]] = ..., issued_at_ms: _Optional[int] = ..., removals: _Optional[_Iterable[_Union[ModelRemoval, _Mapping]]] = ...) -> None: ...

class DesiredModel(_message.Message):
    __slots__ = ("deployment_id", "name", "version", "package_digest", "package_size", "chunk_size", "chunk_count", "chunk_sha256", "standby", "weight", "guard", "warmup", "capture", "cdc_index_sha256", "chunk_topic")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SHA256_FIELD_NUMBER: _ClassVar[int]
    STANDBY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    GUARD_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_FIELD_NUMBER: _ClassVar[int]
    CDC_INDEX_SHA256_FIELD_NUMBER: _ClassVar[int]
    CHUNK_TOPIC_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    name: str
    version: str
    package_digest: str
    package_size: int
    chunk_size: int
    chunk_count: int
    chunk_sha256: _containers.RepeatedScalarFieldContainer[bytes]
    standby: bool
    weight: float
    guard: LocalGuard
    warmup: ShadowWarmup
    capture: _fleet_capture_pb2.CapturePolicy
    cdc_index_sha256: bytes
    chunk_topic: str
    def __init__(self, deployment_id: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., package_digest: _Optional[str] = ..., package_size: _Optional[int] = ..., chunk_size: _Optional[int] = ..., chunk_count: _Optional[int] = ..., chunk_sha256: _Optional[_Iterable[bytes]] = ..., standby: _Optional[bool] = ..., weight: _Optional[float] = ..., guard: _Optional[_Union[LocalGuard, _Mapping]] = ..., warmup: _Optional[_Union[ShadowWarmup, _Mapping]] = ..., capture: _Optional[_Union[_fleet_capture_pb2.CapturePolicy, _Mapping]] = ..., cdc_index_sha256: _Optional[bytes] = ..., chunk_topic: _Optional[str] = ...) -> None: ...

class ShadowWarmup(_message.Message):
    __slots__ = ("fraction", "min_requests", "min_agreement", "max_abs_diff", "timeout_s")
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MIN_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    fraction: float
    min_requests: int
    min_agreement: float
    max_abs_diff: float
    timeout_s: float
    def __init__(self, fraction: _Optional[float] = ..., min_requests: _Optional[int] = ..., min_agreement: _Optional[float] = ..., max_abs_diff: _Optional[float] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class LocalGuard(_message.Message):
    __slots__ = ("bake_s", "max_error_rate", "max_p99_ms", "min_requests")
    BAKE_S_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_P99_MS_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    bake_s: float
    max_error_rate: float
    max_p99_ms: float
    min_requests: int
    def __init__(self, bake_s: _Optional[float] = ..., max_error_rate: _Optional[float] = ..., max_p99_ms: _Optional[float] = ..., min_requests: _Optional[int] = ...) -> None: ...

class ModelRemoval(_message.Message):
    __slots__ = ("deployment_id", "name", "version")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    name: str
    version: str
    def __init__(self, deployment_id: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ReportedState(_message.Message):
    __slots__ = ("device_id", "agent_version", "models", "last_result", "timestamp_ms", "desired_generation")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LAST_RESULT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    DESIRED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    agent_version: str
    models: _containers.RepeatedCompositeFieldContainer[ReportedModel]
    last_result: DeploymentResult
    timestamp_ms: int
    desired_generation: int
    def __init__(self, device_id: _Optional[str] = ..., agent_version: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ReportedModel, _Mapping]]] = ..., last_result: _Optional[_Union[DeploymentResult, _Mapping]] = ..., timestamp_ms: _Optional[int] = ..., desired_generation: _Optional[int] = ...) -> None: ...

class ReportedModel(_message.Message):
    __slots__ = ("name", "version", "variant", "package_digest", "active")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    variant: str
    package_digest: str
    active: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., variant: _Optional[str] = ..., package_digest: _Optional[str] = ..., active: _Optional[bool] = ...) -> None: ...

class DeploymentResult(_message.Message):
    __slots__ = ("deployment_id", "outcome", "reason", "step", "chunks_done", "chunks_total")
    class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OUTCOME_UNSPECIFIED: _ClassVar[DeploymentResult.Outcome]
        IN_PROGRESS: _ClassVar[DeploymentResult.Outcome]
        INSTALLED: _ClassVar[DeploymentResult.Outcome]
        FAILED: _ClassVar[DeploymentResult.Outcome]
        REMOVED: _ClassVar[DeploymentResult.Outcome]
    OUTCOME_UNSPECIFIED: DeploymentResult.Outcome
    IN_PROGRESS: DeploymentResult.Outcome
    INSTALLED: DeploymentResult.Outcome
    FAILED: DeploymentResult.Outcome
    REMOVED: DeploymentResult.Outcome
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_DONE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    outcome: DeploymentResult.Outcome
    reason: str
    step: str
    chunks_done: int
    chunks_total: int
    def __init__(self, deployment_id: _Optional[str] = ..., outcome: _Optional[_Union[DeploymentResult.Outcome, str]] = ..., reason: _Optional[str] = ..., step: _Optional[str] = ..., chunks_done: _Optional[int] = ..., chunks_total: _Optional[int] = ...) -> None: ...

class DeviceStatus(_message.Message):
    __slots__ = ("state", "agent_version")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[DeviceStatus.State]
        ONLINE: _ClassVar[DeviceStatus.State]
        OFFLINE: _ClassVar[DeviceStatus.State]
    STATE_UNSPECIFIED: DeviceStatus.State
    ONLINE: DeviceStatus.State
    OFFLINE: DeviceStatus.State
    STATE_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    state: DeviceStatus.State
    agent_version: str
    def __init__(self, state: _Optional[_Union[DeviceStatus.State, str]] = ..., agent_version: _Optional[str] = ...) -> None: ...

class ChunkRequest(_message.Message):
    __slots__ = ("package_digest", "indexes", "request_id", "cdc_index", "cdc_sha256")
    PACKAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CDC_INDEX_FIELD_NUMBER: _ClassVar[int]
    CDC_SHA256_FIELD_NUMBER: _ClassVar[int]
    package_digest: str
    indexes: _containers.RepeatedScalarFieldContainer[int]
    request_id: str
    cdc_index: bool
    cdc_sha256: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, package_digest: _Optional[str] = ..., indexes: _Optional[_Iterable[int]] = ..., request_id: _Optional[str] = ..., cdc_index: _Optional[bool] = ..., cdc_sha256: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ChunkData(_message.Message):
    __slots__ = ("package_digest", "index", "chunk_count", "sha256", "data", "request_id", "error", "cdc_index", "cdc")
    PACKAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CDC_INDEX_FIELD_NUMBER: _ClassVar[int]
    CDC_FIELD_NUMBER: _ClassVar[int]
    package_digest: str
    index: int
    chunk_count: int
    sha256: bytes
    data: bytes
    request_id: str
    error: str
    cdc_index: bytes
    cdc: bool
    def __init__(self, package_digest: _Optional[str] = ..., index: _Optional[int] = ..., chunk_count: _Optional[int] = ..., sha256: _Optional[bytes] = ..., data: _Optional[bytes] = ..., request_id: _Optional[str] = ..., error: _Optional[str] = ..., cdc_index: _Optional[bytes] = ..., cdc: _Optional[bool] = ...) -> None: ...

class TelemetryBatch(_message.Message):
    __slots__ = ("device_id", "records", "dropped")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    records: _containers.RepeatedCompositeFieldContainer[TelemetryRecord]
    dropped: int
    def __init__(self, device_id: _Optional[str] = ..., records: _Optional[_Iterable[_Union[TelemetryRecord, _Mapping]]] = ..., dropped: _Optional[int] = ...) -> None: ...

class TelemetryRecord(_message.Message):
    __slots__ = ("seq", "kind", "timestamp_ms", "payload_json")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    kind: str
    timestamp_ms: int
    payload_json: str
    def __init__(self, seq: _Optional[int] = ..., kind: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., payload_json: _Optional[str] = ...) -> None: ...

class SignedTrustSet(_message.Message):
    __slots__ = ("trust_set", "signatures")
    TRUST_SET_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    trust_set: bytes
    signatures: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, trust_set: _Optional[bytes] = ..., signatures: _Optional[_Iterable[bytes]] = ...) -> None: ...

class TrustSet(_message.Message):
    __slots__ = ("version", "keys", "issued_at")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    version: int
    keys: _containers.RepeatedCompositeFieldContainer[TrustedKey]
    issued_at: int
    def __init__(self, version: _Optional[int] = ..., keys: _Optional[_Iterable[_Union[TrustedKey, _Mapping]]] = ..., issued_at: _Optional[int] = ...) -> None: ...

class TrustedKey(_message.Message):
    __slots__ = ("key_id", "public_key_pem", "not_after")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    public_key_pem: str
    not_after: int
    def __init__(self, key_id: _Optional[str] = ..., public_key_pem: _Optional[str] = ..., not_after: _Optional[int] = ...) -> None: ...
