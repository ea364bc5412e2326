"""The standard first code cell of every chapter, generated from one place.

On Colab the cell installs the package ``initial-states`` with the extras the chapter
needs (found from the chapter's imports: ``torch``; ``keras``/``tensorflow``;
``jax``/``flax``/``optax``), from the repository named in ``_config.yml``
(``repository.url``), pinned to the tag ``v`` + ``reference_impl.__version__``. It
clones that tag to ``/content/initial-states`` (a chapter can read the repository's
committed data, e.g. ``results/``, from ``INITIAL_STATES_ROOT``) and pip-installs from
the clone. With the environment variable ``INITIAL_STATES_SOURCE`` set to a checkout,
it installs from that checkout instead and clones nothing (the tests use this).
Outside Colab the install does nothing: run the chapters in the project's environment
(``make lab``). Every chapter's cell also keeps TensorFlow's start-up logs out of the
outputs and sets ``BUDGET``.

Usage::

    python tools/colab_cell.py --check              # every notebook's first code cell is current
    python tools/colab_cell.py --write [NOTEBOOK..] # rewrite it (all notebooks if none named)
    python tools/colab_cell.py --print NOTEBOOK     # show the cell a notebook should have
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
TAG = "colab-setup"
CELL_TAGS = [TAG, "hide-input"]

# What a chapter's imports need on Colab beyond what Colab ships (numpy, scipy, pandas,
# matplotlib, statsmodels, pyarrow, IPython): the package's extras...
EXTRA_OF_MODULE = {
    "torch": "torch",
    "tensorflow": "tensorflow",
    "keras": "tensorflow",
    "jax": "flax",
    "jaxlib": "flax",
    "flax": "flax",
    "optax": "flax",
    "orbax": "flax",
    "ray": "experiments",
}
EXTRAS_ORDER = ("torch", "tensorflow", "flax", "experiments")
# ...and single packages (pip name) that no extra of the package needs.
PACKAGE_OF_MODULE = {"myst_nb": "myst-nb", "onnx": "onnx", "onnxruntime": "onnxruntime"}
# Importable on Colab without an install (and in the tests' stand-in for Colab).
COLAB_SHIPS = {
    "IPython",
    "matplotlib",
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
    "statsmodels",
}
# reference_impl's framework modules, as imported by the chapters.
EXTRA_OF_PACKAGE_MODULE = {
    "reference_impl.torch": "torch",
    "reference_impl.tensorflow": "tensorflow",
    "reference_impl.flax": "flax",
    "reference_impl.experiments": "experiments",
    "reference_impl.compare": "experiments",
}


def repository_url() -> str:
    """``repository.url`` of ``_config.yml`` (read without a YAML library)."""
    text = (ROOT / "_config.yml").read_text()
    block = re.search(r"^repository:\n((?:[ \t]+.*\n)+)", text, re.M)
    if block:
        url = re.search(r"^\s+url:\s*(\S+)", block.group(1), re.M)
        if url:
            return url.group(1).strip("\"'")
    raise SystemExit("_config.yml has no repository.url")


def version() -> str:
    """``reference_impl.__version__``, read from the source (imports nothing)."""
    text = (ROOT / "reference_impl" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def code_cells(notebook: dict) -> list[dict]:
    return [c for c in notebook["cells"] if c["cell_type"] == "code"]


def source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def imported_modules(notebook: dict, skip_first: bool = True) -> set[str]:
    """Every module a notebook's code cells import (``a.b`` for ``from a.b import c``).

    The first code cell (the set-up this script writes) is skipped unless told.
    """
    mods: set[str] = set()
    cells = code_cells(notebook)
    for cell in cells[1:] if skip_first else cells:
        # IPython magics and shell escapes are not Python
        lines = [ln for ln in source(cell).splitlines() if not ln.lstrip().startswith(("%", "!"))]
        try:
            tree = ast.parse("\n".join(lines))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods.add(node.module)
                mods.update(f"{node.module}.{alias.name}" for alias in node.names)
    return mods


def requirements(notebook: dict) -> tuple[list[str], list[str]]:
    """The package extras and the extra pip packages a notebook's imports need on Colab."""
    extras, packages = set(), set()
    for mod in imported_modules(notebook):
        top = mod.split(".")[0]
        for prefix, extra in EXTRA_OF_PACKAGE_MODULE.items():
            if mod == prefix or mod.startswith(prefix + "."):
                extras.add(extra)
        if top in EXTRA_OF_MODULE:
            extras.add(EXTRA_OF_MODULE[top])
        if top in PACKAGE_OF_MODULE:
            packages.add(PACKAGE_OF_MODULE[top])
    return [e for e in EXTRAS_ORDER if e in extras], sorted(packages)


def cell_source(extras: list[str], packages: list[str]) -> str:
    """The text of the first code cell for a chapter that needs ``extras`` and ``packages``."""
    target = "{SOURCE}" + (f"[{','.join(extras)}]" if extras else "")
    pip = ", ".join([f'f"{target}"', *(f'"{p}"' for p in packages)])
    return f'''\
# Set-up. On Colab: install this book's package, pinned to its release, with what this
# chapter needs (INITIAL_STATES_SOURCE=/path/to/checkout installs a local copy instead).
# Elsewhere it installs nothing: run the chapters in the project's environment.
import os
import subprocess
import sys

if "google.colab" in sys.modules:
    SOURCE = os.environ.get("INITIAL_STATES_SOURCE", "")
    if not SOURCE:
        SOURCE = "/content/initial-states"
        if not os.path.isdir(SOURCE):
            URL = "{repository_url()}"
            clone = ["git", "clone", "-q", "--depth", "1", "--branch", "v{version()}"]
            subprocess.run([*clone, URL, SOURCE], check=True)
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run([*pip, {pip}], check=True)
    os.environ.setdefault("INITIAL_STATES_ROOT", SOURCE)
# no TensorFlow start-up logs in the outputs (its oneDNN notice ignores the log level)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
BUDGET = os.environ.get("BUDGET", "quick")  # "quick" on CPU and in CI, "full" on the GPU runner'''


def expected_cell(notebook: dict) -> str:
    return cell_source(*requirements(notebook))


def is_setup_cell(cell: dict) -> bool:
    tags = cell.get("metadata", {}).get("tags", [])
    return TAG in tags or "google.colab" in source(cell)


def rewrite(path: Path) -> bool:
    """Make the first code cell of ``path`` the standard one; True if the file changed."""
    text = path.read_text()
    notebook = json.loads(text)
    src = expected_cell(notebook)
    cells = code_cells(notebook)
    if cells and is_setup_cell(cells[0]):
        cell = cells[0]
    else:
        cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": []}
        first_code = notebook["cells"].index(cells[0]) if cells else len(notebook["cells"])
        notebook["cells"].insert(first_code, cell)
    cell["source"] = src.splitlines(keepends=True)
    tags = [t for t in cell.setdefault("metadata", {}).get("tags", []) if t not in CELL_TAGS]
    cell["metadata"]["tags"] = CELL_TAGS + tags
    new = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
    if new != text:
        path.write_text(new)
        return True
    return False


def problems(path: Path) -> list[str]:
    """What is wrong with the first code cell of ``path`` (empty if it is current)."""
    notebook = json.loads(path.read_text())
    cells = code_cells(notebook)
    if not cells:
        return [f"{path.name}: no code cell"]
    out = []
    if source(cells[0]) != expected_cell(notebook):
        out.append(f"{path.name}: first code cell differs from `tools/colab_cell.py --print`")
    if not set(CELL_TAGS) <= set(cells[0].get("metadata", {}).get("tags", [])):
        out.append(f"{path.name}: first code cell lacks the tags {CELL_TAGS}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the first code cells")
    mode.add_argument("--check", action="store_true", help="fail if a first code cell is stale")
    mode.add_argument("--print", action="store_true", help="print the expected first code cell")
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb"))
    if args.print:
        for path in paths:
            print(expected_cell(json.loads(path.read_text())))
        return 0
    if args.write:
        for path in paths:
            if rewrite(path):
                print(f"rewrote the first code cell of {path}")
        return 0
    found = [p for path in paths for p in problems(path)]
    print("\n".join(found) or f"{len(paths)} notebooks: first code cells are current")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
