"""All JSON / binary / multipart <-> domain mapping of the HTTP transport.

Requests come in three forms, all decoded into ``serving.requests.InferenceRequest``:

- the protocol's JSON (``$inference_request``), tensors as JSON arrays;
- the same JSON followed by raw tensor bytes (Triton's binary tensor data extension): the
  ``Inference-Header-Content-Length`` header gives the JSON's length and each input with a
  ``binary_data_size`` parameter takes that many bytes, in input order;
- ``multipart/form-data`` uploads: each form field becomes a BYTES input named like the field,
  one element per file, and the request is marked ``uploads`` so the data plane maps the fields
  onto the model (``validation.route_uploads``).

JSON BYTES elements are UTF-8 strings, or base64 when the input's parameters say
``"content_type": "base64"`` (how images travel inside JSON). Responses carry each output as
JSON or as binary, as the request asks (``binary_data`` per output, else the request's
``binary_data_output``); BYTES outputs that are not UTF-8 are given in base64 with
``"content_type": "base64"``. Every malformed request is an ``InvalidInput`` naming what to fix.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from edge_agent.errors import InvalidInput
from edge_agent.http.status import HttpError
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
from edge_agent.serving.tensor_bytes import LE, check_datatype, check_shape, decode_raw, encode_raw
from model_packager.tensors import TensorSpec

JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
HEADER_LENGTH = "Inference-Header-Content-Length"
#: Form parts one upload may carry; each becomes one BYTES element.
MAX_PARTS = 256

_INTEGER = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_FLOAT = {"FP16", "FP32", "FP64"}
_SHM_REGION = "shared_memory_region"
_SHM_SIZE = "shared_memory_byte_size"
_SHM_OFFSET = "shared_memory_offset"


@dataclass(slots=True)
class InferWire:
    """An inference request as it arrived; ``decode`` also records how to answer it."""

    model_name: str
    model_version: str
    body: bytes
    content_type: str
    header_length: int | None
    #: The client is on this machine (loopback): only then may tensors be in shared memory.
    local: bool = False
    # Filled in by ``decode``: outputs to return as binary data, and the default for the rest.
    binary_outputs: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False


def dumps(doc: Any) -> bytes:
    """Compact JSON; numpy arrays are written by orjson directly (no ``tolist``)."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def loads(data: bytes | memoryview | str) -> Any:
    """Strict JSON (NaN and Infinity are refused) through orjson: it parses the MLP's
    784-number request in ~14 us where the standard library takes ~140 us, a quarter of the
    whole request on a device."""
    return orjson.loads(data)


# ------------------------------------------------------------------------------- requests
def decode(wire: InferWire) -> InferenceRequest:
    media = wire.content_type.partition(";")[0].strip().lower()
    if media == "multipart/form-data":
        return _decode_multipart(wire)
    body = wire.body
    if not body:
        raise InvalidInput("the request body is empty: send an inference request (JSON)")
    if wire.header_length is None:
        header, binary = body, b""
    else:
        if not 0 < wire.header_length <= len(body):
            raise InvalidInput(
                f"{HEADER_LENGTH} is {wire.header_length}, the body has {len(body)} bytes"
            )
        header, binary = body[: wire.header_length], memoryview(body)[wire.header_length :]
    try:
        doc = loads(header)
    except (ValueError, UnicodeDecodeError) as exc:
        hint = f" (binary data? send {HEADER_LENGTH})" if wire.header_length is None else ""
        raise InvalidInput(f"the inference request is not valid JSON: {exc}{hint}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("the inference request must be a JSON object")
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput('"id" must be a string')
    params = _params(doc, "the request")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput('"inputs" must be a non-empty list of tensors')
    tensors, used = [], 0
    for item in inputs:
        tensor, size = _decode_input(item, binary, used)
        if tensor.shm is not None:
            require_local(wire.local)
        tensors.append(tensor)
        used += size
    if used != len(binary):
        raise InvalidInput(
            f"{len(binary) - used} bytes of binary data follow the tensors that declare "
            "binary_data_size"
        )
    default = params.get("binary_data_output", False)
    if not isinstance(default, bool):
        raise InvalidInput('parameter "binary_data_output" must be true or false')
    wire.binary_default = default
    capture = params.get("capture", False)
    if not isinstance(capture, bool):
        raise InvalidInput('parameter "capture" must be true or false')
    names = []
    output_shm = {}
    outputs = doc.get("outputs", [])
    if not isinstance(outputs, list):
        raise InvalidInput('"outputs" must be a list')
    for out in outputs:
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise InvalidInput('each requested output must be an object with a "name"')
        out_params = _params(out, f"output {out['name']!r}")
        if out_params.get("classification"):
            raise classification_refused(out["name"])
        binary_data = out_params.get("binary_data")
        if binary_data is not None:
            if not isinstance(binary_data, bool):
                raise InvalidInput(f'output {out["name"]!r}: "binary_data" must be true or false')
            wire.binary_outputs[out["name"]] = binary_data
        ref = _shm_ref(out_params, f"output {out['name']!r}")
        if ref is not None:
            require_local(wire.local)
            output_shm[out["name"]] = ref
        names.append(out["name"])
    return InferenceRequest(
        wire.model_name,
        wire.model_version,
        request_id,
        tensors,
        names,
        output_shm=output_shm,
        capture=capture,
    )


def _shm_ref(params: dict[str, Any], what: str) -> ShmRef | None:
    """The shared memory parameters of an input or requested output, or None without them."""
    if _SHM_REGION not in params:
        if _SHM_SIZE in params or _SHM_OFFSET in params:
            raise InvalidInput(f"{what}: {_SHM_SIZE}/{_SHM_OFFSET} without {_SHM_REGION}")
        return None
    region = params[_SHM_REGION]
    if not isinstance(region, str):
        raise InvalidInput(f"{what}: {_SHM_REGION} must be a string")
    if _SHM_SIZE not in params:
        raise InvalidInput(f"{what}: {_SHM_REGION} needs {_SHM_SIZE}")
    values = []
    for key, value in ((_SHM_OFFSET, params.get(_SHM_OFFSET, 0)), (_SHM_SIZE, params[_SHM_SIZE])):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidInput(f"{what}: {key} must be a byte count")
        values.append(value)
    return ShmRef(region, values[0], values[1])


def _params(obj: dict[str, Any], what: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidInput(f'{what}: "parameters" must be an object')
    return params


def _decode_input(item: Any, binary: memoryview | bytes, offset: int) -> tuple[InputTensor, int]:
    """One ``$request_input``; returns it and how many binary bytes it took."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidInput('each input must be an object with a "name"')
    name = item["name"]
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidInput(f'input {name!r} needs a "datatype"')
    check_datatype(name, datatype)
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InvalidInput(f'input {name!r}: "shape" must be a list of integers')
    shape_t = tuple(shape)
    count = check_shape(name, shape_t)
    params = _params(item, f"input {name!r}")
    ref = _shm_ref(params, f"input {name!r}")
    if ref is not None:
        if "data" in item or "binary_data_size" in params:
            raise InvalidInput(f"input {name!r} has both shared memory and data")
        return InputTensor(name, datatype, shape_t, NO_DATA, ref), 0
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f'input {name!r}: "binary_data_size" must be a byte count')
        if "data" in item:
            raise InvalidInput(f'input {name!r} has both "data" and binary_data_size')
        if offset + size > len(binary):
            raise InvalidInput(
                f"input {name!r} declares {size} bytes of binary data, only "
                f"{len(binary) - offset} remain in the body"
            )
        data = (
            bytes(binary[offset : offset + size])
            if datatype == "BYTES"
            else binary[offset : offset + size]
        )
        arr = decode_raw(name, datatype, shape_t, count, data)  # type: ignore[arg-type]
        return InputTensor(name, datatype, shape_t, arr.reshape(shape_t)), size
    if "data" not in item:
        raise InvalidInput(f'input {name!r} has no "data" (and no binary_data_size)')
    arr = _from_json(name, datatype, count, item["data"], params.get("content_type"))
    return InputTensor(name, datatype, shape_t, arr.reshape(shape_t)), 0


def _from_json(name: str, datatype: str, count: int, data: Any, content_type: Any) -> np.ndarray:
    """``"data"`` (nested or flat, row-major) -> a flat array of the datatype, values checked."""
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat = _flatten(data)
        if len(flat) != count:
            raise InvalidInput(f"input {name!r} has {len(flat)} values; its shape needs {count}")
        return np.array([_bytes_item(name, v, content_type) for v in flat] or [], dtype=np.object_)
    try:
        arr = np.asarray(data)
    except ValueError as exc:  # ragged nesting
        raise InvalidInput(f"input {name!r}: data is not a regular array ({exc})") from None
    if arr.size != count:
        raise InvalidInput(f"input {name!r} has {arr.size} values; its shape needs {count}")
    kind = arr.dtype.kind
    if count == 0:
        return np.empty(0, dtype=LE[datatype])
    if datatype == "BOOL":
        if kind != "b":
            raise InvalidInput(f"input {name!r}: BOOL data must be true or false")
    elif datatype in _FLOAT:
        if kind not in "iuf":
            raise InvalidInput(f"input {name!r}: {datatype} data must be numbers")
    elif datatype in _INTEGER:
        if kind not in "iu":
            raise InvalidInput(f"input {name!r}: {datatype} data must be integers")
        info = np.iinfo(LE[datatype])
        if int(arr.min()) < info.min or int(arr.max()) > info.max:
            raise InvalidInput(f"input {name!r}: value out of range for {datatype}")
    return arr.reshape(-1).astype(LE[datatype], copy=False)


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def _bytes_item(name: str, value: Any, content_type: Any) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(f"input {name!r}: BYTES data must be strings")
    if content_type == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"input {name!r}: not valid base64 ({exc})") from None
    return value.encode("utf-8")


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """A ``Content-Encoding: gzip | deflate`` body (tritonclient's request compression),
    inflated to at most ``limit`` bytes: a small bomb must not become a large allocation."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise HttpError(415, f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    inflater = zlib.decompressobj(wbits=47 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the {encoding} body does not decompress: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise HttpError(413, f"the decompressed body is larger than {limit} bytes")
    if not inflater.eof:
        raise InvalidInput(f"the {encoding} body is truncated")
    return out


# ------------------------------------------------------------------------------- multipart
_PARAM = re.compile(r';\s*([A-Za-z0-9_.*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


def _header_params(value: str) -> dict[str, str]:
    """``form-data; name="file"; filename="a.png"`` -> ``{"name": "file", ...}``."""
    params = {}
    for m in _PARAM.finditer(value):
        quoted, token = m.group(2), m.group(3)
        params[m.group(1).lower()] = (
            re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else token
        )
    return params


def _decode_multipart(wire: InferWire) -> InferenceRequest:
    boundary = _header_params(wire.content_type).get("boundary", "")
    if not boundary:
        raise InvalidInput("multipart/form-data without a boundary parameter")
    fields: dict[str, list[bytes]] = {}
    for headers, content in _parts(wire.body, boundary.encode("latin-1")):
        disposition = headers.get("content-disposition", "")
        if not disposition.lower().startswith("form-data"):
            raise InvalidInput("each multipart part needs Content-Disposition: form-data")
        name = _header_params(disposition).get("name")
        if not name:
            raise InvalidInput("a multipart part has no field name")
        fields.setdefault(name, []).append(content)
    if not fields:
        raise InvalidInput("the upload holds no files")
    tensors = []
    for name, items in fields.items():
        arr = np.empty(len(items), dtype=np.object_)
        arr[:] = items
        tensors.append(InputTensor(name, "BYTES", (len(items),), arr))
    return InferenceRequest(wire.model_name, wire.model_version, "", tensors, uploads=True)


def _parts(body: bytes, boundary: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart body (RFC 7578), as (lower-case headers, content)."""
    delimiter = b"--" + boundary
    pos = body.find(delimiter)
    if pos < 0:
        raise InvalidInput("the multipart body does not contain its boundary")
    pos += len(delimiter)
    parts = []
    while not body.startswith(b"--", pos):
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            raise InvalidInput("the multipart body ends without its closing boundary")
        start = line_end + 2
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise InvalidInput("the multipart body ends without its closing boundary")
        if len(parts) == MAX_PARTS:
            raise InvalidInput(f"more than {MAX_PARTS} parts in one upload")
        parts.append(_part(body[start:end]))
        pos = end + 2 + len(delimiter)
    return parts


def _part(raw: bytes) -> tuple[dict[str, str], bytes]:
    if raw.startswith(b"\r\n"):
        return {}, raw[2:]
    head_end = raw.find(b"\r\n\r\n")
    if head_end < 0:
        raise InvalidInput("a multipart part has no blank line after its headers")
    headers = {}
    for line in raw[:head_end].decode("utf-8", "replace").split("\r\n"):
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip()
    return headers, raw[head_end + 4 :]


# ------------------------------------------------------------------------------- responses
def encode(response: InferenceResponse, wire: InferWire) -> tuple[list[bytes], int | None]:
    """The ``$inference_response`` body (binary outputs after the JSON), and the JSON's length
    when binary data follows it (the ``Inference-Header-Content-Length`` to send)."""
    outputs = []
    binaries: list[bytes] = []
    for t in response.outputs:
        arr = t.data
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(arr.shape)}
        if t.shm is not None:
            # The data is in the client's region; the tensor says where, as Triton does.
            entry["parameters"] = {_SHM_REGION: t.shm.region, _SHM_SIZE: t.shm.byte_size}
            if t.shm.offset:
                entry["parameters"][_SHM_OFFSET] = t.shm.offset
        elif wire.binary_outputs.get(t.name, wire.binary_default):
            raw = encode_raw(arr, t.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            binaries.append(raw)
        elif t.datatype == "BYTES":
            entry.update(_bytes_json(arr))
        elif arr.dtype.kind == "f" and arr.dtype.itemsize == 2:
            entry["data"] = arr.reshape(-1).tolist()  # FP16: orjson writes 32 and 64 bits only
        else:
            entry["data"] = np.ascontiguousarray(arr.reshape(-1))
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        doc["id"] = response.id
    doc["outputs"] = outputs
    header = dumps(doc)
    if not binaries:
        return [header], None
    return [header, *binaries], len(header)


def _bytes_json(arr: np.ndarray) -> dict[str, Any]:
    items = [b if isinstance(b, bytes) else str(b).encode() for b in arr.reshape(-1)]
    try:
        return {"data": [b.decode("utf-8") for b in items]}
    except UnicodeDecodeError:
        return {
            "data": [base64.b64encode(b).decode("ascii") for b in items],
            "parameters": {"content_type": "base64"},
        }


def server_metadata(name: str, version: str, extensions: list[str]) -> dict[str, Any]:
    return {"name": name, "version": version, "extensions": extensions}


def model_metadata(md: ModelMetadata) -> dict[str, Any]:
    return {
        "name": md.name,
        "versions": md.versions,
        "platform": md.platform,
        "inputs": [s.to_dict() for s in md.inputs],
        "outputs": [s.to_dict() for s in md.outputs],
    }


def _config_tensor(spec: TensorSpec, is_input: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": spec.name,
        "data_type": CONFIG_DATATYPES.get(spec.datatype, "TYPE_INVALID"),
        "dims": list(spec.shape),
    }
    if is_input:
        doc["format"] = "FORMAT_NONE"
    return doc


def model_config(cfg: ModelConfig) -> dict[str, Any]:
    """Triton's ``ModelConfig`` as JSON (proto field names), the fields the agent knows."""
    return {
        "name": cfg.name,
        "platform": cfg.platform,
        "backend": cfg.backend,
        "max_batch_size": cfg.max_batch_size,
        "input": [_config_tensor(s, True) for s in cfg.inputs],
        "output": [_config_tensor(s, False) for s in cfg.outputs],
    }


def _duration(d: Duration) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def model_statistics(entries: list[tuple[str, str, ModelStats]]) -> dict[str, Any]:
    """``$stats_model_response`` of Triton's statistics extension."""
    out = []
    for name, version, s in entries:
        out.append(
            {
                "name": name,
                "version": version,
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": _duration(s.success),
                    "fail": _duration(s.fail),
                    "queue": _duration(s.queue),
                    "compute_input": _duration(s.compute_input),
                    "compute_infer": _duration(s.compute_infer),
                    "compute_output": _duration(s.compute_output),
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": _duration(b.compute_input),
                        "compute_infer": _duration(b.compute_infer),
                        "compute_output": _duration(b.compute_output),
                    }
                    for size, b in sorted(s.batches.items())
                ],
                # The agent's extension: this version's comparison as a shadow version.
                "shadow_stats": {
                    "compared": s.shadow.compared,
                    "skipped": s.shadow.skipped,
                    "failed": s.shadow.failed,
                    "rows": s.shadow.rows,
                    "agreed_rows": s.shadow.agreed_rows,
                    "max_abs_diff": s.shadow.max_abs_diff,
                },
            }
        )
    return {"model_stats": out}


def shm_status(regions: list[RegionStatus]) -> list[dict[str, Any]]:
    """Triton's system shared memory status: one object per region."""
    return [
        {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
        for r in regions
    ]


def shm_register(body: bytes) -> tuple[str, int, int]:
    """``{"key": "/name", "offset": 0, "byte_size": N}`` -> (key, offset, byte_size)."""
    try:
        doc = loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"the register request is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("key"), str):
        raise InvalidInput('the register request is {"key": "/name", "offset": 0, "byte_size": N}')
    values = []
    pairs = (("offset", doc.get("offset", 0)), ("byte_size", doc.get("byte_size")))
    for field_name, value in pairs:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidInput(f'"{field_name}" must be a byte count')
        values.append(value)
    return doc["key"], values[0], values[1]


def repository_index(entries: list[RepositoryEntry]) -> list[dict[str, str]]:
    return [
        {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
        for e in entries
    ]
