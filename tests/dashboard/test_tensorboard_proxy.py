"""TensorBoard through the control plane: a real TensorBoard over event files written here,
reached only through ``/tensorboard/{id}/`` with a dashboard session or an API token; anonymous
requests are refused, TensorBoard's own POST queries go through, and the dashboard's waiting page
sends the browser on once TensorBoard serves."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.training.runtime import runtime_for
from control_plane.training.sdk import edge_training
from tests.dashboard.conftest import ADMIN_PASSWORD, Plane, sign_in

RUN = "job1/."  # TensorBoard names a run "<logdir_spec name>/<folder below it>"


@pytest.fixture
def tensorboard(plane: Plane, tmp_path: Path) -> Iterator[str]:
    """A running TensorBoard (its id) over one run with a ``loss`` series of 5 points."""
    train_url = str(tmp_path / "job")
    for step in range(5):
        edge_training.log_scalar(train_url, "loss", 1.0 / (step + 1), step)
    runtime = runtime_for(plane.app)
    try:
        folder = edge_training.TENSORBOARD_DIR
        item = runtime.visualizations.start({"job1": tmp_path / "job" / folder})
        deadline = time.monotonic() + 120
        while runtime.visualizations.get(item.id).state == "starting":
            assert time.monotonic() < deadline, "tensorboard did not start"
            time.sleep(0.3)
        assert item.state == "running", item.reason
        yield item.id
    finally:
        runtime.stop()


def test_tensorboard_is_served_to_signed_in_users_only(plane: Plane, tensorboard: str) -> None:
    base = f"/tensorboard/{tensorboard}/"
    anonymous = plane.client()
    assert anonymous.get(base).status_code == 401
    assert (
        anonymous.post(
            base + "experiment/defaultExperimentId/data/plugin/timeseries/timeSeries"
        ).status_code
        == 401
    )
    bad = plane.client("not-a-token")
    assert bad.get(base).status_code == 401

    # A viewer's dashboard session reads it: the page, the runs, and a POST query.
    plane.user("vic", "viewer", password="password-vic")
    viewer = plane.client()
    sign_in(viewer, "vic", "password-vic")
    page = viewer.get(base)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "tensorboard" in page.text.lower()
    deadline = time.monotonic() + 60
    runs: list[str] = []
    while not runs and time.monotonic() < deadline:
        runs = viewer.get(base + "data/runs").json()
        if not runs:
            time.sleep(0.5)
    assert runs == [RUN]
    query = [{"plugin": "scalars", "tag": "loss", "run": RUN}]
    answer = viewer.post(
        base + "experiment/defaultExperimentId/data/plugin/timeseries/timeSeries",
        data={"requests": json.dumps(query)},
    )
    assert answer.status_code == 200, answer.text
    points = answer.json()[0]["runToSeries"][RUN]
    assert [round(p["value"], 3) for p in points] == [1.0, 0.5, 0.333, 0.25, 0.2]

    # A body far bigger than any TensorBoard query is refused; the server keeps serving.
    big = viewer.post(base + "data/runs", content=b"x" * (2 << 20))
    assert big.status_code == 413
    assert viewer.get(base + "data/runs").json() == [RUN]

    # An API token works as well (scripts), and an unknown server is a 404.
    assert plane.admin.get(base + "data/runs").json() == [RUN]
    # A caller that does not ask for gzip (`curl` without --compressed) gets plain bytes.
    plain = plane.admin
    del plain.headers["accept-encoding"]
    r = plain.get(base + "data/runs")
    assert "content-encoding" not in r.headers and json.loads(r.content) == [RUN]
    assert plane.admin.get("/tensorboard/nope/").status_code == 404

    # The dashboard's page for it: sign-in first, then on to the proxy while it serves.
    c = plane.client()
    assert c.get(f"/ui/visualizations/{tensorboard}", follow_redirects=False).status_code == 303
    sign_in(c, "admin", ADMIN_PASSWORD)
    r = c.get(f"/ui/visualizations/{tensorboard}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/tensorboard/{tensorboard}/"
    runtime_for(plane.app).visualizations.stop(tensorboard)
    r = c.get(f"/ui/visualizations/{tensorboard}")
    assert r.status_code == 200 and "stopped by request" in r.text
    # Stopped: the proxy says so rather than hang.
    assert c.get(f"/tensorboard/{tensorboard}/").status_code == 503
