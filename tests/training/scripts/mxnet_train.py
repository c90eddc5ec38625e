"""A user training script on the MXNet environment: Gluon, exported as a symbol/params pair."""

import edge_training as et
import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

data_url, train_url, hp = et.parse_args()
labels = et.class_names(data_url)
items = et.read_manifest(data_url)
size = 14


def load(split):
    rows = [it for it in items if it["split"] == split]
    xs = []
    for it in rows:
        img = mx.image.imread(it["path"], flag=0)  # grayscale HxWx1
        img = mx.image.imresize(img, size, size)
        xs.append(img.asnumpy().transpose(2, 0, 1) / 255.0)
    y = np.array([labels.index(it["labels"][0]) for it in rows], dtype="float32")
    return np.stack(xs).astype("float32"), y


x_train, y_train = load("train")
x_val, y_val = load("validation")
mx.random.seed(0)
net = gluon.nn.HybridSequential()
net.add(gluon.nn.Dense(64, activation="relu"), gluon.nn.Dense(len(labels)))
net.initialize(mx.init.Xavier())
net.hybridize()
loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": float(hp["lr"])})
loader = gluon.data.DataLoader(
    gluon.data.ArrayDataset(x_train, y_train), batch_size=32, shuffle=True
)
for epoch in range(int(hp["epochs"])):
    for xb, yb in loader:
        with autograd.record():
            loss = loss_fn(net(xb), yb)
        loss.backward()
        trainer.step(xb.shape[0])
    pred = net(mx.nd.array(x_val)).argmax(axis=1).asnumpy().astype(int)
    acc = float((pred == y_val).mean())
    et.log_scalar(train_url, "val_accuracy", acc, step=epoch)
    print(f"epoch {epoch} val_accuracy {acc:.3f}", flush=True)
et.report_metrics(
    train_url, et.classification_metrics(y_val.astype(int).tolist(), pred.tolist(), labels)
)
net.export(f"{train_url}/digits", epoch=1)
et.describe_model(train_url, input_shapes={"data": [-1, 1, size, size]}, labels=labels)
