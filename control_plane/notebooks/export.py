"""A notebook turned into a training script: notebook-only lines rewritten, nbconvert for the rest.

Jupyter accepts lines plain Python does not (``%magics``, ``!shell``, ``display()``). Each is
rewritten before nbconvert sees the notebook, so the report can quote the line the user wrote:

- ``%line magic`` / ``!shell`` -> ``pass  # notebook-only: <line>`` (``pass`` keeps an indented
  block valid); ``x = !cmd`` / ``x = %magic`` -> ``x = None  # notebook-only: ...``;
- a cell magic: ``%%time``, ``%%timeit`` and ``%%capture`` keep their Python body; any other
  (``%%bash``, ``%%writefile``, ...) turns the whole cell into comments;
- ``display(x)`` -> ``print(x)``; ``from IPython.display import ...`` -> a comment.

The script must compile, or the export is refused naming the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from control_plane.core.errors import InvalidRequest

_PY_CELL_MAGICS = {"time", "timeit", "capture"}
_ASSIGN_FROM = re.compile(r"^(\s*)([A-Za-z_][\w, ]*)=\s*([!%].*)$")
_MAGIC = re.compile(r"^(\s*)([!%].*)$")
_DISPLAY = re.compile(r"(?<![\w.])display\(")
_IPY_IMPORT = re.compile(r"^(\s*)(from\s+IPython(\.\w+)*\s+import\s+.*|import\s+IPython.*)$")
_GET_IPYTHON = re.compile(r"^(\s*)(.*get_ipython\(\).*)$")


@dataclass(frozen=True)
class Change:
    cell: int
    line: int
    original: str
    replacement: str
    reason: str


def _rewrite_line(text: str) -> tuple[str, str] | None:
    """``(replacement, reason)`` for a notebook-only line, None for plain Python."""
    if m := _ASSIGN_FROM.match(text):
        indent, target, rest = m.groups()
        return f"{indent}{target.strip()} = None  # notebook-only: {rest}", "shell/magic result"
    if m := _MAGIC.match(text):
        indent, rest = m.groups()
        kind = "shell command" if rest.startswith("!") else "line magic"
        return f"{indent}pass  # notebook-only: {rest}", kind
    if m := _IPY_IMPORT.match(text):
        indent, rest = m.group(1), m.group(2)
        return f"{indent}pass  # notebook-only: {rest}", "IPython import"
    if m := _GET_IPYTHON.match(text):
        indent, rest = m.groups()
        return f"{indent}pass  # notebook-only: {rest}", "get_ipython() call"
    if _DISPLAY.search(text):
        return _DISPLAY.sub("print(", text), "display() printed instead"
    return None


def rewrite_cells(sources: list[str]) -> tuple[list[str], list[Change]]:
    """Rewrite each code cell's source; returns the new sources and what changed."""
    out: list[str] = []
    changes: list[Change] = []
    for index, source in enumerate(sources):
        lines = source.split("\n")
        first = lines[0].strip() if lines else ""
        if first.startswith("%%"):
            name = first[2:].split(None, 1)[0] if len(first) > 2 else ""
            if name in _PY_CELL_MAGICS:
                changes.append(Change(index, 1, lines[0], "", f"cell magic %%{name} dropped"))
                lines = lines[1:]
            else:
                commented = [f"# notebook-only: {line}" for line in lines]
                changes.append(
                    Change(index, 1, lines[0], commented[0], f"cell magic %%{name}: cell commented")
                )
                out.append("\n".join(commented))
                continue
            offset = 2
        else:
            offset = 1
        new_lines = []
        for n, line in enumerate(lines):
            rewritten = _rewrite_line(line)
            if rewritten is None:
                new_lines.append(line)
                continue
            replacement, reason = rewritten
            changes.append(Change(index, n + offset, line, replacement, reason))
            new_lines.append(replacement)
        out.append("\n".join(new_lines))
    return out, changes


def export_script(notebook: Path) -> tuple[str, list[Change]]:
    """The notebook as a Python script (nbconvert) and the list of rewritten lines."""
    import nbformat
    from nbconvert import PythonExporter

    try:
        nb = nbformat.read(notebook, as_version=4)
    except Exception as exc:  # nbformat raises several kinds for an unreadable file
        raise InvalidRequest(f"{notebook.name} is not a readable notebook: {exc}") from None
    cells = [c for c in nb.cells if c.cell_type == "code"]
    sources, changes = rewrite_cells([str(c.source) for c in cells])
    for cell, source in zip(cells, sources, strict=True):
        cell.source = source
    script, _ = PythonExporter().from_notebook_node(nb)
    try:
        compile(script, notebook.with_suffix(".py").name, "exec")
    except SyntaxError as exc:
        raise InvalidRequest(
            f"the exported script does not compile: line {exc.lineno}: {exc.msg}"
        ) from None
    return script, changes
