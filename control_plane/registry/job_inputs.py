"""What a training job's model is registered with: labels, processing, and the gate's data.

A script may say all of it in ``model.json`` (written by ``edge_training.describe_model`` or by
hand, same format); what it leaves out comes from the job's lineage, so a model trained by any
script still becomes a package that answers with class names and is gated on real images:

* labels: the request, else ``model.json``, else the dataset version's label names, sorted (the
  order ``edge_training.class_names`` gives scripts, so index i is the i-th name);
* preprocessing / postprocessing: the request, else ``model.json``;
* parity and int8 calibration samples: the job's ``parity_samples.npy`` when it wrote one, else
  the version's validation images passed through the declared preprocessing (the conversion
  worker decodes them exactly as the agent will), else generated samples. Generated noise says
  whether a conversion computes the same function, but calibrating int8 on it can leave a
  variant badly off on real images while the gate calls it fine, so calibrated int8 targets are
  refused then unless the request opts in (``calibrate_on_generated``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control_plane.core.errors import InvalidRequest
from control_plane.registry.schemas import ModelRegister
from control_plane.registry.worker import ONNX_ONLY_KINDS, ONNX_ONLY_TARGETS
from model_packager import processing
from model_packager.convert.base import DEFAULT_TARGETS, TARGETS
from model_packager.records import SchemaError

# As many validation images as the converter uses samples (``ConvertSpec.num_samples``).
MAX_VALIDATION_IMAGES = 64


@dataclass
class JobInputs:
    labels: list[str] | None
    labels_from: str
    preprocessing: dict[str, Any] | None
    postprocessing: dict[str, Any] | None
    targets: list[str] | None
    samples: Path | None  # the job's own parity_samples.npy
    validation_images: list[str] = field(default_factory=list)
    gate_data: str = "generated"
    notes: list[str] = field(default_factory=list)


def dataset_labels(version_dir: Path | None) -> list[str] | None:
    """The version's label names, sorted, from its ``version.json``."""
    if version_dir is None or not (version_dir / "version.json").is_file():
        return None
    labels = json.loads((version_dir / "version.json").read_text()).get("labels")
    return sorted(str(x) for x in labels) if labels else None


def validation_images(version_dir: Path, limit: int = MAX_VALIDATION_IMAGES) -> list[str]:
    """Absolute paths of the version's first ``limit`` validation samples (manifest order)."""
    out: list[str] = []
    with open(version_dir / "manifest.jsonl", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            entry = json.loads(line)
            if str(entry.get("usage", "")).upper() in ("EVAL", "TEST", "INFERENCE"):
                out.append(str(version_dir / entry["source"]))
                if len(out) >= limit:
                    break
    return out


def _check_processing(pre: dict[str, Any] | None, post: dict[str, Any] | None) -> None:
    try:
        processing.parse(pre, post)
    except SchemaError as exc:
        raise InvalidRequest(f"invalid preprocessing/postprocessing: {exc}") from None


def resolve(
    spec: ModelRegister,
    kind: str,
    info: dict[str, Any],
    samples: Path | None,
    version_dir: Path | None,
    version_label: str,
) -> JobInputs:
    """Decide labels, processing, targets and gate data for registering a job's model."""
    if spec.labels is not None:
        labels, labels_from = list(spec.labels), "request"
    elif info.get("labels"):
        labels, labels_from = list(info["labels"]), "model.json"
    else:
        labels = dataset_labels(version_dir)
        labels_from = f"dataset version {version_label}" if labels else "none"
    pre = spec.preprocessing if spec.preprocessing is not None else info.get("preprocessing")
    post = spec.postprocessing if spec.postprocessing is not None else info.get("postprocessing")
    _check_processing(pre, post)
    out = JobInputs(labels, labels_from, pre, post, spec.targets, samples)
    if samples is not None:
        out.gate_data = f"the job's {samples.name}"
        return out
    image_pre = pre is not None and processing.python_handler(pre) is None
    if image_pre and version_dir is not None:
        out.validation_images = validation_images(version_dir)
    if out.validation_images:
        out.gate_data = (
            f"{len(out.validation_images)} validation images of dataset version "
            f"{version_label}, through the declared preprocessing"
        )
        return out
    out.gate_data = "generated samples (no parity_samples.npy, no image preprocessing declared)"
    if spec.calibrate_on_generated:
        return out
    defaults = ONNX_ONLY_TARGETS if kind in ONNX_ONLY_KINDS else DEFAULT_TARGETS
    wanted = spec.targets or defaults
    # Unknown names pass through: the converter refuses them with the list of known ones.
    calibrated = [t for t in wanted if t in TARGETS and TARGETS[t].needs_calibration]
    if spec.targets is not None and calibrated:
        raise InvalidRequest(
            f"targets {calibrated} need int8 calibration on real data, and this job gives "
            "none: declare preprocessing (model.json or the request) so the validation images "
            "are used, write parity_samples.npy, or set calibrate_on_generated"
        )
    if calibrated:
        out.targets = [t for t in defaults if t not in calibrated]
        out.notes.append(
            f"left out {', '.join(calibrated)}: no real calibration data (declare "
            "preprocessing or set calibrate_on_generated)"
        )
    return out
