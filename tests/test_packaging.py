"""Packaging: missing-extra errors, licence and metadata, and the wheel in a clean environment.

The wheel is built from a copy of the sources, installed with one framework's extra
into a fresh virtual environment, and the README's snippet for that framework runs
there: the package works for a user who installs it, not only in this checkout.
"""

import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# module of the package -> the framework import to block, and the extras the error names
MODULES = {
    "reference_impl.torch": ("torch", ["initial-states[torch]"]),
    "reference_impl.tensorflow": ("keras", ["initial-states[tensorflow]", "initial-states[keras]"]),
    "reference_impl.flax.linen": ("jax", ["initial-states[flax]"]),
    "reference_impl.flax.nnx": ("flax", ["initial-states[flax]"]),
}


@pytest.mark.parametrize("module", list(MODULES))
def test_missing_framework_names_the_extra(module):
    blocked, extras = MODULES[module]
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules[{blocked!r}] = None  # as if the framework were not installed
        try:
            import {module}
        except ModuleNotFoundError as error:
            print(error.name)
            print(error)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    ).stdout.splitlines()
    assert out[0] == blocked
    assert module in out[1]
    for extra in extras:
        assert f'pip install "{extra}"' in out[1]


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """The sdist and the wheel, built from a copy of the sources (the checkout stays clean)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "reference_impl",
        src / "reference_impl",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    out = tmp_path_factory.mktemp("dist")
    # (setuptools rewrites sys.argv while it builds: read the target first)
    build = "import sys\nfrom setuptools import build_meta as b\nout = sys.argv[1]\n"
    build += "b.build_sdist(out)\nb.build_wheel(out)"
    subprocess.run(
        [sys.executable, "-c", build, str(out)], cwd=src, check=True, capture_output=True
    )
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def wheel_metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        return names, Parser().parsestr(z.read(meta).decode())


def test_licence_ships_in_wheel_and_sdist(dists):
    sdist, wheel = dists
    names, meta = wheel_metadata(wheel)
    licence = [n for n in names if n.endswith("licenses/LICENSE")]
    assert licence, names
    with zipfile.ZipFile(wheel) as z:
        assert z.read(licence[0]).decode().startswith("MIT License")
    with tarfile.open(sdist) as t:
        assert any(n.endswith("/LICENSE") for n in t.getnames())
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]


def test_metadata_is_honest_and_complete(dists):
    _, wheel = dists
    names, meta = wheel_metadata(wheel)
    # only 3.11 is tested, so only 3.11 and later is claimed
    assert meta["Requires-Python"] == ">=3.11"
    classifiers = meta.get_all("Classifier")
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert not any(c.startswith("License ::") for c in classifiers)  # SPDX instead
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Source", "Issues", "Documentation"} <= set(urls)
    requires = meta.get_all("Requires-Dist")
    keras_only = [r for r in requires if r.endswith('extra == "keras"')]
    assert keras_only and not any("tensorflow" in r for r in keras_only)
    assert "reference_impl/py.typed" in names


def readme_snippet(framework_import: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    matching = [b for b in blocks if framework_import in b]
    assert matching, f"no README snippet imports {framework_import!r}"
    return matching[0]


def test_wheel_with_the_torch_extra_runs_the_readme_snippet(dists, tmp_path):
    _, wheel = dists
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # the pinned CPU build of torch (a looser pin pulls a multi-GB CUDA build)
    env["PIP_CONSTRAINT"] = str(ROOT / "constraints-cpu.txt")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{wheel}[torch]"],
        check=True,
        capture_output=True,
        env=env,
        timeout=900,
    )
    snippet = readme_snippet("from reference_impl import torch as ri")
    check = textwrap.dedent(
        """
        import sys
        import reference_impl
        assert "site-packages" in reference_impl.__file__, reference_impl.__file__
        for name in ("keras", "jax", "flax", "tensorflow"):
            assert name not in sys.modules, name
        print(tuple(out.shape), tuple(h_n.shape), tuple(h0.shape), tuple(c0.shape))
        """
    )
    result = subprocess.run(
        [python, "-c", snippet + check],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # not the checkout, so the installed package is the one imported
        timeout=300,
    )
    assert result.stdout.split("\n")[0] == "(16, 20, 32) (2, 16, 32) (1, 16, 32) (1, 16, 32)"
    # only the torch extra: no other framework was installed
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.lower()
    assert "torch==" in listed
    assert "tensorflow" not in listed and "jax==" not in listed and "keras==" not in listed
