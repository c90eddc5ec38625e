"""Built-in tabular classification: a Keras MLP on a CSV table.

``python -m control_plane.training.algorithms.tabular_classification --data_url=<folder or .csv>
--train_url=out/ --label_column=label``

The table has a header row; ``label_column`` holds the class (any text), every other column is a
numeric feature, except an optional ``split`` / ``usage`` column (train | validation, or the
ModelArts TRAIN | EVAL) that fixes each row's split. Without it, ``validation_ratio`` of the rows,
drawn with ``seed``, are held out. Feature scaling (mean and variance of the training rows) is part
of the model, so the package takes raw feature values.
"""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from control_plane.training.algorithms.common import EpochLog, save, setup
from control_plane.training.sdk import edge_training as et

logger = logging.getLogger("tabular_classification")

_SPLIT_COLUMNS = ("split", "usage")
_SPLITS = {"train": "train", "validation": "validation", "eval": "validation", "test": "validation"}


def find_table(data_url: str) -> Path:
    path = Path(data_url)
    if path.is_file():
        return path
    tables = sorted(path.glob("*.csv"))
    if len(tables) != 1:
        raise SystemExit(f"{data_url}: expected one .csv file, found {len(tables)}")
    return tables[0]


def read_table(
    path: Path, label_column: str
) -> tuple[list[str], np.ndarray, list[str], list[str | None]]:
    """Feature names, features (rows x columns, float32), label per row, split per row."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{path.name}: no rows")
    columns = list(rows[0])
    if label_column not in columns:
        raise SystemExit(f"{path.name}: no label column {label_column!r} (has {columns})")
    split_col = next((c for c in columns if c.lower() in _SPLIT_COLUMNS), None)
    features = [c for c in columns if c not in (label_column, split_col)]
    try:
        x = np.array([[float(r[c]) for c in features] for r in rows], dtype=np.float32)
    except ValueError as exc:
        raise SystemExit(f"{path.name}: features must be numeric ({exc})") from None
    labels = [str(r[label_column]) for r in rows]
    splits = [_SPLITS.get(str(r[split_col]).lower()) if split_col else None for r in rows]
    return features, x, labels, splits


def main(argv: Sequence[str] | None = None) -> int:
    data_url, train_url, hp = et.parse_args(argv)
    seed = int(hp.get("seed", 0))
    keras = setup(seed)
    table = find_table(data_url)
    features, x, raw_labels, splits = read_table(table, str(hp.get("label_column", "label")))
    classes = sorted(set(raw_labels))
    y = np.array([classes.index(v) for v in raw_labels], dtype=np.int64)
    if all(s is None for s in splits):
        rng = np.random.default_rng(seed)
        held = rng.random(len(y)) < float(hp.get("validation_ratio", 0.2))
    else:
        held = np.array([s == "validation" for s in splits])
    if held.all() or not held.any():
        raise SystemExit("need both training and validation rows")
    x_train, y_train, x_val, y_val = x[~held], y[~held], x[held], y[held]
    logger.info(
        "%s: %d features, %d classes, %d train / %d validation rows",
        table.name,
        len(features),
        len(classes),
        len(y_train),
        len(y_val),
    )

    layers = keras.layers
    inputs = keras.Input((len(features),), name="features")
    var = x_train.var(axis=0)
    h = layers.Normalization(mean=x_train.mean(axis=0), variance=np.where(var > 0, var, 1.0))(
        inputs
    )
    h = layers.Dense(int(hp.get("hidden_units", 32)), activation="relu")(h)
    h = layers.Dense(int(hp.get("hidden_units", 32)), activation="relu")(h)
    outputs = layers.Dense(len(classes), activation="softmax", name="probabilities")(h)
    model = keras.Model(inputs, outputs, name="tabular_classifier")
    model.compile(
        optimizer=keras.optimizers.Adam(float(hp.get("learning_rate", 0.01))),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=int(hp.get("epochs", 30)),
        batch_size=int(hp.get("batch_size", 32)),
        verbose=0,
        callbacks=[
            keras.callbacks.TensorBoard(
                str(Path(train_url) / et.TENSORBOARD_DIR), write_graph=False
            ),
            EpochLog(logger),
        ],
    )
    pred = np.argmax(model.predict(x_val, verbose=0), axis=1)
    metrics = et.classification_metrics(y_val.tolist(), pred.tolist(), classes)
    metrics["features"] = features
    et.report_metrics(train_url, metrics)
    logger.info("validation accuracy %.4f", metrics["accuracy"])
    save(model, train_url, x_val, classes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
