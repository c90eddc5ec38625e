"""The desired state both sides share (``protos.fleet_state``): cloud encode -> device decode.

The control plane and the agent used to mirror the DesiredState mapping; now both call one
module. These tests pin that the bytes the control plane publishes are exactly what the agent
reads, and that the bytes did not change on the wire.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from control_plane.deployments.service import DesiredModelView, DesiredStateView, RemovalView
from control_plane.fleet import codec as cloud_codec
from edge_agent.fleet import codec as device_codec
from protos.fleet_state import (
    DesiredModel,
    DesiredState,
    LocalGuard,
    ModelRemoval,
    ShadowWarmup,
    decode_desired_state,
)
from protos.gen import fleet_pb2


def _view() -> DesiredStateView:
    blobs = [b"first package, three chunks!", b"second"]
    models = [
        DesiredModelView(
            deployment_id=f"dep-{n}",
            name=f"model-{n}",
            version=str(n + 1),
            package_digest=hashlib.sha256(blob).hexdigest(),
            package_size=len(blob),
            chunk_size=10,
            chunk_sha256=[
                hashlib.sha256(blob[i : i + 10]).digest() for i in range(0, len(blob), 10)
            ],
        )
        for n, blob in enumerate(blobs)
    ]
    return DesiredStateView("dev-1", 7, "dep-1", models)


def test_cloud_encode_device_decode_round_trip() -> None:
    view = _view()
    desired = device_codec.desired_from_proto(cloud_codec.desired_state_to_proto(view))
    assert isinstance(desired, DesiredState)
    assert (desired.device_id, desired.generation, desired.deployment_id) == ("dev-1", 7, "dep-1")
    assert desired.issued_at_ms > 0
    assert desired.models == tuple(
        DesiredModel(
            m.deployment_id,
            m.name,
            m.version,
            m.package_digest,
            m.package_size,
            m.chunk_size,
            len(m.chunk_sha256),
            tuple(m.chunk_sha256),
        )
        for m in view.models
    )
    assert [m.chunk_count for m in desired.models] == [3, 1]
    assert desired.models[0].key == f"dep-0:{view.models[0].package_digest}"


def test_wire_bytes_are_the_ones_the_message_defines() -> None:
    """The shared encoder writes what a hand-built ``fleet_pb2.DesiredState`` holds."""
    view = _view()
    decoded = fleet_pb2.DesiredState.FromString(cloud_codec.desired_state_to_proto(view))
    expected = fleet_pb2.DesiredState(
        device_id="dev-1",
        generation=7,
        deployment_id="dep-1",
        issued_at_ms=decoded.issued_at_ms,
    )
    for m in view.models:
        expected.models.add(
            deployment_id=m.deployment_id,
            name=m.name,
            version=m.version,
            package_digest=m.package_digest,
            package_size=m.package_size,
            chunk_size=m.chunk_size,
            chunk_count=len(m.chunk_sha256),
            chunk_sha256=m.chunk_sha256,
        )
    assert decoded == expected


def test_device_normalises_digest_case_and_refuses_garbage() -> None:
    msg = fleet_pb2.DesiredState(device_id="d", generation=1)
    msg.models.add(package_digest="AB" * 32, chunk_count=0)
    assert decode_desired_state(msg.SerializeToString()).models[0].package_digest == "ab" * 32
    with pytest.raises(ValueError, match="DesiredState"):
        device_codec.desired_from_proto(b"\xff\xff\xff")


def test_activation_fields_and_removals_round_trip() -> None:
    base = _view()
    standby = DesiredModelView(**{**vars(base.models[1]), "standby": True, "weight": 12.5})
    guarded = DesiredModelView(
        **{
            **vars(base.models[0]),
            "guard": {"bake_s": 30.0, "max_error_rate": 0.1, "max_p99_ms": 0.0, "min_requests": 5},
            "warmup": {
                "fraction": 0.5,
                "min_requests": 20,
                "min_agreement": 0.95,
                "max_abs_diff": 0.001,
                "timeout_s": 60.0,
            },
        }
    )
    view = DesiredStateView(
        "dev-1", 8, "dep-9", [guarded, standby], [RemovalView("dep-9", "old-model", "3")]
    )
    desired = device_codec.desired_from_proto(cloud_codec.desired_state_to_proto(view))
    first, second = desired.models
    assert (first.standby, first.weight) == (False, 0.0)
    assert first.guard == LocalGuard(30.0, 0.1, 0.0, 5)
    assert first.warmup == ShadowWarmup(0.5, 20, 0.95, 0.001, 60.0)
    assert (second.standby, second.weight, second.guard, second.warmup) == (True, 12.5, None, None)
    assert desired.removals == (ModelRemoval("dep-9", "old-model", "3"),)
    assert desired.active_entries() == {"model-0": first}  # a standby entry is never activated


def test_chunk_index_digest_round_trips_and_is_optional() -> None:
    """Delta updates: the desired state pins the chunk index; without it the field stays empty."""
    view = _view()
    pinned = hashlib.sha256(b"an encoded chunk index").digest()
    models = [view.models[0], dataclasses.replace(view.models[1], cdc_index_sha256=pinned)]
    payload = cloud_codec.desired_state_to_proto(dataclasses.replace(view, models=models))
    desired = device_codec.desired_from_proto(payload)
    assert [m.cdc_index_sha256 for m in desired.models] == [b"", pinned]
    raw = fleet_pb2.DesiredState.FromString(payload)
    assert [m.cdc_index_sha256 for m in raw.models] == [b"", pinned]  # field 14 on the wire
    assert fleet_pb2.DesiredModel.DESCRIPTOR.fields_by_name["cdc_index_sha256"].number == 14
