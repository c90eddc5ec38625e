"""Which file in a folder is the model, and of what kind (the converter's source kinds).

Training scripts write whatever their framework writes into ``train_url``; uploads unpack into a
folder. The first match wins, in this order: a ModelArts model folder (``config.json`` next to
``customize_service.py`` or a SavedModel), a SavedModel (``saved_model.pb``), a Keras file, an
MXNet pair (``*-symbol.json``), an ONNX file, a TFLite file, a PyTorch ``.pt2`` program (a
TorchScript ``.pt`` only as an upload of its own: in a job's folder a ``.pt`` is as often a
checkpoint). TensorBoard folders are ignored.
"""

from __future__ import annotations

from pathlib import Path

from control_plane.core.errors import InvalidRequest

KINDS = ("keras", "savedmodel", "onnx", "tflite", "mxnet", "pytorch", "modelarts")
#: A model file uploaded alone, by suffix.
SINGLE_FILES = {
    ".keras": "keras",
    ".h5": "keras",
    ".onnx": "onnx",
    ".tflite": "tflite",
    ".pt2": "pytorch",
    ".pt": "pytorch",
    ".pth": "pytorch",
}


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(
        (p for p in root.rglob(pattern) if "tensorboard" not in p.relative_to(root).parts),
        key=lambda p: (len(p.parts), str(p)),
    )


def find_model(root: Path, allow_modelarts: bool = True) -> tuple[str, Path]:
    """``(kind, path)`` of the model under ``root``; ``InvalidRequest`` when there is none."""
    if root.is_file():
        suffix = root.suffix.lower()
        kind = SINGLE_FILES.get(suffix)
        if kind is None:
            raise InvalidRequest(f"{root.name}: not a model file")
        return kind, root
    if allow_modelarts:
        for config in _files(root, "config.json"):
            folder = config.parent
            if (folder / "customize_service.py").is_file() or (folder / "saved_model.pb").is_file():
                return "modelarts", folder
    for pb in _files(root, "saved_model.pb"):
        return "savedmodel", pb.parent
    for pattern, kind in (("*.keras", "keras"), ("*.h5", "keras")):
        for path in _files(root, pattern):
            return kind, path
    for symbol in _files(root, "*-symbol.json"):
        return "mxnet", symbol
    for pattern, kind in (("*.onnx", "onnx"), ("*.tflite", "tflite"), ("*.pt2", "pytorch")):
        for path in _files(root, pattern):
            return kind, path
    raise InvalidRequest(
        f"no model found in {root.name} (Keras, SavedModel, ONNX, TFLite, MXNet, PyTorch .pt2)"
    )
