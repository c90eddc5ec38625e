"""Which requests of a model version are kept: the policy, resolved once per version, and the
per-request decision.

The policy comes from the deployment (``DesiredModel.capture``) when the control plane sent one,
else from the package manifest's ``capture`` block, else there is none and nothing is captured.
Resolving it also fixes, once per loaded version, what the decision reads: the output holding
class scores (the post-processing's ``output``, else the first floating-point output with more
than one class) and whether those scores are already probabilities.

The decision runs on the event loop for every request of a version with an active policy, so it
is a few numpy reductions over the scores the request computed anyway: no copy, no allocation
beyond one small array per request.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np

from edge_agent.serving.served_model import ServedModel
from protos import fleet_capture as fc
from protos.fleet_capture import CapturePolicy

log = logging.getLogger(__name__)

_FLOAT_TYPES = ("FP16", "FP32", "FP64", "BF16")


@dataclass(frozen=True, slots=True)
class ModelCapture:
    """A version's policy and what its decision reads (see the module docstring)."""

    policy: CapturePolicy
    #: The output holding class scores ("" when the model has none: only the ``requested`` and
    #: ``sampled`` triggers can fire, and records carry no top-k).
    scores: str
    #: The scores are probabilities already (softmax in the post-processing).
    probabilities: bool
    labels: tuple[str, ...]
    #: The input a record keeps (the model's first), and whether it arrives as encoded images.
    input_name: str
    image_input: bool
    #: The deployment that put the version on the device, when the fleet did.
    deployment_id: str = ""


def resolve(
    served: ServedModel, override: CapturePolicy | None, deployment_id: str = ""
) -> ModelCapture | None:
    """The version's capture setup, or None when nothing of it is to be captured."""
    policy = override
    if policy is None and served.manifest.capture is not None:
        try:
            policy = fc.policy_from_dict(served.manifest.capture)
        except ValueError as exc:  # checked at build; kept for manifests made by other tools
            log.warning("capture block of %s:%s ignored: %s", served.name, served.version, exc)
            return None
    if policy is None or not policy.active or served.hooks is not None or not served.inputs:
        return None
    post = served.processing.post
    scores, probabilities = "", False
    if post is not None:
        scores, probabilities = post.output, post.softmax
    else:
        for spec in served.manifest.output_specs():
            if spec.datatype in _FLOAT_TYPES and spec.shape and spec.shape[-1] > 1:
                scores = spec.name
                break
    pre = served.processing.pre
    first = served.inputs[0].name
    return ModelCapture(
        policy=policy,
        scores=scores,
        probabilities=probabilities,
        labels=tuple(served.manifest.labels or ()),
        input_name=first,
        image_input=pre is not None and pre.input == first,
        deployment_id=deployment_id,
    )


def probabilities(mc: ModelCapture, scores: np.ndarray) -> np.ndarray:
    """Scores as one probability row per sample: softmax unless they already are probabilities
    (declared by the post-processing, or every row in [0, 1] summing to 1)."""
    rows = scores.reshape(scores.shape[0] if scores.ndim > 1 else 1, -1)
    if mc.probabilities:
        return rows
    rows64 = rows.astype(np.float64, copy=False)
    in_unit = rows64.min() >= 0.0 and rows64.max() <= 1.0
    if in_unit and np.all(np.abs(rows64.sum(axis=1) - 1.0) < 1e-3):
        return rows
    z = rows64 - rows64.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def decide(
    mc: ModelCapture, requested: bool, scores: np.ndarray | None, rows: int
) -> list[tuple[int, str, np.ndarray | None]]:
    """(row, reason, probability row or None) of every sample of one request to capture."""
    policy = mc.policy
    probs = None
    if scores is not None and scores.dtype.kind == "f" and scores.size:
        probs = probabilities(mc, scores)
        if probs.shape[0] != rows:
            probs = None  # an output without one row per sample: no confidence to read
    picked: list[tuple[int, str, np.ndarray | None]] = []
    if requested and policy.on_request:
        return [(r, fc.REQUESTED, probs[r] if probs is not None else None) for r in range(rows)]
    low = None
    if probs is not None and policy.below_confidence > 0:
        low = probs.max(axis=1) < policy.below_confidence
    fraction = policy.sample_fraction
    for r in range(rows):
        if low is not None and low[r]:
            picked.append((r, fc.LOW_CONFIDENCE, probs[r] if probs is not None else None))
        elif fraction > 0 and random.random() < fraction:
            picked.append((r, fc.SAMPLED, probs[r] if probs is not None else None))
    return picked


def top_k(mc: ModelCapture, probs: np.ndarray | None) -> tuple[fc.Prediction, ...]:
    """The best ``top_k`` classes of one probability row, best first (in the writer thread)."""
    if probs is None:
        return ()
    k = min(mc.policy.effective_top_k, probs.size)
    order = np.argsort(-probs, kind="stable")[:k]
    labels = mc.labels
    return tuple(
        fc.Prediction(int(i), labels[i] if i < len(labels) else "", float(probs[i])) for i in order
    )
