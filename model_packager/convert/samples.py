"""Sample inputs for the parity gate and for int8 calibration.

Samples come from the user (a ``.npy`` file, an ``.npz`` file keyed by input name, or a folder of
``.npy`` files, one sample each) or are generated from the input spec. Generated samples are
standard-normal floats: good enough to show that a conversion computes the same function, but a
poor calibration set for int8 (real data gives better int8 accuracy), which is why the CLI says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model_packager.convert.base import ConversionError
from model_packager.tensors import TensorSpec

Samples = dict[str, np.ndarray]


def generate(specs: list[TensorSpec], count: int, seed: int = 0) -> Samples:
    """``count`` samples per input; every dynamic dimension other than the first becomes 1."""
    rng = np.random.default_rng(seed)
    out: Samples = {}
    for spec in specs:
        shape = [count] + [1 if d == -1 else d for d in spec.shape[1:]]
        dt = spec.dtype
        if dt.kind == "f":
            out[spec.name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind in "iu":
            out[spec.name] = rng.integers(0, 10, size=shape).astype(dt)
        elif dt.kind == "b":
            out[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise ConversionError(
                "samples", f"cannot generate samples for {spec.datatype} input {spec.name!r}"
            )
    return out


def load(path: Path, specs: list[TensorSpec]) -> Samples:
    """Read samples and check them against the input spec (a missing batch axis is added)."""
    path = Path(path)
    try:
        if path.is_dir():
            files = sorted(path.glob("*.npy"))
            if not files:
                raise ConversionError("samples", f"{path}: folder holds no .npy files")
            if len(specs) != 1:
                raise ConversionError(
                    "samples", "a folder of samples works for one-input models; use an .npz file"
                )
            rows = [np.load(f, allow_pickle=False) for f in files]
            spec = specs[0]
            rows = [r[None] if r.ndim == len(spec.shape) - 1 else r for r in rows]
            raw: Samples = {spec.name: np.concatenate(rows, axis=0)}
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                raw = {k: data[k] for k in data.files}
        elif path.suffix == ".npy":
            if len(specs) != 1:
                raise ConversionError(
                    "samples", "an .npy file works for one-input models; use an .npz file"
                )
            raw = {specs[0].name: np.load(path, allow_pickle=False)}
        else:
            raise ConversionError("samples", f"{path}: expected a .npy or .npz file or a folder")
    except (OSError, ValueError) as exc:
        raise ConversionError("samples", f"{path}: unreadable ({exc})") from exc
    return check(raw, specs, str(path))


def check(raw: Samples, specs: list[TensorSpec], where: str) -> Samples:
    out: Samples = {}
    for spec in specs:
        if spec.name not in raw:
            raise ConversionError(
                "samples", f"{where} has no samples for input {spec.name!r} (has {sorted(raw)})"
            )
        arr = np.asarray(raw[spec.name])
        if arr.ndim == len(spec.shape) - 1:
            arr = arr[None]
        if not _fits(spec, arr):
            raise ConversionError(
                "samples",
                f"{where}: input {spec.name!r} samples have shape {list(arr.shape)}, the model "
                f"expects {list(spec.shape)}",
            )
        out[spec.name] = arr.astype(spec.dtype, copy=False)
    counts = {a.shape[0] for a in out.values()}
    if len(counts) > 1:
        raise ConversionError("samples", f"{where}: inputs have different sample counts {counts}")
    return out


def _fits(spec: TensorSpec, arr: np.ndarray) -> bool:
    """Same rank; fixed dimensions after the first (the sample axis) equal."""
    if arr.ndim != len(spec.shape):
        return False
    return all(w == -1 or w == g for w, g in zip(spec.shape[1:], arr.shape[1:], strict=True))


def take(samples: Samples, count: int) -> Samples:
    return {k: v[:count] for k, v in samples.items()}


def rows(samples: Samples) -> int:
    return next(iter(samples.values())).shape[0]
