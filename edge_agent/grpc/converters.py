"""All protobuf <-> domain mapping for the inference protocol.

Raw contents are the fast path: a request's bytes become a numpy array with ``frombuffer`` (no
copy) after the byte length is checked against shape and datatype. Responses always use
``raw_output_contents``, as Triton does; tritonclient decodes both forms.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from edge_agent.errors import InvalidInput
from edge_agent.serving.requests import (
    CONFIG_DATATYPES,
    NO_DATA,
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    ModelConfig,
    ModelMetadata,
    RepositoryEntry,
    classification_refused,
)
from edge_agent.serving.shared_memory import RegionStatus, ShmRef, require_local
from edge_agent.serving.stats import Duration, ModelStats
from edge_agent.serving.tensor_bytes import (
    LE,
    check_datatype,
    check_shape,
    decode_raw,
    encode_raw,
)
from model_packager.tensors import TensorSpec, datatype_to_dtype
from protos.gen import inference_pb2 as pb

# Which InferTensorContents field carries each datatype (FP16 has none: raw only).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


_SHM_REGION = "shared_memory_region"
#: Triton's classification extension (``InferRequestedOutput(class_count=k)``): refused.
_CLASSIFICATION = "classification"
_SHM_SIZE = "shared_memory_byte_size"
_SHM_OFFSET = "shared_memory_offset"


def _shm_ref(params: Mapping[str, pb.InferParameter], what: str) -> ShmRef | None:
    """The shared memory parameters of an input or requested output, or None without them."""
    if _SHM_REGION not in params:
        if _SHM_SIZE in params or _SHM_OFFSET in params:
            raise InvalidInput(f"{what}: {_SHM_SIZE}/{_SHM_OFFSET} without {_SHM_REGION}")
        return None
    region = params[_SHM_REGION]
    if region.WhichOneof("parameter_choice") != "string_param":
        raise InvalidInput(f"{what}: {_SHM_REGION} must be a string parameter")
    return ShmRef(
        region.string_param,
        _shm_int(params, _SHM_OFFSET, what, 0),
        _shm_int(params, _SHM_SIZE, what, None),
    )


def _shm_int(
    params: Mapping[str, pb.InferParameter], key: str, what: str, default: int | None
) -> int:
    if key not in params:
        if default is None:
            raise InvalidInput(f"{what}: {_SHM_REGION} needs {key}")
        return default
    p = params[key]
    kind = p.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidInput(f"{what}: {key} must be an integer parameter")
    value = int(getattr(p, kind))
    if value < 0:
        raise InvalidInput(f"{what}: {key} must not be negative")
    return value


def _param_value(p: pb.InferParameter) -> object:
    """A parameter's value, whichever of its kinds is set (None when none is)."""
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


def _always() -> bool:
    return True


def request_from_proto(
    req: pb.ModelInferRequest, local: Callable[[], bool] = _always
) -> InferenceRequest:
    """``local`` says whether the caller is on this machine; asked only when the request
    references shared memory, which remote callers may not."""
    raw = req.raw_input_contents
    inputs = req.inputs
    # Inputs in shared memory have no raw entry (as tritonclient sends them): raw contents
    # belong, in order, to the other inputs.
    shm = [_shm_ref(t.parameters, f"input {t.name!r}") if t.parameters else None for t in inputs]
    in_band = len(inputs) - sum(r is not None for r in shm)
    if in_band != len(inputs):
        require_local(local())
    if raw and len(raw) != in_band:
        raise InvalidInput(
            f"{len(raw)} raw_input_contents for {in_band} inputs not in shared memory; "
            "they must match 1:1"
        )
    tensors = []
    raw_index = 0
    for i, t in enumerate(inputs):
        datatype = t.datatype  # each protobuf field read costs; this is the per-request path
        if datatype not in LE:
            check_datatype(t.name, datatype)
        shape = tuple(t.shape)
        count = check_shape(t.name, shape)
        ref = shm[i]
        if ref is not None:
            if t.HasField("contents"):
                raise InvalidInput(f"input {t.name!r} has both shared memory and typed contents")
            tensors.append(InputTensor(t.name, datatype, shape, NO_DATA, ref))
            continue
        if raw:
            if t.HasField("contents"):
                raise InvalidInput(f"input {t.name!r} has both raw and typed contents")
            arr = decode_raw(t.name, datatype, shape, count, raw[raw_index])
            raw_index += 1
        else:
            field = _CONTENTS_FIELD.get(datatype)
            if field is None:
                raise InvalidInput(f"input {t.name!r}: {datatype} must be sent as raw contents")
            values = getattr(t.contents, field)
            if len(values) != count:
                raise InvalidInput(
                    f"input {t.name!r} has {len(values)} {field} values; shape {list(shape)} "
                    f"needs {count}"
                )
            if datatype == "BYTES":
                arr = np.array(list(values), dtype=np.object_)
            else:
                dtype = datatype_to_dtype(datatype)
                try:
                    arr = np.asarray(values, dtype=dtype)
                except OverflowError as exc:
                    raise InvalidInput(
                        f"input {t.name!r}: value out of range for {datatype}"
                    ) from exc
                if datatype in ("INT8", "INT16", "UINT8", "UINT16"):
                    wide = np.asarray(values, dtype=np.int64)
                    if not np.array_equal(wide, arr.astype(np.int64)):
                        raise InvalidInput(f"input {t.name!r}: value out of range for {datatype}")
        tensors.append(InputTensor(t.name, datatype, shape, arr.reshape(shape)))
    outputs = []
    output_shm = {}
    for o in req.outputs:
        outputs.append(o.name)
        if o.parameters:
            cls = o.parameters.get(_CLASSIFICATION)
            if cls is not None and _param_value(cls):
                raise classification_refused(o.name)
            ref = _shm_ref(o.parameters, f"output {o.name!r}")
            if ref is not None:
                if not output_shm:
                    require_local(local())
                output_shm[o.name] = ref
    capture = False
    if req.parameters:
        param = req.parameters.get("capture")
        if param is not None:
            if param.WhichOneof("parameter_choice") != "bool_param":
                raise InvalidInput('parameter "capture" must be a bool_param')
            capture = param.bool_param
    return InferenceRequest(
        model_name=req.model_name,
        model_version=req.model_version,
        id=req.id,
        inputs=tensors,
        outputs=outputs,
        output_shm=output_shm,
        capture=capture,
    )


def response_to_proto(resp: InferenceResponse) -> pb.ModelInferResponse:
    out = pb.ModelInferResponse(
        model_name=resp.model_name, model_version=resp.model_version, id=resp.id
    )
    raws = []
    in_band = False
    for t in resp.outputs:
        arr = t.data
        tensor = out.outputs.add(name=t.name, datatype=t.datatype, shape=arr.shape)
        if t.shm is None:
            raws.append(encode_raw(arr, t.datatype))
            in_band = True
        else:
            # The data is in the client's region; the tensor says where, as Triton does.
            tensor.parameters[_SHM_REGION].string_param = t.shm.region
            tensor.parameters[_SHM_SIZE].int64_param = t.shm.byte_size
            if t.shm.offset:
                tensor.parameters[_SHM_OFFSET].int64_param = t.shm.offset
            raws.append(b"")  # keeps raw contents 1:1 with outputs for the others
    if in_band:
        out.raw_output_contents.extend(raws)
    return out


def shm_status_to_proto(regions: list[RegionStatus]) -> pb.SystemSharedMemoryStatusResponse:
    out = pb.SystemSharedMemoryStatusResponse()
    for r in regions:
        status = out.regions[r.name]
        status.name, status.key, status.offset, status.byte_size = (
            r.name,
            r.key,
            r.offset,
            r.byte_size,
        )
    return out


def metadata_to_proto(md: ModelMetadata) -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(
        name=md.name,
        versions=md.versions,
        platform=md.platform,
        inputs=[
            pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
            for s in md.inputs
        ],
        outputs=[
            pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape)
            for s in md.outputs
        ],
    )


def _config_input(spec: TensorSpec) -> pb.ModelInput:
    return pb.ModelInput(
        name=spec.name,
        data_type=CONFIG_DATATYPES.get(spec.datatype, "TYPE_INVALID"),
        dims=spec.shape,
    )


def _config_output(spec: TensorSpec) -> pb.ModelOutput:
    return pb.ModelOutput(
        name=spec.name,
        data_type=CONFIG_DATATYPES.get(spec.datatype, "TYPE_INVALID"),
        dims=spec.shape,
    )


def config_to_proto(cfg: ModelConfig) -> pb.ModelConfigResponse:
    return pb.ModelConfigResponse(
        config=pb.ModelConfig(
            name=cfg.name,
            platform=cfg.platform,
            backend=cfg.backend,
            max_batch_size=cfg.max_batch_size,
            input=[_config_input(s) for s in cfg.inputs],
            output=[_config_output(s) for s in cfg.outputs],
        )
    )


def _duration(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def statistics_to_proto(entries: list[tuple[str, str, ModelStats]]) -> pb.ModelStatisticsResponse:
    return pb.ModelStatisticsResponse(
        model_stats=[
            pb.ModelStatistics(
                name=name,
                version=version,
                last_inference=s.last_inference_ms,
                inference_count=s.inference_count,
                execution_count=s.execution_count,
                inference_stats=pb.InferStatistics(
                    success=_duration(s.success),
                    fail=_duration(s.fail),
                    queue=_duration(s.queue),
                    compute_input=_duration(s.compute_input),
                    compute_infer=_duration(s.compute_infer),
                    compute_output=_duration(s.compute_output),
                ),
                batch_stats=[
                    pb.InferBatchStatistics(
                        batch_size=size,
                        compute_input=_duration(b.compute_input),
                        compute_infer=_duration(b.compute_infer),
                        compute_output=_duration(b.compute_output),
                    )
                    for size, b in sorted(s.batches.items())
                ],
                shadow_stats=pb.ShadowStatistics(
                    compared=s.shadow.compared,
                    skipped=s.shadow.skipped,
                    failed=s.shadow.failed,
                    rows=s.shadow.rows,
                    agreed_rows=s.shadow.agreed_rows,
                    max_abs_diff=s.shadow.max_abs_diff,
                ),
            )
            for name, version, s in entries
        ]
    )


def index_to_proto(entries: list[RepositoryEntry]) -> pb.RepositoryIndexResponse:
    return pb.RepositoryIndexResponse(
        models=[
            pb.RepositoryIndexResponse.ModelIndex(
                name=e.name, version=e.version, state=e.state, reason=e.reason
            )
            for e in entries
        ]
    )
