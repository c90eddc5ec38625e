"""Run with .venv-mxnet's python: build a small Gluon CNN and export it as symbol/params.

    python mxnet_gluon_export.py OUT_PREFIX

writes OUT_PREFIX-symbol.json and OUT_PREFIX-0000.params (input ``data``, 1x16x16 images, 5
classes). Standalone (MXNet and numpy only) because it runs outside the main environment.
"""

import sys

import mxnet as mx
from mxnet.gluon import nn


def main(prefix):
    mx.random.seed(0)
    net = nn.HybridSequential()
    net.add(
        nn.Conv2D(8, kernel_size=3, padding=1, activation="relu"),
        nn.MaxPool2D(pool_size=2),
        nn.Conv2D(16, kernel_size=3, padding=1, activation="relu"),
        nn.GlobalAvgPool2D(),
        nn.Dense(5),
    )
    net.initialize(mx.init.Xavier())
    net.hybridize()
    net(mx.nd.random.uniform(shape=(2, 1, 16, 16)))
    net.export(prefix, epoch=0)
    print(prefix)


if __name__ == "__main__":
    main(sys.argv[1])
