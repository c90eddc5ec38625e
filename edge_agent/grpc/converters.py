"""All protobuf <-> domain mapping for the inference protocol.

Raw contents are the fast path: a request's bytes become a numpy array with ``frombuffer`` (no
copy) after the byte length is checked against shape and datatype. Responses always use
``raw_output_contents``, as Triton does; tritonclient decodes both forms.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from edge_agent.errors import InvalidInput
from edge_agent.serving.requests import (
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    ModelMetadata,
)
from model_packager.tensors import DATATYPES, datatype_to_dtype
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
_LE = {dt: datatype_to_dtype(dt).newbyteorder("<") for dt in DATATYPES if dt != "BYTES"}


def _decode_bytes_tensor(raw: bytes, count: int, name: str) -> np.ndarray:
    items: list[bytes] = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise InvalidInput(f"input {name!r}: BYTES element length prefix is truncated")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise InvalidInput(f"input {name!r}: BYTES element is truncated")
        items.append(raw[pos : pos + n])
        pos += n
    if len(items) != count:
        raise InvalidInput(f"input {name!r} holds {len(items)} BYTES elements, shape needs {count}")
    return np.array(items, dtype=np.object_)


def encode_bytes_tensor(arr: np.ndarray) -> bytes:
    parts = []
    for item in arr.reshape(-1):
        b = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)


def request_from_proto(req: pb.ModelInferRequest) -> InferenceRequest:
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise InvalidInput(
            f"{len(raw)} raw_input_contents for {len(req.inputs)} inputs; they must match 1:1"
        )
    tensors = []
    for i, t in enumerate(req.inputs):
        datatype = t.datatype  # each protobuf field read costs; this is the per-request path
        if datatype not in _LE and datatype != "BYTES":
            if datatype == "BF16":
                raise InvalidInput(f"input {t.name!r}: BF16 is not supported")
            raise InvalidInput(f"input {t.name!r} has unknown datatype {datatype!r}")
        shape = tuple(t.shape)
        if shape and min(shape) < 0:
            raise InvalidInput(f"input {t.name!r} has a negative dimension in {list(shape)}")
        count = math.prod(shape)
        if raw:
            if t.HasField("contents"):
                raise InvalidInput(f"input {t.name!r} has both raw and typed contents")
            data = raw[i]
            if datatype == "BYTES":
                arr = _decode_bytes_tensor(data, count, t.name)
            else:
                dtype = _LE[datatype]
                need = count * dtype.itemsize
                if len(data) != need:
                    raise InvalidInput(
                        f"input {t.name!r} has {len(data)} bytes; {datatype} of shape "
                        f"{list(shape)} needs {need}"
                    )
                arr = np.frombuffer(data, dtype=dtype)
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
        if t.datatype == "BYTES":
            raws.append(encode_bytes_tensor(arr))
        else:
            raws.append(np.ascontiguousarray(arr, dtype=_LE[t.datatype]).tobytes())
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
