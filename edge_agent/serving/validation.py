"""Request validation against a served model's tensors, done once for every transport.

Datatype, shape (fixed dimensions and rank), empty tensors, unknown, duplicate and missing names:
each mistake gets a precise ``InvalidInput`` naming the tensor, so a client learns what to fix.
Encoded images meant for the manifest's preprocessing are decoded here, because only the decoded
tensor can be checked against the model.
"""

from __future__ import annotations

import math

import numpy as np

from edge_agent.errors import InvalidInput
from edge_agent.serving.requests import InputTensor
from edge_agent.serving.served_model import ServedModel


def is_tensor_request(served: ServedModel, tensors: list[InputTensor]) -> bool:
    """Whether a request sends the model's own tensors (names and datatypes), bypassing hooks."""
    specs = served.input_by_name
    return bool(tensors) and all(
        t.name in specs and t.datatype == specs[t.name].datatype for t in tensors
    )


def validate_inputs(served: ServedModel, tensors: list[InputTensor]) -> dict[str, np.ndarray]:
    specs = served.input_by_name
    proc = served.processing
    out: dict[str, np.ndarray] = {}
    for t in tensors:
        spec = specs.get(t.name)
        if spec is None:
            raise InvalidInput(
                f"model {served.name!r} has no input {t.name!r} (inputs: {', '.join(specs)})"
            )
        if t.name in out:
            raise InvalidInput(f"input {t.name!r} is given twice")
        if proc.decodes(t.name, t.datatype, spec):
            data = proc.decode(t.data)
            t = InputTensor(t.name, spec.datatype, data.shape, data)
        if t.datatype != spec.datatype:
            raise InvalidInput(f"input {t.name!r} must be {spec.datatype}, got {t.datatype}")
        if not spec.accepts(t.shape):
            raise InvalidInput(
                f"input {t.name!r} has shape {list(t.shape)}, model expects {list(spec.shape)} "
                "(-1 = any size)"
            )
        if math.prod(t.shape) == 0:
            raise InvalidInput(f"input {t.name!r} is empty (shape {list(t.shape)})")
        out[t.name] = t.data
    missing = [n for n in specs if n not in out]
    if missing:
        raise InvalidInput(f"missing input(s) {', '.join(missing)} for model {served.name!r}")
    if served.batcher is not None and len(out) > 1:
        rows = {a.shape[0] for a in out.values()}
        if len(rows) > 1:
            raise InvalidInput("all inputs must have the same batch size")
    return out


def validate_outputs(served: ServedModel, names: list[str]) -> list[str] | None:
    if not names:
        return None
    for n in names:
        if n not in served.output_names:
            raise InvalidInput(
                f"model {served.name!r} has no output {n!r} "
                f"(outputs: {', '.join(o.name for o in served.outputs)})"
            )
    if len(set(names)) != len(names):
        raise InvalidInput("an output is requested twice")
    return list(names)


def route_uploads(served: ServedModel, tensors: list[InputTensor]) -> list[InputTensor]:
    """Uploaded files (one BYTES tensor per form field) -> the model's inputs.

    A field named like a model input feeds it. Files under any other field name (``file``,
    ``image``, ...) feed the input that the package's image preprocessing decodes, in upload
    order, so ``curl -F file=@digit.png`` works without knowing the tensor's name. A ModelArts
    handler receives the fields as they are (its ``_preprocess`` reads them by name).
    """
    if served.hooks is not None:
        return tensors
    specs = served.input_by_name
    named = [t for t in tensors if t.name in specs]
    others = [t for t in tensors if t.name not in specs]
    if not others:
        return named
    pre = served.processing.pre
    if pre is None:
        fields = ", ".join(sorted({t.name for t in others}))
        raise InvalidInput(
            f"model {served.name!r} declares no image preprocessing, so uploaded files must be "
            f"named after its inputs ({', '.join(specs)}), not {fields}"
        )
    if any(t.name == pre.input for t in named):
        raise InvalidInput(
            f"files for input {pre.input!r} arrive both under its name and under other fields"
        )
    data = np.concatenate([t.data.reshape(-1) for t in others])
    return [*named, InputTensor(pre.input, "BYTES", data.shape, data)]
