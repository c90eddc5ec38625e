"""Files named on the ``model-packager`` command line, read with errors a user can act on.

A wrong file (missing, a folder, not UTF-8, not JSON, a declaration the agent would refuse) is a
mistake in the command, not a bug: the CLI reports it as one ``error: --option FILE: why`` line
with exit status 1, like every other bad input, instead of a traceback. Checking here, before any
framework is imported or model loaded, also fails a conversion in a second rather than minutes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from model_packager import processing
from model_packager.records import SchemaError


class InputFileError(Exception):
    """A file given on the command line is missing, unreadable or malformed."""


def _read_text(path: str, option: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{option} {path}: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise InputFileError(f"{option} {path}: {exc.strerror or exc}") from exc


def read_labels(path: str, option: str = "--labels") -> list[str]:
    """One label per non-blank line, surrounding white space dropped."""
    lines = _read_text(path, option).splitlines()
    return [ln.strip() for ln in lines if ln.strip()]


def _validation_reason(exc: SchemaError) -> str:
    """The findings as ``field: message`` pairs on one line."""
    return "; ".join(p.line(with_input=False) for p in exc.problems)


def read_processing(path: str, kind: Literal["preprocessing", "postprocessing"]) -> dict[str, Any]:
    """The manifest's ``preprocessing`` / ``postprocessing`` from a JSON file, schema-checked.

    Only the declaration itself is checked here; whether it fits the model's inputs and outputs
    is the converter's ``processing`` step, which needs the opened model.
    """
    option = f"--{kind}"
    text = _read_text(path, option)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(
            f"{option} {path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc
    if not isinstance(doc, dict):
        raise InputFileError(f"{option} {path}: expected a JSON object, got {type(doc).__name__}")
    try:
        if kind == "preprocessing":
            processing.parse(doc, None)
        else:
            processing.parse(None, doc)
    except SchemaError as exc:
        raise InputFileError(f"{option} {path}: {_validation_reason(exc)}") from exc
    return doc
