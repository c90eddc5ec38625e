"""All protobuf <-> domain mapping for the inference protocol.

Raw contents are the fast path: a request's bytes become a numpy array with ``frombuffer`` (no
copy) after the byte length is checked against shape and datatype. Responses always use
``raw_output_contents``, as Triton does; tritonclient decodes both forms.
"""

from __future__ import annotations

import numpy as np

from edge_agent.errors import InvalidInput
from edge_agent.serving.requests import (
    CONFIG_DATATYPES,
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    ModelConfig,
    ModelMetadata,
    RepositoryEntry,
)
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


def request_from_proto(req: pb.ModelInferRequest) -> InferenceRequest:
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise InvalidInput(
            f"{len(raw)} raw_input_contents for {len(req.inputs)} inputs; they must match 1:1"
        )
    tensors = []
    for i, t in enumerate(req.inputs):
        datatype = t.datatype  # each protobuf field read costs; this is the per-request path
        if datatype not in LE:
            check_datatype(t.name, datatype)
        shape = tuple(t.shape)
        count = check_shape(t.name, shape)
        if raw:
            if t.HasField("contents"):
                raise InvalidInput(f"input {t.name!r} has both raw and typed contents")
            arr = decode_raw(t.name, datatype, shape, count, raw[i])
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
    return InferenceRequest(
        model_name=req.model_name,
        model_version=req.model_version,
        id=req.id,
        inputs=tensors,
        outputs=[o.name for o in req.outputs],
    )


def response_to_proto(resp: InferenceResponse) -> pb.ModelInferResponse:
    out = pb.ModelInferResponse(
        model_name=resp.model_name, model_version=resp.model_version, id=resp.id
    )
    raws = []
    for t in resp.outputs:
        arr = t.data
        out.outputs.add(name=t.name, datatype=t.datatype, shape=arr.shape)
        raws.append(encode_raw(arr, t.datatype))
    out.raw_output_contents.extend(raws)
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
