"""Fixtures for conversion tests: keys, the TF models (cached), and the MobileNetV2 package.

TensorFlow work is session-scoped: the MobileNetV2 model is trained once and cached under
``tests/.models/convert/`` (keyed by ``MODEL_VERSION``), and the MobileNetV2 package is converted
once, through the real ``model-packager convert`` CLI in a subprocess, then shared by every test
that reads its figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from model_packager.archive import open_package
from model_packager.manifest import Manifest
from model_packager.signing import generate_keypair
from tests.conftest import MODELS_DIR, REPO_ROOT
from tests.convert import models

MODEL_VERSION = "2"  # bump when tests/convert/models.py changes what it builds
CACHE = MODELS_DIR / "convert"
MOBILENET_TARGETS = ("onnx-fp32", "tflite-fp32", "tflite-fp16", "tflite-int8")


@pytest.fixture(scope="session")
def convert_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("convert-keys")
    generate_keypair(d / "signing.key", d / "signing.pub")
    return {"private": d / "signing.key", "public": d / "signing.pub"}


def venv_from_setup_script(script: str, venv: str, timeout: float) -> Path:
    """Run ``scripts/<script>`` (it creates ``<venv>`` when missing, else checks it) and return
    that environment's python; a failed setup fails the test with its output, never skips it."""
    t0 = time.monotonic()
    done = subprocess.run(
        [str(REPO_ROOT / "scripts" / script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"scripts/{script} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    print(f"{script} took {time.monotonic() - t0:.1f}s")
    return REPO_ROOT / venv / "bin" / "python"


def _cached(name: str) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    return CACHE / f"v{MODEL_VERSION}-{name}"


@pytest.fixture(scope="session")
def mobilenet_keras() -> Path:
    """MobileNetV2 96x96, 10 classes, trained a few steps (see tests/convert/models.py)."""
    path = _cached("mobilenet_v2_96.keras")
    if not path.exists():
        tmp = path.with_suffix(".partial.keras")
        models.mobilenet_v2(tmp)
        tmp.rename(path)
    return path


@pytest.fixture(scope="session")
def mobilenet_samples() -> Path:
    """64 images from the task the model was trained on (other seed than training)."""
    path = _cached("mobilenet_samples.npy")
    if not path.exists():
        images, _ = models.class_images(64, seed=7)
        np.save(path, images)
    return path


@dataclass
class ConvertedPackage:
    path: Path
    manifest: Manifest
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def mobilenet_package(
    tmp_path_factory: pytest.TempPathFactory,
    mobilenet_keras: Path,
    mobilenet_samples: Path,
    convert_keys: dict[str, Path],
) -> ConvertedPackage:
    out = tmp_path_factory.mktemp("mobilenet-package")
    cmd = [
        sys.executable,
        "-m",
        "model_packager.cli",
        "convert",
        str(mobilenet_keras),
        "--name",
        "mobilenet",
        "--version",
        "1",
        "--samples",
        str(mobilenet_samples),
        "--key",
        str(convert_keys["private"]),
        "--on-parity-fail",
        "fail",
        "--out-dir",
        str(out),
    ]
    for t in MOBILENET_TARGETS:
        cmd += ["--target", t]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"convert failed:\n{done.stdout}\n{done.stderr[-4000:]}", pytrace=False)
    path = Path(done.stdout.strip().splitlines()[-1])
    manifest = open_package(path).manifest
    (out / "report.txt").write_text(done.stdout)
    (out / "manifest.json").write_text(json.dumps(manifest.to_dict(json=True), indent=1))
    return ConvertedPackage(path, manifest, done.stdout, done.stderr)


@pytest.fixture(scope="session")
def small_savedmodel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.small_savedmodel(tmp_path_factory.mktemp("savedmodel") / "model")
