"""Property-based check against the OpenAPI schema: schemathesis generates requests for every
dataset route (valid and invalid bodies, paths, queries) and no response may be a 500.

A real dataset with a sample and a published version exists first, so generated requests reach
the services rather than stopping at 404. The number of examples is kept small so the suite
stays fast; run with SCHEMATHESIS_EXAMPLES=200 for a deeper run.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from tests.datasets.conftest import API, API_TOKEN, brokerless_app, digit_png, make_settings

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "12"))


def _prepared(tmp: Path) -> tuple[object, str]:
    # schemathesis enters the app's lifespan, which starts an embedded broker: any free port,
    # so the suite does not depend on 1883 being free.
    settings = make_settings(tmp, dataset_import_roots=[tmp], embedded_broker_port=0)
    app, _ctx = brokerless_app(settings)
    api = TestClient(app, headers={"Authorization": f"Bearer {API_TOKEN}"})
    r = api.post(
        f"{API}/datasets",
        json={"name": "fuzz", "type": "image_classification", "labels": ["a", "b"]},
    )
    ds = r.json()["id"]
    rng = random.Random(0)
    files = [("files", (f"{i}.png", digit_png(i, rng), "image/png")) for i in range(4)]
    api.post(f"{API}/datasets/{ds}/files", files=files, data={"label": "a"})
    api.post(f"{API}/datasets/{ds}/versions", json={"train_ratio": 0.5})
    return app, ds


_TMP = Path(os.environ.get("PYTEST_FUZZ_TMP", "/tmp")) / f"datasets-fuzz-{os.getpid()}"
_TMP.mkdir(parents=True, exist_ok=True)
_APP, _DS = _prepared(_TMP)
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP).include(path_regex="datasets")


@pytest.fixture(autouse=True, scope="module")
def _cleanup() -> object:
    yield None
    import shutil

    shutil.rmtree(_TMP, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors(case: schemathesis.Case) -> None:
    if (
        case.path_parameters
        and "dataset_id" in case.path_parameters
        and len(str(case.path_parameters)) % 4 != 0
    ):
        case.path_parameters["dataset_id"] = _DS
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {API_TOKEN}"}
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text[:500])
