"""Services: online and batch services, their results (paged) and the OIP REST proxy."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edge_inference_sdk.models import ResultPage, ResultRow, Service
from edge_inference_sdk.resources.base import ResourceBase, seg
from edge_inference_sdk.routes import route
from edge_inference_sdk.transport import Progress


class Services(ResourceBase):
    @route("POST", "/services")
    def create(self, name: str, models: list[dict[str, Any]], **spec: Any) -> Service:
        """``models``: ``[{"model": name, "version": v}]``; an online service may list several
        versions of one model with weights summing to 100 (``[{"model": "digits", "version":
        "1", "weight": 90}, {"model": "digits", "version": "2", "weight": 10}]``; the first
        listed is the active one). ``type`` online|batch|edge, ``replicas``, ``input`` for batch
        services, ``targets``, ``strategy``, ``gates``, ``guard``, ``warmup`` for edge
        services."""
        body = {"name": name, "models": models, **spec}
        return self._one(Service, self._t.call("POST", "/services", json=body))

    @route("GET", "/services")
    def list(self) -> list[Service]:
        return self._many(Service, self._t.call("GET", "/services"))

    @route("GET", "/services/{name}")
    def get(self, name: str) -> Service:
        return self._one(Service, self._t.call("GET", f"/services/{seg(name)}"))

    @route("PATCH", "/services/{name}")
    def update(
        self,
        name: str,
        models: list[dict[str, Any]] | None = None,
        *,
        capture: dict[str, Any] | None = None,
    ) -> Service:
        """New versions or weights (same shape as ``create``'s ``models``), rolled out one
        replica at a time without a failed request; for an edge service, a new ``capture``
        block, sent to its devices at once (docs/flywheel.md)."""
        body: dict[str, Any] = {}
        if models is not None:
            body["models"] = models
        if capture is not None:
            body["capture"] = capture
        return self._one(Service, self._t.call("PATCH", f"/services/{seg(name)}", json=body))

    @route("DELETE", "/services/{name}")
    def delete(self, name: str) -> None:
        self._t.call("DELETE", f"/services/{seg(name)}")

    @route("GET", "/services/{name}/results")
    def results_page(self, name: str, offset: int = 0, limit: int = 100) -> ResultPage:
        params = {"offset": offset, "limit": limit}
        data = self._t.call("GET", f"/services/{seg(name)}/results", params=params)
        return self._one(ResultPage, data)

    def results(self, name: str, page_size: int = 1000) -> Iterator[ResultRow]:
        """Every result row of a batch service, page by page."""
        offset = 0
        while True:
            page = self.results_page(name, offset, page_size)
            yield from page.items
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return

    @route("GET", "/services/{name}/results.jsonl")
    def download_results_jsonl(
        self, name: str, dest: Path, progress: Progress | None = None
    ) -> Path:
        return self._t.download(f"/services/{seg(name)}/results.jsonl", dest, progress)

    @route("GET", "/services/{name}/results.csv")
    def download_results_csv(self, name: str, dest: Path, progress: Progress | None = None) -> Path:
        return self._t.download(f"/services/{seg(name)}/results.csv", dest, progress)

    @route("POST", "/services/inputs")
    def upload_input(self, path: Path, progress: Progress | None = None) -> Any:
        """Upload a batch input (a zip of images, .npy or .jsonl files, or one .npy / .jsonl)."""
        return self._t.upload("POST", "/services/inputs", "file", path, progress)

    @route("GET", "/services/inputs")
    def inputs(self) -> Any:
        return self._t.call("GET", "/services/inputs")

    @route("GET", "/services/inputs/{upload_id}")
    def input(self, upload_id: str) -> Any:
        return self._t.call("GET", f"/services/inputs/{seg(upload_id)}")

    @route("DELETE", "/services/inputs/{upload_id}")
    def delete_input(self, upload_id: str) -> None:
        self._t.call("DELETE", f"/services/inputs/{seg(upload_id)}")

    @route("GET", "/services/{name}/rollouts")
    def rollouts(self, name: str) -> Any:
        """An edge service's rollouts, newest first (stages, device states, gate figures)."""
        return self._t.call("GET", f"/services/{seg(name)}/rollouts")

    @route("POST", "/services/{name}/rollout/{action}")
    def rollout_action(self, name: str, action: str) -> Any:
        """``pause``, ``resume``, ``abort`` or ``rollback`` an edge service's latest rollout."""
        return self._t.call("POST", f"/services/{seg(name)}/rollout/{seg(action)}")

    def pause(self, name: str) -> Any:
        return self.rollout_action(name, "pause")

    def resume(self, name: str) -> Any:
        return self.rollout_action(name, "resume")

    def abort(self, name: str) -> Any:
        return self.rollout_action(name, "abort")

    def rollback(self, name: str) -> Any:
        return self.rollout_action(name, "rollback")

    @route("GET", "/services/{name}/versions")
    def versions(self, name: str, baseline: str | None = None) -> Any:
        """Per-version figures (requests, errors, p50/p99, ``serving`` and ``weight`` in the
        spec), compared against ``baseline``."""
        params = {"baseline": baseline} if baseline else {}
        return self._t.call("GET", f"/services/{seg(name)}/versions", params=params)

    @route("GET", "/services/{name}/v2/{path}")
    @route("POST", "/services/{name}/v2/{path}")
    def oip(self, name: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call the service's OIP v2 REST API (``models/<m>/infer`` with a JSON body: POST;
        without a body: GET, e.g. ``models/<m>``)."""
        url = f"/services/{seg(name)}/v2/{path.lstrip('/')}"
        if body is None:
            return self._t.call("GET", url)
        return self._t.call("POST", url, json=body)

    def wait(
        self,
        name: str,
        states: tuple[str, ...] = ("running", "succeeded", "failed"),
        timeout: float | None = None,
        poll_s: float = 1.0,
        on_poll: Callable[[Service], None] | None = None,
    ) -> Service:
        return self._wait(
            lambda: self.get(name), lambda s: s.state in states, f"service {name}", timeout,
            poll_s, on_poll,
        )  # fmt: skip
