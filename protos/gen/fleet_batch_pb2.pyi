from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BatchJobs(_message.Message):
    __slots__ = ("device_id", "jobs", "issued_at_ms")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    jobs: _containers.RepeatedCompositeFieldContainer[BatchJob]
    issued_at_ms: int
    def __init__(self, device_id: _Optional[str] = ..., jobs: _Optional[_Iterable[_Union[BatchJob, _Mapping]]] = ..., issued_at_ms: _Optional[int] = ...) -> None: ...

class BatchJob(_message.Message):
    __slots__ = ("job_id", "model", "version", "input_digest", "input_size", "chunk_size", "chunk_sha256", "rows_received")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SHA256_FIELD_NUMBER: _ClassVar[int]
    ROWS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model: str
    version: str
    input_digest: str
    input_size: int
    chunk_size: int
    chunk_sha256: _containers.RepeatedScalarFieldContainer[bytes]
    rows_received: int
    def __init__(self, job_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., input_digest: _Optional[str] = ..., input_size: _Optional[int] = ..., chunk_size: _Optional[int] = ..., chunk_sha256: _Optional[_Iterable[bytes]] = ..., rows_received: _Optional[int] = ...) -> None: ...

class BatchInputRequest(_message.Message):
    __slots__ = ("job_id", "indexes", "request_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    INDEXES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    indexes: _containers.RepeatedScalarFieldContainer[int]
    request_id: str
    def __init__(self, job_id: _Optional[str] = ..., indexes: _Optional[_Iterable[int]] = ..., request_id: _Optional[str] = ...) -> None: ...

class BatchInputChunk(_message.Message):
    __slots__ = ("job_id", "index", "sha256", "data", "request_id", "error")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    index: int
    sha256: bytes
    data: bytes
    request_id: str
    error: str
    def __init__(self, job_id: _Optional[str] = ..., index: _Optional[int] = ..., sha256: _Optional[bytes] = ..., data: _Optional[bytes] = ..., request_id: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class BatchJobState(_message.Message):
    __slots__ = ("job_id", "state", "total", "done", "failed", "error")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    total: int
    done: int
    failed: int
    error: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., total: _Optional[int] = ..., done: _Optional[int] = ..., failed: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class BatchRows(_message.Message):
    __slots__ = ("job_id", "first_index", "rows_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    ROWS_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    first_index: int
    rows_json: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., first_index: _Optional[int] = ..., rows_json: _Optional[_Iterable[str]] = ...) -> None: ...
