"""Golden test vectors: inputs and expected outputs stored in the package.

They are computed when the package is built and replayed by the agent before it activates a model,
so a corrupt artifact, an incompatible runtime build or a broken conversion is caught on the device
before any request reaches it.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from model_packager.errors import GoldenMismatch, InvalidPackage
from model_packager.runtimes.base import LoadedModel
from model_packager.tensors import TensorSpec

_IN = "in:"
_OUT = "out:"


def sample_inputs(specs: list[TensorSpec], count: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random inputs; a dynamic batch dimension gets ``count`` rows, others 1."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = [
            count if (i == 0 and d == -1) else (1 if d == -1 else d)
            for i, d in enumerate(spec.shape)
        ]
        dt = spec.dtype
        if dt.kind == "f":
            arr = rng.standard_normal(shape).astype(dt)
        elif dt.kind in "iu":
            arr = rng.integers(0, 10, size=shape).astype(dt)
        elif dt.kind == "b":
            arr = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise ValueError(
                f"cannot generate golden inputs for {spec.datatype} tensor {spec.name!r}"
            )
        out[spec.name] = arr
    return out


def encode(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    arrays = {f"{_IN}{k}": v for k, v in inputs.items()}
    arrays.update({f"{_OUT}{k}": v for k, v in outputs.items()})
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def decode(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            inputs = {k[len(_IN) :]: data[k] for k in data.files if k.startswith(_IN)}
            outputs = {k[len(_OUT) :]: data[k] for k in data.files if k.startswith(_OUT)}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidPackage(f"golden vectors {Path(path).name} are unreadable: {exc}") from exc
    if not inputs or not outputs:
        raise InvalidPackage(f"golden vectors {Path(path).name} hold no inputs or outputs")
    return inputs, outputs


def check(model: LoadedModel, path: Path, rtol: float, atol: float) -> None:
    """Replay the vectors on a loaded model; raises ``GoldenMismatch`` naming the worst output."""
    inputs, expected = decode(path)
    got = model.infer(inputs)
    for name, want in expected.items():
        if name not in got:
            raise GoldenMismatch(f"model produced no output {name!r}")
        have = got[name]
        if have.shape != want.shape:
            raise GoldenMismatch(f"output {name!r} has shape {have.shape}, expected {want.shape}")
        if not np.allclose(have, want, rtol=rtol, atol=atol, equal_nan=True):
            err = float(np.max(np.abs(have.astype(np.float64) - want.astype(np.float64))))
            raise GoldenMismatch(
                f"output {name!r} differs from its golden vector (max abs error {err:.3g}, "
                f"rtol {rtol}, atol {atol})"
            )
