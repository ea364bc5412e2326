"""The plain framework-only learnable and noisy states, held against the spec and the package.

``reference_impl/plain/{torch,keras,linen,nnx}_{learnable,noisy}.py`` are the code the book
shows for copying. Each is run here, in each framework, for a GRU and an LSTM:

* the state it gives the framework's layer is the spec's (``reference_impl.spec``): the
  learned vectors broadcast over the batch; for ``noisy`` that plus ``N(0, sigma^2)`` in
  training and exactly that at evaluation;
* the parameter count does not depend on the batch size, and gradients reach the vectors;
* with the same weights and vectors it computes what the package's ``InitialStateRNN``
  computes (to 1e-6); at evaluation the noisy one is deterministic, in training the same
  seed gives the same noise;
* Keras: the vectors are trainable weights of the model and survive ``.keras`` save/load.

The book shows each file verbatim; the last tests check that the notebooks' code blocks are
byte-identical to the files.
"""

from __future__ import annotations

import ast
import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest

from reference_impl import spec

ROOT = Path(__file__).resolve().parents[1]
PLAIN = ROOT / "reference_impl" / "plain"
NOTEBOOKS = {
    "learnable": ROOT / "notebooks" / "learnable.ipynb",
    "noisy": ROOT / "notebooks" / "noisy.ipynb",
}
FRAMEWORKS = ("torch", "keras", "linen", "nnx")
CELLS = ("gru", "lstm")
IN, H, SIGMA = 3, 8, 0.3


def _rng_vectors(cell: str, rows: int = 1, seed: int = 0) -> list[np.ndarray]:
    """Nonzero learned vectors in the spec's layout: one (rows, features) array per component."""
    rng = np.random.default_rng(seed)
    return [
        rng.normal(0, 0.5, (rows, H)).astype(np.float32) for _ in range(spec.num_components(cell))
    ]


def _spec_states(strategy: str, cell: str, vectors, batch: int, rows: int = 1) -> list[np.ndarray]:
    """The spec's state with the noise off: the vectors broadcast over the batch."""
    options = {"base": "learnable", "noise_std": SIGMA} if strategy == "noisy" else {}
    return list(
        spec.reference_state(
            strategy,
            cell,
            hidden_size=H,
            batch_size=batch,
            num_layers=rows,
            training=False,
            learned=vectors,
            **options,
        )
    )


def _x(batch: int, steps: int = 5, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, steps, IN)).astype(np.float32)


# --------------------------------------------------------------------------- adapters
# One small adapter per framework, with the same methods, so that every check below is
# written once. States are always in the spec's layout: [h] or [h, c], (rows, batch, H).


class TorchCase:
    def __init__(self, strategy: str, cell: str, seed: int = 0, layers: int = 1, bi: bool = False):
        import torch
        from torch import nn

        from reference_impl.plain import torch_learnable, torch_noisy

        self.torch, self.strategy, self.cell = torch, strategy, cell
        torch.manual_seed(seed)
        layer = (nn.LSTM if cell == "lstm" else nn.GRU)(
            IN, H, num_layers=layers, bidirectional=bi, batch_first=True
        )
        if strategy == "learnable":
            self.model = torch_learnable.LearnableStateRNN(layer)
        else:
            self.model = torch_noisy.NoisyStateRNN(layer, sigma=SIGMA)
        self.rows = layers * (2 if bi else 1)

    def vectors(self):
        names = ["h0", "c0"][: spec.num_components(self.cell)]
        return [getattr(self.model, n) for n in names]

    def set_vectors(self, arrays):
        with self.torch.no_grad():
            for p, a in zip(self.vectors(), arrays, strict=True):
                p.copy_(self.torch.from_numpy(a))

    def train(self, on: bool):
        self.model.train(on)

    def seed(self, s: int):
        self.torch.manual_seed(s)

    def output(self, x, train: bool = False):
        self.train(train)
        with self.torch.no_grad():
            return self.model(self.torch.from_numpy(x))[0].numpy()

    def states(self, x, train: bool = False):
        """The state the plain module hands to the framework's layer."""
        seen = []
        hook = self.model.rnn.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
        try:
            self.output(x, train)
        finally:
            hook.remove()
        hx = seen[0]
        return [t.numpy() for t in (hx if isinstance(hx, tuple) else (hx,))]

    def bare_output(self, x, states):
        """The framework's own layer run from an explicit state."""
        t = self.torch
        hx = tuple(t.from_numpy(np.ascontiguousarray(s)) for s in states)
        with t.no_grad():
            return self.model.rnn(t.from_numpy(x), hx if len(hx) == 2 else hx[0])[0].numpy()

    def n_params(self, batch: int) -> int:
        self.output(_x(batch))
        return sum(p.numel() for p in self.model.parameters())

    def grads(self, x):
        self.train(True)
        self.model.zero_grad()
        self.model(self.torch.from_numpy(x))[0].pow(2).sum().backward()
        return [p.grad.numpy() for p in self.vectors()]

    def package_output(self, x):
        from reference_impl import torch as ri

        options = {"base": "learnable", "noise_std": SIGMA} if self.strategy == "noisy" else {}
        pkg = ri.InitialStateRNN(copy.deepcopy(self.model.rnn), strategy=self.strategy, **options)
        with self.torch.no_grad():
            for name, p in zip(("h0", "c0"), self.vectors(), strict=False):
                getattr(pkg.initial_state, name).copy_(p)
            return pkg.eval()(self.torch.from_numpy(x))[0].numpy()


class KerasCase:
    def __init__(self, strategy: str, cell: str, seed: int = 0):
        import keras

        from reference_impl.plain import keras_learnable, keras_noisy

        self.keras, self.strategy, self.cell = keras, strategy, cell
        keras.utils.set_random_seed(seed)
        lstm = cell == "lstm"
        if strategy == "learnable":
            self.state_layer = keras_learnable.LearnableState(H, lstm=lstm)
        else:
            self.state_layer = keras_noisy.NoisyState(H, sigma=SIGMA, lstm=lstm, seed=seed)
        self.rnn = (keras.layers.LSTM if lstm else keras.layers.GRU)(H, return_sequences=True)
        inputs = keras.Input((None, IN))
        outputs = self.rnn(inputs, initial_state=self.state_layer(inputs))
        self.model = keras.Model(inputs, outputs)
        self.rows = 1
        self._train = False

    def vectors(self):
        return list(self.state_layer.vectors)

    def set_vectors(self, arrays):
        for v, a in zip(self.vectors(), arrays, strict=True):
            v.assign(a)

    def train(self, on: bool):
        self._train = on

    def seed(self, s: int):
        pass  # the noise comes from the layer's own SeedGenerator(seed)

    def output(self, x, train: bool = False):
        return np.asarray(self.model(x, training=train))

    def states(self, x, train: bool = False):
        return [np.asarray(s)[None] for s in self.state_layer(x, training=train)]

    def bare_output(self, x, states):
        return np.asarray(self.rnn(x, initial_state=[s[0] for s in states]))

    def n_params(self, batch: int) -> int:
        self.output(_x(batch))
        return sum(int(np.prod(w.shape)) for w in self.model.weights)

    def grads(self, x):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(self.model(x, training=True) ** 2)
        return [np.asarray(g) for g in tape.gradient(loss, self.vectors())]

    def package_output(self, x):
        from reference_impl import tensorflow as ri

        keras = self.keras
        options = {"base": "learnable", "noise_std": SIGMA} if self.strategy == "noisy" else {}
        layer = (keras.layers.LSTM if self.cell == "lstm" else keras.layers.GRU)(
            H, return_sequences=True
        )
        wrapper = ri.InitialStateRNN(layer, strategy=self.strategy, **options)
        pkg = keras.Sequential([keras.Input((None, IN)), wrapper])
        layer.set_weights(self.rnn.get_weights())
        for name, v in zip(("h0", "c0"), self.vectors(), strict=False):
            getattr(wrapper.initial_state, name).assign(v)
        return np.asarray(pkg(x, training=False))


class LinenCase:
    def __init__(self, strategy: str, cell: str, seed: int = 0):
        import flax.linen as nn
        import jax

        from reference_impl.plain import linen_learnable, linen_noisy

        self.nn, self.jax, self.strategy, self.cell = nn, jax, strategy, cell
        lstm = cell == "lstm"
        if strategy == "learnable":
            self.model = linen_learnable.LearnableStateRNN(H, lstm=lstm)
        else:
            self.model = linen_noisy.NoisyStateRNN(H, sigma=SIGMA, lstm=lstm)
        self.params = self._init(_x(2), seed)
        self.cell_name = "LSTMCell_0" if lstm else "GRUCell_0"
        self.rows = 1
        self.key = jax.random.key(seed)

    def _init(self, x, seed):
        kwargs = {"deterministic": True} if self.strategy == "noisy" else {}
        return self.model.init(self.jax.random.key(seed), x, **kwargs)["params"]

    def vectors(self):
        names = ["h0", "c0"][: spec.num_components(self.cell)]
        return [self.params[n] for n in names]

    def set_vectors(self, arrays):
        names = ["h0", "c0"][: spec.num_components(self.cell)]
        self.params = {**self.params, **{n: a[0] for n, a in zip(names, arrays, strict=True)}}

    def train(self, on: bool):
        pass  # deterministic is a call argument

    def seed(self, s: int):
        self.key = self.jax.random.key(s)

    def _apply(self, params, x, train):
        if self.strategy == "learnable":
            return self.model.apply({"params": params}, x)
        rngs = {"noise": self.key} if train else {}
        return self.model.apply({"params": params}, x, deterministic=not train, rngs=rngs)

    def output(self, x, train: bool = False):
        return np.asarray(self._apply(self.params, x, train))

    def states(self, x, train: bool = False):
        seen = []

        def spy(next_fun, args, kwargs, context):
            if isinstance(context.module, self.nn.RNN) and context.method_name == "__call__":
                seen.append(kwargs["initial_carry"])
            return next_fun(*args, **kwargs)

        with self.nn.intercept_methods(spy):
            self.output(x, train)
        carry = seen[0]
        parts = (carry[1], carry[0]) if self.cell == "lstm" else (carry,)  # (c, h) -> h, c
        return [np.asarray(p)[None] for p in parts]

    def bare_output(self, x, states):
        nn = self.nn
        cell = nn.LSTMCell(H) if self.cell == "lstm" else nn.GRUCell(H)
        carry = (states[1][0], states[0][0]) if self.cell == "lstm" else states[0][0]
        params = {"cell": self.params[self.cell_name]}
        return np.asarray(nn.RNN(cell).apply({"params": params}, x, initial_carry=carry))

    def n_params(self, batch: int) -> int:
        params = self._init(_x(batch), 0)
        return sum(int(np.prod(p.shape)) for p in self.jax.tree.leaves(params))

    def grads(self, x):
        g = self.jax.grad(lambda p: (self._apply(p, x, True) ** 2).sum())(self.params)
        names = ["h0", "c0"][: spec.num_components(self.cell)]
        return [np.asarray(g[n]) for n in names]

    def package_output(self, x):
        from reference_impl.flax import linen as ri

        nn = self.nn
        options = {"base": "learnable", "noise_std": SIGMA} if self.strategy == "noisy" else {}
        cell = nn.LSTMCell(H) if self.cell == "lstm" else nn.GRUCell(H)
        pkg = ri.InitialStateRNN(cell, strategy=self.strategy, **options)
        names = ["h", "c"][: spec.num_components(self.cell)]
        state = {n: v[None] for n, v in zip(names, self.vectors(), strict=True)}
        params = {"rnn": {"cell": self.params[self.cell_name]}, "initial_state": state}
        kwargs = {"deterministic": True} if self.strategy == "noisy" else {}
        return np.asarray(pkg.apply({"params": params}, x, **kwargs))


class NNXCase:
    def __init__(self, strategy: str, cell: str, seed: int = 0):
        import jax
        from flax import nnx

        from reference_impl.plain import nnx_learnable, nnx_noisy

        self.nnx, self.jax, self.strategy, self.cell = nnx, jax, strategy, cell
        lstm = cell == "lstm"
        if strategy == "learnable":
            self.model = nnx_learnable.LearnableStateRNN(IN, H, lstm=lstm, rngs=nnx.Rngs(seed))
        else:
            self.model = nnx_noisy.NoisyStateRNN(IN, H, sigma=SIGMA, lstm=lstm, rngs=nnx.Rngs(seed))
        self.rows = 1

    def _names(self):
        return ["h0", "c0"][: spec.num_components(self.cell)]

    def vectors(self):
        return [getattr(self.model, n)[...] for n in self._names()]

    def set_vectors(self, arrays):
        import jax.numpy as jnp

        for n, a in zip(self._names(), arrays, strict=True):
            getattr(self.model, n)[...] = jnp.asarray(a[0])

    def train(self, on: bool):
        self.model.train() if on else self.model.eval()

    def seed(self, s: int):
        pass  # the noise comes from the module's own stream, forked from nnx.Rngs(seed)

    def output(self, x, train: bool = False):
        self.train(train)
        return np.asarray(self.model(x))

    def states(self, x, train: bool = False):
        nnx = self.nnx
        seen, original = [], nnx.RNN.__call__

        def spy(module, inputs, **kwargs):
            seen.append(kwargs["initial_carry"])
            return original(module, inputs, **kwargs)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(nnx.RNN, "__call__", spy)
            self.output(x, train)
        carry = seen[0]
        parts = (carry[1], carry[0]) if self.cell == "lstm" else (carry,)
        return [np.asarray(p)[None] for p in parts]

    def bare_output(self, x, states):
        carry = (states[1][0], states[0][0]) if self.cell == "lstm" else states[0][0]
        return np.asarray(self.model.rnn(x, initial_carry=carry))

    def n_params(self, batch: int) -> int:
        self.output(_x(batch))
        params = self.nnx.state(self.model, self.nnx.Param)
        return sum(int(np.prod(p.shape)) for p in self.jax.tree.leaves(params))

    def grads(self, x):
        nnx = self.nnx
        self.train(True)
        g = nnx.grad(lambda m: (m(x) ** 2).sum())(self.model)
        return [np.asarray(g[n][...]) for n in self._names()]

    def package_output(self, x):
        from reference_impl.flax import nnx as ri

        nnx = self.nnx
        options = {"base": "learnable", "noise_std": SIGMA} if self.strategy == "noisy" else {}
        make = nnx.LSTMCell if self.cell == "lstm" else nnx.GRUCell
        pkg = ri.InitialStateRNN(make(IN, H, rngs=nnx.Rngs(99)), strategy=self.strategy, **options)
        nnx.update(pkg.rnn.cell, nnx.state(self.model.rnn.cell))
        for n, v in zip(("h", "c"), self.vectors(), strict=False):
            getattr(pkg.initial_state, n)[...] = v[None]
        pkg.eval()
        return np.asarray(pkg(x))


CASES = {"torch": TorchCase, "keras": KerasCase, "linen": LinenCase, "nnx": NNXCase}
STRATEGIES = ("learnable", "noisy")


def make(framework: str, strategy: str, cell: str, seed: int = 0):
    return CASES[framework](strategy, cell, seed=seed)


# --------------------------------------------------------------------------- both strategies


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_state_is_the_spec_state_and_output_the_package_output(framework, strategy, cell):
    case = make(framework, strategy, cell)
    vectors = _rng_vectors(cell, case.rows)
    case.set_vectors(vectors)
    x = _x(6)
    expected = _spec_states(strategy, cell, vectors, batch=6, rows=case.rows)
    states = case.states(x, train=False)
    assert [s.shape for s in states] == [(case.rows, 6, H)] * spec.num_components(cell)
    for got, want in zip(states, expected, strict=True):
        np.testing.assert_array_equal(got, want.astype(np.float32))
    out = case.output(x)
    assert out.shape == (6, 5, H)
    # exactly what the framework's own layer computes from the spec's state
    np.testing.assert_array_equal(out, case.bare_output(x, states))
    # and what the package computes with the same weights and vectors
    np.testing.assert_allclose(out, case.package_output(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_parameter_count_does_not_depend_on_batch(framework, strategy):
    case = make(framework, strategy, "lstm")
    counts = {b: case.n_params(b) for b in (1, 32)}
    assert counts[1] == counts[32]
    assert sum(int(np.prod(v.shape)) for v in case.vectors()) == 2 * H * case.rows


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_gradients_reach_the_learned_vectors(framework, strategy, cell):
    case = make(framework, strategy, cell)
    grads = case.grads(_x(4))
    assert len(grads) == spec.num_components(cell)
    for g in grads:
        assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0


@pytest.mark.parametrize("cell", CELLS)
def test_torch_stacked_bidirectional_layout(cell):
    case = TorchCase("learnable", cell, layers=2, bi=True)
    vectors = _rng_vectors(cell, rows=4)
    case.set_vectors(vectors)
    x = _x(3)
    for got, want in zip(
        case.states(x), _spec_states("learnable", cell, vectors, 3, rows=4), strict=True
    ):
        np.testing.assert_array_equal(got, want.astype(np.float32))
    np.testing.assert_allclose(case.output(x), case.package_output(x), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- noisy


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_noise_in_training_has_std_sigma(framework, cell):
    case = make(framework, "noisy", cell)
    vectors = _rng_vectors(cell)
    case.set_vectors(vectors)
    x = _x(512)
    base = _spec_states("noisy", cell, vectors, batch=512)
    noise = np.concatenate(
        [(s - b).ravel() for s, b in zip(case.states(x, True), base, strict=True)]
    )
    assert abs(noise.std() - SIGMA) < 0.05 * SIGMA
    assert abs(noise.mean()) < 0.05 * SIGMA
    # every row of the batch gets its own draw
    first = case.states(x, True)[0][0]
    assert not np.allclose(first[0], first[1])
    a, b = case.output(x[:8], train=True), case.output(x[:8], train=True)
    if framework != "linen":  # linen: the same key gives the same noise, by design
        assert not np.array_equal(a, b)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_noise_is_off_and_output_deterministic_at_evaluation(framework):
    case = make(framework, "noisy", "gru")
    vectors = _rng_vectors("gru")
    case.set_vectors(vectors)
    x = _x(16)
    case.output(x, train=True)  # a training call first: the mode must switch back
    states = case.states(x, train=False)
    np.testing.assert_array_equal(states[0], _spec_states("noisy", "gru", vectors, 16)[0])
    first, second = case.output(x), case.output(x)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, case.bare_output(x, states))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_same_seed_same_noise(framework):
    x = _x(8)

    def draw(seed):
        case = make(framework, "noisy", "gru", seed=seed)
        case.seed(seed)
        return case.states(x, train=True)[0]

    np.testing.assert_array_equal(draw(3), draw(3))
    assert not np.array_equal(draw(3), draw(4))


def test_linen_noise_follows_the_key():
    case = LinenCase("noisy", "gru")
    x = _x(8)
    case.seed(1)
    a = case.states(x, True)[0]
    case.seed(2)
    assert not np.array_equal(a, case.states(x, True)[0])


# --------------------------------------------------------------------------- saving


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_keras_vectors_are_trained_and_saved(strategy, tmp_path):
    import keras

    case = KerasCase(strategy, "lstm")
    trainable = {id(w) for w in case.model.trainable_weights}
    assert all(id(v) in trainable for v in case.vectors())
    vectors = _rng_vectors("lstm")
    case.set_vectors(vectors)
    case.model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    (state_layer,) = [lay for lay in loaded.layers if lay.__class__ is case.state_layer.__class__]
    for v, want in zip(state_layer.vectors, vectors, strict=True):
        np.testing.assert_array_equal(np.asarray(v), want)
    x = _x(4)
    np.testing.assert_array_equal(np.asarray(loaded(x)), case.output(x))


def test_keras_fit_moves_the_vectors():
    case = KerasCase("noisy", "gru")
    case.model.compile(optimizer="adam", loss="mse")
    x = _x(32)
    case.model.fit(x, np.ones((32, 5, H), "float32"), epochs=2, verbose=0)
    assert np.abs(np.asarray(case.vectors()[0])).sum() > 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_torch_state_dict_round_trip(strategy):
    case = TorchCase(strategy, "lstm")
    case.set_vectors(_rng_vectors("lstm"))
    other = TorchCase(strategy, "lstm", seed=5)
    other.model.load_state_dict(case.model.state_dict())
    x = _x(4)
    np.testing.assert_array_equal(other.output(x), case.output(x))


# --------------------------------------------------------------------------- the book


FENCE = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
TAB = re.compile(r"^:::\{tab-item\} (.+?)\n:sync: (\w+)\n(.*?)^:::$", re.S | re.M)
LABELS = {"torch": "PyTorch", "keras": "Keras", "linen": "Flax linen", "nnx": "Flax NNX"}


def _tab_blocks(notebook: Path) -> list[tuple[str, str, str]]:
    """(label, sync key, code) of every fenced Python block under a tab in the notebook."""
    cells = json.loads(notebook.read_text())["cells"]
    blocks = []
    for cell in cells:
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"])
        for label, key, body in TAB.findall(text):
            blocks += [(label, key, code) for code in FENCE.findall(body)]
    return blocks


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_notebook_shows_each_plain_file_verbatim(strategy):
    blocks = _tab_blocks(NOTEBOOKS[strategy])
    assert blocks, "no tabbed code blocks found"
    for label, key, _ in blocks:
        assert LABELS.get(key) == label, f"tab {label!r} has sync key {key!r}"
    # a block that opens with a module docstring is a plain file: it must be one, verbatim
    shown = {key: code for _, key, code in blocks if code.startswith('"""')}
    assert set(shown) == set(FRAMEWORKS), f"plain code shown for {sorted(shown)}"
    for key, code in shown.items():
        path = PLAIN / f"{key}_{strategy}.py"
        assert code == path.read_text(), f"{path.name} and its block in the book differ"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_plain_files_import_only_their_framework(strategy):
    allowed = {
        "torch": {"torch"},
        "keras": {"keras"},
        "linen": {"flax", "jax"},
        "nnx": {"flax", "jax"},
    }
    for framework in FRAMEWORKS:
        text = (PLAIN / f"{framework}_{strategy}.py").read_text()
        tree = ast.parse(text)
        imported = {
            a.name.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.Import)
            for a in n.names
        }
        imported |= {
            n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
        }
        assert imported <= allowed[framework], (framework, imported)
        code = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        assert len(code) <= 35, f"{framework}_{strategy}.py is {len(code)} lines"
