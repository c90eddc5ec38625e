"""What keeps a deployment to a large fleet linear (``scripts/bench-rollout --simulated``).

A deployment's database work must not grow per device beyond its own rows: the desired states of
all its devices are read in a fixed number of statements, supersession likewise; and a burst of
registrations rewrites the broker's files once, not once per device. Counts, never timings.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from control_plane.core.context import AppContext
from control_plane.core.database import upgrade
from control_plane.deployments.service import DeploymentService
from control_plane.devices.service import DeviceService
from control_plane.devices.telemetry.service import TelemetryService
from control_plane.fleet.broker_sync import BrokerFilesSync
from control_plane.fleet.service import FleetService, _Record, _Telemetry
from control_plane.registry.packages.service import PackageService
from protos import fleet_topics as topics
from protos.gen import fleet_pb2
from tests.control_plane.conftest import Keys, make_settings
from tests.pg import BOTH_DATABASES


class _Recorder:
    """Stands in for the fleet channel: records which devices' desired states were published."""

    def __init__(self) -> None:
        self.published: list[str] = []

    def publish_desired(self, device_ids: list[str]) -> None:
        self.published.extend(device_ids)

    def forget_device(self, device_id: str) -> None: ...

    def devices_changed(self) -> None: ...

    def counters(self, device_id: str) -> dict[str, int]:
        return {}


@pytest.fixture
def ctx(tmp_path: Path, trusted_keys: Keys, database_url: str | None) -> Iterator[AppContext]:
    context = AppContext.from_settings(
        make_settings(tmp_path, trusted_keys, database_url=database_url)
    )
    upgrade(context.engine)
    context.publisher = _Recorder()
    try:
        yield context
    finally:
        context.close()


def _statements(ctx: AppContext, action: Any) -> tuple[int, Any]:
    """How many SQL statements ``action()`` sent, and what it returned."""
    count = 0

    def counted(*_: Any) -> None:
        nonlocal count
        count += 1

    event.listen(ctx.engine, "before_cursor_execute", counted)
    try:
        result = action()
        return count, result
    finally:
        event.remove(ctx.engine, "before_cursor_execute", counted)


def _fleet(ctx: AppContext, group: str, size: int) -> list[str]:
    with ctx.sessions() as session:
        devices = DeviceService(session, ctx)
        return [
            devices.register("", {"g": group}, f"{group}-{i:03d}").device.id for i in range(size)
        ]


def _upload(ctx: AppContext, path: Path) -> str:
    with ctx.sessions() as session, open(path, "rb") as f:
        return PackageService(session, ctx).upload(f)[0].digest


def _deploy(ctx: AppContext, digest: str, group: str) -> str:
    with ctx.sessions() as session:
        return (
            DeploymentService(session, ctx)
            .create(
                package_digest=digest,
                package_name=None,
                package_version=None,
                selector={"g": group},
            )
            .id
        )


@BOTH_DATABASES
def test_deployment_statements_do_not_grow_with_the_fleet(
    ctx: AppContext, package_factory: Any
) -> None:
    small, big = _fleet(ctx, "small", 3), _fleet(ctx, "big", 60)
    v1, v2 = (_upload(ctx, package_factory(v)) for v in ("1.0.0", "2.0.0"))
    first = {g: _deploy(ctx, v1, g) for g in ("small", "big")}

    # The second deployment supersedes the first on every device: same statements for 3 or 60.
    n_small, dep_small = _statements(ctx, lambda: _deploy(ctx, v2, "small"))
    n_big, dep_big = _statements(ctx, lambda: _deploy(ctx, v2, "big"))
    assert n_big == n_small, (n_small, n_big)

    with ctx.sessions() as session:
        service = DeploymentService(session, ctx)
        n_read, states = _statements(ctx, lambda: service.desired_states(small + big))
        # generations, (device, deployment) pairs, deployments with packages
        assert n_read <= 4, n_read
        assert sorted(states) == sorted(small + big)
        for device_id, dep in [(d, dep_small) for d in small] + [(d, dep_big) for d in big]:
            state = states[device_id]
            assert state.generation == 2
            assert state.deployment_id == dep
            [model] = state.models  # the superseded version 1 is gone
            assert (model.deployment_id, model.version, model.package_digest) == (dep, "2.0.0", v2)
            assert state == service.desired_state(device_id)
        superseded = {t.device_id for t in service.get(first["big"]).targets}
        assert superseded == set(big)
        assert {t.state for t in service.get(first["big"]).targets} == {"superseded"}
        assert service.desired_states(["no-such-device"]) == {}
    assert isinstance(ctx.publisher, _Recorder)
    assert sorted(ctx.publisher.published) == sorted(2 * (small + big))


def test_a_burst_of_registry_changes_is_written_once() -> None:
    """Changes made while a rewrite runs are gathered into one more rewrite, and the last change
    is always written."""
    registry = {"devices": 0}
    written: list[int] = []
    first_started, release = threading.Event(), threading.Event()

    def rewrite() -> None:
        written.append(registry["devices"])  # what this rewrite puts in the files
        first_started.set()
        release.wait(10)

    files = BrokerFilesSync(rewrite, settle_s=0.0)
    files.start()
    try:
        registry["devices"] = 1
        files.request()
        assert first_started.wait(10)
        for _ in range(100):  # a burst of registrations while the first rewrite runs
            registry["devices"] += 1
            files.request()
        release.set()
        assert files.flush(10)
        assert written == [1, 101]
    finally:
        release.set()
        files.stop()


def test_pending_changes_are_written_at_stop_and_at_start() -> None:
    written: list[str] = []
    files = BrokerFilesSync(lambda: written.append("rewrite"), settle_s=60.0)
    files.request()
    files.sync_pending()  # start-up: written at once, in the caller's thread
    assert written == ["rewrite"]
    files.sync_pending()  # nothing pending: nothing written
    assert written == ["rewrite"]
    files.start()
    files.request()
    files.stop()  # cuts the 60 s settle short and writes what is pending
    assert written == ["rewrite", "rewrite"]


# --- reports and telemetry stored in batches (fleet/service.py) -------------------------------


def _status(online: bool) -> bytes:
    state = fleet_pb2.DeviceStatus.ONLINE if online else fleet_pb2.DeviceStatus.OFFLINE
    return fleet_pb2.DeviceStatus(state=state).SerializeToString()


def _reported(device_id: str, deployment_id: str, outcome: str, done: int) -> bytes:
    result = fleet_pb2.DeploymentResult(
        deployment_id=deployment_id,
        outcome=fleet_pb2.DeploymentResult.Outcome.Value(outcome),
        chunks_done=done,
        chunks_total=1,
    )
    return fleet_pb2.ReportedState(device_id=device_id, last_result=result).SerializeToString()


def _telemetry(device_id: str, seqs: list[int]) -> bytes:
    records = [
        fleet_pb2.TelemetryRecord(seq=s, kind="metrics", timestamp_ms=1, payload_json="{}")
        for s in seqs
    ]
    return fleet_pb2.TelemetryBatch(device_id=device_id, records=records).SerializeToString()


def _commits(ctx: AppContext, action: Any) -> int:
    count = 0

    def counted(*_: Any) -> None:
        nonlocal count
        count += 1

    event.listen(ctx.engine, "commit", counted)
    try:
        action()
    finally:
        event.remove(ctx.engine, "commit", counted)
    return count


@pytest.fixture
def channel(ctx: AppContext) -> FleetService:
    """The fleet service's storing side; never connected (nothing here needs the broker)."""
    return FleetService(ctx, "mqtt://127.0.0.1:1")


@BOTH_DATABASES
def test_waiting_reports_are_stored_in_one_transaction_in_order(
    ctx: AppContext, channel: FleetService, package_factory: Any
) -> None:
    devices = _fleet(ctx, "g", 20)
    dep = _deploy(ctx, _upload(ctx, package_factory("1.0.0")), "g")
    batch = [_Record(d, topics.STATUS, _status(True)) for d in devices]
    for d in devices:  # each device's progress, then its final result, in arrival order
        batch.append(_Record(d, topics.REPORTED, _reported(d, dep, "IN_PROGRESS", 0)))
        batch.append(_Record(d, topics.REPORTED, _reported(d, dep, "INSTALLED", 1)))
    batch.append(_Record(devices[0], topics.REPORTED, b"\xff not a protobuf"))  # skipped, logged
    batch.append(_Record(devices[1], topics.REPORTED, _reported(devices[1], dep, "IN_PROGRESS", 0)))

    commits = 0

    def store() -> None:
        nonlocal commits
        commits = _commits(ctx, lambda: channel._store_record_batch(batch))

    statements, _ = _statements(ctx, store)
    assert commits == 1
    # The devices and their targets are read once for the batch, not once per record, and
    # the updates go out together: a handful of statements for 20 devices and 61 records.
    assert statements <= 6, statements
    with ctx.sessions() as session:
        targets = DeploymentService(session, ctx).get(dep).targets
        assert {t.device_id: t.state for t in targets} == dict.fromkeys(devices, "installed")
        assert {d.status for d in DeviceService(session, ctx).list({"g": "g"})} == {"online"}


@BOTH_DATABASES
def test_a_report_that_fails_to_store_costs_only_itself(
    ctx: AppContext, channel: FleetService, package_factory: Any, monkeypatch: Any
) -> None:
    devices = _fleet(ctx, "g", 5)
    dep = _deploy(ctx, _upload(ctx, package_factory("1.0.0")), "g")
    real = DeploymentService.record_result

    def broken_for_one(self: DeploymentService, device_id: str, *a: Any, **kw: Any) -> None:
        if device_id == devices[2]:
            raise RuntimeError("database trouble for one device")
        real(self, device_id, *a, **kw)

    monkeypatch.setattr(DeploymentService, "record_result", broken_for_one)
    batch = [_Record(d, topics.REPORTED, _reported(d, dep, "INSTALLED", 1)) for d in devices]
    channel._store_record_batch(batch)
    with ctx.sessions() as session:
        states = {t.device_id: t.state for t in DeploymentService(session, ctx).get(dep).targets}
    assert states == {d: "pending" if d == devices[2] else "installed" for d in devices}


@BOTH_DATABASES
def test_waiting_telemetry_is_stored_in_one_transaction_once(
    ctx: AppContext, channel: FleetService
) -> None:
    a, b = _fleet(ctx, "g", 2)
    batch = [
        _Telemetry(a, _telemetry(a, [1, 2]), mid=1, qos=1, epoch=0),
        _Telemetry(b, _telemetry(b, [1]), mid=2, qos=1, epoch=0),
        _Telemetry(a, _telemetry(a, [2, 3]), mid=3, qos=1, epoch=0),  # seq 2 redelivered
        _Telemetry(b, b"\xff not a protobuf", mid=4, qos=1, epoch=0),
    ]
    acked: list[_Telemetry] = []
    assert _commits(ctx, lambda: acked.extend(channel._store_telemetry_batch(batch))) == 1
    assert sorted(t.mid for t in acked) == [1, 2, 3, 4]  # the bad one too: it never decodes
    with ctx.sessions() as session:
        telemetry = TelemetryService(session, ctx)
        assert [r.seq for r in telemetry.list(a)] == [1, 2, 3]
        assert [r.seq for r in telemetry.list(b)] == [1]
