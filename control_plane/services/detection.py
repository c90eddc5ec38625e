"""Object-detection metrics of a batch service's rows against the dataset's boxes.

Pure (no I/O, no database), like ``evaluation.py``, so the numbers can be checked against a hand
computation. A row is one image: its true boxes and the model's scored boxes, or ``None`` when
the input failed (its true boxes then all count as missed: a model that cannot read half the
images must not look good).

Matching, per class, at one IoU threshold (0.5: the PASCAL VOC criterion): every detection of
the class over all images, highest score first (ties keep row order), takes the unmatched true
box of its image and class with the highest IoU, if that IoU is at least the threshold (a true
positive); otherwise it is a false positive (a duplicate of a box already found is one too).

AP is the area under the precision/recall curve with all-point interpolation (VOC 2010 and
later): precision at each recall is the best precision at that recall or beyond, summed over the
steps where recall grows. mAP@0.5 is the mean AP over the classes that have true boxes; a class
with none has no AP (a detector cannot be scored on what is not there) and stays out of the mean.
Precision and recall (per class and over all) are those of every detection as given: filter by
score before calling for figures at a working threshold.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from control_plane.services.schemas import DetectionClassMetrics, DetectionEvaluation


@dataclass(frozen=True)
class TrueBox:
    """A labeled box; (x, y) is the top-left corner, in pixels like the dataset's boxes."""

    label: str
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class Detected:
    """A box the model found, with its score."""

    label: str
    score: float
    x: float
    y: float
    w: float
    h: float


Box = TrueBox | Detected


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when they do not overlap)."""
    iw = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    ih = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (a.w * a.h + b.w * b.h - inter)


def average_precision(hits: Sequence[bool], positives: int) -> float:
    """All-point interpolated AP of detections sorted by score (``hits``: true positive or
    not) against ``positives`` true boxes."""
    if positives == 0:
        raise ValueError("AP is undefined without true boxes")
    precision, recall = [], []
    tp = 0
    for n, hit in enumerate(hits, start=1):
        tp += hit
        precision.append(tp / n)
        recall.append(tp / positives)
    for i in range(len(precision) - 2, -1, -1):  # the envelope: best precision from here on
        precision[i] = max(precision[i], precision[i + 1])
    ap, previous = 0.0, 0.0
    for p, r in zip(precision, recall, strict=True):
        if r > previous:
            ap += (r - previous) * p
            previous = r
    return ap


def evaluate_detection(
    rows: Iterable[tuple[Sequence[TrueBox], Sequence[Detected] | None]],
    labels: Sequence[str] = (),
    iou_threshold: float = 0.5,
) -> DetectionEvaluation:
    """mAP, per-class AP and precision / recall at ``iou_threshold`` over ``rows`` (one per
    image). ``labels`` gives the order; any other label seen is appended, sorted."""
    images = list(rows)
    order = list(dict.fromkeys(labels))
    seen = {t.label for truths, _ in images for t in truths}
    seen |= {d.label for _, found in images for d in found or ()}
    order += sorted(seen - set(order))

    per_class = []
    for label in order:
        truths = [[t for t in image if t.label == label] for image, _ in images]
        candidates = [
            (d, i) for i, (_, found) in enumerate(images) for d in found or () if d.label == label
        ]
        candidates.sort(key=lambda c: -c[0].score)  # stable: ties keep row order
        taken = [[False] * len(t) for t in truths]
        hits = []
        for det, i in candidates:
            best, best_iou = -1, -1.0
            for j, truth in enumerate(truths[i]):
                overlap = iou(det, truth)
                if not taken[i][j] and overlap >= iou_threshold and overlap > best_iou:
                    best, best_iou = j, overlap
            if best >= 0:
                taken[i][best] = True
            hits.append(best >= 0)
        support = sum(len(t) for t in truths)
        tp = sum(hits)
        per_class.append(
            DetectionClassMetrics(
                label=label,
                support=support,
                detections=len(hits),
                true_positives=tp,
                precision=tp / len(hits) if hits else None,
                recall=tp / support if support else None,
                ap=average_precision(hits, support) if support else None,
            )
        )
    scored = [c.ap for c in per_class if c.ap is not None]
    detections = sum(c.detections for c in per_class)
    tp = sum(c.true_positives for c in per_class)
    boxes = sum(c.support for c in per_class)
    return DetectionEvaluation(
        iou_threshold=iou_threshold,
        images=len(images),
        errors=sum(1 for _, found in images if found is None),
        boxes=boxes,
        detections=detections,
        true_positives=tp,
        precision=tp / detections if detections else None,
        recall=tp / boxes if boxes else None,
        mean_ap=sum(scored) / len(scored) if scored else None,
        labels=order,
        per_class=per_class,
    )
