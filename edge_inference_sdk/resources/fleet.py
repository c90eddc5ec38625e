"""Devices (register, telemetry) and deployments (a package as a device's desired state)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from edge_inference_sdk.models import Deployment, Device, DeviceRegistration, TelemetryRecord
from edge_inference_sdk.resources.base import ResourceBase, seg
from edge_inference_sdk.routes import route


class Devices(ResourceBase):
    @route("POST", "/devices")
    def register(
        self, name: str = "", device_id: str | None = None, labels: dict[str, str] | None = None
    ) -> DeviceRegistration:
        """Register a device; the answer's ``bundle`` (broker password included) is shown once."""
        body: dict[str, Any] = {"name": name, "labels": labels or {}}
        if device_id is not None:
            body["device_id"] = device_id
        return self._one(DeviceRegistration, self._t.call("POST", "/devices", json=body))

    @route("GET", "/devices")
    def list(self, labels: dict[str, str] | None = None) -> list[Device]:
        params = [("label", f"{k}={v}") for k, v in (labels or {}).items()]
        return self._many(Device, self._t.call("GET", "/devices", params=params))

    @route("GET", "/devices/{device_id}")
    def get(self, device_id: str) -> Device:
        return self._one(Device, self._t.call("GET", f"/devices/{seg(device_id)}"))

    @route("PATCH", "/devices/{device_id}")
    def update(
        self, device_id: str, name: str | None = None, labels: dict[str, str] | None = None
    ) -> Device:
        """Rename the device or replace its labels (a live label selector sees the change)."""
        body: dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if labels is not None:
            body["labels"] = labels
        return self._one(Device, self._t.call("PATCH", f"/devices/{seg(device_id)}", json=body))

    @route("DELETE", "/devices/{device_id}")
    def delete(self, device_id: str) -> None:
        self._t.call("DELETE", f"/devices/{seg(device_id)}")

    @route("GET", "/devices/{device_id}/telemetry")
    def telemetry_page(
        self, device_id: str, after_seq: int = 0, limit: int = 1000
    ) -> list[TelemetryRecord]:
        params = {"after_seq": after_seq, "limit": limit}
        data = self._t.call("GET", f"/devices/{seg(device_id)}/telemetry", params=params)
        return self._many(TelemetryRecord, data)

    def telemetry(
        self, device_id: str, after_seq: int = 0, page_size: int = 1000
    ) -> Iterator[TelemetryRecord]:
        """Every stored record after ``after_seq``, in order, page by page."""
        while True:
            page = self.telemetry_page(device_id, after_seq, page_size)
            yield from page
            if len(page) < page_size:
                return
            after_seq = page[-1].seq


class Deployments(ResourceBase):
    @route("POST", "/deployments")
    def create(self, **target: Any) -> Deployment:
        """``package_digest`` (or ``package_name`` + ``package_version``) to ``device_id`` or a
        label ``selector``; optionally ``action`` (install | remove), ``standby``, ``weight``,
        ``guard``, ``warmup``."""
        return self._one(Deployment, self._t.call("POST", "/deployments", json=target))

    @route("GET", "/deployments")
    def list(self) -> list[Deployment]:
        return self._many(Deployment, self._t.call("GET", "/deployments"))

    @route("GET", "/deployments/{deployment_id}")
    def get(self, deployment_id: str) -> Deployment:
        return self._one(Deployment, self._t.call("GET", f"/deployments/{seg(deployment_id)}"))

    @route("GET", "/deployments/devices/{device_id}/models")
    def device_models(self, device_id: str) -> Any:
        """What a device reports holding, each with its deployment or ``out_of_band``."""
        return self._t.call("GET", f"/deployments/devices/{seg(device_id)}/models")

    def wait(
        self,
        deployment_id: str,
        timeout: float | None = None,
        poll_s: float = 1.0,
        on_poll: Callable[[Deployment], None] | None = None,
    ) -> Deployment:
        """Poll until no target is pending or in progress."""
        return self._wait(
            lambda: self.get(deployment_id),
            lambda d: all(t.state not in ("pending", "in_progress") for t in d.targets),
            f"deployment {deployment_id}", timeout, poll_s, on_poll,
        )  # fmt: skip
