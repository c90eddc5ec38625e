"""Suite-wide fixtures.

``models_dir`` gives every test the small real models of ``scripts/gen_test_models.py``. They are
generated on first use (and again whenever the generator's version changes) rather than by
``scripts/test``, so a bare ``pytest`` or an IDE run behaves exactly like the script.

The generator runs in a subprocess: it imports TensorFlow to build ``mlp.tflite``, and TensorFlow
must never be imported into the test process, where tests prove the agent stays free of it.
Only the generator's cheap "what is missing" query runs in-process.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
GENERATOR = REPO_ROOT / "scripts" / "gen_test_models.py"
MODELS_DIR = REPO_ROOT / "tests" / ".models"


def load_generator() -> ModuleType:
    """Import scripts/gen_test_models.py (scripts/ is not a package); only numpy comes with it."""
    name = "gen_test_models"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """tests/.models/ with mlp.onnx, mlp_v2.onnx, add_int.onnx, multi_dtype.onnx, mlp.tflite.

    Generates what is missing or stale (a few seconds, once); cnn.onnx is not included, see
    ``scripts/gen-test-models --with-cnn``.
    """
    generator = load_generator()
    if generator.missing(MODELS_DIR):
        result = subprocess.run(
            [sys.executable, str(GENERATOR), "--out", str(MODELS_DIR)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(
                f"scripts/gen_test_models.py failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr[-4000:]}",
                pytrace=False,
            )
        still_missing = generator.missing(MODELS_DIR)
        assert not still_missing, f"generator did not write {still_missing}"
    return MODELS_DIR


# --- databases -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster for the session (tests/pg.py); stopped at the end.

    Missing server binaries fail the tests that need them, with the install hint: a test asked to
    run on PostgreSQL never silently runs on SQLite instead.
    """
    from tests.pg import PostgresUnavailable, start_cluster

    try:
        cluster = start_cluster()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> str | None:
    """The control plane's database for one test: None (the default SQLite file) or a fresh
    PostgreSQL database. Modules run on both with ``pytestmark = BOTH_DATABASES`` (tests/pg.py)."""
    engine = getattr(request, "param", "sqlite")
    if engine == "sqlite":
        return None
    if engine == "postgres":
        cluster = request.getfixturevalue("postgres_cluster")
        return str(cluster.create_database())
    raise ValueError(f"unknown database engine {engine!r}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``@pytest.mark.databases("sqlite", "postgres")``: one run per engine of every test that
    uses ``database_url``; tests of the module that touch no database run once. The same for
    ``@pytest.mark.stores("local", "s3")`` and ``blob_storage``."""
    for mark, fixture in (("databases", "database_url"), ("stores", "blob_storage")):
        marker = metafunc.definition.get_closest_marker(mark)
        if marker is not None and fixture in metafunc.fixturenames:
            metafunc.parametrize(fixture, list(marker.args), indirect=True)


# --- object stores ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One S3-compatible server (moto, tests/s3.py) on loopback for the session."""
    from tests.s3 import start_s3_server

    server = start_s3_server(tmp_path_factory.mktemp("s3") / "s3.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def blob_storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings overrides for one test's storage: {} (local folders) or a fresh S3 bucket.
    Modules run on both with ``pytestmark = BOTH_STORES`` (tests/s3.py)."""
    kind = getattr(request, "param", "local")
    if kind == "local":
        return {}
    if kind == "s3":
        server = request.getfixturevalue("s3_server")
        return dict(server.settings(server.new_bucket()))
    raise ValueError(f"unknown storage {kind!r}")
