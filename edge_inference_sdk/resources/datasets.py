"""Datasets: create, labels, uploads and imports, samples (paged), annotations; versions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge_inference_sdk.models import (
    BulkResult,
    Dataset,
    DatasetStats,
    DatasetVersion,
    ImportReport,
    Sample,
    SamplePage,
)
from edge_inference_sdk.resources.base import ResourceBase, seg
from edge_inference_sdk.routes import route
from edge_inference_sdk.transport import Progress, ProgressFile


def _offset(progress: Progress, base: int, total: int) -> Progress:
    return lambda done, _size: progress(base + done, total)


class Datasets(ResourceBase):
    @route("POST", "/datasets")
    def create(
        self,
        name: str,
        type: str = "image_classification",
        labels: list[str] | None = None,
        multi_label: bool = False,
        description: str = "",
    ) -> Dataset:
        body = {"name": name, "type": type, "labels": labels or [], "multi_label": multi_label,
                "description": description}  # fmt: skip
        return self._one(Dataset, self._t.call("POST", "/datasets", json=body))

    @route("GET", "/datasets")
    def list(self) -> list[Dataset]:
        return self._many(Dataset, self._t.call("GET", "/datasets"))

    @route("GET", "/datasets/{dataset_id}")
    def get(self, dataset_id: str) -> Dataset:
        return self._one(Dataset, self._t.call("GET", f"/datasets/{seg(dataset_id)}"))

    def find(self, name: str) -> Dataset | None:
        """The dataset of that name, or None."""
        return next((d for d in self.list() if d.name == name), None)

    @route("DELETE", "/datasets/{dataset_id}")
    def delete(self, dataset_id: str) -> None:
        self._t.call("DELETE", f"/datasets/{seg(dataset_id)}")

    @route("GET", "/datasets/{dataset_id}/stats")
    def stats(self, dataset_id: str) -> DatasetStats:
        return self._one(DatasetStats, self._t.call("GET", f"/datasets/{seg(dataset_id)}/stats"))

    # --- labels ----------------------------------------------------------------------------

    @route("POST", "/datasets/{dataset_id}/labels")
    def add_label(self, dataset_id: str, name: str) -> Any:
        return self._t.call("POST", f"/datasets/{seg(dataset_id)}/labels", json={"name": name})

    @route("PATCH", "/datasets/{dataset_id}/labels/{name}")
    def rename_label(self, dataset_id: str, name: str, new_name: str) -> Any:
        path = f"/datasets/{seg(dataset_id)}/labels/{seg(name)}"
        return self._t.call("PATCH", path, json={"name": new_name})

    @route("DELETE", "/datasets/{dataset_id}/labels/{name}")
    def delete_label(self, dataset_id: str, name: str) -> None:
        self._t.call("DELETE", f"/datasets/{seg(dataset_id)}/labels/{seg(name)}")

    @route("POST", "/datasets/{dataset_id}/labels/{name}/merge")
    def merge_label(self, dataset_id: str, name: str, into: str) -> Any:
        path = f"/datasets/{seg(dataset_id)}/labels/{seg(name)}/merge"
        return self._t.call("POST", path, json={"into": into})

    # --- imports ---------------------------------------------------------------------------

    @route("POST", "/datasets/{dataset_id}/files")
    def upload_files(
        self,
        dataset_id: str,
        files: list[Path],
        label: str | None = None,
        add_labels: bool = True,
        progress: Progress | None = None,
    ) -> ImportReport:
        """Upload image files (up to 1000 per call), optionally all with one label."""
        sizes = [Path(f).stat().st_size for f in files]
        total = sum(sizes)
        handles: list[ProgressFile] = []
        try:
            base = 0
            for path, size in zip(files, sizes, strict=True):
                # httpx sends the parts in order: this file's bytes follow the earlier ones'.
                report_at = None
                if progress is not None:
                    report_at = _offset(progress, base, total)
                handles.append(ProgressFile(Path(path), report_at))
                base += size
            parts = [("files", (Path(f).name, h, "application/octet-stream"))
                     for f, h in zip(files, handles, strict=True)]  # fmt: skip
            data: dict[str, str] = {"add_labels": str(add_labels).lower()}
            if label is not None:
                data["label"] = label
            report = self._t.call(
                "POST", f"/datasets/{seg(dataset_id)}/files", files=parts, data=data
            )
        finally:
            for h in handles:
                h.close()
        return self._one(ImportReport, report)

    @route("POST", "/datasets/{dataset_id}/archive")
    def upload_archive(
        self,
        dataset_id: str,
        zip_path: Path,
        format: str = "imagefolder",
        annotation_file: str | None = None,
        add_labels: bool = True,
        progress: Progress | None = None,
    ) -> ImportReport:
        """Import a zip (ImageFolder, manifest, COCO, VOC, YOLO), streamed with progress."""
        data = {"format": format, "add_labels": str(add_labels).lower()}
        if annotation_file:
            data["annotation_file"] = annotation_file
        answer = self._t.upload(
            "POST", f"/datasets/{seg(dataset_id)}/archive", "file", zip_path, progress, data,
            "application/zip",
        )  # fmt: skip
        return self._one(ImportReport, answer)

    @route("POST", "/datasets/{dataset_id}/imports")
    def import_folder(
        self, dataset_id: str, path: str, format: str = "imagefolder", **options: Any
    ) -> ImportReport:
        """Import a folder on the server (inside its ``dataset_import_roots``)."""
        body = {"path": path, "format": format, **options}
        return self._one(
            ImportReport, self._t.call("POST", f"/datasets/{seg(dataset_id)}/imports", json=body)
        )

    # --- samples and labelling -------------------------------------------------------------

    @route("GET", "/datasets/{dataset_id}/samples")
    def samples_page(
        self,
        dataset_id: str,
        offset: int = 0,
        limit: int = 100,
        label: str | None = None,
        unlabeled: bool = False,
        split: str | None = None,
    ) -> SamplePage:
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if label is not None:
            params["label"] = label
        if unlabeled:
            params["unlabeled"] = "true"
        if split is not None:
            params["split"] = split
        data = self._t.call("GET", f"/datasets/{seg(dataset_id)}/samples", params=params)
        return self._one(SamplePage, data)

    def samples(self, dataset_id: str, page_size: int = 500, **filters: Any) -> Iterator[Sample]:
        """Every sample (matching the filters), fetched page by page."""
        offset = 0
        while True:
            page = self.samples_page(dataset_id, offset=offset, limit=page_size, **filters)
            yield from page.items
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return

    @route("GET", "/datasets/{dataset_id}/samples/{sample_id}")
    def sample(self, dataset_id: str, sample_id: int) -> Sample:
        path = f"/datasets/{seg(dataset_id)}/samples/{sample_id}"
        return self._one(Sample, self._t.call("GET", path))

    @route("DELETE", "/datasets/{dataset_id}/samples/{sample_id}")
    def delete_sample(self, dataset_id: str, sample_id: int) -> None:
        self._t.call("DELETE", f"/datasets/{seg(dataset_id)}/samples/{sample_id}")

    @route("GET", "/datasets/{dataset_id}/samples/{sample_id}/content")
    def download_sample(self, dataset_id: str, sample_id: int, dest: Path) -> Path:
        return self._t.download(f"/datasets/{seg(dataset_id)}/samples/{sample_id}/content", dest)

    @route("GET", "/datasets/{dataset_id}/samples/{sample_id}/thumbnail")
    def download_thumbnail(self, dataset_id: str, sample_id: int, dest: Path) -> Path:
        path = f"/datasets/{seg(dataset_id)}/samples/{sample_id}/thumbnail"
        return self._t.download(path, dest)

    @route("PUT", "/datasets/{dataset_id}/samples/{sample_id}/annotations")
    def set_annotations(
        self, dataset_id: str, sample_id: int, annotations: list[dict[str, Any]]
    ) -> Sample:
        """Replace a sample's annotations: ``[{"label": "cat"}]`` or with ``"box"``."""
        path = f"/datasets/{seg(dataset_id)}/samples/{sample_id}/annotations"
        return self._one(Sample, self._t.call("PUT", path, json={"annotations": annotations}))

    def label(self, dataset_id: str, sample_id: int, *labels: str) -> Sample:
        """Classification shorthand: the sample carries exactly these labels."""
        return self.set_annotations(dataset_id, sample_id, [{"label": name} for name in labels])

    @route("PUT", "/datasets/{dataset_id}/samples/{sample_id}/split")
    def set_split(self, dataset_id: str, sample_id: int, split: str | None) -> Sample:
        path = f"/datasets/{seg(dataset_id)}/samples/{sample_id}/split"
        return self._one(Sample, self._t.call("PUT", path, json={"split": split}))

    @route("POST", "/datasets/{dataset_id}/annotations/bulk")
    def bulk_label(
        self,
        dataset_id: str,
        sample_ids: list[int],
        op: str = "set",
        label: str | None = None,
        creator: str = "",
    ) -> BulkResult:
        """``op``: set | add | remove | clear ``label`` on every sample of ``sample_ids``."""
        body = {"sample_ids": sample_ids, "op": op, "label": label, "creator": creator}
        path = f"/datasets/{seg(dataset_id)}/annotations/bulk"
        return self._one(BulkResult, self._t.call("POST", path, json=body))

    # --- versions --------------------------------------------------------------------------

    @route("POST", "/datasets/{dataset_id}/versions")
    def publish(
        self, dataset_id: str, train_ratio: float = 0.8, seed: int = 0, description: str = ""
    ) -> DatasetVersion:
        """Publish the labeled samples as the next immutable version (V001, V002, ...)."""
        body = {"train_ratio": train_ratio, "seed": seed, "description": description}
        data = self._t.call("POST", f"/datasets/{seg(dataset_id)}/versions", json=body)
        return self._one(DatasetVersion, data)

    @route("GET", "/datasets/{dataset_id}/versions")
    def versions(self, dataset_id: str) -> list[DatasetVersion]:
        data = self._t.call("GET", f"/datasets/{seg(dataset_id)}/versions")
        return self._many(DatasetVersion, data)

    @route("GET", "/datasets/{dataset_id}/versions/{name}")
    def version(self, dataset_id: str, name: str) -> DatasetVersion:
        data = self._t.call("GET", f"/datasets/{seg(dataset_id)}/versions/{seg(name)}")
        return self._one(DatasetVersion, data)

    @route("DELETE", "/datasets/{dataset_id}/versions/{name}")
    def delete_version(self, dataset_id: str, name: str) -> None:
        self._t.call("DELETE", f"/datasets/{seg(dataset_id)}/versions/{seg(name)}")

    @route("GET", "/datasets/{dataset_id}/versions/{name}/manifest")
    def manifest(self, dataset_id: str, name: str) -> str:
        """The version's ``manifest.jsonl`` text."""
        path = f"/datasets/{seg(dataset_id)}/versions/{seg(name)}/manifest"
        return self._t.text("GET", path)

    @route("GET", "/datasets/{dataset_id}/versions/{name}/export")
    def export_version(
        self,
        dataset_id: str,
        name: str,
        dest: Path,
        format: str = "manifest",
        progress: Progress | None = None,
    ) -> Path:
        """Download the version as a zip in ``format`` (manifest, coco, voc, yolo, imagefolder)."""
        path = f"/datasets/{seg(dataset_id)}/versions/{seg(name)}/export"
        return self._t.download(path, dest, progress, params={"format": format})
