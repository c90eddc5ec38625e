"""Demo step for datasets: the digits set, imported, labeled and published as V001.

``run_datasets_demo(base_url, token)`` talks to a running control plane over HTTP;
``run_datasets_demo(app=app)`` uses an in-process app (FastAPI ``TestClient``), both through the
Python SDK (``edge_inference_sdk``), so this step is also its example. Either way it
creates a dataset, uploads the generated digits as a zip of loose files (no labels), labels them
through the bulk API (the labels come from the data: the digit each image was drawn as), publishes
V001 with a seeded 80/20 split and prints the version summary. scikit-learn's digits are not
installed here, so the images are drawn (tests/datasets/digits.py).
"""

from __future__ import annotations

import random
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from script_support import in_process_control_plane  # noqa: E402

from edge_inference_sdk import Client  # noqa: E402


def sdk_client(base_url: str | None, token: str | None, app: Any = None) -> Client:
    """The SDK over HTTP (``base_url``), or over FastAPI's TestClient for an in-process ``app``,
    so a demo step is the same code against a served control plane and inside a test."""
    if app is not None:
        from fastapi.testclient import TestClient

        return Client(token=token, http_client=TestClient(app))
    if base_url is None:
        raise ValueError("give base_url (and token) or app")
    return Client(base_url, token, timeout=120)


def run_datasets_demo(
    base_url: str | None = None,
    token: str | None = None,
    *,
    app: Any = None,
    per_class: int = 20,
    name: str = "digits",
) -> dict[str, Any]:
    """Create the digits dataset, import, label, publish V001; print and return the version."""
    from tests.datasets.digits import digit_png

    client = sdk_client(base_url, token, app)
    rng = random.Random(0)
    truth: dict[str, str] = {}
    labels = [str(d) for d in range(10)]
    ds = client.datasets.create(name, type="image_classification", labels=labels)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "digits.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for digit in range(10):
                for i in range(per_class):
                    fname = f"img-{digit}-{i:03d}.png"
                    zf.writestr(fname, digit_png(digit, rng))
                    truth[fname] = str(digit)
        report = client.datasets.upload_archive(ds.id, archive)
    print(
        f"dataset {name} ({ds.id}): imported {report.imported}, "
        f"{len(report.duplicates)} duplicates, {len(report.errors)} errors"
    )

    by_label: dict[str, list[int]] = {}
    for sample in list(client.datasets.samples(ds.id, page_size=1000, unlabeled=True)):
        by_label.setdefault(truth[sample.source_name], []).append(sample.id)
    for label, ids in sorted(by_label.items()):
        client.datasets.bulk_label(ds.id, ids, op="set", label=label, creator="demo")
    version = client.datasets.publish(ds.id, train_ratio=0.8, seed=0)
    print(
        f"published {version.name}: {version.sample_count} samples "
        f"({version.train_count} train / {version.validation_count} validation), "
        f"digest {version.digest[:16]}..., data_url {version.data_url}"
    )
    for label, st in version.label_stats.items():
        print(
            f"  label {label}: {st['samples']} samples ({st['train']} train, "
            f"{st['validation']} validation)"
        )
    if base_url:
        # The develop step on this version (docs/notebooks.md); the demo itself goes on.
        print(
            f"open a notebook on {version.name} (JupyterLab through the control plane):\n"
            f"  export EDGE_INFERENCE_URL={base_url} EDGE_INFERENCE_TOKEN=$TOKEN\n"
            f"  eictl notebooks create {name}-dev --dataset {name} --version {version.name} "
            "--example digits_image_classification --wait\n"
            "  eictl notebooks open <id>   # prints the URL to open in a browser"
        )
    client.close()
    return version.model_dump(mode="json")


if __name__ == "__main__":
    from control_plane.core.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(dev_mode=True, data_dir=Path(tmp))
        demo_app, ctx = in_process_control_plane(settings)  # datasets need no fleet channel
        run_datasets_demo(token=settings.api_token.get_secret_value(), app=demo_app)
        ctx.close()
