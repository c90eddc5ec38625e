"""The SDK's ``Service`` carries what the demo reads from a service: each replica's pid and
address, the services' gRPC addresses and an edge service's latest rollout, typed and decoded
from the server's own response schema (so a renamed field fails here, not in the demo)."""

from __future__ import annotations

import datetime as dt

from control_plane.services.schemas import ServicePublic
from edge_inference_sdk.models import Service

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _served(**extra: object) -> Service:
    body = ServicePublic.model_validate(
        {
            "name": "digits",
            "type": "online",
            "state": "running",
            "reason": "",
            "models": [{"model": "digits", "version": "1"}],
            "generation": 1,
            "replicas": [
                {
                    "index": 0,
                    "device_id": "replica-0",
                    "state": "running",
                    "reason": "",
                    "pid": 4242,
                    "grpc_address": "127.0.0.1:50051",
                    "restarts": 0,
                    "generation": 1,
                    "started_at": NOW,
                }
            ],
            "grpc_addresses": ["127.0.0.1:50051"],
            "created_at": NOW,
            "updated_at": NOW,
            **extra,
        }
    )
    return Service.model_validate_json(body.model_dump_json())


def test_online_service_replicas_and_addresses() -> None:
    service = _served()
    assert service.replicas[0].pid == 4242
    assert service.replicas[0].grpc_address == "127.0.0.1:50051"
    assert service.grpc_addresses == ["127.0.0.1:50051"]
    assert service.rollout is None
    # declared fields (typed for mypy and editors), not extras kept by ``extra="allow"``
    assert "grpc_addresses" not in (service.model_extra or {})
    assert "pid" not in (service.replicas[0].model_extra or {})


def test_edge_service_rollout_with_stages_and_gates() -> None:
    rollout = {
        "id": "r1",
        "number": 1,
        "model": "digits-mlp",
        "version": "2",
        "package_digest": "ab" * 32,
        "state": "succeeded",
        "reason": "",
        "stage": 0,
        "stages": [
            {
                "name": "canary",
                "devices": ["dev-1"],
                "state": "passed",
                "previous": {"dev-1": "1"},
                "gates": [{"gate": "error_rate", "passed": True, "value": 0.0, "limit": 0.01}],
            }
        ],
        "created_at": NOW,
        "updated_at": NOW,
        "finished_at": NOW,
    }
    service = _served(type="edge", rollout=rollout, grpc_addresses=[])
    assert service.rollout is not None and "rollout" not in (service.model_extra or {})
    assert service.rollout["state"] == "succeeded"
    stage = service.rollout["stages"][0]
    assert stage["previous"] == {"dev-1": "1"}
    assert stage["gates"][0]["limit"] == 0.01
