"""An edge service followed and driven from the dashboard, over real agents and Mosquitto.

One rollout: the canary bakes (paused and resumed from the page's buttons with the session's
CSRF token), then real traffic breaches its p99 gate; the page shows the stages with each
device's state, the failed gate with its figure and limit, the history, and the device page the
models each device holds (the agent's own v1 marked out of band).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.agent.agent_process import AgentProcess
from tests.control_plane.conftest import wait_for
from tests.dashboard.conftest import sign_in
from tests.fleet.conftest import Fleet, Packages
from tests.fleet.helpers import wait_serving
from tests.fleet.test_edge_rollout import TELEMETRY_S, Traffic

API = "/api/v1"


def _person(fleet: Fleet, name: str, role: str) -> tuple[TestClient, str]:
    """A signed-in browser-like client of a new user with this role, and its CSRF token."""
    r = fleet.api.post(
        f"{API}/users", json={"username": name, "password": "password-123", "role": role}
    )
    assert r.status_code == 201, r.text
    client = TestClient(fleet.app)
    return client, sign_in(client, name, "password-123")


def _rows(html: str, section_attr: str) -> dict[str, str]:
    """``data-<attr>="key" data-state="value"`` pairs of a page, in order."""
    return dict(re.findall(rf'data-{section_attr}="([^"]+)" data-state="([^"]+)"', html))


def _stage_html(html: str, name: str) -> str:
    start = html.index(f'data-stage="{name}"')
    end = html.find('<div class="stage"', start)
    return html[start : end if end != -1 else len(html)]


@pytest.fixture
def two(fleet: Fleet, packages: Packages, start_fleet_agent) -> Iterator[list[AgentProcess]]:
    fleet.upload(packages.v1)
    bundles = [fleet.register(d, {"site": "a"}) for d in ("edge-0", "edge-1")]
    yield [start_fleet_agent(b, telemetry_interval_s=TELEMETRY_S).start() for b in bundles]


def test_a_rollout_followed_and_driven_from_the_dashboard(
    fleet: Fleet, packages: Packages, two: list[AgentProcess]
) -> None:
    fleet.upload(packages.v2)
    engineer, csrf = _person(fleet, "erin", "engineer")
    viewer, _ = _person(fleet, "vic", "viewer")

    listing = engineer.get("/ui/services").text
    assert 'id="create-edge"' in listing and 'value="mlp|2"' in listing

    # What the create form sends (dashboard.js formBody): shares as a count and a list.
    body: dict[str, Any] = {
        "type": "edge",
        "name": "cams",
        "models": [{"model": "mlp", "version": "2"}],
        "targets": {"selector": {"site": "a"}},
        "strategy": {"canary": 1, "waves": ["100%"], "bake_s": 600},
        "gates": {"max_error_rate": 0.5, "max_p99_ms": 0.001},
    }
    r = engineer.post(f"{API}/services", json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201, r.text

    def baking() -> str | None:
        html = engineer.get("/ui/services/cams").text
        return html if 'data-stage="canary" data-state="baking"' in html else None

    html = wait_for(baking, 60, 0.2)
    assert _rows(html, "device") == {"edge-0": "installed", "edge-1": "pending"}
    for action in ("pause", "abort", "rollback"):
        assert f'id="rollout-{action}"' in html
    assert 'id="rollout-resume"' not in html
    assert "disabled" not in html.split('id="rollout-pause"')[1].split("</form>")[0]

    seen = viewer.get("/ui/services/cams").text
    pause_form = seen.split('id="rollout-pause"')[1].split("</form>")[0]
    assert "disabled" in pause_form and "needs engineer" in pause_form
    assert viewer.post(f"{API}/services/cams/rollout/pause").status_code in (401, 403)

    # The buttons' calls: the REST API with the session cookie and its CSRF token.
    assert engineer.post(f"{API}/services/cams/rollout/pause").status_code == 403  # no token
    r = engineer.post(f"{API}/services/cams/rollout/pause", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["state"] == "paused", r.text
    html = engineer.get("/ui/services/cams").text
    assert 'id="rollout-resume"' in html and 'id="rollout-pause"' not in html
    r = engineer.post(f"{API}/services/cams/rollout/resume", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["state"] == "running", r.text

    # The device page: v2 came from the canary's deployment, v1 from the agent's own disk.
    def holds_both() -> str | None:
        page = engineer.get("/ui/devices/edge-0").text
        return page if 'data-version="2" data-out-of-band="false"' in page else None

    device_page = wait_for(holds_both, 20, 0.2)
    assert 'data-model="mlp" data-version="1" data-out-of-band="true"' in device_page
    assert "out of band" in device_page

    # Real traffic on the canary breaches the p99 gate: it goes back to v1, edge-1 never moves.
    with Traffic(two[:1]):

        def failed() -> str | None:
            page = engineer.get("/ui/services/cams").text
            done = 'data-rollout="1" data-state="failed"' in page
            return page if done and 'data-state="rolled back"' in page else None

        html = wait_for(failed, 90, 0.3)
    wait_serving(two[0].address, packages.models, "v1", timeout=10)
    canary = _stage_html(html, "canary")
    assert _rows(canary, "device") == {"edge-0": "rolled back"}
    assert 'data-gate="p99_ms" data-passed="false"' in canary
    figure = re.search(r'data-gate="p99_ms".*?</tr>', canary, re.S)
    assert figure and "0.00 ms" in figure.group(0)  # the limit, next to the measured figure
    assert re.search(r"<td>\d+\.\d\d ms</td>", figure.group(0))
    assert "Failed gate: p99_ms" in canary
    assert _rows(_stage_html(html, "wave-1"), "device") == {"edge-1": "pending"}
    history = html.split('id="rollout-history"')[1]
    assert history.count("<tr data-rollout=") == 1 and "state-failed" in history
    assert 'id="rollout-pause"' not in html and 'id="rollout-rollback"' in html
    assert "rollout 1" in engineer.get("/ui/services").text
