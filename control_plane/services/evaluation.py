"""Classification metrics of a batch service's rows against the dataset's labels.

Pure (no I/O, no database) so the numbers can be checked against a hand computation. A row is
``(true label, predicted label or None)``; ``None`` means the input failed. A failed row still
counts in ``total`` (and as wrong): dropping it would let a model that cannot read half the
inputs report a perfect accuracy. The confusion matrix only holds rows with a prediction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from control_plane.services.schemas import ClassMetrics, Evaluation


def evaluate(rows: Iterable[tuple[str, str | None]], labels: Sequence[str] = ()) -> Evaluation:
    """Accuracy, per-class precision / recall and the confusion matrix of ``rows``.

    ``labels`` gives the order (the dataset's labels); a label seen in the rows but not listed
    (a prediction the dataset never uses) is appended, sorted, so the matrix stays square.
    """
    pairs = list(rows)
    order = list(dict.fromkeys(labels))
    seen = {t for t, _ in pairs} | {p for _, p in pairs if p is not None}
    order += sorted(seen - set(order))
    at = {label: i for i, label in enumerate(order)}
    matrix = [[0] * len(order) for _ in order]
    errors = 0
    for truth, predicted in pairs:
        if predicted is None:
            errors += 1
            continue
        matrix[at[truth]][at[predicted]] += 1
    correct = sum(matrix[i][i] for i in range(len(order)))
    per_class = []
    for i, label in enumerate(order):
        support = sum(1 for t, _ in pairs if t == label)
        predicted_as = sum(row[i] for row in matrix)
        per_class.append(
            ClassMetrics(
                label=label,
                support=support,
                predicted=predicted_as,
                precision=matrix[i][i] / predicted_as if predicted_as else None,
                recall=matrix[i][i] / support if support else None,
            )
        )
    return Evaluation(
        total=len(pairs),
        correct=correct,
        errors=errors,
        accuracy=correct / len(pairs) if pairs else None,
        labels=order,
        per_class=per_class,
        confusion_matrix=matrix,
    )
