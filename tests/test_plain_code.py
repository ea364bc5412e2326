"""The plain zero, uniform and Xavier files against the book, the spec and the package.

``reference_impl/plain/{torch,keras,linen,nnx}_{zero,uniform,xavier}.py`` are the code
the book shows for copying. These tests hold each file to what the book prints (byte
for byte), to :mod:`reference_impl.spec` (shapes, dtype, bound, standard deviation,
independence from the batch size, seeding) and to the package's ``InitialState`` for
the same strategy; the zero ones must give exactly the framework's default output.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import runpy
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from reference_impl import spec

ROOT = Path(__file__).resolve().parents[1]
PLAIN = ROOT / "reference_impl" / "plain"
FRAMEWORKS = ("torch", "keras", "linen", "nnx")
LABELS = {"torch": "PyTorch", "keras": "Keras", "linen": "Flax linen", "nnx": "Flax NNX"}
RANDOM = ("uniform", "xavier")
#: The chapters that show these files, and the strategies each one shows.
NOTEBOOKS = {"zero.ipynb": ("zero",), "random_states.ipynb": RANDOM}
#: The modules each framework's files may import (their own framework, nothing else).
ALLOWED_IMPORTS = {
    "torch": {"torch"},
    "keras": {"keras"},
    "linen": {"jax", "flax"},
    "nnx": {"jax", "flax"},
}
H = 64  # hidden size of the statistical checks
BIG = 4096  # batch of the statistical checks


def plain(framework: str, strategy: str):
    return importlib.import_module(f"reference_impl.plain.{framework}_{strategy}")


# --------------------------------------------------------------------------- the book

TAB_ITEM = re.compile(r"^:::\{tab-item\}\s*(.+?)\s*$")
SYNC = re.compile(r"^:sync:\s*(\S+)\s*$")
PATH = re.compile(r"reference_impl/plain/(\w+)\.py")


def tabbed_blocks(notebook: Path) -> list[dict]:
    """Every fenced ``python`` block inside a ``tab-item`` of the notebook's markdown.

    Each block comes with its tab's label and sync key and the plain file it names on
    a line before the fence (``None`` when it names none).
    """
    blocks = []
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        lines = "".join(cell["source"]).split("\n")
        label = sync = path = None
        i = 0
        while i < len(lines):
            line = lines[i]
            if m := TAB_ITEM.match(line):
                label, sync, path = m.group(1), None, None
            elif line.strip() in (":::", "::::"):
                label = sync = path = None
            elif label and (m := SYNC.match(line)):
                sync = m.group(1)
            elif label and line.startswith("```python"):
                end = lines.index("```", i + 1)
                code = "\n".join(lines[i + 1 : end]) + "\n"
                blocks.append({"label": label, "sync": sync, "file": path, "code": code})
                path = None
                i = end
            elif label and (m := PATH.search(line)):
                path = m.group(1)
            i += 1
    return blocks


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS))
def test_the_book_shows_each_plain_file_verbatim_in_every_framework(notebook):
    blocks = tabbed_blocks(ROOT / "notebooks" / notebook)
    shown = [b for b in blocks if b["file"]]
    assert shown, f"{notebook} shows no plain file under a tab"
    for block in shown:
        framework, strategy = block["file"].split("_", 1)
        assert block["sync"] == framework, block["file"]
        assert block["label"] == LABELS[framework], block["file"]
        text = (PLAIN / f"{block['file']}.py").read_text()
        assert block["code"] == text, f"{notebook} and {block['file']}.py differ"
    claimed = {b["file"] for b in shown}
    for strategy in NOTEBOOKS[notebook]:
        for framework in FRAMEWORKS:
            assert f"{framework}_{strategy}" in claimed, f"{notebook} lacks {framework}_{strategy}"
    assert claimed <= {f"{f}_{s}" for f in FRAMEWORKS for s in NOTEBOOKS[notebook]}


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS))
def test_tabs_use_the_shared_labels_and_sync_keys(notebook):
    for block in tabbed_blocks(ROOT / "notebooks" / notebook):
        assert block["sync"] in FRAMEWORKS and block["label"] == LABELS[block["sync"]]


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS))
def test_package_snippets_in_tabs_run(notebook):
    """The package shortcuts the book shows under the tabs run and give (4, 10, 8)."""
    snippets = [b for b in tabbed_blocks(ROOT / "notebooks" / notebook) if not b["file"]]
    assert {b["sync"] for b in snippets} == set(FRAMEWORKS)
    for block in snippets:
        namespace: dict = {}
        exec(compile(block["code"], f"{notebook}:{block['sync']}", "exec"), namespace)
        y = namespace["y"]
        y = np.asarray(y.detach() if hasattr(y, "detach") else y)
        assert y.shape == (4, 10, 8) and np.isfinite(y).all(), (block["sync"], y.shape)


def test_tab_parser_finds_a_drifted_block(tmp_path):
    """The parser reads what the book shows: one changed character is seen."""
    nb = json.loads((ROOT / "notebooks" / "random_states.ipynb").read_text())
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and "reference_impl/plain/keras_xavier.py" in source:
            cell["source"] = source.replace("(6 / (2 * units))", "(6 / (2 * unit))")
    drifted = tmp_path / "random_states.ipynb"
    drifted.write_text(json.dumps(nb))
    block = next(b for b in tabbed_blocks(drifted) if b["file"] == "keras_xavier")
    assert block["code"] != (PLAIN / "keras_xavier.py").read_text()


@pytest.mark.parametrize(
    "name", [f"{f}_{s}" for f in FRAMEWORKS for s in ("zero", *RANDOM)], ids=str
)
def test_plain_file_imports_only_its_framework_and_is_short(name):
    source = (PLAIN / f"{name}.py").read_text()
    tree = ast.parse(source)
    assert ast.get_docstring(tree), f"{name}.py has no module docstring"
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported <= ALLOWED_IMPORTS[name.split("_")[0]], (name, imported)
    # 5 to 25 lines of code: what is left after the docstrings, imports and blank lines
    docstrings = {
        n.body[0].lineno
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(n)
    }
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) or (
            isinstance(node, ast.Expr) and node.lineno in docstrings
        ):
            skip |= set(range(node.lineno, node.end_lineno + 1))
    code = [line for n, line in enumerate(source.splitlines(), 1) if n not in skip and line.strip()]
    assert 5 <= len(code) <= 25, (name, len(code))
    comments = [line for line in source.splitlines() if "resampled every call" in line]
    assert (len(comments) == 1) == (not name.endswith("_zero")), name


@pytest.mark.parametrize(
    "name", [f"{f}_{s}" for f in FRAMEWORKS for s in ("zero", *RANDOM)], ids=str
)
def test_plain_file_runs_as_a_script(name):
    """Each file's example runs; the zero ones assert equality with the default inside."""
    namespace = runpy.run_path(str(PLAIN / f"{name}.py"), run_name="__main__")
    y = namespace["y"]
    y = np.asarray(y.detach() if hasattr(y, "detach") else y)
    assert y.shape[0] == 4 and y.shape[-1] == 8, (name, y.shape)
    assert np.isfinite(y).all()


# --------------------------------------------------------------------------- drawing
# One interface for the four frameworks: the state in PyTorch's component order
# (h, then c), each as numpy (rows, batch, features) with the framework's dtype name.


def torch_layer(cell, hidden, proj_size=0):
    import torch
    from torch import nn

    torch.manual_seed(0)
    if cell == "lstm":
        return nn.LSTM(3, hidden, num_layers=2, bidirectional=True, proj_size=proj_size)
    return nn.GRU(3, hidden, num_layers=2, bidirectional=True)


def draw_plain(framework, strategy, cell, batch, hidden=H, seed=0, calls=1, **options):
    """The plain file's state for ``batch`` rows, drawn ``calls`` times; the last draw."""
    lstm = cell == "lstm"
    module = plain(framework, strategy)
    if framework == "torch":
        import torch

        rnn = torch_layer(cell, hidden)
        x = torch.zeros(5, batch, 3)  # time-major, as nn.GRU's default
        gen = torch.Generator().manual_seed(seed)
        for _ in range(calls):
            state = getattr(module, f"{strategy}_state")(rnn, x, gen, **options)
        state = state if isinstance(state, tuple) else (state,)
        return [s.numpy() for s in state], [str(s.dtype) for s in state]
    if framework == "keras":
        layer_class = getattr(module, f"{strategy.capitalize()}State")
        layer = layer_class(hidden, lstm=lstm, seed=seed, **options)
        for _ in range(calls):
            state = layer(np.zeros((batch, 1, 1), "float32"))
        return [np.asarray(s)[None] for s in state], [str(s.dtype) for s in state]
    import jax

    carry_class = getattr(module, f"{strategy.capitalize()}Carry")
    if framework == "linen":
        model = carry_class(features=hidden, lstm=lstm, **options)
        keys = jax.random.split(jax.random.key(seed), calls)
        for key in keys:
            carry = model.apply({}, batch, rngs={"initial_state": key})
    else:
        from flax import nnx

        model = carry_class(hidden, lstm=lstm, rngs=nnx.Rngs(seed), **options)
        for _ in range(calls):
            carry = model(batch)
    parts = (carry[1], carry[0]) if lstm else (carry,)  # (c, h) -> h, c
    return [np.asarray(p)[None] for p in parts], [str(p.dtype) for p in parts]


def draw_package(framework, strategy, cell, batch, hidden=H, seed=0, **options):
    """The package's state for the same strategy, in the same order and layout."""
    lstm = cell == "lstm"
    if framework == "torch":
        from reference_impl import torch as ri

        init = ri.InitialState(
            strategy, hidden_size=hidden, num_layers=2, bidirectional=True, cell=cell, seed=seed,
            **options,
        )  # fmt: skip
        state = init.init(batch)
        state = state if isinstance(state, tuple) else (state,)
        return [s.numpy() for s in state]
    if framework == "keras":
        from reference_impl import tensorflow as ri

        init = ri.InitialState(strategy, units=hidden, cell=cell, seed=seed, **options)
        return [np.asarray(s)[None] for s in init(np.zeros((batch, 1, 1), "float32"))]
    import jax

    if framework == "linen":
        from reference_impl.flax import linen as ri

        init = ri.InitialState(strategy, cell=cell, features=hidden, **options)
        variables = init.init(jax.random.key(seed), (batch,))
        carry = init.apply(variables, (batch,), rngs={"initial_state": jax.random.key(seed + 1)})
    else:
        from reference_impl.flax import nnx as ri

        carry = ri.InitialState(strategy, cell=cell, features=hidden, seed=seed, **options)(
            (batch,)
        )
    parts = (carry[1], carry[0]) if lstm else (carry,)
    return [np.asarray(p)[None] for p in parts]


def bound(strategy, features=H, **options):
    if strategy == "uniform":
        return spec.uniform_bound(features, options.get("bound"))
    return spec.xavier_bound(features)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    import torch

    torch.set_num_threads(1)


# --------------------------------------------------------------------------- zero


def zero_outputs(framework, cell):
    """(output with the plain zero state, output with no state), and the plain state."""
    lstm = cell == "lstm"
    x = np.random.default_rng(0).normal(size=(5, 7, 3)).astype("float32")
    module = plain(framework, "zero")
    if framework == "torch":
        import torch

        rnn = torch_layer(cell, 6, proj_size=4 if lstm else 0)
        xt = torch.from_numpy(x).transpose(0, 1)  # (time, batch, features)
        state = module.zero_state(rnn, xt)
        with torch.no_grad():
            out = (rnn(xt, state)[0], rnn(xt)[0])
        state = state if isinstance(state, tuple) else (state,)
        return [o.numpy() for o in out], [s.numpy() for s in state]
    if framework == "keras":
        import keras

        layer = (keras.layers.LSTM if lstm else keras.layers.GRU)(6, return_sequences=True)
        state = module.ZeroState(6, lstm=lstm)(x)
        out = (layer(x, initial_state=state), layer(x))
        return [np.asarray(o) for o in out], [np.asarray(s)[None] for s in state]
    import jax

    carry = module.zero_carry(5, 6, lstm=lstm)
    parts = (carry[1], carry[0]) if lstm else (carry,)
    if framework == "linen":
        import flax.linen as nn

        rnn = nn.RNN((nn.LSTMCell if lstm else nn.GRUCell)(features=6))
        variables = rnn.init(jax.random.key(0), x)
        out = (rnn.apply(variables, x, initial_carry=carry), rnn.apply(variables, x))
    else:
        from flax import nnx

        cell_class = nnx.LSTMCell if lstm else nnx.GRUCell
        rnn = nnx.RNN(cell_class(3, 6, rngs=nnx.Rngs(0)))
        out = (rnn(x, initial_carry=carry), rnn(x))
    return [np.asarray(o) for o in out], [np.asarray(p)[None] for p in parts]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_zero_gives_exactly_the_framework_default(framework, cell):
    (with_state, default), state = zero_outputs(framework, cell)
    assert np.array_equal(with_state, default)
    assert all(s.dtype == np.float32 and not s.any() for s in state)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_zero_matches_spec_and_package(framework, cell):
    if framework == "torch":
        import torch

        rnn = torch_layer(cell, H)
        state = plain("torch", "zero").zero_state(rnn, torch.zeros(5, 9, 3))
        got = [s.numpy() for s in (state if isinstance(state, tuple) else (state,))]
    else:
        lstm = cell == "lstm"
        if framework == "keras":
            got = [
                np.asarray(s)[None]
                for s in plain("keras", "zero").ZeroState(H, lstm=lstm)(np.zeros((9, 1, 1)))
            ]
        else:
            carry = plain(framework, "zero").zero_carry(9, H, lstm=lstm)
            got = [np.asarray(p)[None] for p in ((carry[1], carry[0]) if lstm else (carry,))]
    rows = 4 if framework == "torch" else 1
    expected = spec.reference_state(
        "zero", cell, hidden_size=H, batch_size=9, num_layers=rows // 2 or 1,
        bidirectional=rows == 4,
    )  # fmt: skip
    package = draw_package(framework, "zero", cell, 9)
    assert [g.shape for g in got] == [e.shape for e in expected] == [p.shape for p in package]
    for g, e, p in zip(got, expected, package, strict=True):
        assert np.array_equal(g, e) and np.array_equal(g, p)


# --------------------------------------------------------------------------- random


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("strategy", RANDOM)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_random_state_shapes_and_dtype(framework, strategy, cell):
    state, dtypes = draw_plain(framework, strategy, cell, batch=3, hidden=10)
    rows = 4 if framework == "torch" else 1  # torch: 2 layers x 2 directions
    expected = spec.state_shapes(
        cell, hidden_size=10, batch_size=3, num_layers=rows // 2 or 1, bidirectional=rows == 4
    )
    assert tuple(s.shape for s in state) == expected
    assert all("float32" in d for d in dtypes), dtypes


@pytest.mark.parametrize("strategy", RANDOM)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_random_bound_and_std_do_not_depend_on_the_batch(framework, strategy):
    b = bound(strategy)
    sigma = spec.uniform_std(b)
    for batch in (1, BIG):
        state, _ = draw_plain(framework, strategy, "lstm", batch)
        values = np.concatenate([s.ravel() for s in state])
        n = values.size
        assert np.abs(values).max() <= b * (1 + 1e-6), (batch, np.abs(values).max(), b)
        # the std of n uniform draws has a standard error of about sigma * sqrt(0.2 / n)
        assert abs(values.std() - sigma) < 5 * sigma * np.sqrt(0.2 / n), (batch, values.std())
        if batch == BIG:  # enough draws to come within 0.1% of the bound itself
            assert np.abs(values).max() > 0.999 * b
            assert abs(values.mean()) < 5 * sigma / np.sqrt(n)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_uniform_takes_a_bound(framework):
    state, _ = draw_plain(framework, "uniform", "gru", BIG, bound=0.3)
    assert 0.2997 < np.abs(state[0]).max() <= 0.3


@pytest.mark.parametrize("strategy", RANDOM)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_random_seeding_and_resampling(framework, strategy):
    first, _ = draw_plain(framework, strategy, "lstm", 5, seed=1)
    again, _ = draw_plain(framework, strategy, "lstm", 5, seed=1)
    other, _ = draw_plain(framework, strategy, "lstm", 5, seed=2)
    second_call, _ = draw_plain(framework, strategy, "lstm", 5, seed=1, calls=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.allclose(first[0], other[0])
    assert not np.allclose(first[0], second_call[0])  # a fresh draw on every call
    assert not np.allclose(first[0], first[-1]) or len(first) == 1  # h and c differ
    assert not np.allclose(first[0][:, 0], first[0][:, 1])  # every sequence its own start


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("strategy", RANDOM)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_random_matches_the_package(framework, strategy, cell):
    mine, _ = draw_plain(framework, strategy, cell, BIG, seed=0)
    package = draw_package(framework, strategy, cell, BIG, seed=0)
    assert [m.shape for m in mine] == [p.shape for p in package]
    if framework in ("torch", "keras"):
        # the same generator, seed and draw order: the very same numbers
        for m, p in zip(mine, package, strict=True):
            np.testing.assert_allclose(m, p, rtol=1e-6, atol=1e-7)
    else:
        # JAX splits its keys differently: the same distribution, tested as such
        a = np.concatenate([m.ravel() for m in mine])
        b = np.concatenate([p.ravel() for p in package])
        assert stats.ks_2samp(a, b).pvalue > 1e-4
        assert max(np.abs(a).max(), np.abs(b).max()) <= bound(strategy) * (1 + 1e-6)
        assert abs(a.std() / b.std() - 1) < 0.01
