"""Build and sign packages from model artifacts.

``build_package`` reads each artifact's signature from the model itself (by loading it with its
runtime), checks that every variant agrees with the first, computes golden vectors by running each
variant, and writes the archive. Nothing is written when any step fails.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from model_packager import __version__, golden
from model_packager.archive import open_package, sha256_bytes, sha256_file, write_archive
from model_packager.errors import BuildError, DigestMismatch, InvalidPackage, PackageError
from model_packager.manifest import (
    FileRef,
    Manifest,
    Parity,
    Provenance,
    TensorModel,
    Variant,
    first_error,
)
from model_packager.records import SchemaError
from model_packager.runtimes import LoadedModel, RuntimeOptions, get_runtime
from model_packager.signing import sign_manifest
from model_packager.tensors import TensorSpec

_SUFFIX_RUNTIME = {".onnx": "onnx", ".tflite": "tflite"}

Progress = Callable[[str], None]


@dataclass
class ArtifactInput:
    """One model file to package as a variant."""

    path: Path
    name: str | None = None
    precision: str = "fp32"
    rtol: float = 1e-3
    atol: float = 1e-4
    parity: Parity | None = None

    @property
    def runtime(self) -> str:
        try:
            return _SUFFIX_RUNTIME[self.path.suffix.lower()]
        except KeyError:
            raise BuildError(
                f"{self.path.name}: unknown model type (expected {', '.join(_SUFFIX_RUNTIME)})"
            ) from None

    @property
    def variant_name(self) -> str:
        return self.name or f"{self.runtime}-{self.precision}"


@dataclass
class BuildSpec:
    name: str
    version: str
    artifacts: Sequence[ArtifactInput]
    description: str = ""
    labels: list[str] | None = None
    golden_count: int = 2
    seed: int = 0
    preprocessing: dict[str, Any] | None = None
    postprocessing: dict[str, Any] | None = None
    capture: dict[str, Any] | None = None
    provenance_extra: dict[str, Any] = field(default_factory=dict)
    converter: str | None = None


def _quiet(_: str) -> None:
    pass


def _tensor_models(specs: list[TensorSpec]) -> list[TensorModel]:
    return [TensorModel(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in specs]


def _name_mapping(
    kind: str, base: list[TensorSpec], own: list[TensorSpec], label: str
) -> dict[str, str]:
    """Map package tensor names to a variant's names: by name when they match, else by position."""
    if len(base) != len(own):
        raise BuildError(f"{label} has {len(own)} {kind}s, the first variant has {len(base)}")
    own_names = {s.name for s in own}
    mapping: dict[str, str] = {}
    for i, spec in enumerate(base):
        other = (
            next((s for s in own if s.name == spec.name), None)
            if spec.name in own_names
            else own[i]
        )
        assert other is not None
        if not other.compatible(spec):
            raise BuildError(
                f"{label} {kind} {other.name!r} is {other.datatype}{list(other.shape)}, the first "
                f"variant's {spec.name!r} is {spec.datatype}{list(spec.shape)}"
            )
        if other.name != spec.name:
            mapping[spec.name] = other.name
    return mapping


def build_package(
    spec: BuildSpec,
    out_dir: Path,
    signing_key: Ed25519PrivateKey | None = None,
    progress: Progress = _quiet,
) -> Path:
    """Write ``<sha256>.edgepkg`` into ``out_dir`` and return its path."""
    if not spec.artifacts:
        raise BuildError("at least one model artifact is needed")
    names = [a.variant_name for a in spec.artifacts]
    if len(set(names)) != len(names):
        raise BuildError(f"variant names must differ, got {names}")
    if spec.golden_count < 1:
        raise BuildError(f"golden_count must be at least 1, got {spec.golden_count}")

    loaded: list[tuple[ArtifactInput, LoadedModel]] = []
    try:
        for art in spec.artifacts:
            if not art.path.is_file():
                raise BuildError(f"{art.path}: no such file")
            progress(f"loading {art.path.name} with {art.runtime}")
            try:
                model = get_runtime(art.runtime).load(art.path, RuntimeOptions())
            except PackageError as exc:
                raise BuildError(str(exc)) from exc
            loaded.append((art, model))
        try:
            return _build(spec, loaded, Path(out_dir), signing_key, progress)
        except SchemaError as exc:
            # Names and versions are checked by the manifest model; say so as a build error.
            raise BuildError(f"invalid package metadata: {first_error(exc)}") from exc
    finally:
        for _, model in loaded:
            model.close()


def _build(
    spec: BuildSpec,
    loaded: list[tuple[ArtifactInput, LoadedModel]],
    out_dir: Path,
    signing_key: Ed25519PrivateKey | None,
    progress: Progress,
) -> Path:
    base_in, base_out = loaded[0][1].inputs, loaded[0][1].outputs
    if (
        spec.labels is not None
        and base_out
        and base_out[0].shape
        and base_out[0].shape[-1]
        not in (
            -1,
            len(spec.labels),
        )
    ):
        raise BuildError(
            f"{len(spec.labels)} labels given but output {base_out[0].name!r} has "
            f"{base_out[0].shape[-1]} classes"
        )
    golden_inputs = golden.sample_inputs(base_in, spec.golden_count, spec.seed)

    files: dict[str, Path | bytes] = {}
    variants: list[Variant] = []
    for art, model in loaded:
        label = f"variant {art.variant_name}"
        mapping = _name_mapping("input", base_in, model.inputs, label)
        mapping.update(_name_mapping("output", base_out, model.outputs, label))
        progress(f"computing golden vectors for {art.variant_name}")
        own_inputs = {mapping.get(k, k): v for k, v in golden_inputs.items()}
        try:
            raw_out = model.infer(own_inputs)
        except PackageError as exc:
            raise BuildError(f"{label} failed on its golden inputs: {exc}") from exc
        back = {v: k for k, v in mapping.items()}
        outputs = {back.get(k, k): v for k, v in raw_out.items()}
        golden_bytes = golden.encode(golden_inputs, outputs)
        art_path = f"artifacts/{art.variant_name}{art.path.suffix.lower()}"
        gold_path = f"golden/{art.variant_name}.npz"
        files[art_path] = art.path
        files[gold_path] = golden_bytes
        variants.append(
            Variant(
                name=art.variant_name,
                runtime=art.runtime,  # type: ignore[arg-type]
                precision=art.precision,
                artifact=FileRef(
                    path=art_path, sha256=sha256_file(art.path), size=art.path.stat().st_size
                ),
                golden=FileRef(
                    path=gold_path, sha256=sha256_bytes(golden_bytes), size=len(golden_bytes)
                ),
                rtol=art.rtol,
                atol=art.atol,
                parity=art.parity,
                tensor_names=mapping,
            )
        )

    first = spec.artifacts[0].path
    manifest = Manifest(
        name=spec.name,
        version=spec.version,
        description=spec.description,
        inputs=_tensor_models(base_in),
        outputs=_tensor_models(base_out),
        labels=spec.labels,
        variants=variants,
        preprocessing=spec.preprocessing,
        postprocessing=spec.postprocessing,
        capture=spec.capture,
        provenance=Provenance(
            tool=f"model-packager {__version__}",
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            source=first.name,
            source_sha256=sha256_file(first),
            converter=spec.converter,
            extra=spec.provenance_extra,
        ),
    )
    manifest_bytes = manifest.to_bytes()
    signature = sign_manifest(manifest_bytes, signing_key) if signing_key else None
    progress("writing package" + (" (signed)" if signature else " (unsigned)"))
    return write_archive(out_dir, manifest_bytes, files, signature)


def sign_package(path: Path, signing_key: Ed25519PrivateKey, out_dir: Path | None = None) -> Path:
    """Write a signed copy of a package (its digest changes, so it gets a new name)."""
    reader = open_package(path)
    signature = sign_manifest(reader.manifest_bytes, signing_key)
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[str, Path | bytes] = {}
        try:
            with tarfile.open(reader.path, "r:") as tar:
                for i, ref in enumerate(reader.manifest.files()):
                    src = tar.extractfile(reader.members[ref.path])
                    assert src is not None
                    target = Path(tmp) / str(i)
                    with open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
                    if sha256_file(target) != ref.sha256:
                        raise DigestMismatch(
                            f"{ref.path}: sha256 does not match the manifest; not signing"
                        )
                    files[ref.path] = target
        except (tarfile.TarError, EOFError) as exc:
            raise InvalidPackage(f"{reader.path.name}: archive became unreadable ({exc})") from exc
        return write_archive(
            Path(out_dir or Path(path).parent), reader.manifest_bytes, files, signature
        )
