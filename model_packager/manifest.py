"""The package manifest: everything an agent needs to know before it trusts and loads a model.

The manifest is the signed object. It pins the sha256 of every other file in the archive, so one
Ed25519 signature over its exact bytes covers the whole package. ``FORMAT_VERSION`` changes whenever
a reader of an older version could misread a newer manifest; readers refuse versions they do not
know rather than guess.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from model_packager.errors import InvalidPackage
from model_packager.records import Record, SchemaError, field
from model_packager.tensors import DATATYPES, TensorSpec
from protos.fleet_capture import policy_from_dict

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "signature.json"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

Runtime = Literal["onnx", "tflite"]
_RECORD = dataclass(frozen=True, kw_only=True)


def _known_datatype(v: str) -> str:
    if v not in DATATYPES:
        raise ValueError(f"unknown datatype {v!r}")
    return v


def _dims(v: list[int]) -> list[int]:
    if any(d < -1 or d == 0 for d in v):
        raise ValueError(f"shape {v} has a dimension that is neither positive nor -1")
    return v


def _hex(v: str) -> str:
    if not _SHA256_RE.match(v):
        raise ValueError("sha256 must be 64 lowercase hex digits")
    return v


def _relative(v: str) -> str:
    parts = v.split("/")
    if v.startswith("/") or "\\" in v or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"unsafe path {v!r}")
    return v


def _variant_name(v: str) -> str:
    if not _NAME_RE.match(v):
        raise ValueError(f"invalid variant name {v!r}")
    return v


def _name(v: str) -> str:
    if not _NAME_RE.match(v):
        raise ValueError(f"{v!r} must be 1-128 characters of letters, digits, '.', '_', '-'")
    return v


def _capture_policy(v: dict[str, Any]) -> dict[str, Any]:
    policy_from_dict(v)  # checked here so a bad block refuses the build, not a request
    return v


def _supported_version(version: Any) -> Any:
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ValueError(
            f"manifest format version {version!r} is not supported "
            f"(this reader knows {FORMAT_VERSION})"
        )
    return version


@_RECORD
class TensorModel(Record):
    name: str = field(min_length=1, description="Tensor name as the model declares it.")
    datatype: str = field(
        check=_known_datatype, description="Open Inference Protocol datatype, e.g. FP32."
    )
    shape: list[int] = field(check=_dims, description="Dimensions; -1 is dynamic.")

    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.datatype, tuple(self.shape))


@_RECORD
class FileRef(Record):
    path: str = field(
        check=_relative, description="Path inside the archive (forward slashes, relative)."
    )
    sha256: str = field(check=_hex)
    size: int = field(ge=0)


@_RECORD
class Parity(Record):
    """How closely a variant reproduces the source model (filled in by conversion)."""

    reference: str = field(description="What the outputs were compared with, e.g. 'keras'.")
    samples: int
    max_abs_error: float
    mean_abs_error: float
    top1_agreement: float | None = None
    output_scale: float | None = field(
        default=None, description="Largest |reference output|; tolerances are relative to it."
    )


@_RECORD
class Variant(Record):
    """One runnable artifact of the model (e.g. onnx-fp32, tflite-int8) with its golden vectors."""

    name: str = field(
        check=_variant_name, description="Unique within the package, e.g. 'onnx-fp32'."
    )
    runtime: Runtime
    precision: str = "fp32"
    artifact: FileRef
    golden: FileRef = field(
        description="npz with in:<name> inputs and out:<name> expected outputs."
    )
    rtol: float = field(default=1e-4, ge=0)
    atol: float = field(default=1e-5, ge=0)
    parity: Parity | None = None
    tensor_names: dict[str, str] = field(
        default_factory=dict,
        description="Package tensor name -> this artifact's own name, where they differ.",
    )


@_RECORD
class Provenance(Record):
    tool: str
    created_at: str
    source: str | None = None
    source_sha256: str | None = None
    converter: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@_RECORD
class Manifest(Record):
    format_version: int = field(default=FORMAT_VERSION, check=_supported_version)
    name: str = field(check=_name)
    version: str = field(check=_name)
    description: str = ""
    inputs: list[TensorModel]
    outputs: list[TensorModel]
    labels: list[str] | None = None
    variants: list[Variant] = field(min_length=1)
    preprocessing: dict[str, Any] | None = None
    postprocessing: dict[str, Any] | None = None
    #: Which inputs an agent keeps for review (``protos.fleet_capture.CapturePolicy`` fields);
    #: a deployment's own policy overrides it. Absent: nothing is captured.
    capture: dict[str, Any] | None = field(default=None, check=_capture_policy)
    provenance: Provenance

    @classmethod
    def _before(cls, data: Mapping[str, Any]) -> None:
        # Checked before the fields: a newer format may add fields, and "unknown field" would hide
        # the real reason this reader refuses the manifest.
        _supported_version(data.get("format_version", FORMAT_VERSION))

    def _check(self) -> None:
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
        data = self.to_dict(json=True)
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
            return cls.from_dict(data)
        except SchemaError as exc:
            raise InvalidPackage(f"manifest is invalid: {first_error(exc)}") from exc


def first_error(exc: SchemaError) -> str:
    """The first validation problem as one readable line: ``where: what``."""
    if not exc.problems:
        return str(exc)
    more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
    return exc.problems[0].line(with_input=False) + more
