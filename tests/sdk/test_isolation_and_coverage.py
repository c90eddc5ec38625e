"""The SDK stands alone (httpx + pydantic) and keeps up with the REST API, route for route."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from control_plane.app import API_PREFIX, create_app
from control_plane.core.settings import Settings
from edge_inference_sdk.routes import sdk_routes

REPO = Path(__file__).resolve().parents[2]


def test_sdk_and_cli_import_without_the_server_dependencies() -> None:
    # A finder that refuses the server's packages: importing any of them fails loudly.
    code = textwrap.dedent(
        """
        import importlib.abc, sys
        BLOCKED = ("fastapi", "starlette", "sqlalchemy", "uvicorn", "alembic", "tensorflow",
                   "control_plane", "edge_agent", "jupyterlab", "nbconvert")

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, Block())
        import edge_inference_sdk, edge_inference_sdk.cli
        from edge_inference_sdk import Client
        client = Client("http://127.0.0.1:9", "t")
        assert client.datasets and client.notebooks
        assert edge_inference_sdk.cli.build_parser().parse_args(["datasets", "list"])
        loaded = sorted({m.split(".")[0] for m in sys.modules})
        print(" ".join(loaded))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    assert {"httpx", "pydantic", "edge_inference_sdk"} <= loaded
    assert not loaded & {"fastapi", "sqlalchemy", "control_plane", "starlette"}


def test_every_rest_route_has_an_sdk_method(tmp_path: Path) -> None:
    app = create_app(Settings(dev_mode=True, data_dir=tmp_path))
    api = {
        (method.upper(), path.removeprefix(API_PREFIX))
        for path, operations in app.openapi()["paths"].items()
        if path.startswith(API_PREFIX)
        for method in operations
    }
    sdk = sdk_routes()
    missing = sorted(api - sdk)
    stale = sorted(sdk - api)
    assert not missing, f"REST routes without an SDK method (add one with @route): {missing}"
    assert not stale, f"SDK methods whose route is gone: {stale}"
    assert len(api) > 60  # the comparison really saw the API
