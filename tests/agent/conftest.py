"""Fixtures for agent tests: signing keys, signed packages of the generated models, agents."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from model_packager.build import ArtifactInput, BuildSpec, build_package
from model_packager.signing import generate_keypair, load_private_key
from tests.agent.agent_process import AgentProcess


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    generate_keypair(d / "trusted.key", d / "trusted.pub")
    generate_keypair(d / "other.key", d / "other.pub")
    return {
        "private": d / "trusted.key",
        "public": d / "trusted.pub",
        "other_private": d / "other.key",
        "other_public": d / "other.pub",
    }


@pytest.fixture(scope="session")
def make_package(
    tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]
) -> Callable[..., Path]:
    """Build a signed package: make_package("mlp", "1", [models_dir / "mlp.onnx"])."""
    out = tmp_path_factory.mktemp("packages")
    cache: dict[tuple, Path] = {}

    def make(
        name: str, version: str, artifacts: list[Path], key: str = "private", **kw: Any
    ) -> Path:
        ck = (name, version, tuple(artifacts), key, tuple(sorted(kw.items())))
        if ck not in cache:
            spec = BuildSpec(
                name=name,
                version=version,
                artifacts=[ArtifactInput(Path(a)) for a in artifacts],
                **kw,
            )
            cache[ck] = build_package(spec, out, load_private_key(keys[key]))
        return cache[ck]

    return make


@pytest.fixture
def start_agent(tmp_path: Path, keys: dict[str, Path]) -> Iterator[Callable[..., AgentProcess]]:
    """Start agents in this test's temp folder; all are stopped at teardown."""
    agents: list[AgentProcess] = []

    def start(
        name: str = "agent", env: dict[str, str] | None = None, **settings: Any
    ) -> AgentProcess:
        a = AgentProcess(tmp_path / name, [keys["public"]], **settings)
        agents.append(a)
        return a.start(env)

    yield start
    for a in agents:
        a.stop()
