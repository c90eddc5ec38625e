"""Helper for training scripts run by the control plane (``import edge_training``).

Why a separate, dependency-free module: user scripts run on the control plane's Python (TensorFlow)
or on the MXNet virtual environment (Python 3.10, numpy < 1.24, no pydantic, no TensorFlow), so
this file uses the standard library only and is put on the job's ``PYTHONPATH`` as a top-level
module. Nothing in it needs the control plane to be importable.

The contract a script follows (the ModelArts one):

- it is started as ``python <boot file> --data_url=<dir> --train_url=<dir> --name=value ...``;
  ``data_url`` is the published dataset version folder (``manifest.jsonl``, ``version.json``,
  ``data/``), ``train_url`` an empty folder the script writes its model into;
- ``parse_args()`` returns those two paths and the hyperparameters, typed;
- ``report_metrics(train_url, {...})`` records validation metrics (``metrics.json`` in
  ``train_url``); the job keeps them and the registry copies them into the model version;
- ``log_scalar(train_url, tag, value, step)`` appends a scalar to a TensorBoard event file (written
  here byte by byte, so MXNet scripts show up in TensorBoard without TensorFlow);
- ``describe_model(train_url, input_shapes=..., labels=...)`` tells the registry what it cannot
  read from the model file (MXNet input shapes, class names, image preprocessing).

Example::

    import edge_training as et
    data_url, train_url, hp = et.parse_args()
    items = et.read_manifest(data_url)              # [{"path", "split", "labels"}]
    ...
    et.log_scalar(train_url, "validation/accuracy", acc, step=epoch)
    et.report_metrics(train_url, et.classification_metrics(y_true, y_pred, labels))
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

METRICS_FILE = "metrics.json"
MODEL_INFO_FILE = "model.json"
TENSORBOARD_DIR = "tensorboard"

_USAGE = {"TRAIN": "train", "EVAL": "validation", "TEST": "validation", "INFERENCE": "validation"}


def _typed(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def parse_args(argv: Sequence[str] | None = None) -> tuple[str, str, dict[str, Any]]:
    """``(data_url, train_url, hyperparameters)`` from ``--name=value`` (or ``--name value``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    values: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise SystemExit(f"edge_training: unexpected argument {arg!r}")
        name, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
                i += 1
            else:
                value = "true"
        values[name.replace("-", "_")] = _typed(value)
        i += 1
    data_url = str(values.pop("data_url", ""))
    train_url = str(values.pop("train_url", ""))
    if not train_url:
        raise SystemExit("edge_training: --train_url is required")
    os.makedirs(train_url, exist_ok=True)
    return data_url, train_url, values


def notebook_or_script_args(
    defaults: dict[str, Any] | None = None,
) -> tuple[str, str, dict[str, Any]]:
    """``parse_args()`` when run as a script (a training job), the notebook's values in a kernel.

    In a Jupyter kernel (``ipykernel`` imported) the command line is the kernel's own, so the
    dataset comes from ``$DATA_URL`` (set by the control plane), the output goes to ``$TRAIN_URL``
    (default ``./output``) and the hyperparameters are ``defaults``. As a script, ``--data_url``,
    ``--train_url`` and ``--name=value`` override ``defaults``. The same notebook therefore runs
    interactively and, exported, as a job.
    """
    hp = dict(defaults or {})
    if "ipykernel" in sys.modules:
        train_url = os.environ.get("TRAIN_URL", "output")
        os.makedirs(train_url, exist_ok=True)
        return os.environ.get("DATA_URL", ""), train_url, hp
    data_url, train_url, given = parse_args()
    hp.update(given)
    return data_url, train_url, hp


def read_manifest(data_url: str) -> list[dict[str, Any]]:
    """The version's samples: ``{"path": absolute file, "split": train|validation, "labels":
    [names], "annotation": raw ModelArts annotations}``."""
    out: list[dict[str, Any]] = []
    with open(os.path.join(data_url, "manifest.jsonl"), encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            entry = json.loads(line)
            anns = entry.get("annotation") or []
            out.append(
                {
                    "path": os.path.join(data_url, entry["source"]),
                    "split": _USAGE.get(str(entry.get("usage", "TRAIN")).upper(), "train"),
                    "labels": [a["name"] for a in anns if "name" in a],
                    "annotation": anns,
                }
            )
    return out


def class_names(data_url: str) -> list[str]:
    """Label names of the version (``version.json``), sorted, else those the manifest uses."""
    path = os.path.join(data_url, "version.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            labels = json.load(f).get("labels")
        if labels:
            return sorted(str(x) for x in labels)
    return sorted({n for it in read_manifest(data_url) for n in it["labels"]})


def _write_json(path: str, doc: dict[str, Any]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def report_metrics(train_url: str, metrics: dict[str, Any]) -> None:
    """Merge ``metrics`` (JSON-serialisable) into ``<train_url>/metrics.json``."""
    path = os.path.join(train_url, METRICS_FILE)
    doc: dict[str, Any] = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    doc.update(metrics)
    _write_json(path, doc)
    print(f"edge_training: metrics {sorted(metrics)}", flush=True)


def describe_model(
    train_url: str,
    input_shapes: dict[str, Sequence[int]] | None = None,
    labels: Sequence[str] | None = None,
    preprocessing: dict[str, Any] | None = None,
    postprocessing: dict[str, Any] | None = None,
) -> None:
    """What the registry needs beyond the model file (``<train_url>/model.json``)."""
    doc: dict[str, Any] = {}
    if input_shapes:
        doc["input_shapes"] = {k: [int(d) for d in v] for k, v in input_shapes.items()}
    if labels is not None:
        doc["labels"] = [str(x) for x in labels]
    if preprocessing:
        doc["preprocessing"] = preprocessing
    if postprocessing:
        doc["postprocessing"] = postprocessing
    _write_json(os.path.join(train_url, MODEL_INFO_FILE), doc)


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision and recall, and the confusion matrix (rows: true class,
    columns: predicted class). A class never predicted has precision 0; never present, recall 0."""
    n = len(labels)
    matrix = [[0] * n for _ in range(n)]
    for t, p in zip(y_true, y_pred):  # noqa: B905 - strict= needs Python 3.10
        matrix[int(t)][int(p)] += 1
    total = sum(sum(r) for r in matrix)
    correct = sum(matrix[i][i] for i in range(n))
    per_class: dict[str, dict[str, float]] = {}
    for i, name in enumerate(labels):
        predicted = sum(matrix[r][i] for r in range(n))
        actual = sum(matrix[i])
        per_class[str(name)] = {
            "precision": matrix[i][i] / predicted if predicted else 0.0,
            "recall": matrix[i][i] / actual if actual else 0.0,
            "support": actual,
        }
    return {
        "accuracy": correct / total if total else 0.0,
        "validation_samples": total,
        "per_class": per_class,
        "confusion_matrix": {"labels": [str(x) for x in labels], "matrix": matrix},
    }


# --- TensorBoard event files without TensorFlow ----------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def _masked_crc(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, file_version: str | None = None, summary: bytes = b"") -> bytes:
    """An ``Event`` protobuf: wall_time (1, double), step (2), file_version (3), summary (5)."""
    out = b"\x09" + struct.pack("<d", time.time()) + b"\x10" + _varint(step)
    if file_version is not None:
        out += _field(3, file_version.encode())
    if summary:
        out += _field(5, summary)
    return out


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", _masked_crc(header))
        + data
        + struct.pack("<I", _masked_crc(data))
    )


_writers: dict[str, str] = {}


def log_scalar(train_url: str, tag: str, value: float, step: int, run: str = "") -> None:
    """Append one scalar to ``<train_url>/tensorboard[/<run>]/events.out.tfevents.*``."""
    folder = (
        os.path.join(train_url, TENSORBOARD_DIR, run)
        if run
        else os.path.join(train_url, TENSORBOARD_DIR)
    )
    path = _writers.get(folder)
    if path is None:
        os.makedirs(folder, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.0"
        path = os.path.join(folder, name)
        with open(path, "ab") as f:
            f.write(_record(_event(0, file_version="brain.Event:2")))
        _writers[folder] = path
    # Summary.value (1) -> Value{tag (1), simple_value (2, float)}
    value_msg = _field(1, tag.encode()) + b"\x15" + struct.pack("<f", float(value))
    with open(path, "ab") as f:
        f.write(_record(_event(int(step), summary=_field(1, value_msg))))
