"""Every code cell a reader sees is code a reader can copy.

A cell is *shown* unless it is tagged ``remove-input`` or ``remove-cell`` (a
``hide-input`` cell is shown behind a toggle: a reader can open and copy it, and the
Colab set-up cell is one of them). For every chapter:

* a shown cell uses only names that the shown cells above it (or the cell itself) define,
  Python's builtins and IPython's (``display``): run after the chapter's shown cells,
  it runs alone; a name that only a removed cell defines would fail in a reader's copy;
* a shown cell holds no book plumbing: no ``myst_nb`` import and no ``glue`` call; the
  numbers and figures the prose inserts are glued in removed cells.

The names come from Python's own symbol tables (``symtable``), so a name used inside a
function or a comprehension counts, and a function's own arguments do not.
"""

from __future__ import annotations

import builtins
import json
import re
import symtable
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
HIDDEN = {"remove-input", "remove-cell"}
PLUMBING = {"glue", "myst_nb"}
IPYTHON = {"display", "get_ipython", "In", "Out", "_", "__", "___"}


def python_of(source: str) -> str:
    """The cell as Python: IPython's ``%magic`` and ``!shell`` lines become ``pass``."""
    lines = []
    for line in source.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(("%", "!")):
            line = line[: len(line) - len(stripped)] + "pass"
        lines.append(line)
    return "\n".join(lines)


def names_of(source: str) -> tuple[set[str], set[str]]:
    """(names the cell binds at top level, names it needs from outside)."""
    top = symtable.symtable(python_of(source), "<cell>", "exec")
    bound = {
        s.get_name()
        for s in top.get_symbols()
        if s.is_assigned() or s.is_imported() or s.is_namespace()
    }
    needed = {s.get_name() for s in top.get_symbols() if s.is_referenced()}

    def inner(table):
        for child in table.get_children():
            for s in child.get_symbols():
                if s.is_referenced() and s.is_global() and not s.is_declared_global():
                    needed.add(s.get_name())
                if s.is_declared_global() and s.is_assigned():
                    bound.add(s.get_name())
            inner(child)

    inner(top)
    return bound, needed - bound


def shown_cells(path: Path):
    cells = json.loads(path.read_text())["cells"]
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        tags = set(cell.get("metadata", {}).get("tags", []))
        yield index, "".join(cell["source"]), not (tags & HIDDEN)


def problems_of(path: Path) -> list[str]:
    known = set(dir(builtins)) | IPYTHON
    problems = []
    for index, source, shown in shown_cells(path):
        bound, needed = names_of(source)
        if shown:
            missing = sorted(needed - known)
            if missing:
                problems.append(f"cell {index} uses names no shown cell above defines: {missing}")
            plumbing = sorted((bound | needed) & PLUMBING)
            if plumbing or re.search(r"^\s*(from|import)\s+myst_nb", source, re.M):
                problems.append(f"cell {index} is shown and holds book plumbing: {plumbing}")
            known |= bound
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_shown_cell_runs_after_the_shown_cells_above_it(path):
    assert problems_of(path) == []


def test_the_check_finds_a_hidden_name_and_plumbing(tmp_path):
    def cell(source, *tags):
        return {
            "cell_type": "code",
            "metadata": {"tags": list(tags)},
            "source": source,
            "outputs": [],
            "execution_count": None,
        }

    cells = [
        cell("%config InlineBackend.figure_format = 'retina'\nimport numpy as np\n"),
        cell("from myst_nb import glue\n\ndef helper(x):\n    return np.abs(x)\n", "remove-cell"),
        cell("def f(a):\n    return [helper(b) for b in a] + [len(a)]\n"),  # hidden helper
        cell("total = sum(np.ones(3))\nglue('total', total)\n"),  # plumbing in sight
        cell("print(total, f)\n!ls\n"),  # fine: both defined by shown cells above
        cell("print(later)\n"),  # defined only below
        cell("later = 1\n"),
    ]
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4}))
    assert problems_of(path) == [
        "cell 2 uses names no shown cell above defines: ['helper']",
        "cell 3 uses names no shown cell above defines: ['glue']",
        "cell 3 is shown and holds book plumbing: ['glue']",
        "cell 5 uses names no shown cell above defines: ['later']",
    ]
