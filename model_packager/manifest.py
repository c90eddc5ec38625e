"""The package manifest: everything an agent needs to know before it trusts and loads a model.

The manifest is the signed object. It pins the sha256 of every other file in the archive, so one
Ed25519 signature over its exact bytes covers the whole package. ``FORMAT_VERSION`` changes whenever
a reader of an older version could misread a newer manifest; readers refuse versions they do not
know rather than guess.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from model_packager.errors import InvalidPackage
from model_packager.tensors import DATATYPES, TensorSpec
from protos.fleet_capture import policy_from_dict

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "signature.json"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

Runtime = Literal["onnx", "tflite"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorModel(_Strict):
    name: str = Field(min_length=1, description="Tensor name as the model declares it.")
    datatype: str = Field(description="Open Inference Protocol datatype, e.g. FP32.")
    shape: list[int] = Field(description="Dimensions; -1 is dynamic.")

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, v: str) -> str:
        if v not in DATATYPES:
            raise ValueError(f"unknown datatype {v!r}")
        return v

    @field_validator("shape")
    @classmethod
    def _dims(cls, v: list[int]) -> list[int]:
        if any(d < -1 or d == 0 for d in v):
            raise ValueError(f"shape {v} has a dimension that is neither positive nor -1")
        return v

    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.datatype, tuple(self.shape))


class FileRef(_Strict):
    path: str = Field(description="Path inside the archive (forward slashes, relative).")
    sha256: str
    size: int = Field(ge=0)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _SHA256_RE.match(v):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return v

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        parts = v.split("/")
        if v.startswith("/") or "\\" in v or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"unsafe path {v!r}")
        return v


class Parity(_Strict):
    """How closely a variant reproduces the source model (filled in by conversion)."""

    reference: str = Field(description="What the outputs were compared with, e.g. 'keras'.")
    samples: int
    max_abs_error: float
    mean_abs_error: float
    top1_agreement: float | None = None
    output_scale: float | None = Field(
        default=None, description="Largest |reference output|; tolerances are relative to it."
    )


class Variant(_Strict):
    """One runnable artifact of the model (e.g. onnx-fp32, tflite-int8) with its golden vectors."""

    name: str = Field(description="Unique within the package, e.g. 'onnx-fp32'.")
    runtime: Runtime
    precision: str = Field(default="fp32")
    artifact: FileRef
    golden: FileRef = Field(
        description="npz with in:<name> inputs and out:<name> expected outputs."
    )
    rtol: float = Field(default=1e-4, ge=0)
    atol: float = Field(default=1e-5, ge=0)
    parity: Parity | None = None
    tensor_names: dict[str, str] = Field(
        default_factory=dict,
        description="Package tensor name -> this artifact's own name, where they differ.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"invalid variant name {v!r}")
        return v


class Provenance(_Strict):
    tool: str
    created_at: str
    source: str | None = None
    source_sha256: str | None = None
    converter: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class Manifest(_Strict):
    format_version: int = FORMAT_VERSION
    name: str
    version: str
    description: str = ""
    inputs: list[TensorModel]
    outputs: list[TensorModel]
    labels: list[str] | None = None
    variants: list[Variant] = Field(min_length=1)
    preprocessing: dict[str, Any] | None = None
    postprocessing: dict[str, Any] | None = None
    #: Which inputs an agent keeps for review (``protos.fleet_capture.CapturePolicy`` fields);
    #: a deployment's own policy overrides it. Absent: nothing is captured.
    capture: dict[str, Any] | None = None
    provenance: Provenance

    @field_validator("name", "version")
    @classmethod
    def _names(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"{v!r} must be 1-128 characters of letters, digits, '.', '_', '-'")
        return v

    @field_validator("capture")
    @classmethod
    def _capture_policy(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            policy_from_dict(v)  # checked here so a bad block refuses the build, not a request
        return v

    @model_validator(mode="before")
    @classmethod
    def _known_version(cls, data: Any) -> Any:
        # Checked before the fields: a newer format may add fields, and "unknown field" would hide
        # the real reason this reader refuses the manifest.
        if isinstance(data, dict):
            version = data.get("format_version", FORMAT_VERSION)
            if version != FORMAT_VERSION or isinstance(version, bool):
                raise ValueError(
                    f"manifest format version {version!r} is not supported "
                    f"(this reader knows {FORMAT_VERSION})"
                )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError("variant names must be unique")
        paths = [f.path for f in self.files()]
        if len(set(paths)) != len(paths):
            raise ValueError("two manifest entries point at the same file")
        if {MANIFEST_NAME, SIGNATURE_NAME} & set(paths):
            raise ValueError("artifacts may not be named like the manifest or signature")
        folders = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}
        clash = sorted(folders & {*paths, MANIFEST_NAME, SIGNATURE_NAME})
        if clash:
            raise ValueError(f"{clash[0]!r} is both a file and the folder of another file")
        return self

    def files(self) -> list[FileRef]:
        """Every file the manifest pins, so verification can check each digest."""
        refs: list[FileRef] = []
        for v in self.variants:
            refs.extend((v.artifact, v.golden))
        return refs

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    def input_specs(self) -> list[TensorSpec]:
        return [t.spec() for t in self.inputs]

    def output_specs(self) -> list[TensorSpec]:
        return [t.spec() for t in self.outputs]

    def to_bytes(self) -> bytes:
        """Canonical bytes: these, exactly, are what gets signed and stored in the archive."""
        data = self.model_dump(mode="json")
        if data.get("capture") is None:
            del data["capture"]  # packages without a policy keep the bytes they always had
        return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidPackage(f"manifest is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidPackage("manifest must be a JSON object")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidPackage(f"manifest is invalid: {first_error(exc)}") from exc


def first_error(exc: ValidationError) -> str:
    """The first validation problem as one readable line: ``where: what``."""
    errs = exc.errors()
    if not errs:
        return str(exc)
    e = errs[0]
    loc = ".".join(str(p) for p in e.get("loc", ()))
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    msg = str(e.get("msg", "")).removeprefix("Value error, ")
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"
