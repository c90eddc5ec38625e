"""Built-in image classification: a small Keras CNN trained from scratch.

``python -m control_plane.training.algorithms.image_classification --data_url=V001/
--train_url=out/ --input_size=32 --epochs=20``

Images are decoded with Pillow, converted to grayscale or RGB (``color=auto`` picks grayscale when
every sampled image is), resized to ``input_size`` squared and scaled to 0..1. The network is two
convolution blocks, a dense layer and a softmax: small enough to train on a CPU in
seconds on digit-sized data, and made only of operators every converter target supports. Training
shifts images by up to ``augment_shift`` of their size (0 turns it off): the network then learns
shapes rather than positions, which small datasets otherwise teach it.

Writes ``model/model.keras``, TensorBoard events (``tensorboard/train``, ``tensorboard/validation``)
and ``metrics.json`` (accuracy, per-class precision and recall, confusion matrix). The package's
preprocessing (decode, colour, resize, scale) is recorded in ``model.json`` so the edge agent can
take JPEG/PNG bytes and do what training did.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from control_plane.training.algorithms.common import EpochLog, save, setup
from control_plane.training.sdk import edge_training as et

logger = logging.getLogger("image_classification")


def load_images(paths: list[str], size: int, color: str) -> np.ndarray:
    mode = "L" if color == "L" else "RGB"
    out = np.empty((len(paths), size, size, 1 if mode == "L" else 3), dtype=np.float32)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            arr = np.asarray(im.convert(mode).resize((size, size), Image.BILINEAR))
        out[i] = (arr.reshape(out.shape[1:]) / 255.0).astype(np.float32)
    return out


def _auto_color(paths: list[str]) -> str:
    for p in paths[:50]:
        with Image.open(p) as im:
            if im.mode not in ("L", "LA", "1", "I", "I;16"):
                return "RGB"
    return "L"


def build_model(keras: Any, size: int, channels: int, classes: int) -> Any:
    layers = keras.layers
    inputs = keras.Input((size, size, channels), name="image")
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.25)(x)
    x = layers.Dense(64, activation="relu")(x)
    outputs = layers.Dense(classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="image_classifier")


def main(argv: Sequence[str] | None = None) -> int:
    data_url, train_url, hp = et.parse_args(argv)
    size = int(hp.get("input_size", 32))
    epochs = int(hp.get("epochs", 20))
    batch = int(hp.get("batch_size", 32))
    lr = float(hp.get("learning_rate", 0.002))
    seed = int(hp.get("seed", 0))
    keras = setup(seed)

    labels = et.class_names(data_url)
    index = {name: i for i, name in enumerate(labels)}
    items = [it for it in et.read_manifest(data_url) if it["labels"]]
    train = [it for it in items if it["split"] == "train"]
    val = [it for it in items if it["split"] == "validation"]
    if not train or not val:
        raise SystemExit(f"need train and validation samples, have {len(train)} / {len(val)}")
    color = str(hp.get("color", "auto"))
    if color == "auto":
        color = _auto_color([it["path"] for it in train])
    t0 = time.perf_counter()
    x_train = load_images([it["path"] for it in train], size, color)
    x_val = load_images([it["path"] for it in val], size, color)
    y_train = np.array([index[it["labels"][0]] for it in train], dtype=np.int64)
    y_val = np.array([index[it["labels"][0]] for it in val], dtype=np.int64)
    logger.info(
        "%d classes, %d train / %d validation images at %dx%d %s (loaded in %.1fs)",
        len(labels),
        len(train),
        len(val),
        size,
        size,
        color,
        time.perf_counter() - t0,
    )

    model = build_model(keras, size, x_train.shape[-1], len(labels))
    # Random shifts during training only: the trainer wraps the model, the saved model is bare.
    shift = float(hp.get("augment_shift", 0.1))
    trainer = model
    if shift > 0:
        trainer = keras.Sequential(
            [keras.layers.RandomTranslation(shift, shift, fill_mode="constant", seed=seed), model]
        )
    trainer.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    tb_dir = Path(train_url) / et.TENSORBOARD_DIR
    trainer.fit(
        x_train,
        y_train,
        validation_data=(x_val, y_val),
        epochs=epochs,
        batch_size=batch,
        shuffle=True,
        verbose=0,
        callbacks=[
            keras.callbacks.TensorBoard(str(tb_dir), write_graph=False, update_freq="epoch"),
            EpochLog(logger),
        ],
    )
    pred = np.argmax(model.predict(x_val, batch_size=256, verbose=0), axis=1)
    metrics = et.classification_metrics(y_val.tolist(), pred.tolist(), labels)
    metrics.update(epochs=epochs, train_samples=len(train))
    et.report_metrics(train_url, metrics)
    logger.info("validation accuracy %.4f", metrics["accuracy"])
    save(
        model,
        train_url,
        x_val,
        labels,
        preprocessing={
            "input": "image",
            "decode": "image",
            "color": color,
            "resize": [size, size],
            "scale": 1 / 255.0,
            "layout": "NHWC",
            "dtype": "FP32",
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
