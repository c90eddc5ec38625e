"""Captures (the data flywheel): samples devices kept for review, the review queue, device
capture stores and purges, and the improvement of an edge service's model, step by step or in
one action."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from edge_inference_sdk.models import (
    Capture,
    DeviceCaptures,
    Improvement,
    ModelVersion,
    ReviewQueue,
    Service,
    TrainingJob,
)
from edge_inference_sdk.resources.base import ResourceBase, seg
from edge_inference_sdk.routes import route


class Captures(ResourceBase):
    @route("GET", "/captures")
    def list(
        self,
        device_id: str | None = None,
        service: str | None = None,
        state: str | None = None,
        dataset: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Capture]:
        """Captures, oldest first; ``state`` pending|accepted|corrected|dropped."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        for key, value in (
            ("device_id", device_id),
            ("service", service),
            ("state", state),
            ("dataset", dataset),
        ):
            if value is not None:
                params[key] = value
        return self._many(Capture, self._t.call("GET", "/captures", params=params))

    @route("GET", "/captures/{capture_id}")
    def get(self, capture_id: str) -> Capture:
        return self._one(Capture, self._t.call("GET", f"/captures/{seg(capture_id)}"))

    @route("GET", "/captures/review")
    def review_queue(self, dataset: str, order: str = "confidence", limit: int = 50) -> ReviewQueue:
        """A dataset's captures waiting for review: lowest confidence first, or shadow
        disagreements first (``order="disagreement"``)."""
        params = {"dataset": dataset, "order": order, "limit": limit}
        return self._one(ReviewQueue, self._t.call("GET", "/captures/review", params=params))

    @route("POST", "/captures/{capture_id}/review")
    def review(self, capture_id: str, action: str, label: str | None = None) -> Capture:
        """``accept`` the model's label, ``correct`` it with ``label``, or ``drop`` the sample."""
        body: dict[str, Any] = {"action": action}
        if label is not None:
            body["label"] = label
        data = self._t.call("POST", f"/captures/{seg(capture_id)}/review", json=body)
        return self._one(Capture, data)

    def accept(self, capture_id: str) -> Capture:
        return self.review(capture_id, "accept")

    def correct(self, capture_id: str, label: str) -> Capture:
        return self.review(capture_id, "correct", label)

    def drop(self, capture_id: str) -> Capture:
        return self.review(capture_id, "drop")

    @route("GET", "/captures/devices/{device_id}")
    def device(self, device_id: str) -> DeviceCaptures:
        data = self._t.call("GET", f"/captures/devices/{seg(device_id)}")
        return self._one(DeviceCaptures, data)

    @route("POST", "/captures/devices/{device_id}/purge")
    def purge(self, device_id: str, before: dt.datetime | None = None) -> DeviceCaptures:
        """Tell the device to delete the records it holds captured before ``before`` (now)."""
        body = {"before": before.isoformat()} if before else {}
        data = self._t.call("POST", f"/captures/devices/{seg(device_id)}/purge", json=body)
        return self._one(DeviceCaptures, data)

    # --- improving an edge service's model -----------------------------------------------

    @route("POST", "/captures/publish")
    def publish(self, service: str) -> dict[str, Any]:
        """Step 1: reviewed captures join the training dataset; its next version is published."""
        return dict(self._t.call("POST", "/captures/publish", json={"service": service}))

    @route("POST", "/captures/retrain")
    def retrain(self, service: str, dataset_version: str | None = None) -> TrainingJob:
        """Step 2: the job that made the service's model, again, on a dataset version."""
        body = {"service": service, "dataset_version": dataset_version}
        return self._one(TrainingJob, self._t.call("POST", "/captures/retrain", json=body))

    @route("POST", "/captures/register")
    def register(self, service: str, job_id: str) -> ModelVersion:
        """Step 3: the job's model as the model's next version (converts in the background)."""
        body = {"service": service, "job_id": job_id}
        return self._one(ModelVersion, self._t.call("POST", "/captures/register", json=body))

    @route("POST", "/captures/canary")
    def canary(self, service: str, version: str) -> Service:
        """Step 4: the edge service rolls ``version`` out, canary first."""
        body = {"service": service, "version": version}
        return self._one(Service, self._t.call("POST", "/captures/canary", json=body))

    @route("POST", "/captures/improvements")
    def improve(self, service: str) -> Improvement:
        """All four steps in the background; follow it with ``wait_improvement``."""
        data = self._t.call("POST", "/captures/improvements", json={"service": service})
        return self._one(Improvement, data)

    @route("GET", "/captures/improvements")
    def improvements(self, service: str | None = None) -> list[Improvement]:
        params = {"service": service} if service else {}
        return self._many(Improvement, self._t.call("GET", "/captures/improvements", params=params))

    @route("GET", "/captures/improvements/{improvement_id}")
    def improvement(self, improvement_id: str) -> Improvement:
        data = self._t.call("GET", f"/captures/improvements/{seg(improvement_id)}")
        return self._one(Improvement, data)

    def wait_improvement(
        self,
        improvement_id: str,
        timeout: float | None = 1800,
        poll_s: float = 1.0,
        on_poll: Callable[[Improvement], None] | None = None,
    ) -> Improvement:
        """Until the improvement has succeeded (its canary rollout opened) or failed."""
        return self._wait(
            lambda: self.improvement(improvement_id),
            lambda i: i.state != "running",
            f"improvement {improvement_id}",
            timeout,
            poll_s,
            on_poll,
        )

    @route("GET", "/captures/lineage/{package_digest}")
    def lineage(self, package_digest: str) -> dict[str, Any]:
        """Which device captures went into the training data of this package's model version."""
        return dict(self._t.call("GET", f"/captures/lineage/{seg(package_digest)}"))
