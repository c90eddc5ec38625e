"""``convert``: a trained model in, one signed multi-variant package out, every variant gated.

Steps, each named in progress lines and in any error: open the source, read or generate samples,
run the source framework on them (the reference), then per target: convert, load with the
runtime the device will use, run the same samples, compare (``model_packager.parity``). Variants
past their tolerance are dropped or fail the build (``on_parity_fail``). Only then is the package
written, by ``build_package``, so a failed conversion leaves no package behind.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from model_packager import processing
from model_packager.archive import sha256_file
from model_packager.build import ArtifactInput, BuildSpec, build_package
from model_packager.convert import samples as sample_io
from model_packager.convert.base import (
    DEFAULT_TARGETS,
    TARGETS,
    ConversionError,
    Progress,
    Source,
    Target,
)
from model_packager.errors import PackageError
from model_packager.parity import ParityResult, Tolerance, compare, precision_family
from model_packager.runtimes import LoadedModel, RuntimeOptions, get_runtime
from model_packager.tensors import TensorSpec

OnParityFail = Literal["drop", "fail"]

# Golden-vector tolerances per precision: the agent replays a variant's own outputs, so these only
# absorb differences between CPUs and runtime builds, which grow as precision shrinks.
_GOLDEN_TOL: dict[str, tuple[float, float]] = {
    "fp32": (1e-3, 1e-4),
    "fp16": (1e-2, 1e-3),
    "int8": (5e-2, 2e-2),
}


def _quiet(_: str) -> None:
    pass


@dataclass
class ConvertSpec:
    """Everything ``convert`` needs; the CLI fills it from its options."""

    source: Path
    name: str
    version: str
    targets: Sequence[str] = DEFAULT_TARGETS
    source_kind: str | None = None  # a key of SOURCE_KINDS; None: guess from the files
    samples: Path | None = None  # parity samples (.npy / .npz / folder of .npy)
    calibration: Path | None = None  # int8 representative data; default: the parity samples
    num_samples: int = 64  # generated when no file is given, and the cap on given ones
    on_parity_fail: OnParityFail = "drop"
    classifier: bool | None = None  # None: a single (N, C) float output is a classifier
    tolerances: Mapping[str, Tolerance] | None = None
    input_shapes: Mapping[str, tuple[int, ...]] | None = None  # MXNet needs them
    labels: list[str] | None = None
    description: str = ""
    preprocessing: dict[str, Any] | None = None
    postprocessing: dict[str, Any] | None = None
    seed: int = 0
    mxnet_python: Path | None = None


@dataclass
class VariantReport:
    """One target's outcome: kept, or dropped for its parity figures or a failed step.

    ``parity`` is None when the target never got as far as the gate (its conversion, loading or
    run failed); ``step`` and ``error`` then say where and why.
    """

    name: str
    runtime: str
    precision: str
    status: Literal["kept", "dropped"]
    size: int
    seconds: float
    parity: ParityResult | None
    step: str = ""
    error: str = ""

    @property
    def reason(self) -> str:
        if self.parity is None:
            return f"failed at {self.step}: {self.error}"
        return self.parity.reason

    def line(self) -> str:
        p = self.parity
        if p is None:
            return f"{self.name:20} {self.status:7} {'':>10}  -> {self.reason}"
        top1 = "-" if p.top1_agreement is None else f"{p.top1_agreement:.3f}"
        return (
            f"{self.name:20} {self.status:7} {self.size / 1e6:7.2f} MB  max {p.max_abs_error:9.3g}"
            f"  mean {p.mean_abs_error:9.3g}  top1 {top1:5}  gate: {p.tolerance.describe()}"
            f"{'' if p.passed else '  -> ' + p.reason}"
        )


@dataclass
class ConversionReport:
    source: str
    framework: str
    samples: int
    generated_samples: bool
    variants: list[VariantReport] = field(default_factory=list)
    package: Path | None = None

    def table(self) -> str:
        head = (
            f"parity vs {self.framework} on {self.samples} "
            f"{'generated' if self.generated_samples else 'given'} samples:"
        )
        return "\n".join([head, *(f"  {v.line()}" for v in self.variants)])

    @property
    def dropped(self) -> list[VariantReport]:
        return [v for v in self.variants if v.status == "dropped"]


class ParityGateFailed(ConversionError):
    """A variant missed its tolerance and the build was asked to fail rather than drop it."""

    def __init__(self, report: ConversionReport, reason: str) -> None:
        super().__init__("parity", reason)
        self.report = report


def detect_kind(path: Path) -> str:
    """keras | savedmodel | onnx | mxnet | pytorch | modelarts, from what is on disk."""
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file() and (
            (path / "customize_service.py").exists() or (path / "saved_model.pb").exists()
        ):
            return "modelarts"
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        if any(path.glob("*-symbol.json")):
            return "mxnet"
        raise ConversionError("load", f"{path}: not a SavedModel, MXNet or ModelArts folder")
    suffix = path.suffix.lower()
    if suffix in (".keras", ".h5"):
        return "keras"
    if suffix == ".onnx":
        return "onnx"
    if path.name.endswith("-symbol.json") or suffix == ".params":
        return "mxnet"
    if suffix in (".pt2", ".pt", ".pth"):
        return "pytorch"
    if not path.exists():
        raise ConversionError("load", f"{path}: no such file or folder")
    raise ConversionError("load", f"{path.name}: unknown model type")


# Each opener imports its framework only when called: importing this module stays cheap.
def _open_keras(spec: ConvertSpec) -> Source:
    from model_packager.convert.tf_source import KerasSource

    return KerasSource(spec.source)


def _open_savedmodel(spec: ConvertSpec) -> Source:
    from model_packager.convert.tf_source import SavedModelSource

    return SavedModelSource(spec.source)


def _open_onnx(spec: ConvertSpec) -> Source:
    from model_packager.convert.onnx_source import OnnxSource

    return OnnxSource(spec.source)


def _open_mxnet(spec: ConvertSpec) -> Source:
    from model_packager.convert.mxnet_source import MXNetSource

    return MXNetSource(spec.source, spec.input_shapes, spec.mxnet_python)


def _open_pytorch(spec: ConvertSpec) -> Source:
    from model_packager.convert.torch_source import TorchSource

    return TorchSource(spec.source, spec.input_shapes)


def _open_modelarts(spec: ConvertSpec) -> Source:
    from model_packager.convert.modelarts import ModelArtsSource

    return ModelArtsSource(spec.source)


# Source kind -> (what it is on disk, opener). The one list of kinds the converter accepts: the
# CLI's --source-kind choices and help are made from it, so neither can leave a kind out.
_SOURCES: dict[str, tuple[str, Callable[[ConvertSpec], Source]]] = {
    "keras": (".keras / .h5 file", _open_keras),
    "savedmodel": ("SavedModel folder", _open_savedmodel),
    "onnx": (".onnx file", _open_onnx),
    "mxnet": ("MXNet -symbol.json with its .params", _open_mxnet),
    "pytorch": ("PyTorch .pt2 (torch.export) or TorchScript .pt file", _open_pytorch),
    "modelarts": (
        "ModelArts folder: config.json, customize_service.py, SavedModel",
        _open_modelarts,
    ),
}
SOURCE_KINDS: dict[str, str] = {kind: on_disk for kind, (on_disk, _) in _SOURCES.items()}


def open_source(spec: ConvertSpec) -> Source:
    kind = spec.source_kind or detect_kind(spec.source)
    if kind not in _SOURCES:
        raise ConversionError(
            "load", f"unknown source kind {kind!r}; known: {', '.join(SOURCE_KINDS)}"
        )
    _, opener = _SOURCES[kind]
    return opener(spec)


def _with_shapes(specs: list[TensorSpec], shapes: Mapping[str, tuple[int, ...]] | None) -> None:
    for i, s in enumerate(specs):
        if shapes and s.name in shapes:
            specs[i] = TensorSpec(s.name, s.datatype, tuple(shapes[s.name]))


def _own_names(declared: list[str], actual: list[str]) -> dict[str, str]:
    """Package name -> artifact name: exact, then TFLite's ``serving_default_<name>:0``, then
    position (how ``build_package`` maps them too)."""
    mapping: dict[str, str] = {}
    for i, name in enumerate(declared):
        if name in actual:
            mapping[name] = name
            continue
        hit = [a for a in actual if a.split(":")[0].endswith(f"_{name}")]
        mapping[name] = hit[0] if len(hit) == 1 else actual[i]
    return mapping


def _run_variant(
    model: LoadedModel, source: Source, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    in_map = _own_names([s.name for s in source.inputs], [s.name for s in model.inputs])
    out_map = _own_names(source.output_names, [s.name for s in model.outputs])
    got = model.infer({in_map[k]: v for k, v in inputs.items()})
    return {k: got[v] for k, v in out_map.items()}


def _check_processing(spec: ConvertSpec, source: Source) -> None:
    """Refuse a pre/post-processing declaration the agent would refuse at install time."""
    try:
        pre, post = processing.parse(spec.preprocessing, spec.postprocessing)
        if isinstance(pre, processing.PythonHandler):
            return
        if pre is not None:
            specs = {s.name: s for s in source.inputs}
            if pre.input not in specs:
                raise ValueError(f"preprocessing feeds unknown input {pre.input!r}")
            pre.check_against(specs[pre.input])
        if post is not None and post.output not in source.output_names:
            raise ValueError(f"postprocessing reads unknown output {post.output!r}")
    except ValueError as exc:
        raise ConversionError("processing", str(exc)) from exc


def _versions() -> str:
    found = []
    for dist in ("tensorflow", "tf2onnx", "onnxruntime", "onnx"):
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def convert(
    spec: ConvertSpec,
    out_dir: Path,
    signing_key: Ed25519PrivateKey | None = None,
    progress: Progress = _quiet,
) -> ConversionReport:
    """Convert, gate and package; returns the report (``report.package`` is the written file)."""
    unknown = [t for t in spec.targets if t not in TARGETS]
    if unknown:
        raise ConversionError(
            "targets", f"unknown target(s) {unknown}; known: {', '.join(TARGETS)}"
        )
    if not spec.targets:
        raise ConversionError("targets", "no targets given")
    targets = [TARGETS[t] for t in spec.targets]
    # ONNX first: the first variant names the package's tensors, and tf2onnx's names are ours.
    targets.sort(key=lambda t: t.runtime != "onnx")

    progress(f"opening {spec.source}")
    source = open_source(spec)
    try:
        _with_shapes(source.inputs, spec.input_shapes)
        return _convert(spec, source, targets, Path(out_dir), signing_key, progress)
    finally:
        source.close()


def _convert(
    spec: ConvertSpec,
    source: Source,
    targets: list[Target],
    out_dir: Path,
    signing_key: Ed25519PrivateKey | None,
    progress: Progress,
) -> ConversionReport:
    declared = getattr(source, "preprocessing", None)
    if declared is not None and spec.preprocessing is None:
        spec = dataclasses.replace(spec, preprocessing=declared)
    _check_processing(spec, source)
    for t in targets:
        if not source.supports(t):
            raise ConversionError(t.name, f"{source.framework} sources cannot produce {t.name}")
    if spec.samples is not None:
        progress(f"reading samples from {spec.samples}")
        samples = sample_io.take(sample_io.load(spec.samples, source.inputs), spec.num_samples)
    else:
        progress(f"generating {spec.num_samples} samples from the input spec")
        samples = sample_io.generate(source.inputs, spec.num_samples, spec.seed)
    calibration: dict[str, np.ndarray] | None = None
    if any(t.needs_calibration for t in targets):
        if spec.calibration is not None:
            calibration = sample_io.load(spec.calibration, source.inputs)
        else:
            calibration = samples
            if spec.samples is None:
                progress(
                    "warning: int8 calibrated on generated samples; pass real data for accuracy"
                )

    progress(f"running the source model ({source.framework}) on {sample_io.rows(samples)} samples")
    try:
        reference = source.run(samples)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(
            "reference", f"{source.framework} failed on the samples: {exc}"
        ) from exc

    report = ConversionReport(
        source=str(spec.source),
        framework=source.framework,
        samples=sample_io.rows(samples),
        generated_samples=spec.samples is None,
    )
    kept: list[ArtifactInput] = []
    with tempfile.TemporaryDirectory(prefix="convert-") as tmp:
        work = Path(tmp)
        for target in targets:
            t0 = time.perf_counter()
            try:
                out, result = _convert_target(
                    spec, source, target, samples, reference, calibration, work, progress
                )
            except ConversionError as exc:
                if spec.on_parity_fail == "fail":
                    raise
                progress(f"{target.name}: FAILED at {exc.step}: {exc.reason}")
                report.variants.append(
                    VariantReport(
                        name=target.name,
                        runtime=target.runtime,
                        precision=target.precision,
                        status="dropped",
                        size=0,
                        seconds=time.perf_counter() - t0,
                        parity=None,
                        step=exc.step,
                        error=exc.reason,
                    )
                )
                continue
            status: Literal["kept", "dropped"] = "kept" if result.passed else "dropped"
            report.variants.append(
                VariantReport(
                    name=target.name,
                    runtime=target.runtime,
                    precision=target.precision,
                    status=status,
                    size=out.stat().st_size,
                    seconds=time.perf_counter() - t0,
                    parity=result,
                )
            )
            progress(f"{target.name}: {'passed' if result.passed else 'FAILED'} ({result.reason})")
            if result.passed:
                rtol, atol = _GOLDEN_TOL.get(precision_family(target.precision), (1e-3, 1e-4))
                kept.append(
                    ArtifactInput(
                        path=out,
                        name=target.name,
                        precision=target.precision,
                        rtol=rtol,
                        atol=max(atol * result.output_scale, 1e-6),
                        parity=result.to_manifest(),
                    )
                )
        if report.dropped and spec.on_parity_fail == "fail":
            names = ", ".join(f"{v.name} ({v.reason})" for v in report.dropped)
            raise ParityGateFailed(report, f"past tolerance: {names}; no package written")
        if not kept:
            raise ParityGateFailed(
                report,
                "every variant failed its conversion or the parity gate; no package written: "
                + "; ".join(f"{v.name}: {v.reason}" for v in report.dropped),
            )
        for v in report.dropped:
            progress(f"dropped {v.name}: {v.reason}")
        report.package = build_package(
            BuildSpec(
                name=spec.name,
                version=spec.version,
                artifacts=kept,
                description=spec.description,
                labels=spec.labels,
                preprocessing=spec.preprocessing,
                postprocessing=spec.postprocessing,
                converter=_versions(),
                provenance_extra={
                    "source": Path(spec.source).name,
                    "source_framework": source.framework,
                    "source_sha256": sha256_file(spec.source)
                    if Path(spec.source).is_file()
                    else None,
                    "parity_samples": report.samples,
                    "parity_samples_generated": report.generated_samples,
                    "on_parity_fail": spec.on_parity_fail,
                    "dropped_variants": {v.name: v.reason for v in report.dropped},
                },
            ),
            out_dir,
            signing_key,
            progress,
        )
    return report


def _convert_target(
    spec: ConvertSpec,
    source: Source,
    target: Target,
    samples: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    calibration: dict[str, np.ndarray] | None,
    work: Path,
    progress: Progress,
) -> tuple[Path, ParityResult]:
    """Convert one target, load it with the device's runtime, run the samples, compare."""
    suffix = ".onnx" if target.runtime == "onnx" else ".tflite"
    out = work / f"{target.name}{suffix}"
    progress(f"{target.name}: converting")
    source.convert(target, out, calibration, work)
    progress(f"{target.name}: checking parity ({out.stat().st_size / 1e6:.2f} MB)")
    try:
        model = get_runtime(target.runtime).load(out, RuntimeOptions())
    except PackageError as exc:
        raise ConversionError(f"{target.name}: load", str(exc)) from exc
    try:
        got = _run_variant(model, source, samples)
    except PackageError as exc:
        raise ConversionError(f"{target.name}: run", str(exc)) from exc
    finally:
        model.close()
    result = compare(
        reference,
        got,
        reference_name=source.framework,
        precision=target.precision,
        classifier=spec.classifier,
        overrides=spec.tolerances,
    )
    return out, result
