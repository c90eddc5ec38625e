"""The parity gate: does a converted variant still compute what the source model computes?

Every variant a conversion produces is run on the same N samples as the source framework (Keras,
a TensorFlow SavedModel, MXNet, or onnxruntime on the source ONNX file). The figures are the
largest and mean absolute difference over all outputs and, for classifiers, how often both pick
the same class (top-1 agreement). They go into the manifest (``Variant.parity``) so whoever deploys
the package sees how far each variant is from the model that was trained.

Thresholds depend on precision, because each is judged by what it can promise:

* ``fp32``: max abs error <= 1e-4 x output scale. Conversion only reorders float arithmetic.
* ``fp16``: max abs error <= 1e-2 x output scale. Weights (and maybe activations) lose bits.
* ``int8`` (any int8 flavour): top-1 agreement >= 0.98 for classifiers. Elementwise error of a
  quantised model says little about whether it still answers the same; agreement does. For a model
  that is not a classifier the gate falls back to max abs error <= 0.1 x output scale.

"Output scale" is the largest absolute value of the reference outputs (at least 1e-6), so the
gate means the same for logits in the hundreds and probabilities below one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from model_packager.manifest import Parity

_MIN_SCALE = 1e-6


@dataclass(frozen=True)
class Tolerance:
    """A precision's gate: every limit that is not None must hold."""

    max_abs_rel: float | None = None
    min_top1: float | None = None

    def describe(self) -> str:
        parts = []
        if self.max_abs_rel is not None:
            parts.append(f"max abs <= {self.max_abs_rel:g} x scale")
        if self.min_top1 is not None:
            parts.append(f"top-1 >= {self.min_top1:g}")
        return ", ".join(parts) or "none"


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs_rel=1e-4),
    "fp16": Tolerance(max_abs_rel=1e-2),
    "int8": Tolerance(min_top1=0.98),
}
# int8 on a model that has no class scores to agree on.
INT8_REGRESSION = Tolerance(max_abs_rel=0.1)


def precision_family(precision: str) -> str:
    """'int8-dynamic', 'int8-static' -> 'int8'; fp32/fp16 stay themselves."""
    return precision.split("-", 1)[0]


def tolerance_for(
    precision: str, classifier: bool, overrides: Mapping[str, Tolerance] | None = None
) -> Tolerance:
    family = precision_family(precision)
    table = {**DEFAULT_TOLERANCES, **(overrides or {})}
    tol = table.get(precision) or table.get(family) or DEFAULT_TOLERANCES["fp32"]
    if tol.min_top1 is not None and not classifier:
        tol = replace(
            tol, min_top1=None, max_abs_rel=tol.max_abs_rel or INT8_REGRESSION.max_abs_rel
        )
    return tol


@dataclass(frozen=True)
class ParityResult:
    """Figures for one variant against the reference, and the gate's verdict."""

    reference: str
    samples: int
    max_abs_error: float
    mean_abs_error: float
    output_scale: float
    top1_agreement: float | None
    tolerance: Tolerance
    passed: bool
    reason: str

    def to_manifest(self) -> Parity:
        return Parity(
            reference=self.reference,
            samples=self.samples,
            max_abs_error=self.max_abs_error,
            mean_abs_error=self.mean_abs_error,
            top1_agreement=self.top1_agreement,
            output_scale=self.output_scale,
        )


def is_classifier(outputs: Mapping[str, np.ndarray]) -> bool:
    """One output of shape (N, C) with C >= 2: class scores, so top-1 agreement means something."""
    if len(outputs) != 1:
        return False
    arr = next(iter(outputs.values()))
    return arr.ndim == 2 and arr.shape[1] >= 2 and arr.dtype.kind == "f"


def compare(
    reference: Mapping[str, np.ndarray],
    got: Mapping[str, np.ndarray],
    *,
    reference_name: str,
    precision: str,
    classifier: bool | None = None,
    overrides: Mapping[str, Tolerance] | None = None,
) -> ParityResult:
    """Compare a variant's outputs with the reference outputs (same names, same sample order)."""
    if classifier is None:
        classifier = is_classifier(reference)
    tol = tolerance_for(precision, classifier, overrides)
    max_err = 0.0
    total_err = 0.0
    count = 0
    scale = _MIN_SCALE
    samples = 0
    for name, want in reference.items():
        if name not in got:
            return _failed(reference_name, tol, f"variant produced no output {name!r}")
        have = np.asarray(got[name])
        if have.shape != want.shape:
            return _failed(
                reference_name,
                tol,
                f"output {name!r} has shape {list(have.shape)}, reference {list(want.shape)}",
            )
        w = want.astype(np.float64)
        diff = np.abs(have.astype(np.float64) - w)
        if not np.all(np.isfinite(diff)):
            return _failed(reference_name, tol, f"output {name!r} has NaN or infinite values")
        max_err = max(max_err, float(diff.max(initial=0.0)))
        total_err += float(diff.sum())
        count += diff.size
        scale = max(scale, float(np.abs(w).max(initial=0.0)))
        samples = max(samples, want.shape[0] if want.ndim else 1)
    mean_err = total_err / max(count, 1)

    top1: float | None = None
    if classifier:
        name, want = next(iter(reference.items()))
        top1 = float(np.mean(np.argmax(want, axis=-1) == np.argmax(got[name], axis=-1)))

    problems = []
    if tol.max_abs_rel is not None and max_err > tol.max_abs_rel * scale:
        problems.append(
            f"max abs error {max_err:.3g} > {tol.max_abs_rel:g} x output scale {scale:.3g}"
        )
    if tol.min_top1 is not None and top1 is not None and top1 < tol.min_top1:
        problems.append(f"top-1 agreement {top1:.3f} < {tol.min_top1:g}")
    return ParityResult(
        reference=reference_name,
        samples=samples,
        max_abs_error=max_err,
        mean_abs_error=mean_err,
        output_scale=scale,
        top1_agreement=top1,
        tolerance=tol,
        passed=not problems,
        reason="; ".join(problems) or "within tolerance",
    )


def _failed(reference_name: str, tol: Tolerance, reason: str) -> ParityResult:
    return ParityResult(
        reference=reference_name,
        samples=0,
        max_abs_error=float("inf"),
        mean_abs_error=float("inf"),
        output_scale=0.0,
        top1_agreement=None,
        tolerance=tol,
        passed=False,
        reason=reason,
    )
