"""Import a ModelArts model directory: ``config.json``, ``customize_service.py``, a SavedModel.

The layout (Huawei ModelArts "model package")::

    model/
      config.json            model_type, model_algorithm, apis, dependencies, ...
      customize_service.py   a class with _preprocess / _postprocess hooks
      saved_model.pb         the TensorFlow SavedModel
      variables/

The SavedModel converts like any other (``SavedModelSource``). The handler's source and the
config go into the manifest as a Python-handler declaration (``processing.PythonHandler``), which
the signature covers. Whether it ever runs is the device's decision: agents refuse such packages
unless ``allow_python_handlers`` is set. ``dependencies`` are recorded, never installed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from model_packager.convert.base import ConversionError
from model_packager.convert.tf_source import SavedModelSource

SUPPORTED_TYPES = {"tensorflow", "tf", "tf-serving"}


def read_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError("load", f"{path}: unreadable config.json ({exc})") from exc
    if not isinstance(config, dict):
        raise ConversionError("load", f"{path}: config.json must be a JSON object")
    missing = [k for k in ("model_type", "model_algorithm") if k not in config]
    if missing:
        raise ConversionError("load", f"{path}: config.json lacks {', '.join(missing)}")
    return config


class ModelArtsSource(SavedModelSource):
    framework = "tensorflow"

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        self.config = read_config(folder)
        model_type = str(self.config["model_type"])
        if model_type.lower() not in SUPPORTED_TYPES:
            raise ConversionError(
                "load",
                f"ModelArts model_type {model_type!r} is not supported here (TensorFlow only; "
                "convert MXNet models from their symbol/params files)",
            )
        handler = folder / "customize_service.py"
        source = handler.read_text() if handler.is_file() else None
        if source is not None and ("_preprocess" not in source and "_postprocess" not in source):
            source = None  # a handler without hooks changes nothing
        super().__init__(folder)
        self.preprocessing: dict[str, Any] | None = None
        if source is not None:
            self.preprocessing = {
                "handler": "modelarts",
                "module": handler.name,
                "source": source,
                "sha256": hashlib.sha256(source.encode()).hexdigest(),
                "config": self.config,
            }
