"""Small real TensorFlow models for the conversion tests and ``scripts/bench-variants``.

Nothing is downloaded: MobileNetV2 is built with ``weights=None``. An untrained MobileNetV2 is a
poor test subject, though: with untouched batch-norm statistics every input gets the same
uniform softmax (top-1 agreement would be trivially 1.0), and a randomly initialised deep network
amplifies rounding far more than a trained one, so fp16/int8 would fail for reasons no real model
has. ``mobilenet_v2`` therefore trains it for a few steps on a synthetic task (``class_images``:
each class a colour pattern plus noise), which gives confident, input-dependent outputs like a
trained classifier's. Samples for parity and calibration come from the same generator.

TensorFlow is imported inside the functions; call them from a subprocess or a session fixture.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

IMAGE = 96
CLASSES = 10


def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return tf


def class_images(
    count: int, seed: int = 0, size: int = IMAGE, classes: int = CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` NHWC float32 images in [-1, 1] (MobileNetV2's range) and their class ids.

    Class ``c`` is a fixed coarse colour pattern (seeded by ``c``) plus per-image noise, so the
    task is learnable in a few steps yet every image differs.
    """
    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(1234).uniform(-0.8, 0.8, (classes, size // 16, size // 16, 3))
    labels = rng.integers(0, classes, count)
    coarse = patterns[labels] + rng.normal(0, 0.2, (count, size // 16, size // 16, 3))
    images = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)
    images = images + rng.normal(0, 0.1, images.shape)
    return np.clip(images, -1, 1).astype(np.float32), labels


def mobilenet_v2(path: Path, size: int = IMAGE, classes: int = CLASSES, steps: int = 40) -> Path:
    """Keras MobileNetV2 (weights=None) trained briefly on ``class_images``, saved as ``.keras``."""
    tf = _tf()
    tf.keras.utils.set_random_seed(0)
    # Logits, not softmax: training is not bit-reproducible across machines (threaded kernels sum
    # in any order), and fp16's error on probabilities near 0.5 sat right at the 1e-2 gate, so
    # the fp16 verdict changed from machine to machine. Relative to the logits' scale the same
    # rounding is far inside the gate, and top-1 agreement is unchanged.
    model = tf.keras.applications.MobileNetV2(
        input_shape=(size, size, 3), weights=None, classes=classes, classifier_activation=None
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(1e-3),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = class_images(steps * 32, seed=99, size=size, classes=classes)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    # Re-estimate batch-norm statistics on training data: after a few steps the moving averages
    # (momentum 0.999) still hold their initial values.
    bns = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    model(x[:256], training=True)
    for layer in bns:
        layer.momentum = 0.999
    model.save(str(path))
    return path


def small_savedmodel(path: Path) -> Path:
    """A SavedModel with a named serving signature: dense layers on 16 features, 4 classes."""
    tf = _tf()
    tf.keras.utils.set_random_seed(1)
    inp = tf.keras.Input(shape=(16,), name="features")
    hidden = tf.keras.layers.Dense(32, activation="relu")(inp)
    out = tf.keras.layers.Dense(4, activation="softmax", name="probs")(hidden)
    model = tf.keras.Model(inp, out)

    class Module(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, 16], tf.float32, name="features")])
        def serve(self, features: Any) -> dict[str, Any]:
            return {"probs": self.model(features, training=False)}

    module = Module()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


# Smallest input each keras.applications architecture accepts (32 for the rest); rounded up to a
# multiple of 16, which ``class_images`` needs.
ZOO_MIN_SIZE = {"InceptionV3": 80, "InceptionResNetV2": 80, "Xception": 80, "NASNetLarge": 32}


def zoo_architectures() -> list[str]:
    """Every model constructor in ``keras.applications`` (ResNet50, EfficientNetB0, ...)."""
    tf = _tf()
    apps = tf.keras.applications
    return sorted(n for n in dir(apps) if n[:1].isupper() and callable(getattr(apps, n)))


def zoo_model(
    name: str, path: Path, size: int | None = None, steps: int = 6, classes: int = CLASSES
) -> tuple[Path, np.ndarray]:
    """``keras.applications.<name>`` (weights=None) at a small input size, saved as ``.keras``.

    Trained ``steps`` batches on ``class_images`` and its batch-norm statistics re-estimated, as
    ``mobilenet_v2`` does, so outputs depend on the input and int8's top-1 agreement is judged
    on real decisions, not on the ties of an untrained network. Returns the path and 64 samples
    of the same task (other seed) for the gate.
    """
    tf = _tf()
    tf.keras.utils.set_random_seed(0)
    size = size or ZOO_MIN_SIZE.get(name, 32)
    build = getattr(tf.keras.applications, name)
    model = build(
        input_shape=(size, size, 3), weights=None, classes=classes, classifier_activation=None
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(1e-3),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = class_images(steps * 32, seed=99, size=size, classes=classes)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    bns = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    model(x[:128], training=True)
    for layer in bns:
        layer.momentum = 0.99
    model.save(str(path))
    return path, class_images(64, seed=7, size=size, classes=classes)[0]
