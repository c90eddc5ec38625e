"""A user training script that does not use the ``edge_training`` helper.

It reads the ModelArts arguments and the version's ``manifest.jsonl`` itself, and (unless
``--describe=no``) writes ``model.json`` by hand with only its preprocessing: the registry takes
the labels from the dataset version and gates on the validation images.
"""

import json
import os
import sys

import numpy as np
from PIL import Image

args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
data_url, train_url = args["data_url"], args["train_url"]
import keras  # noqa: E402

with open(os.path.join(data_url, "version.json")) as f:
    labels = sorted(json.load(f)["labels"])  # the registry's order too
with open(os.path.join(data_url, "manifest.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
SIZE = 14


def load(usage):
    picked = [r for r in rows if (r["usage"] == "TRAIN") == (usage == "TRAIN")]
    x = np.stack(
        [
            np.asarray(
                Image.open(os.path.join(data_url, r["source"])).convert("L").resize((SIZE, SIZE))
            )
            / 255.0
            for r in picked
        ]
    ).astype("float32")[..., None]
    y = np.array([labels.index(r["annotation"][0]["name"]) for r in picked])
    return x, y


x_train, y_train = load("TRAIN")
keras.utils.set_random_seed(0)
model = keras.Sequential(
    [
        keras.Input((SIZE, SIZE, 1), name="pixels"),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(len(labels), activation="softmax", name="scores"),
    ]
)
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x_train, y_train, epochs=int(args.get("epochs", "5")), verbose=2)
os.makedirs(train_url, exist_ok=True)
model.save(os.path.join(train_url, "model.keras"))
if args.get("describe", "yes") != "no":
    with open(os.path.join(train_url, "model.json"), "w") as f:
        pre = {"input": "pixels", "color": "L", "resize": [SIZE, SIZE], "scale": 1 / 255}
        json.dump({"preprocessing": pre}, f)
