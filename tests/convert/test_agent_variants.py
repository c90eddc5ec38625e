"""On the device: the agent falls back to the next variant when the preferred one cannot load.

The package is built with model_packager's own functions, then its TFLite artifact is replaced by
garbage with the manifest re-pinned and re-signed: signature and digests are valid, so the agent
installs it, and only loading the TFLite variant fails. The agent runs as a subprocess (this
process must not import the generated ``inference`` protos); ModelMetadata is called with
hand-encoded bytes to read the ``edge-variant`` trailing metadata.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from model_packager.archive import open_package, sha256_bytes, write_archive
from model_packager.build import ArtifactInput, BuildSpec, build_package
from model_packager.manifest import FileRef
from model_packager.signing import load_private_key, sign_manifest
from tests.agent.agent_process import AgentProcess


def corrupt_variant(package: Path, variant: str, key: Path, out_dir: Path) -> Path:
    """A correctly signed copy of ``package`` whose ``variant`` artifact is not a model."""
    reader = open_package(package)
    manifest = reader.manifest
    garbage = b"TFL3" + b"\x00\x17not a flatbuffer" * 64
    files: dict[str, Path | bytes] = {}
    with tarfile.open(reader.path, "r:") as tar:
        for ref in manifest.files():
            src = tar.extractfile(reader.members[ref.path])
            assert src is not None
            files[ref.path] = src.read()
    variants = []
    for v in manifest.variants:
        if v.name == variant:
            files[v.artifact.path] = garbage
            v = replace(
                v,
                artifact=FileRef(
                    path=v.artifact.path, sha256=sha256_bytes(garbage), size=len(garbage)
                ),
            )
        variants.append(v)
    new = replace(manifest, variants=variants)
    raw = new.to_bytes()
    return write_archive(out_dir, raw, files, sign_manifest(raw, load_private_key(key)))


def model_metadata_variant(address: str, model: str) -> str:
    """Call OIP ModelMetadata without generated code; return the ``edge-variant`` trailer."""
    name = model.encode()
    request = b"\x0a" + bytes([len(name)]) + name  # ModelMetadataRequest.name = 1
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelMetadata",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        _, info = call.with_call(request, timeout=10)
        trailers = dict(info.trailing_metadata() or ())
    return str(trailers["edge-variant"])


@pytest.fixture
def agent(tmp_path: Path, convert_keys: dict[str, Path]) -> Iterator[AgentProcess]:
    proc = AgentProcess(
        tmp_path / "agent", [convert_keys["public"]], variant_preference=["tflite", "onnx"]
    )
    proc.start()
    yield proc
    proc.stop()


def test_agent_falls_back_when_preferred_variant_fails_to_load(
    agent: AgentProcess, models_dir: Path, tmp_path: Path, convert_keys: dict[str, Path]
) -> None:
    good = build_package(
        BuildSpec(
            name="dual",
            version="1",
            artifacts=[
                ArtifactInput(models_dir / "mlp.onnx", name="onnx-fp32"),
                ArtifactInput(models_dir / "mlp.tflite", name="tflite-fp32"),
            ],
        ),
        tmp_path / "good",
        load_private_key(convert_keys["private"]),
    )
    bad = corrupt_variant(good, "tflite-fp32", convert_keys["private"], tmp_path / "bad")

    r = agent.install(bad)
    assert r.result.outcome == "COMMITTED", r
    assert r.model.variant == "onnx-fp32" and r.model.runtime == "onnx"
    assert model_metadata_variant(agent.address, "dual") == "onnx-fp32"
    status = agent.status()
    served = {m.name: m for m in status.models}["dual"]
    assert [v.variant for v in served.versions] == ["onnx-fp32"]
    assert "variant tflite-fp32 of dual failed to load" in agent.log()


def test_agent_serves_preferred_variant_when_it_loads(
    agent: AgentProcess, models_dir: Path, tmp_path: Path, convert_keys: dict[str, Path]
) -> None:
    good = build_package(
        BuildSpec(
            name="dual",
            version="1",
            artifacts=[
                ArtifactInput(models_dir / "mlp.onnx", name="onnx-fp32"),
                ArtifactInput(models_dir / "mlp.tflite", name="tflite-fp32"),
            ],
        ),
        tmp_path / "good",
        load_private_key(convert_keys["private"]),
    )
    r = agent.install(good)
    assert r.result.outcome == "COMMITTED", r
    assert model_metadata_variant(agent.address, "dual") == "tflite-fp32"
