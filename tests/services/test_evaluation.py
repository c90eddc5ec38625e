"""The batch evaluation against numbers worked out by hand."""

from __future__ import annotations

import pytest

from control_plane.services.evaluation import evaluate


def test_metrics_match_a_hand_computation() -> None:
    # truth -> predicted: cat cat dog | cat dog | dog cat | bird (failed)
    rows = [
        ("cat", "cat"),
        ("cat", "cat"),
        ("cat", "dog"),
        ("dog", "dog"),
        ("dog", "cat"),
        ("bird", None),
    ]
    ev = evaluate(rows, ["cat", "dog", "bird"])
    assert ev.labels == ["cat", "dog", "bird"]
    assert ev.confusion_matrix == [[2, 1, 0], [1, 1, 0], [0, 0, 0]]
    # 3 right of 6 labeled rows; the failed one counts as wrong.
    assert (ev.total, ev.correct, ev.errors) == (6, 3, 1)
    assert ev.accuracy == pytest.approx(0.5)
    cat, dog, bird = ev.per_class
    # cat: predicted 3 times, 2 right; 3 true cats, 2 found.
    assert (cat.support, cat.predicted) == (3, 3)
    assert cat.precision == pytest.approx(2 / 3) and cat.recall == pytest.approx(2 / 3)
    # dog: predicted 2 times, 1 right; 2 true dogs, 1 found.
    assert dog.precision == pytest.approx(1 / 2) and dog.recall == pytest.approx(1 / 2)
    # bird: never predicted (precision undefined), its one sample failed (recall 0).
    assert bird.precision is None and bird.recall == 0.0


def test_unlisted_labels_are_appended_sorted() -> None:
    ev = evaluate([("a", "z"), ("a", "m"), ("b", "b")], ["b", "a"])
    assert ev.labels == ["b", "a", "m", "z"]
    assert ev.confusion_matrix == [[1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert ev.accuracy == pytest.approx(1 / 3)


def test_no_rows() -> None:
    ev = evaluate([], ["a"])
    assert ev.accuracy is None and ev.confusion_matrix == [[0]]
    assert ev.per_class[0].precision is None and ev.per_class[0].recall is None
