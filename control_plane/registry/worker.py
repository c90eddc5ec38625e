"""Conversion worker: ``python -m control_plane.registry.worker SPEC.json RESULT.json``.

The registry converts in a child process rather than in the API process: conversion loads
TensorFlow, tf2onnx and the runtimes, takes tens of seconds and hundreds of megabytes, and a crash
in a converter must not take the control plane down. The spec names the source and everything the
converter needs; the result is the package path plus the per-variant parity report (or an error
naming the failed step). Progress lines go to stdout, which the registry keeps as the conversion
log.

TFLite sources are packaged as they are (there is no converter from TFLite; the variant is its own
reference). A ModelArts model folder converts through ``model_packager.convert`` (its
``config.json`` is also kept in the registry's report).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

logger = logging.getLogger("registry.worker")

# What these sources convert to when no targets are given: ONNX variants (an ONNX source makes
# TFLite ones too when asked, through onnx2tf in its own environment).
ONNX_ONLY_KINDS = ("mxnet", "onnx", "pytorch")
ONNX_ONLY_TARGETS = ("onnx-fp32", "onnx-int8")


def validation_samples(spec: dict[str, Any], out: Path) -> Path:
    """The job's validation images through the declared preprocessing, as ``out`` (.npz).

    Decoded by ``model_packager.processing``, the code the agent runs on every image request, so
    the gate and the int8 calibration see exactly what the device will feed the model.
    """
    import numpy as np

    from model_packager.processing import Preprocessing, ProcessingError

    pre = Preprocessing.from_dict(spec["preprocessing"])
    rows = []
    for image in spec["validation_images"]:
        try:
            rows.append(pre.image(Path(image).read_bytes()))
        except (OSError, ProcessingError) as exc:
            logger.warning("validation image %s skipped: %s", image, exc)
    if not rows:
        raise ValueError("no validation image could be read with the declared preprocessing")
    np.savez(out, **{pre.input: np.stack(rows)})
    logger.info("parity and calibration samples: %d validation images", len(rows))
    return out


def _report(report: Any) -> dict[str, Any]:
    variants = []
    for v in report.variants:
        p = v.parity
        variants.append(
            {
                "name": v.name,
                "runtime": v.runtime,
                "precision": v.precision,
                "status": v.status,
                "size": v.size,
                "seconds": round(v.seconds, 3),
                "reason": v.reason,
                **({"step": v.step, "error": v.error} if p is None else {}),
                "parity": None
                if p is None
                else {
                    "reference": p.reference,
                    "samples": p.samples,
                    "max_abs_error": p.max_abs_error,
                    "mean_abs_error": p.mean_abs_error,
                    "top1_agreement": p.top1_agreement,
                    "tolerance": p.tolerance.describe(),
                    "passed": p.passed,
                    "reason": p.reason,
                },
            }
        )
    return {
        "framework": report.framework,
        "samples": report.samples,
        "generated_samples": report.generated_samples,
        "variants": variants,
        "table": report.table(),
    }


def _tflite(spec: dict[str, Any], source: Path, key: Any) -> dict[str, Any]:
    from model_packager.build import ArtifactInput, BuildSpec, build_package

    path = build_package(
        BuildSpec(
            name=spec["name"],
            version=spec["version"],
            artifacts=[ArtifactInput(path=source, name="tflite-fp32")],
            description=spec.get("description", ""),
            labels=spec.get("labels"),
            preprocessing=spec.get("preprocessing"),
            postprocessing=spec.get("postprocessing"),
            provenance_extra={"source": source.name, "source_framework": "tflite"},
        ),
        Path(spec["out_dir"]),
        key,
        lambda m: logger.info("%s", m),
    )
    return {
        "package": str(path),
        "framework": "tflite",
        "variants": [{"name": "tflite-fp32", "runtime": "tflite", "status": "kept"}],
        "table": "packaged as uploaded (no conversion, no parity reference)",
    }


def run(spec: dict[str, Any]) -> dict[str, Any]:
    from model_packager.convert import ConvertSpec, convert
    from model_packager.signing import load_private_key

    key = load_private_key(Path(spec["key"]))
    source = Path(spec["source"])
    kind = spec["kind"]
    extra: dict[str, Any] = {}
    if kind == "modelarts":
        extra["modelarts_config"] = json.loads((source / "config.json").read_text())
    if kind == "tflite":
        return {**_tflite(spec, source, key), **extra, "source_kind": kind}
    shapes = spec.get("input_shapes") or None
    samples = Path(spec["samples"]) if spec.get("samples") else None
    if samples is None and spec.get("validation_images"):
        samples = validation_samples(spec, Path(spec["out_dir"]).parent / "validation.npz")
    cspec = ConvertSpec(
        source=source,
        name=spec["name"],
        version=spec["version"],
        source_kind=kind,
        samples=samples,
        on_parity_fail=spec.get("on_parity_fail", "drop"),
        input_shapes={k: tuple(v) for k, v in shapes.items()} if shapes else None,
        labels=spec.get("labels"),
        description=spec.get("description", ""),
        preprocessing=spec.get("preprocessing"),
        postprocessing=spec.get("postprocessing"),
        mxnet_python=Path(spec["mxnet_python"]) if spec.get("mxnet_python") else None,
    )
    if spec.get("targets"):
        cspec.targets = list(spec["targets"])
    elif kind in ONNX_ONLY_KINDS:
        # These sources only produce ONNX variants (see model_packager.convert).
        cspec.targets = list(ONNX_ONLY_TARGETS)
    report = convert(cspec, Path(spec["out_dir"]), key, progress=lambda m: logger.info("%s", m))
    logger.info("%s", report.table())
    return {**_report(report), "package": str(report.package), **extra, "source_kind": kind}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    spec = json.loads(Path(args[0]).read_text())
    try:
        result = run(spec)
        code = 0
    except Exception as exc:
        logger.error("conversion failed: %s", exc)
        logger.debug("%s", traceback.format_exc())
        result = {"error": str(exc), "step": getattr(exc, "step", None)}
        report = getattr(exc, "report", None)
        if report is not None:
            result.update(_report(report))
        code = 1
    Path(args[1]).write_text(json.dumps(result, indent=1, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
