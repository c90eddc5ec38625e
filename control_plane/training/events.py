"""Scalar series read from TensorBoard event files, so a client can plot without TensorBoard.

Every folder under a job's event root that holds ``events.out.tfevents.*`` files is a *run*
(Keras writes ``train`` and ``validation``; ``edge_training.log_scalar`` writes the root or a named
run). TF2 summaries store scalars as tensors tagged with the ``scalars`` plugin, older writers
(and ``edge_training``) as ``simple_value``; both are returned, keyed by tag.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

Series = dict[str, list[dict[str, float]]]


def _runs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    folders = {p.parent for p in root.rglob("events.out.tfevents.*") if p.is_file()}
    return sorted(folders)


def read_run(folder: Path) -> Series:
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    acc = ea.EventAccumulator(str(folder), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    tags = acc.Tags()
    out: Series = {}
    for tag in tags.get(ea.SCALARS, []):
        out[tag] = [
            {"step": e.step, "wall_time": e.wall_time, "value": float(e.value)}
            for e in acc.Scalars(tag)
        ]
    for tag in tags.get(ea.TENSORS, []):
        if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        points = []
        for e in acc.Tensors(tag):
            arr = tensor_util.make_ndarray(e.tensor_proto)
            if arr.size == 1:
                points.append({"step": e.step, "wall_time": e.wall_time, "value": float(arr)})
        out[tag] = points
    return out


def read_scalars(root: Path) -> dict[str, Series]:
    """``{run: {tag: [{step, wall_time, value}]}}`` for every run under ``root``."""
    result: dict[str, Series] = {}
    for folder in _runs(root):
        name = folder.relative_to(root).as_posix()
        try:
            result["." if name == "." else name] = read_run(folder)
        except Exception as exc:  # a half-written file must not break the API
            logger.warning("cannot read events in %s: %s", folder, exc)
    return result
