"""Notebooks: managed JupyterLab servers, examples, files and export to training code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge_inference_sdk.errors import Unavailable
from edge_inference_sdk.models import Notebook, NotebookExample, NotebookExport, NotebookFile
from edge_inference_sdk.resources.base import ResourceBase, seg
from edge_inference_sdk.routes import route


class Notebooks(ResourceBase):
    @route("GET", "/notebooks/examples")
    def examples(self) -> list[NotebookExample]:
        return self._many(NotebookExample, self._t.call("GET", "/notebooks/examples"))

    @route("POST", "/notebooks")
    def create(
        self,
        name: str,
        dataset_id: str | None = None,
        dataset_version: str | None = None,
        idle_s: float | None = None,
        example: str | None = None,
    ) -> Notebook:
        body: dict[str, Any] = {"name": name, "dataset_id": dataset_id,
                                "dataset_version": dataset_version, "idle_s": idle_s,
                                "example": example}  # fmt: skip
        return self._one(Notebook, self._t.call("POST", "/notebooks", json=body))

    @route("GET", "/notebooks")
    def list(self) -> list[Notebook]:
        return self._many(Notebook, self._t.call("GET", "/notebooks"))

    @route("GET", "/notebooks/{notebook_id}")
    def get(self, notebook_id: str) -> Notebook:
        return self._one(Notebook, self._t.call("GET", f"/notebooks/{seg(notebook_id)}"))

    @route("POST", "/notebooks/{notebook_id}/stop")
    def stop(self, notebook_id: str) -> Notebook:
        return self._one(Notebook, self._t.call("POST", f"/notebooks/{seg(notebook_id)}/stop"))

    @route("POST", "/notebooks/{notebook_id}/start")
    def start(self, notebook_id: str) -> Notebook:
        return self._one(Notebook, self._t.call("POST", f"/notebooks/{seg(notebook_id)}/start"))

    @route("DELETE", "/notebooks/{notebook_id}")
    def delete(self, notebook_id: str) -> None:
        self._t.call("DELETE", f"/notebooks/{seg(notebook_id)}")

    @route("GET", "/notebooks/{notebook_id}/files")
    def files(self, notebook_id: str) -> list[NotebookFile]:
        return self._many(NotebookFile, self._t.call("GET", f"/notebooks/{seg(notebook_id)}/files"))

    @route("POST", "/notebooks/{notebook_id}/export")
    def export(self, notebook_id: str, path: str, boot_file: str | None = None) -> NotebookExport:
        """Convert a notebook of the work folder into training code (``code_id``, ``boot_file``)."""
        body = {"path": path, "boot_file": boot_file}
        data = self._t.call("POST", f"/notebooks/{seg(notebook_id)}/export", json=body)
        return self._one(NotebookExport, data)

    def wait_running(
        self,
        notebook_id: str,
        timeout: float | None = 120.0,
        poll_s: float = 0.5,
        on_poll: Callable[[Notebook], None] | None = None,
    ) -> Notebook:
        """Poll until the server runs; ``Unavailable`` if it failed or stopped instead."""
        nb = self._wait(
            lambda: self.get(notebook_id), lambda n: n.state != "starting",
            f"notebook {notebook_id}", timeout, poll_s, on_poll,
        )  # fmt: skip
        if nb.state != "running":
            raise Unavailable(503, "NotebookNotRunning", f"{nb.state}: {nb.reason}", "GET", "")
        return nb

    def browser_url(self, notebook: Notebook, token: str) -> str:
        """The URL that opens JupyterLab in a browser (the token is swapped for a cookie)."""
        return f"{self._t.url}{notebook.url}?token={token}"
