"""Load a variant of an extracted package, and choose which variant a machine should run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model_packager.errors import ModelLoadError, RuntimeUnavailable
from model_packager.manifest import Manifest, Variant
from model_packager.runtimes import LoadedModel, RuntimeOptions, available_runtimes, get_runtime
from model_packager.tensors import TensorSpec


class RenamedModel(LoadedModel):
    """Presents an artifact under the package's tensor names when its own names differ."""

    def __init__(self, inner: LoadedModel, mapping: dict[str, str], manifest: Manifest) -> None:
        self._inner = inner
        self._to_inner = mapping
        self._from_inner = {v: k for k, v in mapping.items()}
        self.inputs = manifest.input_specs()
        self.outputs = manifest.output_specs()

    def infer(
        self, inputs: dict[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        renamed = {self._to_inner.get(k, k): v for k, v in inputs.items()}
        names = [self._to_inner.get(n, n) for n in output_names] if output_names else None
        out = self._inner.infer(renamed, names)
        return {self._from_inner.get(k, k): v for k, v in out.items()}

    def close(self) -> None:
        self._inner.close()


def _check_signature(model: LoadedModel, manifest: Manifest, variant: Variant) -> None:
    mapping = variant.tensor_names

    def check(kind: str, declared: list[TensorSpec], actual: list[TensorSpec]) -> None:
        by_name = {s.name: s for s in actual}
        for spec in declared:
            own = mapping.get(spec.name, spec.name)
            got = by_name.get(own)
            if got is None:
                raise ModelLoadError(f"variant {variant.name}: artifact has no {kind} {own!r}")
            if not got.compatible(spec):
                raise ModelLoadError(
                    f"variant {variant.name}: {kind} {own!r} is {got.datatype}{list(got.shape)}, "
                    f"manifest says {spec.datatype}{list(spec.shape)}"
                )

    check("input", manifest.input_specs(), model.inputs)
    check("output", manifest.output_specs(), model.outputs)


def load_variant(
    package_dir: Path, manifest: Manifest, variant: Variant, options: RuntimeOptions
) -> LoadedModel:
    """Load one variant and check its artifact against the manifest's signature."""
    runtime = get_runtime(variant.runtime)
    model = runtime.load(Path(package_dir) / variant.artifact.path, options)
    try:
        _check_signature(model, manifest, variant)
    except BaseException:
        model.close()
        raise
    if variant.tensor_names:
        return RenamedModel(model, variant.tensor_names, manifest)
    return model


def rank_variants(
    manifest: Manifest, preference: Sequence[str] = (), runtimes: Sequence[str] | None = None
) -> list[Variant]:
    """Variants this machine can run, best first.

    ``preference`` lists variant names or runtime names in order; variants it does not name keep
    the package's own order after the named ones.
    """
    usable = set(available_runtimes() if runtimes is None else runtimes)
    candidates = [v for v in manifest.variants if v.runtime in usable]
    if not candidates:
        raise RuntimeUnavailable(
            f"no variant of {manifest.name} runs here (package has "
            f"{', '.join(v.name for v in manifest.variants)}; runtimes here: "
            f"{', '.join(sorted(usable)) or 'none'})"
        )

    def rank(item: tuple[int, Variant]) -> tuple[int, int]:
        idx, v = item
        for pos, pref in enumerate(preference):
            if pref in (v.name, v.runtime):
                return (pos, idx)
        return (len(preference), idx)

    return [v for _, v in sorted(enumerate(candidates), key=rank)]
