"""A user training script on the control plane's TensorFlow/Keras (ModelArts-style arguments)."""

import edge_training as et
import numpy as np
from PIL import Image

data_url, train_url, hp = et.parse_args()
import keras  # noqa: E402 - after argument parsing, as scripts usually do

labels = et.class_names(data_url)
items = et.read_manifest(data_url)
size = int(hp.get("size", 14))


def load(split):
    rows = [it for it in items if it["split"] == split]
    x = np.stack(
        [
            np.asarray(Image.open(it["path"]).convert("L").resize((size, size))) / 255.0
            for it in rows
        ]
    ).astype("float32")[..., None]
    y = np.array([labels.index(it["labels"][0]) for it in rows])
    return x, y


x_train, y_train = load("train")
x_val, y_val = load("validation")
keras.utils.set_random_seed(0)
model = keras.Sequential(
    [
        keras.Input((size, size, 1), name="pixels"),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(len(labels), activation="softmax", name="scores"),
    ]
)
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
for epoch in range(int(hp["epochs"])):
    h = model.fit(x_train, y_train, epochs=1, verbose=0, validation_data=(x_val, y_val))
    et.log_scalar(train_url, "val_accuracy", h.history["val_accuracy"][-1], step=epoch)
    print(f"epoch {epoch} val_accuracy {h.history['val_accuracy'][-1]:.3f}", flush=True)
pred = model.predict(x_val, verbose=0).argmax(axis=1)
et.report_metrics(train_url, et.classification_metrics(y_val.tolist(), pred.tolist(), labels))
model.save(f"{train_url}/model.keras")
et.describe_model(train_url, labels=labels)
