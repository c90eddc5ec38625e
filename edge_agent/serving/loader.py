"""Turn an extracted package into a ``ServedModel``: choose a variant, load it, self-test it.

Variants are tried in the order of the agent's preference; one that fails to load or to reproduce
its golden vectors is skipped with its reason recorded, and the next is tried. This is the single
place where library errors from model_packager become agent errors during loading.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

from edge_agent.config import AgentSettings
from edge_agent.errors import InstallFailed
from edge_agent.serving.python_handlers import HandlerLoadError, ModelArtsHooks, load_hooks
from edge_agent.serving.served_model import ServedModel, measure_latency_ms
from model_packager import golden, processing
from model_packager.errors import PackageError
from model_packager.loading import load_variant, rank_variants
from model_packager.manifest import MANIFEST_NAME, SIGNATURE_NAME, Manifest
from model_packager.runtimes import RuntimeOptions

log = logging.getLogger(__name__)

#: Called with each named point the loader passes (``after_load``, ``before_self_test``,
#: ``after_self_test``): an install journals the self-test and offers its crash points there;
#: loading the committed models at start-up passes nothing.
PointHook = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def read_manifest(package_dir: Path) -> Manifest:
    try:
        return Manifest.from_bytes((package_dir / MANIFEST_NAME).read_bytes())
    except (OSError, PackageError) as exc:
        raise InstallFailed("load", f"cannot read manifest in {package_dir.name}: {exc}") from exc


def _admit_python_handler(
    package_dir: Path, manifest: Manifest, settings: AgentSettings
) -> ModelArtsHooks | None:
    """Python hooks are arbitrary code: only from signed packages, only when the settings say so.

    An admitted handler is imported here, at install, so a handler that does not import (a missing
    dependency, a syntax error) refuses the install with its reason instead of failing requests.
    """
    try:
        handler = processing.python_handler(manifest.preprocessing)
    except ValueError as exc:
        raise InstallFailed("load", f"invalid Python handler declaration: {exc}") from exc
    if handler is None:
        return None
    if not settings.allow_python_handlers:
        raise InstallFailed(
            "load",
            f"{manifest.name} {manifest.version} carries a Python handler ({handler.module}); "
            "this agent does not run Python handlers (set allow_python_handlers: true to allow)",
        )
    if not (package_dir / SIGNATURE_NAME).is_file():
        raise InstallFailed("load", "Python handlers run only from signed packages")
    try:
        return load_hooks(
            handler, manifest.name, manifest.version, package_dir, manifest.input_specs()
        )
    except HandlerLoadError as exc:
        raise InstallFailed("load", str(exc)) from exc


def load_served_model(
    package_dir: Path,
    digest: str,
    settings: AgentSettings,
    executor: Executor,
    at_point: PointHook = _noop,
) -> ServedModel:
    """Load the best variant that passes its golden vectors, or raise ``InstallFailed``."""
    manifest = read_manifest(package_dir)
    hooks = _admit_python_handler(package_dir, manifest, settings)
    options = RuntimeOptions(settings.intra_op_threads, settings.inter_op_threads)
    try:
        candidates = rank_variants(manifest, settings.variant_preference)
    except PackageError as exc:
        raise InstallFailed("load", str(exc)) from exc
    failures: list[str] = []
    for variant in candidates:
        try:
            model = load_variant(package_dir, manifest, variant, options)
        except PackageError as exc:
            failures.append(f"{variant.name}: {exc}")
            log.warning("variant %s of %s failed to load: %s", variant.name, manifest.name, exc)
            continue
        at_point("after_load")
        at_point("before_self_test")
        try:
            golden_path = package_dir / variant.golden.path
            golden.check(model, golden_path, variant.rtol, variant.atol)
            inputs, _ = golden.decode(golden_path)
            latency = measure_latency_ms(model, inputs)
        except PackageError as exc:
            model.close()
            failures.append(f"{variant.name}: {exc}")
            log.warning(
                "variant %s of %s failed its self-test: %s", variant.name, manifest.name, exc
            )
            continue
        at_point("after_self_test")
        inline = latency < settings.inline_threshold_ms
        log.info(
            "loaded %s:%s variant %s (%.2f ms/inference, %s)",
            manifest.name,
            manifest.version,
            variant.name,
            latency,
            "inline" if inline else "thread pool",
        )
        return ServedModel(
            name=manifest.name,
            version=manifest.version,
            digest=digest,
            manifest=manifest,
            variant=variant.name,
            runtime=variant.runtime,
            model=model,
            inline=inline,
            executor=executor,
            settings=settings.for_model(manifest.name),
            hooks=hooks,
        )
    step = "self_test" if failures and all("golden" in f for f in failures) else "load"
    raise InstallFailed(step, "no variant could serve: " + "; ".join(failures))
