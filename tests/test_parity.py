"""One GRU, LSTM and simple RNN in PyTorch, Keras 3, Flax linen and Flax NNX, each with
its own initial-state wrapper.

Every framework runs the same network (weights converted by :mod:`reference_impl.parity`)
through its own ``InitialStateRNN``, so the state comes from that framework's own
``InitialState``:

* deterministic strategies (``zero``; ``learnable``, ``noisy(base="learnable")`` and
  ``uniform``/``xavier`` with ``resample=False``, their vectors set to the same numbers
  through each framework's public weights; ``noisy`` in evaluation) give the state
  :func:`reference_impl.spec.reference_state` gives, and outputs and final states
  that agree with the numpy reference and with each other within ``parity.TOLERANCE``;
* random strategies (``resample=True``, ``noisy`` in training) are read back from each
  framework (a hook on the torch layer, linen's captured intermediates, a clone of the
  NNX model, a Keras ``InitialState`` twin with the same seed); each framework's
  output is the numpy forward pass from its own state, and that state keeps the
  spec's bound or noise level.

Each (configuration, strategy) pair is built once per framework and reused; each
strategy meets an LSTM and a GRU or simple RNN, 1 and 2 layers, one and two directions.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
jax = pytest.importorskip("jax")
flax = pytest.importorskip("flax")

from flax import linen as nn  # noqa: E402
from flax import nnx  # noqa: E402

from reference_impl import parity as P  # noqa: E402
from reference_impl import spec  # noqa: E402
from reference_impl import tensorflow as rk  # noqa: E402
from reference_impl import torch as rt  # noqa: E402
from reference_impl.flax import linen as rl  # noqa: E402
from reference_impl.flax import nnx as rn  # noqa: E402

TOL = P.TOLERANCE
INPUT, HIDDEN, STEPS, BATCH = 6, 6, 4, 8  # INPUT == HIDDEN: fewer shapes to compile
TORCH_LAYERS = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM, "rnn": torch.nn.RNN}
KERAS_LAYERS = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM, "rnn": keras.layers.SimpleRNN}
LINEN_CELLS = {"gru": nn.GRUCell, "lstm": nn.OptimizedLSTMCell, "rnn": nn.SimpleCell}
NNX_CELLS = {"gru": nnx.GRUCell, "lstm": nnx.LSTMCell, "rnn": nnx.SimpleCell}
FAST_COMPILE = {"xla_backend_optimization_level": 0}  # tiny networks: compile quickly

CASES = {  # name -> (strategy, options); the seed is added per framework where it has one
    "zero": ("zero", {}),
    "learnable": ("learnable", {}),
    "noisy-learnable": ("noisy", {"base": "learnable", "noise_std": 0.3}),
    "noisy-zero": ("noisy", {"noise_std": 0.3}),
    "uniform-stored": ("uniform", {"resample": False}),
    "uniform-drawn": ("uniform", {"bound": 0.7}),
    "xavier-drawn": ("xavier", {}),
}
# Each strategy on an LSTM (two state components) and on a GRU or simple RNN, with one
# and two layers, one and two directions; together the 12 configurations (the simple
# RNN with 1 layer, 1 direction: in test_relu_simple_rnn). xavier with resample=False
# runs as uniform does once its vectors are set; its own draw is checked in
# test_stored_draws_respect_the_bound.
GRID = [
    ("gru", 1, False, "zero"),
    ("lstm", 2, True, "zero"),
    ("rnn", 2, True, "learnable"),
    ("lstm", 1, False, "learnable"),
    ("gru", 2, False, "noisy-learnable"),
    ("lstm", 1, True, "noisy-learnable"),
    ("rnn", 1, True, "noisy-zero"),
    ("lstm", 2, False, "noisy-zero"),
    ("gru", 1, True, "uniform-stored"),
    ("lstm", 2, False, "uniform-stored"),
    ("rnn", 2, False, "uniform-drawn"),
    ("lstm", 1, True, "uniform-drawn"),
    ("gru", 2, True, "xavier-drawn"),
    ("lstm", 1, False, "xavier-drawn"),
]


def _plan(case: str) -> spec.Strategy:
    strategy, options = CASES[case]
    return spec.make(strategy, **options)


# noisy with base "zero" is all zeros in evaluation, as "zero" is: it runs in training only.
DETERMINISTIC = [g for g in GRID if _plan(g[3]).source not in ("draw", "zeros") or g[3] == "zero"]
RANDOM = [g for g in GRID if _plan(g[3]).source == "draw" or _plan(g[3]).noise]


def _ids(grid):
    return [f"{c}-{n}layer-{'bi' if b else 'uni'}-{case}" for c, n, b, case in grid]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny networks: one thread is as fast, and leaves the cores to XLA and TensorFlow.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- the network


class Net:
    """One configuration: weights, learned vectors and input, in PyTorch's layout."""

    def __init__(self, cell: str, num_layers: int, bidirectional: bool, b_hn: bool = False):
        self.cell, self.num_layers, self.bidirectional = cell, num_layers, bidirectional
        self.d = 2 if bidirectional else 1
        seed = 10 * "glr".index(cell[0]) + 2 * num_layers + bidirectional
        self.sd = P.random_state_dict(
            cell, INPUT, HIDDEN, num_layers=num_layers, bidirectional=bidirectional, seed=seed
        )
        if cell == "gru" and not b_hn:  # NNX's GRUCell has no b_hn: one network for all four
            for key in [k for k in self.sd if k.startswith("bias_hh")]:
                self.sd[key][2 * HIDDEN :] = 0
        rng = np.random.default_rng(seed + 100)
        rows = num_layers * self.d
        comps = [rng.uniform(-0.8, 0.8, (rows, HIDDEN)).astype(np.float32) for _ in range(2)]
        self.learned = tuple(comps) if cell == "lstm" else comps[0]
        self.x = rng.normal(size=(BATCH, STEPS, INPUT)).astype(np.float32)

    @property
    def names(self) -> tuple[str, ...]:
        return ("h", "c") if self.cell == "lstm" else ("h",)

    def pack(self, comps):
        return tuple(comps) if self.cell == "lstm" else comps[0]

    def per_layer(self) -> list[dict[str, np.ndarray]]:
        return P.learned_state_per_layer(self.learned, self.cell, bidirectional=self.bidirectional)

    def comps(self, state) -> tuple:
        return tuple(state) if self.cell == "lstm" else (state,)

    def reference(self, state=None, **kwargs):
        return P.numpy_forward("torch", self.sd, self.x, state, cell=self.cell, **kwargs)

    def expected_state(self, case: str):
        """What the spec says the state is, outside training."""
        strategy, options = CASES[case]
        state = spec.reference_state(
            strategy,
            self.cell,
            hidden_size=HIDDEN,
            batch_size=BATCH,
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            training=False,
            learned=self.comps(self.learned),
            **options,
        )
        return state if self.cell == "lstm" else state[0]


@functools.cache
def _net(cell: str, num_layers: int, bidirectional: bool, b_hn: bool = False) -> Net:
    return Net(cell, num_layers, bidirectional, b_hn)


def _np(tree):
    def leaf(a):
        return np.asarray(a.detach() if isinstance(a, torch.Tensor) else a, dtype=np.float32)

    return jax.tree_util.tree_map(leaf, tree)


# --------------------------------------------------------------------------- runners
# Each builder returns a Runner: run(training) -> (outputs, final state, initial state
# used), the states in PyTorch's layout; read_back() -> (state_dict, learned vectors)
# read from the framework's own objects. Vectors of "stored" and "param" strategies
# are set to net.learned through the framework's public weights.

Runner = collections.namedtuple("Runner", "run read_back")


def _sets_vectors(case: str) -> bool:
    return _plan(case).source in ("stored", "param")


def _torch_runner(net: Net, case: str, **layer_kwargs) -> Runner:
    strategy, options = CASES[case]
    rnn = TORCH_LAYERS[net.cell](
        INPUT, HIDDEN, num_layers=net.num_layers, bidirectional=net.bidirectional,
        batch_first=True, **layer_kwargs,
    )  # fmt: skip
    rnn.load_state_dict({k: torch.from_numpy(v) for k, v in net.sd.items()})
    model = rt.InitialStateRNN(rnn, strategy, seed=0, **options)
    names = tuple(n + "0" for n in net.names)  # initial_state.h0, initial_state.c0
    if _sets_vectors(case):
        with torch.no_grad():
            for name, value in zip(names, net.comps(net.learned), strict=True):
                getattr(model.initial_state, name).copy_(torch.from_numpy(value))
    seen = []
    rnn.register_forward_pre_hook(lambda module, args: seen.append(args[1]))

    def run(training: bool):
        model.train(training)
        with torch.no_grad():
            y, final = model(torch.from_numpy(net.x))
        return _np(y), _np(final), _np(seen.pop())

    def read_back():
        learned = [_np(getattr(model.initial_state, name)) for name in names]
        return _np(dict(rnn.state_dict())), net.pack(learned)

    return Runner(run, read_back)


def _keras_runner(net: Net, case: str, **layer_kwargs) -> Runner:
    strategy, options = CASES[case]
    layers, twins, features = [], [], INPUT
    vectors = net.per_layer() if _sets_vectors(case) else None
    for k, weights in enumerate(P.torch_to_keras(net.sd, net.cell)):
        base = KERAS_LAYERS[net.cell](
            HIDDEN, return_sequences=True, return_state=True, **layer_kwargs
        )
        if net.bidirectional:
            base = keras.layers.Bidirectional(base, merge_mode="concat")
        layer = rk.InitialStateRNN(base, strategy, seed=k, **options)
        layer.build((BATCH, STEPS, features))
        layer.rnn.set_weights(weights)
        # The same strategy and seed: it draws what the layer's own InitialState draws.
        twin = rk.InitialState(
            strategy,
            units=HIDDEN,
            cell=net.cell,
            bidirectional=net.bidirectional,
            seed=k,
            **options,
        )
        for state in (layer.initial_state, twin) if vectors else ():
            for name, value in vectors[k].items():  # "h" -> h0, "c" -> c0
                getattr(state, name + "0").assign(value)
        layers.append(layer)
        twins.append(twin)
        features = HIDDEN * net.d
    back = functools.partial(P.keras_state_to_torch, cell=net.cell, bidirectional=net.bidirectional)

    def run(training: bool):
        h, finals, initials = net.x, [], []
        for layer, twin in zip(layers, twins, strict=True):
            initials.append(_np(twin.get_initial_state(BATCH, training=training)))
            out = layer(h, training=training)
            h, finals = _np(out[0]), [*finals, _np(out[1:])]
        return h, back(finals), back(initials)

    def read_back():
        sd = P.keras_to_torch([layer.rnn.get_weights() for layer in layers], net.cell)
        vectors = [
            {n: _np(getattr(layer.initial_state, n + "0")) for n in net.names} for layer in layers
        ]
        return sd, P.learned_state_from_layers(vectors, net.cell)

    return Runner(run, read_back)


def _linen_runner(net: Net, case: str, make_cell=None) -> Runner:
    strategy, options = CASES[case]
    make_cell = make_cell or (lambda: LINEN_CELLS[net.cell](HIDDEN))

    def rnn():
        return nn.RNN(make_cell())

    stack = [nn.Bidirectional(rnn(), rnn()) if net.bidirectional else rnn()] * net.num_layers
    model = rl.InitialStateRNN(stack if net.num_layers > 1 else stack[0], strategy, **options)
    suffixes = [f"_{k}" for k in range(net.num_layers)] if net.num_layers > 1 else [""]
    trees = P.torch_to_linen(net.sd, net.cell)
    variables = {"params": {"rnn" + s: t for s, t in zip(suffixes, trees, strict=True)}}
    collection = {"param": "params", "stored": "buffers"}.get(_plan(case).source)
    if collection:  # variables[collection]["initial_state"]["h"], one per layer of a stack
        for s, vectors in zip(suffixes, net.per_layer(), strict=True):
            variables.setdefault(collection, {})["initial_state" + s] = vectors

    def apply(variables, key, training):
        (carry, y), captured = model.apply(
            variables,
            net.x,
            rngs=dict(zip(("initial_state", "noise"), jax.random.split(key), strict=True)),
            deterministic=not training,
            return_carry=True,
            capture_intermediates=lambda module, _: isinstance(module, rl.InitialState),
            mutable=["intermediates"],
        )
        states = captured["intermediates"]
        return y, carry, [states["initial_state" + s]["__call__"][0] for s in suffixes]

    keys, compiled = itertools.count(), {}
    back = functools.partial(P.flax_state_to_torch, cell=net.cell, bidirectional=net.bidirectional)

    def run(training: bool):
        # rbg keys: draws as good for these checks, and far less to compile than threefry
        key = jax.random.key(next(keys), impl="unsafe_rbg")
        if training not in compiled:  # a quick compile: these networks are tiny
            lowered = jax.jit(apply, static_argnums=2).lower(variables, key, training)
            compiled[training] = lowered.compile(compiler_options=FAST_COMPILE)
        y, carry, initial = compiled[training](variables, key)
        carries = list(carry) if net.num_layers > 1 else [carry]
        return _np(y), back(_np(carries)), back(_np(initial))

    def read_back():
        # linen's variables are ours: check that init makes the same tree, then read ours.
        made = jax.eval_shape(model.init, jax.random.key(0), net.x)
        assert jax.tree_util.tree_structure(made) == jax.tree_util.tree_structure(variables)
        for a, b in zip(*map(jax.tree_util.tree_leaves, (made, variables)), strict=True):
            assert a.shape == np.shape(b)
        sd = P.linen_to_torch([variables["params"]["rnn" + s] for s in suffixes], net.cell)
        vectors = [variables[collection]["initial_state" + s] for s in suffixes]
        return sd, P.learned_state_from_layers(vectors, net.cell)

    return Runner(run, read_back)


def _nnx_load(module, tree) -> None:
    params = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(params, tree)
    nnx.update(module, params)


def _nnx_cell(cls, features: int, **kwargs):
    # Zeros, overwritten anyway: no random initializer to compile for every shape.
    zeros = nnx.initializers.zeros_init()
    inits = {"kernel_init": zeros, "recurrent_kernel_init": zeros, "bias_init": zeros}
    return cls(features, HIDDEN, rngs=nnx.Rngs(0), **inits, **kwargs)


def _nnx_runner(net: Net, case: str, make_cell=None, lstm_cell: str = "LSTMCell") -> Runner:
    strategy, options = CASES[case]
    make_cell = make_cell or (lambda fin: _nnx_cell(NNX_CELLS[net.cell], fin))
    layers = []
    for k, tree in enumerate(P.torch_to_nnx(net.sd, net.cell, lstm_cell=lstm_cell)):
        fin = INPUT if k == 0 else HIDDEN * net.d
        pair = [nnx.RNN(make_cell(fin)) for _ in range(net.d)]
        layers.append(nnx.Bidirectional(*pair) if net.bidirectional else pair[0])
        _nnx_load(layers[-1], tree)
    stack = net.num_layers > 1
    rngs = nnx.Rngs(jax.random.key(0, impl="unsafe_rbg"))
    model = rn.InitialStateRNN(layers if stack else layers[0], strategy, rngs=rngs, **options)

    def states(module):
        return list(module.initial_state) if stack else [module.initial_state]

    if _sets_vectors(case):
        for state, vectors in zip(states(model), net.per_layer(), strict=True):
            for name, value in vectors.items():  # initial_state.h, initial_state.c
                getattr(state, name)[...] = value
    back = functools.partial(P.flax_state_to_torch, cell=net.cell, bidirectional=net.bidirectional)

    def run(training: bool):
        model.train() if training else model.eval()
        twin = nnx.clone(model)  # its generators are where the model's are
        with jax.disable_jit():  # op by op: nothing to compile for each model
            carry, y = model(net.x, return_carry=True)
            initial = [state((BATCH,)) for state in states(twin)]
        return _np(y), back(_np(list(carry) if stack else [carry])), back(_np(initial))

    def read_back():
        trees = [nnx.to_pure_dict(nnx.state(layer, nnx.Param)) for layer in layers]
        vectors = [{n: getattr(s, n)[...] for n in net.names} for s in states(model)]
        return P.nnx_to_torch(_np(trees), net.cell), P.learned_state_from_layers(vectors, net.cell)

    return Runner(run, read_back)


RUNNERS = {
    "torch": _torch_runner,
    "keras": _keras_runner,
    "linen": _linen_runner,
    "nnx": _nnx_runner,
}


@functools.cache
def _runners(cell: str, num_layers: int, bidirectional: bool, case: str) -> dict[str, Runner]:
    net = _net(cell, num_layers, bidirectional)
    return {name: build(net, case) for name, build in RUNNERS.items()}


def _assert_close(got, want, what: str) -> None:
    d = P.max_abs_diff(got, want)
    assert d < TOL, f"{what}: max abs difference {d:.2e} >= {TOL}"


# --------------------------------------------------------------------------- the grid


@pytest.mark.parametrize(
    ("cell", "num_layers", "bidirectional", "case"), DETERMINISTIC, ids=_ids(DETERMINISTIC)
)
def test_deterministic_strategies_agree_everywhere(cell, num_layers, bidirectional, case):
    net = _net(cell, num_layers, bidirectional)
    expected = net.expected_state(case)
    y_ref, final_ref = net.reference(expected)
    if _plan(case).source != "zeros":
        assert P.max_abs_diff(y_ref, net.reference()[0]) > 100 * TOL  # the state matters
    runners = _runners(cell, num_layers, bidirectional, case)
    results = {name: runner.run(False) for name, runner in runners.items()}
    for name, (y, final, initial) in results.items():
        assert y.shape == (BATCH, STEPS, HIDDEN * net.d)
        _assert_close(initial, expected, f"{name} initial state vs spec.reference_state")
        _assert_close(y, y_ref, f"{name} outputs vs numpy")
        _assert_close(final, final_ref, f"{name} final state vs numpy")
        _assert_close(y, results["torch"][0], f"{name} outputs vs torch")
        _assert_close(final, results["torch"][1], f"{name} final state vs torch")


@pytest.mark.parametrize(("cell", "num_layers", "bidirectional", "case"), RANDOM, ids=_ids(RANDOM))
def test_random_states_are_each_frameworks_own(cell, num_layers, bidirectional, case):
    net, plan = _net(cell, num_layers, bidirectional), _plan(case)
    base = net.comps(net.expected_state(case))
    drawn = []
    for name, runner in _runners(cell, num_layers, bidirectional, case).items():
        y, final, initial = runner.run(True)
        y_ref, final_ref = net.reference(initial)
        _assert_close(y, y_ref, f"{name} outputs vs numpy from its own state")
        _assert_close(final, final_ref, f"{name} final state vs numpy from its own state")
        for state, base_state in zip(net.comps(initial), base, strict=True):
            assert state.shape == (num_layers * net.d, BATCH, HIDDEN)
            if plan.source == "draw":  # U(-b, b), drawn for every batch row
                b = plan.draw_bound(HIDDEN)
                assert np.abs(state).max() <= b * (1 + 1e-6), name
                assert np.abs(state).max() > b / 2 and np.ptp(state, axis=1).min() > 0, name
            else:  # base + N(0, sigma^2)
                noise = state - base_state
                assert 0.5 < noise.std() / plan.noise.std < 1.5, (name, noise.std())
        drawn.append(initial)
    for a, b in itertools.combinations(drawn, 2):  # four draws, not one shared constant
        assert P.max_abs_diff(a, b) > 10 * TOL


WITH_VECTORS = [g for g in GRID if g[3] in ("learnable", "uniform-stored")]


@pytest.mark.parametrize(
    ("cell", "num_layers", "bidirectional", "case"), WITH_VECTORS, ids=_ids(WITH_VECTORS)
)
def test_weights_and_vectors_read_back_from_every_framework(cell, num_layers, bidirectional, case):
    # What each framework holds converts back to the same network and the same vectors
    # (the biases a framework sums come back on bias_ih; a Keras GRU keeps both rows).
    net = _net(cell, num_layers, bidirectional)
    canonical = P.canonical_torch(net.sd, cell)
    for name, runner in _runners(cell, num_layers, bidirectional, case).items():
        sd, learned = runner.read_back()
        want = net.sd if name == "torch" or (name, cell) == ("keras", "gru") else canonical
        assert sorted(sd) == sorted(want), name
        for key in want:
            np.testing.assert_array_equal(sd[key], want[key], err_msg=f"{name} {key}")
        assert P.max_abs_diff(learned, net.learned) == 0, name


def test_stored_draws_respect_the_bound():
    # resample=False: each framework draws one vector per direction and component once,
    # within the spec's bound (the grid checks that it is broadcast over the batch).
    for strategy, options in (("uniform", {"bound": 0.3}), ("xavier", {"gain": 2.0})):
        b = spec.make(strategy, **options).draw_bound(HIDDEN)
        torch_state = rt.InitialState(
            strategy,
            hidden_size=HIDDEN,
            bidirectional=True,
            cell="lstm",
            resample=False,
            seed=0,
            **options,
        )
        keras_state = rk.InitialState(
            strategy,
            units=HIDDEN,
            cell="lstm",
            bidirectional=True,
            resample=False,
            seed=0,
            **options,
        )
        linen_state = rl.InitialState(
            strategy, cell="lstm", features=HIDDEN, bidirectional=True, resample=False, **options
        )
        buffers = linen_state.init(jax.random.key(0), (BATCH,))["buffers"]
        nnx_state = rn.InitialState(
            strategy,
            cell="lstm",
            features=HIDDEN,
            bidirectional=True,
            resample=False,
            seed=0,
            **options,
        )
        vectors = {
            "torch": [torch_state.h0, torch_state.c0],
            "keras": [keras_state.h0, keras_state.c0],
            "linen": [buffers["h"], buffers["c"]],
            "nnx": [nnx_state.h[...], nnx_state.c[...]],
        }
        for name, (h, c) in _np(vectors).items():
            assert h.shape == c.shape == (2, HIDDEN), name
            assert np.abs(np.stack([h, c])).max() <= b * (1 + 1e-6), name
            assert np.abs(np.stack([h, c])).max() > b / 2 and np.ptp(h) > 0, name


# --------------------------------------------------------------------------- variants


def test_other_flax_lstm_cells():
    # linen's LSTMCell has OptimizedLSTMCell's param tree; NNX's OptimizedLSTMCell fuses
    # the four gates into dense_i (in, 4H) and dense_h (H, 4H) with the summed bias.
    net = _net("lstm", 1, True)
    y_ref, final_ref = net.reference(net.expected_state("learnable"))
    linen = _linen_runner(net, "learnable", make_cell=lambda: nn.LSTMCell(HIDDEN))
    nnx_optimized = _nnx_runner(
        net,
        "learnable",
        make_cell=lambda fin: _nnx_cell(nnx.OptimizedLSTMCell, fin),
        lstm_cell="OptimizedLSTMCell",
    )
    for name, runner in (("linen LSTMCell", linen), ("nnx OptimizedLSTMCell", nnx_optimized)):
        y, final, _ = runner.run(False)
        _assert_close((y, final), (y_ref, final_ref), name)
    sd, _ = nnx_optimized.read_back()
    canonical = P.canonical_torch(net.sd, "lstm")
    assert all(np.array_equal(sd[key], canonical[key]) for key in canonical)


def test_relu_simple_rnn():
    net = _net("rnn", 1, False)
    want = net.reference(net.expected_state("learnable"), nonlinearity="relu")
    tanh = net.reference(net.expected_state("learnable"))
    assert P.max_abs_diff(want, tanh) > 100 * TOL
    runners = {
        "torch": _torch_runner(net, "learnable", nonlinearity="relu"),
        "keras": _keras_runner(net, "learnable", activation="relu"),
        "linen": _linen_runner(
            net, "learnable", lambda: nn.SimpleCell(HIDDEN, activation_fn=nn.relu)
        ),
        "nnx": _nnx_runner(
            net,
            "learnable",
            lambda fin: _nnx_cell(nnx.SimpleCell, fin, activation_fn=nnx.relu),
        ),
    }
    for name, runner in runners.items():
        y, final, _ = runner.run(False)
        _assert_close((y, final), want, name)


def test_a_gru_with_b_hn_in_torch_keras_and_linen():
    # The grid's GRUs have b_hn = 0 (so that NNX can hold them); with a nonzero b_hn,
    # PyTorch, Keras and linen still run one network, and the NNX converter refuses.
    net = _net("gru", 2, True, b_hn=True)
    assert np.abs(net.sd["bias_hh_l1_reverse"][2 * HIDDEN :]).max() > 0.1
    want = net.reference(net.expected_state("learnable"))
    assert (
        P.max_abs_diff(want, _net("gru", 2, True).reference(net.expected_state("learnable")))
        > 100 * TOL
    )
    for name in ("torch", "keras", "linen"):
        y, final, _ = RUNNERS[name](net, "learnable").run(False)
        _assert_close((y, final), want, name)
    with pytest.raises(ValueError, match=r"bias_hh_l0\[12:18\] \(b_hn"):
        P.torch_to_nnx(net.sd, "gru")


def test_keras_gru_reset_after_false_is_another_function():
    # Keras's reset_after=False GRU: tanh(x W_h + b_h + (r * h) U_h), one bias row.
    # The numpy reference implements it and matches Keras; read as the PyTorch GRU it
    # is a different function, and the converters refuse it by name.
    layer = keras.layers.GRU(HIDDEN, reset_after=False, return_sequences=True, return_state=True)
    layer.build((BATCH, STEPS, INPUT))
    rng = np.random.default_rng(3)
    weights = [rng.uniform(-0.5, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()]
    assert weights[2].shape == (3 * HIDDEN,)
    layer.set_weights(weights)
    x, h0 = _net("gru", 1, False).x, rng.uniform(-0.5, 0.5, (BATCH, HIDDEN)).astype(np.float32)
    y, h = (np.asarray(a) for a in layer(x, initial_state=[h0]))
    ref_y, ref_h = P.numpy_forward("keras", [weights], x, h0[None], cell="gru", reset_after=False)
    _assert_close((y, h), (ref_y, ref_h[0]), "keras reset_after=False")
    as_after = [weights[0], weights[1], np.stack([weights[2], np.zeros_like(weights[2])])]
    other_y, _ = P.numpy_forward("keras", [as_after], x, h0[None], cell="gru")
    assert P.max_abs_diff(other_y, ref_y) > 100 * TOL
    with pytest.raises(ValueError, match="reset_after=False"):
        P.keras_to_torch([weights], "gru")


def test_keras_without_bias():
    # A Keras layer with use_bias=False is the same cell with zero biases.
    layer = keras.layers.LSTM(HIDDEN, use_bias=False, return_sequences=True, return_state=True)
    layer.build((BATCH, STEPS, INPUT))
    weights = [np.asarray(w) for w in layer.get_weights()]
    assert len(weights) == 2
    sd = P.keras_to_torch([weights], "lstm")
    assert not np.any(sd["bias_ih_l0"]) and not np.any(sd["bias_hh_l0"])
    x = _net("lstm", 1, False).x
    _assert_close(
        np.asarray(layer(x)[0]), P.numpy_forward("torch", sd, x, cell="lstm")[0], "no bias"
    )
    again = P.torch_to_keras(sd, "lstm", use_bias=False)[0]
    assert all(np.array_equal(a, b) for a, b in zip(again, weights, strict=True))
