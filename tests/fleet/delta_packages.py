"""Versions of one model that share most bytes, as delta updates meet them in practice.

An MLP 784-256-10 whose first layer (784 KB of weights) comes from ``base_seed`` and whose head
(10 KB) from ``head_seed``: two versions with the same base and different heads are a model whose
last layer was retrained. Built into signed packages with the real packer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from model_packager.build import ArtifactInput, BuildSpec, build_package
from model_packager.signing import load_private_key


def head_model(path: Path, base_seed: int, head_seed: int) -> Path:
    base, head = np.random.default_rng(base_seed), np.random.default_rng(head_seed)
    w1 = (base.standard_normal((784, 256)) * 0.05).astype(np.float32)
    b1 = (base.standard_normal(256) * 0.01).astype(np.float32)
    w2 = (head.standard_normal((256, 10)) * 0.09).astype(np.float32)
    b2 = (head.standard_normal(10) * 0.01).astype(np.float32)
    graph = helper.make_graph(
        nodes=[
            helper.make_node("Gemm", ["input", "w1", "b1"], ["hidden"], name="fc1"),
            helper.make_node("Relu", ["hidden"], ["hidden_relu"], name="relu1"),
            helper.make_node("Gemm", ["hidden_relu", "w2", "b2"], ["logits"], name="fc2"),
        ],
        name="delta_mlp",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 784])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(b2, "b2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def head_package(
    out: Path, version: str, base_seed: int, head_seed: int, key: Path, name: str = "deltamlp"
) -> Path:
    """A signed package of ``name``:``version`` (first layer from ``base_seed``)."""
    work = out / f"src-{version}"
    work.mkdir(parents=True, exist_ok=True)
    model = head_model(work / "model.onnx", base_seed, head_seed)
    spec = BuildSpec(name=name, version=version, artifacts=[ArtifactInput(path=model)])
    return build_package(spec, out, load_private_key(key))
