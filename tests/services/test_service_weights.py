"""Validation of an online service's versions and weights (the request bodies alone)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from control_plane.services.schemas import ServiceCreate, ServiceUpdate


def _v(version: str, weight: int | None = None, **extra: Any) -> dict[str, Any]:
    model: dict[str, Any] = {"model": "digits", "version": version, **extra}
    if weight is not None:
        model["weight"] = weight
    return model


def test_several_weighted_versions_are_accepted() -> None:
    spec = ServiceCreate(name="d", models=[_v("1", 90, max_batch_size=8), _v("2", 10)])
    assert [(m.version, m.weight) for m in spec.models] == [("1", 90), ("2", 10)]
    # One version needs no weight; 100 is allowed; other models are checked on their own.
    ServiceCreate(name="d", models=[_v("1")])
    ServiceCreate(name="d", models=[_v("1", 100), {"model": "iris", "version": "3"}])
    assert ServiceUpdate(models=[_v("1", 0), _v("2", 100)]).models[1].weight == 100


@pytest.mark.parametrize(
    ("models", "reason"),
    [
        ([_v("1", 90), _v("2", 20)], "sum to 110, not 100"),
        ([_v("1", 90), _v("2")], "give every version of it a weight"),
        ([_v("1", 50), _v("1", 50)], "each version once"),
        ([_v("1", 50)], "one version takes every request"),
        ([_v("1", 101), _v("2", -1)], "less than or equal to 100"),
        ([_v("1", 90), _v("2", 10, max_batch_size=4)], "first (active) version only"),
    ],
)
def test_bad_weights_are_refused_with_the_reason(models: list[Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        ServiceCreate(name="d", models=models)
    with pytest.raises(ValidationError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        ServiceUpdate(models=models)


def test_weights_are_for_online_services() -> None:
    batch = {"dataset_id": "ds", "dataset_version": "V001"}
    with pytest.raises(ValidationError, match="weight: online services only"):
        ServiceCreate(name="d", type="batch", models=[_v("1", 100)], input=batch)
    with pytest.raises(ValidationError, match="weight is for online services"):
        ServiceCreate(
            name="d", type="edge", models=[_v("1", 100)], targets={"device_ids": ["dev-1"]}
        )
