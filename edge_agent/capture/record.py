"""One capture, from the request that made it to the bytes of a record.

The serving path only builds a ``Pending`` (references to arrays the request made anyway, no
copy: nothing mutates a request's arrays once it is answered); the background writer turns it
into a record's data (the input as received) and its ``CaptureMeta``.

What a record's data is:

* an input that arrived as an encoded image (BYTES, decoded by the package's preprocessing): the
  image bytes as the client sent them (``input_kind: image``, ``media_type`` from the file's
  signature: image/jpeg, image/png, ...);
* a numeric tensor: a ``.npy`` file of that sample (``input_kind: tensor``): one row of the batch
  (no batch axis) for a model with a batch dimension, the whole tensor otherwise.

A BYTES input that is not an image the model decodes is not captured (there is no safe ``.npy``
of Python objects); the writer counts it as skipped.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from edge_agent.capture.policy import ModelCapture, top_k
from protos import fleet_capture as fc

# File signatures of the image formats a client is likely to send.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


class NotCapturable(ValueError):
    """This input cannot be kept as a record (see the module docstring)."""


@dataclass(slots=True)
class Pending:
    """A capture waiting for the writer: references only, made on the serving path."""

    setup: ModelCapture
    model: str
    version: str
    reason: str
    captured_at_ms: int
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    #: The sample's row in the batch; None: the whole tensor is the sample.
    row: int | None
    #: The sample's raw scores (probabilities and top-k are computed by the writer).
    scores: np.ndarray | None
    shadow_version: str = ""
    shadow_scores: np.ndarray | None = None


def media_type(data: bytes) -> str:
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def build(p: Pending) -> tuple[bytes, fc.CaptureMeta]:
    """The record's data and meta (in the writer thread); ``NotCapturable`` when it has none."""
    if p.datatype == "BYTES":
        if not p.setup.image_input:
            raise NotCapturable("a BYTES input the model does not decode as an image")
        items = p.data.reshape(-1)
        item = items[p.row if p.row is not None else 0]
        data = bytes(item) if not isinstance(item, str) else item.encode()
        kind, media = fc.IMAGE, media_type(data)
    else:
        arr = np.asarray(p.data).reshape(p.shape)
        if p.row is not None:
            arr = arr[p.row]
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        data, kind, media = buf.getvalue(), fc.TENSOR, fc.NPY_MEDIA_TYPE
    if len(data) > fc.MAX_RECORD_BYTES:
        raise NotCapturable(f"{len(data)} bytes, more than a record holds")
    meta = fc.CaptureMeta(
        model=p.model,
        version=p.version,
        reason=p.reason,
        captured_at_ms=p.captured_at_ms,
        input_name=p.setup.input_name,
        input_kind=kind,
        media_type=media,
        deployment_id=p.setup.deployment_id,
        top_k=top_k(p.setup, p.scores),
        shadow_version=p.shadow_version,
        shadow_top_k=top_k(p.setup, p.shadow_scores),
    )
    return data, meta
