from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CapturePolicy(_message.Message):
    __slots__ = ("enabled", "below_confidence", "sample_fraction", "on_disagreement", "on_request", "top_k")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    BELOW_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FRACTION_FIELD_NUMBER: _ClassVar[int]
    ON_DISAGREEMENT_FIELD_NUMBER: _ClassVar[int]
    ON_REQUEST_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    below_confidence: float
    sample_fraction: float
    on_disagreement: bool
    on_request: bool
    top_k: int
    def __init__(self, enabled: _Optional[bool] = ..., below_confidence: _Optional[float] = ..., sample_fraction: _Optional[float] = ..., on_disagreement: _Optional[bool] = ..., on_request: _Optional[bool] = ..., top_k: _Optional[int] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("index", "label", "score")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    index: int
    label: str
    score: float
    def __init__(self, index: _Optional[int] = ..., label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class CaptureMeta(_message.Message):
    __slots__ = ("model", "version", "deployment_id", "reason", "captured_at_ms", "input_name", "input_kind", "media_type", "top_k", "shadow_version", "shadow_top_k")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    INPUT_NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_KIND_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    SHADOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_TOP_K_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    deployment_id: str
    reason: str
    captured_at_ms: int
    input_name: str
    input_kind: str
    media_type: str
    top_k: _containers.RepeatedCompositeFieldContainer[Prediction]
    shadow_version: str
    shadow_top_k: _containers.RepeatedCompositeFieldContainer[Prediction]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., deployment_id: _Optional[str] = ..., reason: _Optional[str] = ..., captured_at_ms: _Optional[int] = ..., input_name: _Optional[str] = ..., input_kind: _Optional[str] = ..., media_type: _Optional[str] = ..., top_k: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., shadow_version: _Optional[str] = ..., shadow_top_k: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ...) -> None: ...

class CaptureChunk(_message.Message):
    __slots__ = ("device_id", "digest", "size", "index", "count", "data", "meta")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    digest: str
    size: int
    index: int
    count: int
    data: bytes
    meta: CaptureMeta
    def __init__(self, device_id: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., index: _Optional[int] = ..., count: _Optional[int] = ..., data: _Optional[bytes] = ..., meta: _Optional[_Union[CaptureMeta, _Mapping]] = ...) -> None: ...

class CaptureAck(_message.Message):
    __slots__ = ("digest", "state", "next_index", "reason")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[CaptureAck.State]
        STORED: _ClassVar[CaptureAck.State]
        PARTIAL: _ClassVar[CaptureAck.State]
        REJECTED: _ClassVar[CaptureAck.State]
    STATE_UNSPECIFIED: CaptureAck.State
    STORED: CaptureAck.State
    PARTIAL: CaptureAck.State
    REJECTED: CaptureAck.State
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NEXT_INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    digest: str
    state: CaptureAck.State
    next_index: int
    reason: str
    def __init__(self, digest: _Optional[str] = ..., state: _Optional[_Union[CaptureAck.State, str]] = ..., next_index: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class CaptureControl(_message.Message):
    __slots__ = ("device_id", "purge_id", "purge_before_ms")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    PURGE_ID_FIELD_NUMBER: _ClassVar[int]
    PURGE_BEFORE_MS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    purge_id: str
    purge_before_ms: int
    def __init__(self, device_id: _Optional[str] = ..., purge_id: _Optional[str] = ..., purge_before_ms: _Optional[int] = ...) -> None: ...

class CaptureStatus(_message.Message):
    __slots__ = ("device_id", "stored_records", "stored_bytes", "captured_total", "uploaded_total", "dropped_total", "last_purge_id", "timestamp_ms")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    STORED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DROPPED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LAST_PURGE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    stored_records: int
    stored_bytes: int
    captured_total: int
    uploaded_total: int
    dropped_total: int
    last_purge_id: str
    timestamp_ms: int
    def __init__(self, device_id: _Optional[str] = ..., stored_records: _Optional[int] = ..., stored_bytes: _Optional[int] = ..., captured_total: _Optional[int] = ..., uploaded_total: _Optional[int] = ..., dropped_total: _Optional[int] = ..., last_purge_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...
