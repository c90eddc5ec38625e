"""The protocol's binary tensor layout, shared by every transport that carries raw bytes.

OIP gRPC's ``raw_input_contents`` / ``raw_output_contents`` and the HTTP binary tensor data
extension use the same layout: little-endian, row-major, no padding; BOOL one byte per element;
BYTES elements each prefixed by a 4-byte little-endian length. One implementation keeps both
transports' byte-length checks and error messages identical.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from edge_agent.errors import InvalidInput
from model_packager.tensors import DATATYPES, datatype_to_dtype

#: Little-endian dtype of every fixed-size datatype (BYTES has none).
LE = {dt: datatype_to_dtype(dt).newbyteorder("<") for dt in DATATYPES if dt != "BYTES"}


def check_datatype(name: str, datatype: str) -> None:
    if datatype not in LE and datatype != "BYTES":
        if datatype == "BF16":
            raise InvalidInput(f"input {name!r}: BF16 is not supported")
        raise InvalidInput(f"input {name!r} has unknown datatype {datatype!r}")


def check_shape(name: str, shape: tuple[int, ...]) -> int:
    """The element count of a shape, which must have no negative dimension."""
    if shape and min(shape) < 0:
        raise InvalidInput(f"input {name!r} has a negative dimension in {list(shape)}")
    return math.prod(shape)


def decode_raw(
    name: str, datatype: str, shape: tuple[int, ...], count: int, data: bytes
) -> np.ndarray:
    """Raw bytes of one input -> a flat array, after checking the byte length (no copy)."""
    if datatype == "BYTES":
        return decode_bytes_tensor(data, count, name)
    dtype = LE[datatype]
    need = count * dtype.itemsize
    if len(data) != need:
        raise InvalidInput(
            f"input {name!r} has {len(data)} bytes; {datatype} of shape {list(shape)} needs {need}"
        )
    return np.frombuffer(data, dtype=dtype)


def decode_bytes_tensor(raw: bytes, count: int, name: str) -> np.ndarray:
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


def tensor_bytes(arr: np.ndarray, datatype: str) -> bytes | memoryview:
    """One output tensor in the binary layout, without a copy when the array already has it
    (shared memory writes it straight from the runtime's buffer)."""
    if datatype == "BYTES":
        return encode_bytes_tensor(arr)
    flat = np.ascontiguousarray(arr, dtype=LE[datatype]).reshape(-1)
    return memoryview(flat).cast("B")


def encode_raw(arr: np.ndarray, datatype: str) -> bytes:
    """One output tensor in the binary layout."""
    if datatype == "BYTES":
        return encode_bytes_tensor(arr)
    return np.ascontiguousarray(arr, dtype=LE[datatype]).tobytes()
