"""Detection metrics (mAP@0.5, per-class AP, precision / recall) against a hand computation."""

from __future__ import annotations

import pytest

from control_plane.services.detection import (
    Detected,
    TrueBox,
    average_precision,
    evaluate_detection,
    iou,
)


def test_iou_by_hand() -> None:
    a = TrueBox("x", 0, 0, 10, 10)
    assert iou(a, Detected("x", 1, 0, 0, 10, 10)) == 1.0
    # 9 x 9 overlap: 81 / (100 + 100 - 81)
    assert iou(a, Detected("x", 1, 1, 1, 10, 10)) == pytest.approx(81 / 119)
    assert iou(a, Detected("x", 1, 0, 0, 10, 5)) == pytest.approx(0.5)
    assert iou(a, Detected("x", 1, 10, 0, 10, 10)) == 0.0  # touching edges only


def test_average_precision_by_hand() -> None:
    # hits T F T over 2 boxes: precision 1, 1/2, 2/3; recall 1/2, 1/2, 1.
    # envelope 1, 2/3, 2/3 -> AP = 1/2 * 1 + 1/2 * 2/3
    assert average_precision([True, False, True], 2) == pytest.approx(0.5 + 1 / 3)
    assert average_precision([False, False], 1) == 0.0
    assert average_precision([], 3) == 0.0
    with pytest.raises(ValueError):
        average_precision([True], 0)


def test_detection_metrics_match_a_hand_computation() -> None:
    rows = [
        (
            [TrueBox("cat", 0, 0, 10, 10), TrueBox("dog", 20, 20, 10, 10)],
            [
                Detected("cat", 0.9, 0, 0, 10, 10),  # TP (IoU 1)
                Detected("cat", 0.8, 1, 1, 10, 10),  # FP: IoU 0.68 with a box already found
                Detected("dog", 0.7, 20, 20, 10, 5),  # TP: IoU exactly 0.5
            ],
        ),
        (
            [TrueBox("cat", 0, 0, 10, 10)],
            [
                Detected("cat", 0.95, 5, 0, 10, 10),  # FP: IoU 1/3
                Detected("cat", 0.6, 0, 0, 10, 10),  # TP
                Detected("dog", 0.5, 0, 0, 10, 10),  # FP: no dog here
                Detected("fox", 0.3, 0, 0, 10, 10),  # FP: a label no image has
            ],
        ),
        ([TrueBox("dog", 0, 0, 4, 4)], [Detected("dog", 0.4, 0, 0, 4, 4)]),  # TP
        ([TrueBox("dog", 50, 50, 8, 8)], None),  # failed: its box is missed
    ]
    ev = evaluate_detection(rows, ["cat", "dog", "bird"])
    assert ev.labels == ["cat", "dog", "bird", "fox"]
    cat, dog, bird, fox = ev.per_class

    # cat by score: 0.95 F, 0.9 T, 0.8 F, 0.6 T over 2 boxes.
    # precision 0, 1/2, 1/3, 1/2; recall 0, 1/2, 1/2, 1; envelope 1/2 everywhere -> AP 1/2.
    assert (cat.support, cat.detections, cat.true_positives) == (2, 4, 2)
    assert cat.precision == pytest.approx(0.5) and cat.recall == pytest.approx(1.0)
    assert cat.ap == pytest.approx(0.5)
    # dog by score: 0.7 T, 0.5 F, 0.4 T over 3 boxes (one in the failed image).
    # precision 1, 1/2, 2/3; recall 1/3, 1/3, 2/3; envelope 1, 2/3, 2/3 -> 1/3 + 1/3 * 2/3.
    assert (dog.support, dog.detections, dog.true_positives) == (3, 3, 2)
    assert dog.precision == pytest.approx(2 / 3) and dog.recall == pytest.approx(2 / 3)
    assert dog.ap == pytest.approx(1 / 3 + 2 / 9)
    # bird: listed, never there, never found; fox: found once, never there.
    assert (bird.support, bird.detections, bird.precision, bird.recall, bird.ap) == (
        0,
        0,
        None,
        None,
        None,
    )
    assert (fox.detections, fox.precision, fox.recall, fox.ap) == (1, 0.0, None, None)

    # mAP over the labels with boxes (cat, dog); overall 4 TP of 8 detections, 5 boxes.
    assert ev.mean_ap == pytest.approx((0.5 + 1 / 3 + 2 / 9) / 2)
    assert (ev.images, ev.errors, ev.boxes, ev.detections, ev.true_positives) == (4, 1, 5, 8, 4)
    assert ev.precision == pytest.approx(4 / 8) and ev.recall == pytest.approx(4 / 5)


def test_a_stricter_threshold_and_nothing_to_score() -> None:
    rows = [([TrueBox("a", 0, 0, 10, 10)], [Detected("a", 0.9, 0, 0, 10, 5)])]  # IoU 0.5
    assert evaluate_detection(rows).mean_ap == pytest.approx(1.0)
    strict = evaluate_detection(rows, iou_threshold=0.75)
    assert strict.mean_ap == 0.0 and strict.true_positives == 0
    empty = evaluate_detection([])
    assert (empty.mean_ap, empty.precision, empty.recall, empty.labels) == (None, None, None, [])
