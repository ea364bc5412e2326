"""The chapters' first cell: generated from one place, and it works on a Colab stand-in.

``tools/colab_cell.py`` writes the first code cell of every notebook. The fast tests
check that each notebook holds exactly the generated cell and that the generator
finds the right extras. The slow test runs each distinct generated cell in a fresh
virtual environment with ``google.colab`` faked, installing from a copy of this
checkout (``INITIAL_STATES_SOURCE``) under ``constraints-cpu.txt`` (so torch stays
the CPU build), then imports everything the chapters of that group import. Like
Colab, the stand-in already has the frameworks (see ``colab_stand_in``), so it takes
seconds.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import colab_cell  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def notebook_of(*sources: str) -> dict:
    cells = [{"cell_type": "code", "source": s, "metadata": {}} for s in ("# set-up", *sources)]
    return {"cells": cells}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_first_code_cell_is_the_generated_one(path):
    assert colab_cell.problems(path) == [], "run: python tools/colab_cell.py --write"


@pytest.mark.parametrize(
    ("sources", "extras", "packages"),
    [
        (["import torch\nfrom reference_impl import torch as ri"], ["torch"], []),
        (["import keras"], ["tensorflow"], []),
        (["import tensorflow as tf"], ["tensorflow"], []),
        (["from reference_impl import tensorflow as ri"], ["tensorflow"], []),
        (["from reference_impl.flax import nnx as ri"], ["flax"], []),
        (["import optax", "from flax import linen as nn"], ["flax"], []),
        (["import jax\nimport torch", "import keras"], ["torch", "tensorflow", "flax"], []),
        (["from myst_nb import glue\nimport numpy as np"], [], ["myst-nb"]),
        (["%config InlineBackend.figure_format = 'retina'\nimport torch"], ["torch"], []),
    ],
)
def test_extras_follow_the_imports(sources, extras, packages):
    assert colab_cell.requirements(notebook_of(*sources)) == (extras, packages)


def test_the_first_cell_is_skipped_when_finding_extras():
    notebook = {"cells": [{"cell_type": "code", "source": "import torch", "metadata": {}}]}
    assert colab_cell.requirements(notebook) == ([], [])


def test_cell_pins_the_release_and_names_the_repository_once():
    src = colab_cell.cell_source(["torch"], ["myst-nb"])
    ast.parse(src)
    version = colab_cell.version()
    assert f'"--branch", "v{version}"' in src
    assert src.count(colab_cell.repository_url()) == 1
    assert 'f"{SOURCE}[torch]", "myst-nb"' in src
    assert "INITIAL_STATES_SOURCE" in src


def test_write_then_check_round_trip(tmp_path):
    # a notebook with the old hand-written cell and a chapter that imports keras
    nb = {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": "# A chapter"},
            {
                "cell_type": "code",
                "metadata": {},
                "outputs": [],
                "execution_count": None,
                "source": 'import sys\nif "google.colab" in sys.modules:\n    pass\n',
            },
            {
                "cell_type": "code",
                "metadata": {},
                "outputs": [],
                "execution_count": None,
                "source": "import keras\n",
            },
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = tmp_path / "chapter.ipynb"
    path.write_text(json.dumps(nb))
    assert colab_cell.problems(path)  # stale
    assert colab_cell.rewrite(path)
    assert colab_cell.problems(path) == []
    assert not colab_cell.rewrite(path)  # idempotent
    new = load(path)
    assert len(new["cells"]) == 3
    first = new["cells"][1]
    assert "[tensorflow]" in "".join(first["source"])
    assert first["metadata"]["tags"][:2] == ["colab-setup", "hide-input"]


# --- the cell on a Colab stand-in -------------------------------------------------

# Colab ships the frameworks (PyTorch, TensorFlow with Keras, JAX with Flax and optax)
# and the scientific stack; the first cell installs only this package and what Colab
# lacks. The stand-in is a fresh virtual environment that sees the project
# environment's packages as Colab's preinstalled ones (a path in a .pth file: the
# project's own editable install is not activated by it), so nothing heavy is
# reinstalled and the test takes seconds, not the minutes of a full framework install.

FAKE_COLAB = """\
import sys, types
google = types.ModuleType("google")
google.colab = types.ModuleType("google.colab")
sys.modules["google"], sys.modules["google.colab"] = google, google.colab
"""


def colab_stand_in(root: Path) -> Path:
    """A fresh virtual environment whose preinstalled packages are the project's."""
    venv.create(root, with_pip=True)
    python = root / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    shipped = sysconfig.get_paths()["purelib"]  # this (the project's) environment
    (Path(site) / "colab_ships.pth").write_text(shipped + "\n")
    return python


def import_lines(paths: list[Path]) -> list[str]:
    """Every import statement of the chapters (top level of their cells), as code."""
    lines = []
    for path in paths:
        for cell in colab_cell.code_cells(load(path))[1:]:
            src = "\n".join(
                ln
                for ln in colab_cell.source(cell).splitlines()
                if not ln.lstrip().startswith(("%", "!"))
            )
            for node in ast.parse(src).body:
                if isinstance(node, ast.Import | ast.ImportFrom):
                    lines.append(ast.unparse(node))
    return sorted(set(lines))


def groups() -> dict[tuple[str, ...], list[Path]]:
    """The notebooks by the extras they install: one fresh environment per group."""
    out: dict[tuple[str, ...], list[Path]] = {}
    for path in NOTEBOOKS:
        extras, _ = colab_cell.requirements(load(path))
        out.setdefault(tuple(extras), []).append(path)
    return out


GROUPS = groups()


@pytest.mark.slow
def test_first_cell_installs_what_the_chapters_import(tmp_path):
    started = time.perf_counter()
    python = colab_stand_in(tmp_path / "venv")
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    # a copy of what the package is built from, so the build leaves the checkout clean
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "reference_impl", source / "reference_impl", ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    env.update(
        PIP_CONSTRAINT=str(ROOT / "constraints-cpu.txt"),
        INITIAL_STATES_SOURCE=str(source),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )

    def run(*args: str | Path) -> subprocess.CompletedProcess:
        # outside the checkout, so only the installed copy of the package can be imported
        return subprocess.run(
            [str(a) for a in args], cwd=tmp_path, env=env, capture_output=True, text=True
        )

    for extras, paths in GROUPS.items():
        # each distinct generated cell of the group, run as Colab runs the first cell
        cells = {colab_cell.cell_source(*colab_cell.requirements(load(p))) for p in paths}
        for k, cell in enumerate(sorted(cells)):
            script = tmp_path / f"first_cell_{'_'.join(extras)}_{k}.py"
            script.write_text(FAKE_COLAB + cell + "\nprint('BUDGET', BUDGET)\n")
            done = run(python, script)
            assert done.returncode == 0, done.stderr[-3000:]
            assert "BUDGET quick" in done.stdout
        check = tmp_path / f"imports_{'_'.join(extras)}.py"
        check.write_text(
            "\n".join(import_lines(paths))
            + "\nimport reference_impl\n"
            + f"assert reference_impl.__file__.startswith({str(tmp_path / 'venv')!r}), "
            + "reference_impl.__file__\n"
        )
        done = run(python, check)
        assert done.returncode == 0, f"{[p.name for p in paths]}:\n{done.stderr[-3000:]}"
    # the project environment is Colab's stand-in, never changed by the installs
    assert "site-packages" in sysconfig.get_paths()["purelib"]
    print(f"all groups: {time.perf_counter() - started:.0f} s")
