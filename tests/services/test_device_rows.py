"""The control plane's side of a device batch job, without a broker: rows kept once each.

``DeviceBatches`` on a real SQLite database and service folder; the channel that would publish
the device's job list is a recorder (the real one runs in tests/fleet/test_device_batch.py).
Pages arrive out of order and twice, one is malformed, the rows file ends in a line torn by a
crash and the handler restarts: the results still hold each row once, in order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.core.context import AppContext
from control_plane.core.database import upgrade
from control_plane.core.settings import Settings
from control_plane.services import batch
from control_plane.services.device_batch import ROWS, DeviceBatches
from control_plane.services.models import Service
from protos import fleet_batch as fb


class Recorder:
    def __init__(self) -> None:
        self.published: list[str] = []

    def publish_jobs(self, device_id: str) -> None:
        self.published.append(device_id)


def _line(index: int) -> str:
    return json.dumps({"index": index, "outputs": {"y": {"data": [[0.1, 0.9 - index / 10]]}}})


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[AppContext]:
    context = AppContext.from_settings(Settings(dev_mode=True, data_dir=tmp_path / "cp"))
    upgrade(context.engine)
    folder = context.settings.resolved_services_dir / "svc"
    folder.mkdir(parents=True)
    with open(folder / batch.INPUTS, "w") as f:
        for i in range(3):
            f.write(json.dumps({"source": f"x{i}.npy", "path": f"/in/x{i}.npy", "label": None}))
            f.write("\n")
    with context.sessions() as session:
        session.add(
            Service(
                name="svc",
                type="batch",
                state="deploying",
                spec={
                    "models": [{"model": "m", "version": "1"}],
                    "device": "dev-1",
                    "device_job": {
                        "job_id": "job-1",
                        "input": {
                            "digest": "0" * 64,
                            "size": 1,
                            "chunk_size": 1,
                            "chunk_sha256": ["0" * 64],
                        },
                        "rows_received": 0,
                    },
                    "input_info": {"count": 3, "labels": None},
                    "input": {"upload": "0" * 64},
                },
            )
        )
        session.commit()
    yield context
    context.close()


def _service(ctx: AppContext) -> Service:
    with ctx.sessions() as session:
        service = session.get(Service, "svc")
        assert service is not None
        session.expunge(service)
        return service


def test_rows_are_kept_once_whatever_the_order(ctx: AppContext) -> None:
    handler, channel = DeviceBatches(ctx), Recorder()
    handler.channel = channel
    assert [j.job_id for j in handler.jobs_for("dev-1").jobs] == ["job-1"]
    assert handler.jobs_for("dev-2").jobs == ()
    with pytest.raises(LookupError):
        handler.input_chunk("dev-2", "job-1", 0)  # another device's job

    handler.on_state("dev-1", fb.JobState("job-1", "RUNNING", 3, 1, 0))
    assert _service(ctx).state == "running"
    # Rows 1 and 2 first, then the same page again: nothing held from 0, so none received.
    page = fb.Rows("job-1", 1, (_line(1), _line(2)))
    handler.on_rows("dev-1", page)
    handler.on_rows("dev-1", page)
    assert _service(ctx).spec["device_job"]["rows_received"] == 0
    # A page whose line does not carry its index is refused whole.
    with pytest.raises(ValueError):
        handler.on_rows("dev-1", fb.Rows("job-1", 0, (_line(5),)))
    handler.on_state("dev-1", fb.JobState("job-1", "SUCCEEDED", 3, 3, 0))
    assert _service(ctx).state == "running"  # row 0 still missing

    # A crash tore a line at the end of the rows file; the handler starts again.
    rows_file = ctx.settings.resolved_services_dir / "svc" / ROWS
    with open(rows_file, "a") as f:
        f.write('{"index": 0, "outp')
    handler = DeviceBatches(ctx)
    handler.channel = channel
    handler.on_rows("dev-1", fb.Rows("job-1", 0, (_line(0),)))

    done = _service(ctx)
    assert done.state == "succeeded", done.reason
    rows = batch.result_rows(ctx.settings.resolved_services_dir / "svc")
    assert [(r.index, r.source, r.predicted) for r in rows] == [
        (0, "x0.npy", "1"),
        (1, "x1.npy", "1"),
        (2, "x2.npy", "1"),
    ]
    assert handler.jobs_for("dev-1").jobs == ()  # done: off the device's list
    assert channel.published[-1] == "dev-1"


def test_a_failed_device_job_fails_the_service(ctx: AppContext) -> None:
    handler = DeviceBatches(ctx)
    handler.on_state("dev-1", fb.JobState("job-1", "FAILED", error="model mlp:1 is not loaded"))
    done = _service(ctx)
    assert done.state == "failed" and "dev-1: model mlp:1 is not loaded" in done.reason
    # Messages about jobs it does not know are ignored.
    handler.on_state("dev-1", fb.JobState("nope", "SUCCEEDED"))
    handler.on_rows("dev-1", fb.Rows("nope", 0, (_line(0),)))
