from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelVersionInfo(_message.Message):
    __slots__ = ("name", "version", "state", "variant", "runtime", "package_digest", "active", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    state: str
    variant: str
    runtime: str
    package_digest: str
    active: bool
    reason: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., state: _Optional[str] = ..., variant: _Optional[str] = ..., runtime: _Optional[str] = ..., package_digest: _Optional[str] = ..., active: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "active_version", "versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    active_version: str
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersionInfo]
    def __init__(self, name: _Optional[str] = ..., active_version: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[ModelVersionInfo, _Mapping]]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InstallResult(_message.Message):
    __slots__ = ("package_digest", "name", "version", "outcome", "failed_step", "reason", "finished_at_unix")
    PACKAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    FAILED_STEP_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    package_digest: str
    name: str
    version: str
    outcome: str
    failed_step: str
    reason: str
    finished_at_unix: float
    def __init__(self, package_digest: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., outcome: _Optional[str] = ..., failed_step: _Optional[str] = ..., reason: _Optional[str] = ..., finished_at_unix: _Optional[float] = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("agent_version", "device_id", "uptime_seconds", "ready", "models", "last_install", "runtimes")
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LAST_INSTALL_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    device_id: str
    uptime_seconds: float
    ready: bool
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    last_install: InstallResult
    runtimes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, agent_version: _Optional[str] = ..., device_id: _Optional[str] = ..., uptime_seconds: _Optional[float] = ..., ready: _Optional[bool] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., last_install: _Optional[_Union[InstallResult, _Mapping]] = ..., runtimes: _Optional[_Iterable[str]] = ...) -> None: ...

class InstallPackageRequest(_message.Message):
    __slots__ = ("path", "archive", "activate")
    PATH_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    ACTIVATE_FIELD_NUMBER: _ClassVar[int]
    path: str
    archive: bytes
    activate: bool
    def __init__(self, path: _Optional[str] = ..., archive: _Optional[bytes] = ..., activate: _Optional[bool] = ...) -> None: ...

class InstallPackageResponse(_message.Message):
    __slots__ = ("result", "model")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    result: InstallResult
    model: ModelVersionInfo
    def __init__(self, result: _Optional[_Union[InstallResult, _Mapping]] = ..., model: _Optional[_Union[ModelVersionInfo, _Mapping]] = ...) -> None: ...

class ActivateVersionRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class SubmitBatchJobRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "manifest_path", "input_dir", "output_path")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_PATH_FIELD_NUMBER: _ClassVar[int]
    INPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PATH_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    manifest_path: str
    input_dir: str
    output_path: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., manifest_path: _Optional[str] = ..., input_dir: _Optional[str] = ..., output_path: _Optional[str] = ...) -> None: ...

class GetBatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class BatchJob(_message.Message):
    __slots__ = ("job_id", "model_name", "model_version", "state", "total", "done", "failed", "results_path", "error", "created_at_unix", "finished_at_unix")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_PATH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model_name: str
    model_version: str
    state: str
    total: int
    done: int
    failed: int
    results_path: str
    error: str
    created_at_unix: float
    finished_at_unix: float
    def __init__(self, job_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., state: _Optional[str] = ..., total: _Optional[int] = ..., done: _Optional[int] = ..., failed: _Optional[int] = ..., results_path: _Optional[str] = ..., error: _Optional[str] = ..., created_at_unix: _Optional[float] = ..., finished_at_unix: _Optional[float] = ...) -> None: ...

class ListBatchJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBatchJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[BatchJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[BatchJob, _Mapping]]] = ...) -> None: ...

class SetTrafficRequest(_message.Message):
    __slots__ = ("model", "weights", "shadow_version", "shadow_fraction")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FRACTION_FIELD_NUMBER: _ClassVar[int]
    model: str
    weights: _containers.ScalarMap[str, float]
    shadow_version: str
    shadow_fraction: float
    def __init__(self, model: _Optional[str] = ..., weights: _Optional[_Mapping[str, float]] = ..., shadow_version: _Optional[str] = ..., shadow_fraction: _Optional[float] = ...) -> None: ...

class GetTrafficRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ShadowStats(_message.Message):
    __slots__ = ("compared", "skipped", "failed", "rows", "agreed_rows", "max_abs_diff")
    COMPARED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    AGREED_ROWS_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_DIFF_FIELD_NUMBER: _ClassVar[int]
    compared: int
    skipped: int
    failed: int
    rows: int
    agreed_rows: int
    max_abs_diff: float
    def __init__(self, compared: _Optional[int] = ..., skipped: _Optional[int] = ..., failed: _Optional[int] = ..., rows: _Optional[int] = ..., agreed_rows: _Optional[int] = ..., max_abs_diff: _Optional[float] = ...) -> None: ...

class VersionTraffic(_message.Message):
    __slots__ = ("version", "weight", "active", "success", "fail", "shadow")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    FAIL_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    version: str
    weight: float
    active: bool
    success: int
    fail: int
    shadow: ShadowStats
    def __init__(self, version: _Optional[str] = ..., weight: _Optional[float] = ..., active: _Optional[bool] = ..., success: _Optional[int] = ..., fail: _Optional[int] = ..., shadow: _Optional[_Union[ShadowStats, _Mapping]] = ...) -> None: ...

class TrafficInfo(_message.Message):
    __slots__ = ("model", "weights", "shadow_version", "shadow_fraction", "active_version", "versions")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FRACTION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    weights: _containers.ScalarMap[str, float]
    shadow_version: str
    shadow_fraction: float
    active_version: str
    versions: _containers.RepeatedCompositeFieldContainer[VersionTraffic]
    def __init__(self, model: _Optional[str] = ..., weights: _Optional[_Mapping[str, float]] = ..., shadow_version: _Optional[str] = ..., shadow_fraction: _Optional[float] = ..., active_version: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[VersionTraffic, _Mapping]]] = ...) -> None: ...
