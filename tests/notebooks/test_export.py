"""Export rewrites notebook-only lines into plain Python, reports each, and refuses scripts that
do not compile."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from control_plane.core.errors import InvalidRequest
from control_plane.notebooks.export import export_script, rewrite_cells


def test_rewrites_magics_shell_and_display_and_reports_each_line() -> None:
    cells = [
        "%%time\nx = 1\n%load_ext autoreload",
        "%%bash\necho hi\nls",
        "if True:\n    !pip install nothing\nfiles = !ls\nfrom IPython.display import display\n"
        "display(x)\nobj.display(x)",
        "print('plain')",
    ]
    out, changes = rewrite_cells(cells)
    assert out[0] == "x = 1\npass  # notebook-only: %load_ext autoreload"
    assert out[1] == "# notebook-only: %%bash\n# notebook-only: echo hi\n# notebook-only: ls"
    assert out[2].splitlines() == [
        "if True:",
        "    pass  # notebook-only: !pip install nothing",
        "files = None  # notebook-only: !ls",
        "pass  # notebook-only: from IPython.display import display",
        "print(x)",
        "obj.display(x)",  # a method called display is plain Python
    ]
    assert out[3] == "print('plain')"
    assert [(c.cell, c.line, c.reason) for c in changes] == [
        (0, 1, "cell magic %%time dropped"),
        (0, 3, "line magic"),
        (1, 1, "cell magic %%bash: cell commented"),
        (2, 2, "shell command"),
        (2, 3, "shell/magic result"),
        (2, 4, "IPython import"),
        (2, 5, "display() printed instead"),
    ]
    for source in out:
        compile(source, "cell", "exec")


def test_export_script_keeps_code_cells_only_and_compiles(tmp_path: Path) -> None:
    nb = new_notebook(
        cells=[new_markdown_cell("# Title"), new_code_cell("%matplotlib inline\nprint(1 + 1)")]
    )
    path = tmp_path / "a.ipynb"
    nbformat.write(nb, path)
    script, changes = export_script(path)
    assert "print(1 + 1)" in script and "# Title" in script  # markdown as a comment
    assert "get_ipython" not in script
    assert [c.original for c in changes] == ["%matplotlib inline"]


def test_export_refuses_a_script_that_does_not_compile_and_an_unreadable_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bad.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("def broken(:\n    pass")]), path)
    with pytest.raises(InvalidRequest, match="does not compile: line"):
        export_script(path)
    junk = tmp_path / "junk.ipynb"
    junk.write_text("{not json")
    with pytest.raises(InvalidRequest, match="not a readable notebook"):
        export_script(junk)
