"""What the built-in algorithms share: logging setup, seeding, the Keras callbacks they use, and
how they save a model with the samples the registry's parity gate runs on."""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

from control_plane.training.sdk import edge_training as et

# Rows of real validation inputs kept next to the model: the registry gates conversions (and
# calibrates int8) on them instead of on random numbers.
PARITY_SAMPLES = 64


def setup(seed: int) -> Any:
    """Log to stdout (the job log), quiet TensorFlow, seed everything; returns ``keras``."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s"
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    return keras


class EpochLog:
    """A Keras callback that logs one line per epoch, since progress bars make unreadable logs."""

    def __new__(cls, logger: logging.Logger) -> Any:
        import keras

        class _Callback(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                text = " ".join(f"{k}={v:.4f}" for k, v in sorted((logs or {}).items()))
                logger.info("epoch %d: %s", epoch + 1, text)

        return _Callback()


def save(
    model: Any,
    train_url: str,
    x_val: np.ndarray,
    labels: list[str],
    preprocessing: dict[str, Any] | None = None,
) -> Path:
    """``<train_url>/model/model.keras``, ``parity_samples.npy`` and ``model.json``."""
    folder = Path(train_url) / "model"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.keras"
    model.save(path)
    np.save(folder / "parity_samples.npy", x_val[:PARITY_SAMPLES].astype(np.float32))
    et.describe_model(train_url, labels=labels, preprocessing=preprocessing)
    return path
