"""Training: algorithms, code uploads, jobs (create, wait, follow logs, scalars), TensorBoard."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edge_inference_sdk.models import Algorithm, Code, Scalars, TrainingJob, Visualization
from edge_inference_sdk.resources.base import ResourceBase, seg
from edge_inference_sdk.routes import route
from edge_inference_sdk.transport import Progress


def zip_folder(folder: Path, dest: Path) -> Path:
    """A zip of ``folder``'s files (no hidden files, no ``__pycache__``), for ``upload_code``."""
    folder = Path(folder)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if path.is_file() and not any(
                p.startswith(".") or p == "__pycache__" for p in rel.parts
            ):
                zf.write(path, rel.as_posix())
    return dest


class Training(ResourceBase):
    @route("GET", "/training/algorithms")
    def algorithms(self) -> list[Algorithm]:
        return self._many(Algorithm, self._t.call("GET", "/training/algorithms"))

    @route("POST", "/training/code")
    def upload_code(self, path: Path, progress: Progress | None = None) -> Code:
        """Upload training code: a zip file, or a folder (zipped on the fly)."""
        path = Path(path)
        if path.is_dir():
            buf = io.BytesIO()
            zip_folder(path, buf)  # type: ignore[arg-type]
            data = buf.getvalue()
            files = {"file": (f"{path.name}.zip", data, "application/zip")}
            answer = self._t.call("POST", "/training/code", files=files)
            if progress is not None:
                progress(len(data), len(data))
        else:
            answer = self._t.upload(
                "POST", "/training/code", "file", path, progress, content_type="application/zip"
            )
        return self._one(Code, answer)

    @route("POST", "/training/jobs")
    def create_job(self, name: str, algorithm: str, **spec: Any) -> TrainingJob:
        """Queue a job: ``dataset_id`` + ``dataset_version`` (or ``data_path``), ``code_id`` and
        ``boot_file`` for ``algorithm="script"``, ``hyperparameters``, ``framework``, ..."""
        body = {"name": name, "algorithm": algorithm, **spec}
        return self._one(TrainingJob, self._t.call("POST", "/training/jobs", json=body))

    @route("GET", "/training/jobs")
    def jobs(self, name: str | None = None, state: str | None = None) -> list[TrainingJob]:
        params = {k: v for k, v in (("name", name), ("state", state)) if v is not None}
        return self._many(TrainingJob, self._t.call("GET", "/training/jobs", params=params))

    @route("GET", "/training/jobs/{job_id}")
    def job(self, job_id: str) -> TrainingJob:
        return self._one(TrainingJob, self._t.call("GET", f"/training/jobs/{seg(job_id)}"))

    @route("DELETE", "/training/jobs/{job_id}")
    def delete_job(self, job_id: str) -> None:
        self._t.call("DELETE", f"/training/jobs/{seg(job_id)}")

    @route("POST", "/training/jobs/{job_id}/versions")
    def rerun(
        self, job_id: str, hyperparameters: dict[str, Any] | None = None, **changes: Any
    ) -> TrainingJob:
        """Run the job again as its next version, hyperparameters merged over the old ones."""
        body = {"hyperparameters": hyperparameters or {}, **changes}
        path = f"/training/jobs/{seg(job_id)}/versions"
        return self._one(TrainingJob, self._t.call("POST", path, json=body))

    @route("POST", "/training/jobs/{job_id}/cancel")
    def cancel(self, job_id: str) -> TrainingJob:
        path = f"/training/jobs/{seg(job_id)}/cancel"
        return self._one(TrainingJob, self._t.call("POST", path))

    @route("GET", "/training/jobs/{job_id}/logs")
    def logs(self, job_id: str, follow: bool = False) -> Iterator[str]:
        """The job's log lines; with ``follow`` they keep coming until the job ends."""
        params = {"follow": "true"} if follow else {}
        return self._t.lines(f"/training/jobs/{seg(job_id)}/logs", params=params)

    @route("GET", "/training/jobs/{job_id}/scalars")
    def scalars(self, job_id: str) -> Scalars:
        return self._one(Scalars, self._t.call("GET", f"/training/jobs/{seg(job_id)}/scalars"))

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll_s: float = 1.0,
        on_poll: Callable[[TrainingJob], None] | None = None,
    ) -> TrainingJob:
        """Poll until the job is final (succeeded, failed, canceled); returns it whatever the
        outcome (check ``.state``)."""
        return self._wait(
            lambda: self.job(job_id), lambda j: j.final, f"job {job_id}", timeout, poll_s, on_poll
        )

    # --- TensorBoard -----------------------------------------------------------------------

    @route("POST", "/visualizations")
    def start_tensorboard(self, job_ids: list[str], idle_s: float | None = None) -> Visualization:
        body: dict[str, Any] = {"job_ids": job_ids}
        if idle_s is not None:
            body["idle_s"] = idle_s
        return self._one(Visualization, self._t.call("POST", "/visualizations", json=body))

    @route("GET", "/visualizations")
    def tensorboards(self) -> list[Visualization]:
        return self._many(Visualization, self._t.call("GET", "/visualizations"))

    @route("GET", "/visualizations/{vid}")
    def tensorboard(self, vid: str) -> Visualization:
        return self._one(Visualization, self._t.call("GET", f"/visualizations/{seg(vid)}"))

    @route("POST", "/visualizations/{vid}/stop")
    def stop_tensorboard(self, vid: str) -> Visualization:
        path = f"/visualizations/{seg(vid)}/stop"
        return self._one(Visualization, self._t.call("POST", path))
