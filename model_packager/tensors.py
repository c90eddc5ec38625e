"""Tensor datatypes and signatures shared by the package format, the runtimes and the agent.

The Open Inference Protocol names datatypes with strings such as ``FP32``; runtimes speak numpy
dtypes. This module is the single mapping between the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_DATATYPE_TO_DTYPE: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_DTYPE_TO_DATATYPE: dict[np.dtype, str] = {v: k for k, v in _DATATYPE_TO_DTYPE.items()}

DATATYPES: tuple[str, ...] = tuple(_DATATYPE_TO_DTYPE)


def datatype_to_dtype(datatype: str) -> np.dtype:
    """numpy dtype for an OIP datatype name; ``KeyError`` names unknown ones."""
    try:
        return _DATATYPE_TO_DTYPE[datatype]
    except KeyError:
        raise KeyError(
            f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        ) from None


def dtype_to_datatype(dtype: np.dtype | type) -> str:
    """OIP datatype name for a numpy dtype (strings and bytes map to BYTES)."""
    dt = np.dtype(dtype)
    if dt.kind in ("S", "U", "O"):
        return "BYTES"
    try:
        return _DTYPE_TO_DATATYPE[dt.newbyteorder("=")]
    except KeyError:
        raise KeyError(f"numpy dtype {dt} has no Open Inference Protocol datatype") from None


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, datatype and shape of one model input or output; -1 marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return datatype_to_dtype(self.datatype)

    @property
    def has_batch_dim(self) -> bool:
        """True when the first dimension is dynamic, which is what dynamic batching needs."""
        return len(self.shape) > 0 and self.shape[0] == -1

    def accepts(self, shape: Sequence[int]) -> bool:
        """Whether a concrete shape fits this spec (same rank, fixed dims equal)."""
        if len(shape) != len(self.shape):
            return False
        return all(want == -1 or want == got for want, got in zip(self.shape, shape, strict=True))

    def compatible(self, other: TensorSpec) -> bool:
        """Same datatype and rank, and every dimension fixed in both is equal (names ignored)."""
        if self.datatype != other.datatype or len(self.shape) != len(other.shape):
            return False
        pairs = zip(self.shape, other.shape, strict=True)
        return all(a == -1 or b == -1 or a == b for a, b in pairs)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TensorSpec:
        shape = data["shape"]
        assert isinstance(shape, list | tuple)
        return cls(name=str(data["name"]), datatype=str(data["datatype"]), shape=tuple(shape))
