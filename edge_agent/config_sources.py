"""Where settings come from: a YAML file, ``EDGE_AGENT_*`` variables, explicit overrides.

The agent once read these through pydantic-settings, which loads about 80 modules (argparse,
csv, bz2, lzma, dotenv, email, json ...) and costs the process 3.5-5 MB of resident memory for
a job this module does in a page: the agent's memory budget on a small device is 100 MB. The
behaviour is the one pydantic-settings gave (and the README documents):

- Precedence, lowest first: the YAML file, the environment, explicit overrides; sections merge
  key by key (``EDGE_AGENT_FLEET__PASSWORD`` completes a ``fleet`` section of the file).
- Variables are matched without regard to case; ``__`` nests (``EDGE_AGENT_MODELS__digits__
  MAX_BATCH_SIZE=16``) and the nested keys are taken in lower case.
- A value for a structured field (a section, list or mapping: ``EDGE_AGENT_TRUSTED_KEYS``,
  ``EDGE_AGENT_FLEET``, ``EDGE_AGENT_MODELS__digits``) is JSON; plain fields take the string
  as is and the model validates it (``"9001"`` -> 9001).
- Variables that name no setting are ignored (the environment is shared with everything
  else); unknown keys in the file are refused by the model.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from typing import Any

from model_packager.records import Record, field_types

ENV_PREFIX = "edge_agent_"
NESTING = "__"


class EnvValueError(ValueError):
    """A structured setting's environment variable does not hold valid JSON."""


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X`` (the one non-None member of an optional union)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _unwrap(members[0])
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    return annotation


def _record(annotation: Any) -> type[Record] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, Record) else None


def _is_structured(annotation: Any) -> bool:
    """Whether a value for this annotation is given as JSON (a model, list, mapping ...)."""
    target = _unwrap(annotation)
    origin = typing.get_origin(target) or target
    if _record(origin) is not None:
        return True
    return origin in (list, tuple, set, frozenset, dict)


def _child(annotation: Any, key: str) -> Any:
    """The annotation one level below ``annotation`` at ``key``; None when unknown."""
    target = _unwrap(annotation)
    record = _record(target)
    if record is not None:
        return field_types(record).get(key)
    if typing.get_origin(target) is dict:
        return typing.get_args(target)[1]
    return None


def env_values(model: type[Record], environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings the ``EDGE_AGENT_*`` variables of ``environ`` give, as nested dicts."""
    out: dict[str, Any] = {}
    for name in sorted(environ):
        lowered = name.lower()
        if not lowered.startswith(ENV_PREFIX):
            continue
        path = lowered[len(ENV_PREFIX) :].split(NESTING)
        annotation: Any = field_types(model).get(path[0])
        if annotation is None or any(not part for part in path):
            continue
        for key in path[1:]:
            annotation = _child(annotation, key) if annotation is not None else None
        value: Any = environ[name]
        if annotation is not None and _is_structured(annotation):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise EnvValueError(f"{name} must hold JSON for this setting: {exc}") from None
        node = out
        for key in path[:-1]:
            nested = node.get(key)
            if not isinstance(nested, dict):
                nested = node[key] = {}
            node = nested
        node[path[-1]] = merged(node[path[-1]], value) if path[-1] in node else value
    return out


def merged(base: Any, over: Any) -> Any:
    """``over`` on top of ``base``; mappings merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = merged(out[key], value) if key in out else value
        return out
    return over
