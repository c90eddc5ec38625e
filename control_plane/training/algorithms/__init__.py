"""Built-in training algorithms: run with no user code, as ``python -m <module>``.

Each module follows the same contract as a user script (``--data_url``, ``--train_url``,
``--name=value`` hyperparameters, metrics through ``edge_training``), so the job runner treats
built-ins and uploaded scripts alike and a built-in is also a worked example of a script.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Algorithm:
    name: str
    module: str
    description: str
    # What the job's input must be: a published image classification version, or tabular data.
    input: str
    defaults: dict[str, Any] = field(default_factory=dict)


BUILTIN: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm(
            "image_classification",
            "control_plane.training.algorithms.image_classification",
            "Keras CNN trained from scratch on an image classification dataset version.",
            "image_classification",
            {
                "input_size": 32,
                "epochs": 20,
                "batch_size": 32,
                "learning_rate": 0.002,
                "color": "auto",
                "augment_shift": 0.1,
                "seed": 0,
            },
        ),
        Algorithm(
            "tabular_classification",
            "control_plane.training.algorithms.tabular_classification",
            "Keras MLP on a CSV table (numeric features, one label column).",
            "tabular",
            {
                "label_column": "label",
                "epochs": 30,
                "batch_size": 32,
                "learning_rate": 0.01,
                "hidden_units": 32,
                "validation_ratio": 0.2,
                "seed": 0,
            },
        ),
    )
}
