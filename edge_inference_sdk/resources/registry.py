"""The model registry (register, import, wait until ready, download), packages, lineage and
the registry's signing keys."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_inference_sdk.errors import InvalidRequest
from edge_inference_sdk.models import Lineage, ModelSummary, ModelVersion, Package, SigningKey
from edge_inference_sdk.resources.base import ResourceBase, seg
from edge_inference_sdk.routes import route
from edge_inference_sdk.transport import Progress


class Models(ResourceBase):
    @route("POST", "/models")
    def register(self, name: str, job_id: str, **options: Any) -> ModelVersion:
        """A succeeded job's model as the next version (``version``, ``targets``, ``tags``,
        ``on_parity_fail``, ``input_shapes``, ``description``, ``labels``, ``preprocessing``,
        ``postprocessing``, ``calibrate_on_generated``); converting until ready."""
        body = {"name": name, "job_id": job_id, **options}
        return self._one(ModelVersion, self._t.call("POST", "/models", json=body))

    @route("POST", "/models/import")
    def import_file(
        self,
        name: str,
        path: Path,
        progress: Progress | None = None,
        **fields: Any,
    ) -> ModelVersion:
        """Import a model file or zip (``kind``, ``version``, ``labels``, ``input_shapes``,
        ``targets``, ``preprocessing``, ... : lists and dicts are sent as JSON)."""
        data = {"name": name}
        for key, value in fields.items():
            if value is not None:
                data[key] = value if isinstance(value, str) else json.dumps(value)
        answer = self._t.upload("POST", "/models/import", "file", path, progress, data)
        return self._one(ModelVersion, answer)

    @route("GET", "/models")
    def list(self) -> list[ModelSummary]:
        return self._many(ModelSummary, self._t.call("GET", "/models"))

    @route("GET", "/models/{name}/versions")
    def versions(self, name: str) -> list[ModelVersion]:
        return self._many(ModelVersion, self._t.call("GET", f"/models/{seg(name)}/versions"))

    @route("GET", "/models/{name}/versions/{version}")
    def get(self, name: str, version: str) -> ModelVersion:
        path = f"/models/{seg(name)}/versions/{seg(version)}"
        return self._one(ModelVersion, self._t.call("GET", path))

    @route("PATCH", "/models/{name}/versions/{version}")
    def update(
        self, name: str, version: str, description: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> ModelVersion:  # fmt: skip
        body = {k: v for k, v in (("description", description), ("tags", tags)) if v is not None}
        path = f"/models/{seg(name)}/versions/{seg(version)}"
        return self._one(ModelVersion, self._t.call("PATCH", path, json=body))

    @route("DELETE", "/models/{name}/versions/{version}")
    def delete(self, name: str, version: str) -> None:
        self._t.call("DELETE", f"/models/{seg(name)}/versions/{seg(version)}")

    @route("GET", "/models/{name}/versions/{version}/package")
    def download(
        self, name: str, version: str, dest: Path, progress: Progress | None = None
    ) -> Path:
        """The signed ``.edgepkg`` of a ready version (into a folder: ``<digest>.edgepkg``)."""
        dest = Path(dest)
        if dest.is_dir():
            digest = self.get(name, version).package_digest
            dest = dest / f"{digest or f'{name}-{version}'}.edgepkg"
        path = f"/models/{seg(name)}/versions/{seg(version)}/package"
        return self._t.download(path, dest, progress)

    def wait(
        self,
        name: str,
        version: str,
        timeout: float | None = None,
        poll_s: float = 1.0,
        on_poll: Callable[[ModelVersion], None] | None = None,
        raise_on_failure: bool = True,
    ) -> ModelVersion:
        """Poll until the version is no longer ``converting``; ``InvalidRequest`` if it failed
        (unless ``raise_on_failure=False``)."""
        mv = self._wait(
            lambda: self.get(name, version), lambda m: m.state != "converting",
            f"model {name} {version}", timeout, poll_s, on_poll,
        )  # fmt: skip
        if mv.state == "failed" and raise_on_failure:
            raise InvalidRequest(422, "ConversionFailed", mv.error, "GET", "")
        return mv

    @route("GET", "/lineage/{package_digest}")
    def lineage(self, package_digest: str) -> Lineage:
        return self._one(Lineage, self._t.call("GET", f"/lineage/{seg(package_digest)}"))


class Packages(ResourceBase):
    @route("POST", "/packages")
    def upload(self, path: Path, progress: Progress | None = None) -> Package:
        """Upload a signed ``.edgepkg`` (verified against the control plane's trusted keys)."""
        return self._one(Package, self._t.upload("POST", "/packages", "file", path, progress))

    @route("GET", "/packages")
    def list(self) -> list[Package]:
        return self._many(Package, self._t.call("GET", "/packages"))

    @route("GET", "/packages/{digest}")
    def get(self, digest: str) -> Package:
        return self._one(Package, self._t.call("GET", f"/packages/{seg(digest)}"))


class Keys(ResourceBase):
    @route("GET", "/registry/keys")
    def list(self) -> list[SigningKey]:
        """The registry's signing keys, newest first."""
        return self._many(SigningKey, self._t.call("GET", "/registry/keys"))

    @route("POST", "/registry/keys/rotate")
    def rotate(self) -> SigningKey:
        """A new signing key (admin); the previous one retires with the grace period and every
        device receives the new trust set over the fleet channel."""
        return self._one(SigningKey, self._t.call("POST", "/registry/keys/rotate"))
