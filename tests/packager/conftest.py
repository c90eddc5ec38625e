"""Fixtures for the model_packager suite: tiny real models, keys, built packages, tar crafting.

Models are generated here, never downloaded: an ONNX MLP written with ``onnx.helper`` and a TFLite
model converted from a Keras model that carries the *same* weights, so the two variants of one
package must agree numerically. Everything expensive is session-scoped. Names are prefixed where
they could shadow the suite-wide fixtures of tests/conftest.py.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from model_packager.archive import extract_package, open_package, sha256_bytes
from model_packager.build import ArtifactInput, BuildSpec, build_package
from model_packager.manifest import FileRef, Manifest, Provenance, TensorModel, Variant
from model_packager.signing import TrustStore, generate_keypair, load_private_key, load_public_key

FEATURES = 784
HIDDEN = 256
CLASSES = 10
LABELS = [f"digit-{i}" for i in range(CLASSES)]


def mlp_weights(
    features: int = FEATURES, hidden: int = HIDDEN, classes: int = CLASSES, seed: int = 0
) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((features, hidden)) * 0.05).astype(np.float32),
        (rng.standard_normal(hidden) * 0.05).astype(np.float32),
        (rng.standard_normal((hidden, classes)) * 0.05).astype(np.float32),
        (rng.standard_normal(classes) * 0.05).astype(np.float32),
    ]


def write_onnx_mlp(
    path: Path,
    *,
    features: int = FEATURES,
    hidden: int = HIDDEN,
    classes: int = CLASSES,
    input_name: str = "input",
    output_name: str = "logits",
) -> Path:
    """A features-hidden-classes MLP: input [N, features] FP32 -> output [N, classes] FP32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1, b1, w2, b2 = mlp_weights(features, hidden, classes)
    nodes = [
        helper.make_node("MatMul", [input_name, "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["o0"]),
        helper.make_node("Add", ["o0", "b2"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", classes])],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(b2, "b2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="session")
def packager_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def onnx_model(packager_models_dir: Path) -> Path:
    return write_onnx_mlp(packager_models_dir / "mlp.onnx")


@pytest.fixture(scope="session")
def onnx_model_3_classes(packager_models_dir: Path) -> Path:
    """Same input, but 3 output classes: cannot be a variant of the 10-class model."""
    return write_onnx_mlp(packager_models_dir / "mlp3.onnx", classes=3)


@pytest.fixture(scope="session")
def onnx_model_renamed(packager_models_dir: Path) -> Path:
    """Same network as ``onnx_model`` with different tensor names."""
    return write_onnx_mlp(packager_models_dir / "mlp-xy.onnx", input_name="x", output_name="y")


_CONVERT_TFLITE = """
import sys
import numpy as np
import tensorflow as tf

out, weights, features, hidden, classes = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
inp = tf.keras.Input(shape=(features,), name="pixels")
h = tf.keras.layers.Dense(hidden, activation="relu")(inp)
logits = tf.keras.layers.Dense(classes, name="scores")(h)
model = tf.keras.Model(inp, logits)
with np.load(weights) as w:
    model.set_weights([w["w1"], w["b1"], w["w2"], w["b2"]])
with open(out, "wb") as f:
    f.write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
"""


@pytest.fixture(scope="session")
def tflite_model(packager_models_dir: Path) -> Path:
    """The ONNX MLP's twin, converted by TFLiteConverter; its tensor names differ from ONNX's.

    TensorFlow is imported only here, and in a child process: the suite shares one process with
    tests that prove the agent never imports TensorFlow (see tests/conftest.py).
    """
    path = packager_models_dir / "mlp.tflite"
    weights = packager_models_dir / "mlp-weights.npz"
    w1, b1, w2, b2 = mlp_weights()
    np.savez(weights, w1=w1, b1=b1, w2=w2, b2=b2)
    result = subprocess.run(
        [sys.executable, "-c", _CONVERT_TFLITE, str(path), str(weights)]
        + [str(n) for n in (FEATURES, HIDDEN, CLASSES)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""},
        timeout=300,
        check=False,
    )
    if result.returncode != 0 or not path.is_file():
        pytest.fail(f"TFLite conversion failed:\n{result.stderr[-4000:]}", pytrace=False)
    return path


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_path: Path
    key_id: str

    @property
    def private(self) -> Ed25519PrivateKey:
        return load_private_key(self.private_path)

    @property
    def trust(self) -> TrustStore:
        return TrustStore.from_keys([load_public_key(self.public_path)])


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="session")
def signer(keys_dir: Path) -> KeyPair:
    kid = generate_keypair(keys_dir / "signer.key", keys_dir / "signer.pub")
    return KeyPair(keys_dir / "signer.key", keys_dir / "signer.pub", kid)


@pytest.fixture(scope="session")
def stranger(keys_dir: Path) -> KeyPair:
    """A valid key nobody trusts."""
    kid = generate_keypair(keys_dir / "stranger.key", keys_dir / "stranger.pub")
    return KeyPair(keys_dir / "stranger.key", keys_dir / "stranger.pub", kid)


@pytest.fixture(scope="session")
def packages_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("packages")


@pytest.fixture(scope="session")
def onnx_pkg(onnx_model: Path, signer: KeyPair, packages_dir: Path) -> Path:
    spec = BuildSpec(
        name="mnist-mlp",
        version="1.0.0",
        artifacts=[ArtifactInput(onnx_model)],
        description="onnx only",
        labels=LABELS,
    )
    return build_package(spec, packages_dir / "onnx", signer.private)


@pytest.fixture(scope="session")
def unsigned_pkg(onnx_model: Path, packages_dir: Path) -> Path:
    spec = BuildSpec(name="mnist-mlp", version="1.0.0", artifacts=[ArtifactInput(onnx_model)])
    return build_package(spec, packages_dir / "unsigned")


@pytest.fixture(scope="session")
def tflite_pkg(tflite_model: Path, signer: KeyPair, packages_dir: Path) -> Path:
    spec = BuildSpec(name="mnist-lite", version="1.0.0", artifacts=[ArtifactInput(tflite_model)])
    return build_package(spec, packages_dir / "tflite", signer.private)


@pytest.fixture(scope="session")
def both_pkg(onnx_model: Path, tflite_model: Path, signer: KeyPair, packages_dir: Path) -> Path:
    spec = BuildSpec(
        name="mnist-both",
        version="2.1.0",
        artifacts=[ArtifactInput(onnx_model), ArtifactInput(tflite_model)],
        labels=LABELS,
        golden_count=3,
    )
    return build_package(spec, packages_dir / "both", signer.private)


@pytest.fixture(scope="session")
def both_dir(both_pkg: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``both_pkg`` extracted once (tests must not modify it)."""
    return extract_package(open_package(both_pkg), tmp_path_factory.mktemp("extracted") / "both")


@pytest.fixture
def pkg_copy(tmp_path: Path):
    """Copy a package into this test's tmp dir so it can be tampered with."""

    def copy(src: Path) -> Path:
        dst = tmp_path / "work" / src.name
        dst.parent.mkdir(exist_ok=True)
        shutil.copyfile(src, dst)
        return dst

    return copy


# ---------------------------------------------------------------- hand-crafted archives


class TarKit:
    """Build archives byte by byte, including ones no honest writer would produce."""

    ARTIFACT = b"not really a model, but pinned by the manifest " * 8
    GOLDEN = b"golden bytes" * 4

    @staticmethod
    def info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE, link: str = ""):
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.size = size
        ti.linkname = link
        ti.mode = 0o644
        return ti

    @classmethod
    def file(cls, name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
        return cls.info(name, len(data)), data

    @classmethod
    def special(
        cls, name: str, kind: bytes, link: str = ""
    ) -> tuple[tarfile.TarInfo, bytes | None]:
        return cls.info(name, 0, kind, link), None

    @classmethod
    def manifest(
        cls, artifact: bytes | None = None, golden: bytes | None = None, **changes: object
    ) -> Manifest:
        artifact = cls.ARTIFACT if artifact is None else artifact
        golden = cls.GOLDEN if golden is None else golden
        variant = Variant(
            name="onnx-fp32",
            runtime="onnx",
            artifact=FileRef(
                path="artifacts/onnx-fp32.onnx", sha256=sha256_bytes(artifact), size=len(artifact)
            ),
            golden=FileRef(
                path="golden/onnx-fp32.npz", sha256=sha256_bytes(golden), size=len(golden)
            ),
        )
        data: dict[str, object] = {
            "name": "crafted",
            "version": "1",
            "inputs": [TensorModel(name="input", datatype="FP32", shape=[-1, 4])],
            "outputs": [TensorModel(name="logits", datatype="FP32", shape=[-1, 2])],
            "variants": [variant],
            "provenance": Provenance(tool="tests", created_at="2026-01-01T00:00:00+00:00"),
        }
        data.update(changes)
        return Manifest(**data)  # type: ignore[arg-type]

    @classmethod
    def honest_members(cls, manifest_bytes: bytes | None = None) -> list:
        """manifest + artifact + golden, all consistent."""
        mb = cls.manifest().to_bytes() if manifest_bytes is None else manifest_bytes
        return [
            cls.file("manifest.json", mb),
            cls.file("artifacts/onnx-fp32.onnx", cls.ARTIFACT),
            cls.file("golden/onnx-fp32.npz", cls.GOLDEN),
        ]

    @staticmethod
    def write(path: Path, members: list, fmt: int = tarfile.PAX_FORMAT) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w", format=fmt) as tar:
            for ti, data in members:
                tar.addfile(ti, io.BytesIO(data) if data is not None else None)
        return path


@pytest.fixture
def tarkit() -> type[TarKit]:
    return TarKit


def tree(path: Path) -> set[str]:
    """Every entry under ``path`` (hidden ones included), relative, or empty if it is missing."""
    if not path.exists():
        return set()
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.fixture
def snapshot():
    return tree
