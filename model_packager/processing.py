"""Pre- and post-processing declared in the manifest and applied by the agent.

A camera or a phone sends JPEG/PNG bytes, not a normalised float tensor; asking every client to
re-implement the model's resize and normalisation is how accuracy silently drops in the field.
So the package declares the pipeline once (``manifest.preprocessing`` / ``postprocessing``), the
agent applies it, and clients send an image as a BYTES tensor under the model input's name.

``preprocessing`` (one image input)::

    {"input": "input_layer", "decode": "image", "color": "RGB", "resize": [96, 96],
     "scale": 0.00392156862745098, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
     "layout": "NHWC", "dtype": "FP32"}

Order: decode -> convert colour -> resize (bilinear, to height x width) -> x * scale ->
(x - mean) / std per channel -> layout -> dtype. A request that sends the input in its declared
datatype skips all of it, so tensor clients keep working.

``postprocessing`` (one output)::

    {"output": "predictions", "softmax": false, "top_k": 3}

``softmax`` replaces the output with its softmax over the last axis. ``top_k`` > 0 adds an output
``<output>_topk``, BYTES [batch, k], each element ``"score:index:label"``: the format of Triton's
classification extension, so existing OIP clients can parse it. Labels come from the manifest.

Decoding needs Pillow (part of the agent's install); it is imported only when an image arrives.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np

from model_packager.errors import PackageError
from model_packager.records import Record, field
from model_packager.tensors import TensorSpec, datatype_to_dtype

TOPK_SUFFIX = "_topk"


class ProcessingError(PackageError):
    """An input could not be pre-processed (undecodable image, wrong element count, ...)."""


@dataclass(frozen=True, kw_only=True)
class Preprocessing(Record):
    input: str = field(description="Model input the decoded images feed.")
    decode: Literal["image"] = "image"
    color: Literal["RGB", "BGR", "L"] = "RGB"
    resize: tuple[int, int] | None = field(
        default=None, description="Height, width; None keeps the image's own size."
    )
    scale: float = 1.0
    mean: list[float] | None = None
    std: list[float] | None = None
    layout: Literal["NHWC", "NCHW"] = "NHWC"
    dtype: str = "FP32"

    def _check(self) -> None:
        channels = 1 if self.color == "L" else 3
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) not in (1, channels):
                raise ValueError(f"{name} needs 1 or {channels} values, got {len(values)}")
        if self.std is not None and any(s == 0 for s in self.std):
            raise ValueError("std values must not be 0")
        try:
            datatype_to_dtype(self.dtype)
        except KeyError as exc:
            raise ValueError(f"dtype: {exc.args[0]}") from None

    @property
    def channels(self) -> int:
        return 1 if self.color == "L" else 3

    def check_against(self, spec: TensorSpec) -> None:
        """The model input must be a batch of images in the declared layout and dtype."""
        if spec.datatype != self.dtype or len(spec.shape) != 4:
            raise ValueError(
                f"preprocessing makes {self.dtype} [batch, ...] images, input {spec.name!r} is "
                f"{spec.datatype}{list(spec.shape)}"
            )
        c = spec.shape[3] if self.layout == "NHWC" else spec.shape[1]
        if c not in (-1, self.channels):
            raise ValueError(
                f"input {spec.name!r} has {c} channels, {self.color} gives {self.channels}"
            )

    def apply(self, items: np.ndarray) -> np.ndarray:
        """BYTES elements (one encoded image each) -> the model's input batch."""
        flat = items.reshape(-1)
        if flat.size == 0:
            raise ProcessingError(f"input {self.input!r}: no images")
        return np.stack([self.image(bytes(b)) for b in flat])

    def image(self, data: bytes) -> np.ndarray:
        try:
            from PIL import Image, UnidentifiedImageError
        except ImportError as exc:  # pragma: no cover - Pillow is in the agent extra
            raise ProcessingError("decoding images needs Pillow (pip install pillow)") from exc
        try:
            with Image.open(io.BytesIO(data)) as img:
                img = img.convert("L" if self.color == "L" else "RGB")
                if self.resize is not None:
                    h, w = self.resize
                    img = img.resize((w, h), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.float32)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise ProcessingError(f"input {self.input!r}: not a decodable image ({exc})") from exc
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if self.color == "BGR":
            arr = arr[:, :, ::-1]
        arr = arr * np.float32(self.scale)
        if self.mean is not None:
            arr = arr - np.asarray(self.mean, np.float32)
        if self.std is not None:
            arr = arr / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            arr = arr.transpose(2, 0, 1)
        return np.ascontiguousarray(arr.astype(datatype_to_dtype(self.dtype)))


@dataclass(frozen=True, kw_only=True)
class Postprocessing(Record):
    output: str = field(description="Model output holding class scores, [batch, classes].")
    softmax: bool = False
    top_k: int = field(default=0, ge=0)

    @property
    def topk_name(self) -> str:
        return f"{self.output}{TOPK_SUFFIX}"

    def extra_outputs(self) -> list[TensorSpec]:
        return [TensorSpec(self.topk_name, "BYTES", (-1, self.top_k))] if self.top_k else []

    def apply(
        self, outputs: dict[str, np.ndarray], labels: list[str] | None
    ) -> dict[str, np.ndarray]:
        scores = outputs[self.output]
        if self.softmax:
            z = scores.astype(np.float64) - scores.max(axis=-1, keepdims=True)
            e = np.exp(z)
            scores = (e / e.sum(axis=-1, keepdims=True)).astype(scores.dtype)
            outputs = {**outputs, self.output: scores}
        if self.top_k:
            outputs = {**outputs, self.topk_name: top_k(scores, self.top_k, labels)}
        return outputs


def top_k(scores: np.ndarray, k: int, labels: list[str] | None) -> np.ndarray:
    """``"score:index:label"`` strings, best first, per row (Triton classification format)."""
    flat = scores.reshape(scores.shape[0], -1)
    k = min(k, flat.shape[1])
    idx = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    out = np.empty((flat.shape[0], k), dtype=object)
    for r in range(flat.shape[0]):
        for j, i in enumerate(idx[r]):
            label = labels[i] if labels is not None and i < len(labels) else ""
            text = f"{float(flat[r, i]):f}:{int(i)}" + (f":{label}" if label else "")
            out[r, j] = text.encode()
    return out


@dataclass(frozen=True, kw_only=True)
class PythonHandler(Record):
    """A ModelArts ``customize_service.py`` carried in the (signed) manifest.

    Its ``_preprocess`` / ``_postprocess`` are arbitrary Python, so an agent runs them only when
    its settings allow Python handlers; otherwise it refuses the install. The source sits inside
    the manifest, so the package signature covers it like every pinned file.
    """

    handler: Literal["modelarts"] = "modelarts"
    module: str = field(description="File name of the handler, e.g. customize_service.py.")
    source: str = field(description="The handler's Python source.")
    sha256: str
    config: dict[str, object] = field(
        default_factory=dict, description="The model directory's config.json, as imported."
    )


def parse(
    pre: dict[str, object] | None, post: dict[str, object] | None
) -> tuple[Preprocessing | PythonHandler | None, Postprocessing | None]:
    """Manifest dicts -> checked declarations (``SchemaError``, a ``ValueError``, names the
    problem)."""
    if pre and "handler" in pre:
        return PythonHandler.from_dict(pre), None
    return (
        Preprocessing.from_dict(pre) if pre else None,
        Postprocessing.from_dict(post) if post else None,
    )


def python_handler(pre: dict[str, object] | None) -> PythonHandler | None:
    """The manifest's Python handler declaration, if it has one."""
    parsed, _ = parse(pre, None)
    return parsed if isinstance(parsed, PythonHandler) else None
