"""Which requests of a model version are kept: the policy, resolved once per version, and the
per-request decision.

The policy comes from the deployment (``DesiredModel.capture``) when the control plane sent one,
else from the package manifest's ``capture`` block, else there is none and nothing is captured.
Resolving it also fixes, once per loaded version, what the decision reads: the output holding
class scores (the post-processing's ``output``, else the first floating-point output with more
than one class) and whether those scores are already probabilities.

The decision runs on the event loop for every request of a version with an active policy, so it
is a few numpy reductions over the scores the request computed anyway (``top1``: no softmax, no
copy of the input); the probabilities and the top-k of a kept sample are computed later, in the
writer thread.
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


def score_rows(scores: np.ndarray | None, rows: int) -> np.ndarray | None:
    """The scores as one row per sample, or None when they are not that (no confidence to read)."""
    if scores is None or scores.dtype.kind != "f" or not scores.size:
        return None
    out = scores.reshape(scores.shape[0] if scores.ndim > 1 else 1, -1)
    return out if out.shape[0] == rows else None


def top1(mc: ModelCapture, rows: np.ndarray) -> np.ndarray:
    """Each row's top-1 probability, without normalising the rows: for logits it is
    ``1 / sum(exp(x - max))``, three numpy passes instead of a whole softmax."""
    best = rows.max(axis=1)
    if mc.probabilities:
        return best
    if rows.min() >= 0.0 and best.max() <= 1.0 and np.all(np.abs(rows.sum(axis=1) - 1.0) < 1e-3):
        return best
    return 1.0 / np.exp(rows - best[:, None]).sum(axis=1)


def decide(
    mc: ModelCapture, requested: bool, scores: np.ndarray | None, rows: int
) -> list[tuple[int, str, np.ndarray | None]]:
    """(row, reason, that row's raw scores or None) of every sample of one request to capture.

    The scores stay raw: the writer thread turns a kept row into probabilities for its top-k.
    """
    policy = mc.policy
    table = score_rows(scores, rows)
    if requested and policy.on_request:
        return [(r, fc.REQUESTED, table[r] if table is not None else None) for r in range(rows)]
    picked: list[tuple[int, str, np.ndarray | None]] = []
    low = None
    if table is not None and policy.below_confidence > 0:
        low = top1(mc, table) < policy.below_confidence
    fraction = policy.sample_fraction
    for r in range(rows):
        if low is not None and low[r]:
            picked.append((r, fc.LOW_CONFIDENCE, table[r] if table is not None else None))
        elif fraction > 0 and random.random() < fraction:
            picked.append((r, fc.SAMPLED, table[r] if table is not None else None))
    return picked


def top_k(mc: ModelCapture, scores: np.ndarray | None) -> tuple[fc.Prediction, ...]:
    """The best ``top_k`` classes of one row of raw scores, as probabilities, best first (in the
    writer thread)."""
    if scores is None:
        return ()
    probs = probabilities(mc, scores.reshape(1, -1))[0]
    k = min(mc.policy.effective_top_k, probs.size)
    order = np.argsort(-probs, kind="stable")[:k]
    labels = mc.labels
    return tuple(
        fc.Prediction(int(i), labels[i] if i < len(labels) else "", float(probs[i])) for i in order
    )
