"""One GRU, LSTM and simple RNN in PyTorch, Keras 3, Flax linen and Flax NNX.

The same weights (drawn by PyTorch with a fixed seed) and the same initial state give
the same outputs and final states in every framework and in the numpy reference of
:mod:`reference_impl.parity`, within ``parity.TOLERANCE`` (1e-5 absolute, float32),
for 1 and 2 layers, one or two directions, and an initial state made by every
strategy. The converters' refusals are tested with the cells they refuse.

Shapes are fixed (input 8, hidden 16, 12 steps, batch 4) and each framework's
network is built and compiled once per configuration, so the whole file stays quick.
"""

from __future__ import annotations

import functools
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

from reference_impl import STRATEGIES  # noqa: E402
from reference_impl import parity as P  # noqa: E402
from reference_impl import torch as ri  # noqa: E402

TOL = P.TOLERANCE
INPUT, HIDDEN, STEPS, BATCH = 8, 16, 12, 4
CELLS = ("gru", "lstm", "rnn")
TORCH_LAYERS = {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM, "rnn": torch.nn.RNN}
KERAS_LAYERS = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM, "rnn": keras.layers.SimpleRNN}
LINEN_CELLS = {"gru": nn.GRUCell, "lstm": nn.OptimizedLSTMCell, "rnn": nn.SimpleCell}
NNX_CELLS = {"gru": nnx.GRUCell, "lstm": nnx.LSTMCell, "rnn": nnx.SimpleCell}
STRATEGY_OPTIONS = {
    "zero": {},
    "uniform": {"seed": 0},
    "xavier": {"seed": 0},
    "learnable": {"init": "uniform", "seed": 0},
    "noisy": {"noise_std": 0.1, "seed": 0},  # in training: base plus a seeded draw
}
CONFIGS = [(c, n, b) for c in CELLS for n in (1, 2) for b in (False, True)]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # Tiny networks: one thread is as fast, and does not fight TensorFlow's and XLA's
    # thread pools for the cores (which made a 15-step training 50x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _inputs(features: int = INPUT) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(BATCH, STEPS, features)).astype(np.float32)


def _torch_model(cell: str, num_layers: int, bidirectional: bool, **kwargs):
    torch.manual_seed(0)
    return TORCH_LAYERS[cell](
        INPUT,
        HIDDEN,
        num_layers=num_layers,
        bidirectional=bidirectional,
        batch_first=True,
        **kwargs,
    )


def _state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _zero_b_hn(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {k: v.copy() for k, v in sd.items()}
    for k in out:
        if k.startswith("bias_hh"):
            out[k][2 * HIDDEN :] = 0
    return out


def _strategy_state(strategy: str, cell: str, num_layers: int, bidirectional: bool):
    """The initial state the package's PyTorch module makes, as float32 numpy arrays."""
    init = ri.InitialState(
        strategy,
        hidden_size=HIDDEN,
        num_layers=num_layers,
        bidirectional=bidirectional,
        cell=cell,
        **STRATEGY_OPTIONS[strategy],
    )
    with torch.no_grad():
        state = init(BATCH)
    if cell == "lstm":
        return tuple(s.detach().numpy().copy() for s in state)
    return state.detach().numpy().copy()


# --------------------------------------------------------------------------- runners
# Each runner is built once per configuration and called with any initial state in
# PyTorch's layout; it returns the outputs and the final state in PyTorch's layout.


def _run_torch(model, x, state, cell):
    with torch.no_grad():
        hx = (
            tuple(torch.from_numpy(s) for s in state) if cell == "lstm" else torch.from_numpy(state)
        )
        y, h_n = model(torch.from_numpy(x), hx)
    final = tuple(h.numpy() for h in h_n) if cell == "lstm" else h_n.numpy()
    return y.numpy(), final


def _keras_runner(cell, weights, bidirectional, **layer_kwargs):
    layers, features = [], INPUT
    for w in weights:
        layer = KERAS_LAYERS[cell](HIDDEN, return_sequences=True, return_state=True, **layer_kwargs)
        if bidirectional:
            layer = keras.layers.Bidirectional(layer, merge_mode="concat")
        layer.build((BATCH, STEPS, features))
        layer.set_weights(w)
        layers.append(layer)
        features = HIDDEN * (2 if bidirectional else 1)

    def run(x, state):
        per_layer = P.torch_state_to_keras(state, cell, bidirectional=bidirectional)
        finals, h = [], x
        for layer, s in zip(layers, per_layer, strict=True):
            out = layer(h, initial_state=s)
            h = np.asarray(out[0])
            finals.append([np.asarray(o) for o in out[1:]])
        return h, P.keras_state_to_torch(finals, cell, bidirectional=bidirectional)

    return run


def _linen_runner(cell, trees, bidirectional, make_cell=None):
    make_cell = make_cell or (lambda: LINEN_CELLS[cell](HIDDEN))

    def rnn():
        return nn.RNN(make_cell())

    modules = [nn.Bidirectional(rnn(), rnn()) if bidirectional else rnn() for _ in trees]

    @jax.jit
    def apply(params, x, carries):
        new = []
        for module, p, c in zip(modules, params, carries, strict=True):
            c, x = module.apply({"params": p}, x, initial_carry=c, return_carry=True)
            new.append(c)
        return x, new

    def run(x, state):
        carries = P.torch_state_to_flax(state, cell, bidirectional=bidirectional)
        y, new = apply(trees, x, carries)
        new = jax.tree_util.tree_map(np.asarray, new)
        return np.asarray(y), P.flax_state_to_torch(new, cell, bidirectional=bidirectional)

    return run


def _nnx_layers(cell, trees, bidirectional, make_cell=None):
    make_cell = make_cell or (lambda fin: NNX_CELLS[cell](fin, HIDDEN, rngs=nnx.Rngs(0)))
    layers = []
    for k, tree in enumerate(trees):
        fin = INPUT if k == 0 else HIDDEN * (2 if bidirectional else 1)

        def rnn(fin=fin):
            return nnx.RNN(make_cell(fin))

        layer = nnx.Bidirectional(rnn(), rnn()) if bidirectional else rnn()
        params = nnx.state(layer, nnx.Param)
        nnx.replace_by_pure_dict(params, tree)
        nnx.update(layer, params)
        layers.append(layer)
    return layers


def _nnx_runner(cell, trees, bidirectional, make_cell=None):
    split = [nnx.split(layer) for layer in _nnx_layers(cell, trees, bidirectional, make_cell)]
    graphdefs = [g for g, _ in split]
    states = [s for _, s in split]

    @jax.jit
    def apply(states, x, carries):
        new = []
        for g, s, c in zip(graphdefs, states, carries, strict=True):
            c, x = nnx.merge(g, s)(x, initial_carry=c, return_carry=True)
            new.append(c)
        return x, new

    def run(x, state):
        carries = P.torch_state_to_flax(state, cell, bidirectional=bidirectional)
        y, new = apply(states, x, carries)
        new = jax.tree_util.tree_map(np.asarray, new)
        return np.asarray(y), P.flax_state_to_torch(new, cell, bidirectional=bidirectional)

    return run


@functools.cache
def _grid(cell: str, num_layers: int, bidirectional: bool) -> dict:
    """Every framework's outputs and final states for every strategy, one config."""
    model = _torch_model(cell, num_layers, bidirectional)
    sd = _state_dict(model)
    # NNX's GRUCell has no b_hn: its GRU is compared with the same network with b_hn = 0.
    sd_nnx = _zero_b_hn(sd) if cell == "gru" else sd
    model_nnx = _torch_model(cell, num_layers, bidirectional)
    model_nnx.load_state_dict({k: torch.from_numpy(v) for k, v in sd_nnx.items()})
    x = _inputs()
    keras_run = _keras_runner(cell, P.torch_to_keras(sd, cell), bidirectional)
    linen_run = _linen_runner(cell, P.torch_to_linen(sd, cell), bidirectional)
    nnx_run = _nnx_runner(cell, P.torch_to_nnx(sd_nnx, cell), bidirectional)
    out = {}
    for strategy in STRATEGIES:
        state = _strategy_state(strategy, cell, num_layers, bidirectional)
        ref = P.numpy_forward("torch", sd, x, state, cell=cell)
        ref_nnx = P.numpy_forward("torch", sd_nnx, x, state, cell=cell)
        torch_out = _run_torch(model, x, state, cell)
        out[strategy] = {
            "state": state,
            "torch": (torch_out, ref, torch_out),
            "keras": (keras_run(x, state), ref, torch_out),
            "linen": (linen_run(x, state), ref, torch_out),
            "nnx": (nnx_run(x, state), ref_nnx, _run_torch(model_nnx, x, state, cell)),
            "numpy keras": (
                P.numpy_forward("keras", P.torch_to_keras(sd, cell), x, state, cell=cell),
                ref,
                torch_out,
            ),  # fmt: skip
        }
    return out


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    ("cell", "num_layers", "bidirectional"),
    CONFIGS,
    ids=[f"{c}-{n}layer-{'bi' if b else 'uni'}" for c, n, b in CONFIGS],
)
def test_same_outputs_and_final_states_everywhere(cell, num_layers, bidirectional, strategy):
    results = _grid(cell, num_layers, bidirectional)[strategy]
    rows = num_layers * (2 if bidirectional else 1)
    state = results["state"]
    first = state[0] if cell == "lstm" else state
    assert first.shape == (rows, BATCH, HIDDEN)
    if strategy != "zero":  # the state is not trivially zero, so it is really carried
        assert np.abs(first).max() > 1e-3
    for framework in ("torch", "keras", "linen", "nnx", "numpy keras"):
        (y, final), (y_ref, final_ref), (y_torch, final_torch) = results[framework]
        assert y.shape == (BATCH, STEPS, HIDDEN * (2 if bidirectional else 1))
        for what, got, want in (
            ("outputs vs numpy", y, y_ref),
            ("final state vs numpy", final, final_ref),
            ("outputs vs torch", y, y_torch),
            ("final state vs torch", final, final_torch),
        ):
            d = P.max_abs_diff(got, want)
            assert d < TOL, f"{framework} {what}: max abs difference {d:.2e} >= {TOL}"


def test_the_initial_state_matters_in_every_framework():
    # The comparison above is not vacuous: another initial state changes the outputs
    # by far more than the tolerance, in every framework.
    results = _grid("gru", 1, False)
    for framework in ("torch", "keras", "linen", "nnx"):
        y_zero = results["zero"][framework][0][0]
        y_xavier = results["xavier"][framework][0][0]
        assert P.max_abs_diff(y_zero, y_xavier) > 100 * TOL


# --------------------------------------------------------------------------- variants


def test_other_flax_lstm_cells():
    # linen's LSTMCell has OptimizedLSTMCell's param tree; NNX's OptimizedLSTMCell fuses
    # the four gates into dense_i (in, 4H) and dense_h (H, 4H) with the summed bias.
    model = _torch_model("lstm", 1, True)
    sd = _state_dict(model)
    x, state = _inputs(), _strategy_state("uniform", "lstm", 1, True)
    want = _run_torch(model, x, state, "lstm")
    linen_run = _linen_runner(
        "lstm", P.torch_to_linen(sd, "lstm"), True, make_cell=lambda: nn.LSTMCell(HIDDEN)
    )
    trees = P.torch_to_nnx(sd, "lstm", lstm_cell="OptimizedLSTMCell")
    assert trees[0]["forward_rnn"]["cell"]["dense_h"]["kernel"].shape == (HIDDEN, 4 * HIDDEN)
    nnx_run = _nnx_runner(
        "lstm",
        trees,
        True,
        make_cell=lambda fin: nnx.OptimizedLSTMCell(fin, HIDDEN, rngs=nnx.Rngs(0)),
    )
    for run in (linen_run, nnx_run):
        assert P.max_abs_diff(run(x, state), want) < TOL
    back, canonical = P.nnx_to_torch(trees, "lstm"), P.canonical_torch(sd, "lstm")
    assert all(np.array_equal(back[k], canonical[k]) for k in sd)


def test_relu_simple_rnn():
    model = _torch_model("rnn", 1, False, nonlinearity="relu")
    sd = _state_dict(model)
    x, state = _inputs(), _strategy_state("xavier", "rnn", 1, False)
    want = _run_torch(model, x, state, "rnn")
    ref = P.numpy_forward("torch", sd, x, state, cell="rnn", nonlinearity="relu")
    keras_run = _keras_runner("rnn", P.torch_to_keras(sd, "rnn"), False, activation="relu")
    linen_run = _linen_runner(
        "rnn",
        P.torch_to_linen(sd, "rnn"),
        False,
        make_cell=lambda: nn.SimpleCell(HIDDEN, activation_fn=nn.relu),
    )
    for got in (want, keras_run(x, state), linen_run(x, state)):
        assert P.max_abs_diff(got, ref) < TOL
    tanh_ref = P.numpy_forward("torch", sd, x, state, cell="rnn")
    assert P.max_abs_diff(tanh_ref, ref) > 100 * TOL


def test_keras_gru_reset_after_false_is_another_function():
    # Keras's reset_after=False GRU: tanh(x W_h + b_h + (r * h) U_h), one bias row.
    # The numpy reference implements it and matches Keras; read as the PyTorch GRU it
    # is a different function, and every converter refuses it by name.
    layer = keras.layers.GRU(HIDDEN, reset_after=False, return_sequences=True, return_state=True)
    layer.build((BATCH, STEPS, INPUT))
    rng = np.random.default_rng(3)
    weights = [rng.uniform(-0.25, 0.25, w.shape).astype(np.float32) for w in layer.get_weights()]
    assert weights[2].shape == (3 * HIDDEN,)
    layer.set_weights(weights)
    x = _inputs()
    h0 = rng.uniform(-0.5, 0.5, (BATCH, HIDDEN)).astype(np.float32)
    y, h = (np.asarray(a) for a in layer(x, initial_state=[h0]))
    ref_y, ref_h = P.numpy_forward("keras", [weights], x, h0[None], cell="gru", reset_after=False)
    assert P.max_abs_diff(y, ref_y) < TOL and P.max_abs_diff(h, ref_h[0]) < TOL
    # The same numbers in a reset_after=True layout (input bias row, zero recurrent row).
    as_after = [weights[0], weights[1], np.stack([weights[2], np.zeros_like(weights[2])])]
    other_y, _ = P.numpy_forward("keras", [as_after], x, h0[None], cell="gru")
    assert P.max_abs_diff(other_y, ref_y) > 100 * TOL
    with pytest.raises(ValueError, match="reset_after"):
        P.keras_to_torch([weights], "gru")
    sd = P.random_state_dict("gru", INPUT, HIDDEN)
    with pytest.raises(ValueError, match="reset_after=False"):
        P.torch_to_keras(sd, "gru", reset_after=False)


def test_nnx_gru_refuses_a_nonzero_b_hn_that_linen_keeps():
    sd = _state_dict(_torch_model("gru", 2, True))
    with pytest.raises(ValueError, match=r"bias_hh_l0\[32:48\] \(b_hn"):
        P.torch_to_nnx(sd, "gru")
    # linen keeps b_hn on its `hn` Dense layer ...
    tree = P.torch_to_linen(sd, "gru")[1]["backward_rnn"]["cell"]
    np.testing.assert_array_equal(tree["hn"]["bias"], sd["bias_hh_l1_reverse"][2 * HIDDEN :])
    assert "bias" not in tree["hr"] and "bias" not in tree["hz"]
    # ... and dropping it would change the network: it is not a rounding matter.
    x = _inputs()
    with_b_hn, _ = P.numpy_forward("torch", sd, x, cell="gru")
    without, _ = P.numpy_forward("torch", _zero_b_hn(sd), x, cell="gru")
    assert P.max_abs_diff(with_b_hn, without) > 100 * TOL
    # b_hn = 0 exactly converts, and comes back as zero.
    back = P.nnx_to_torch(P.torch_to_nnx(_zero_b_hn(sd), "gru"), "gru")
    assert not np.any(back["bias_hh_l1"])


def test_keras_without_bias():
    # A Keras layer with use_bias=False is the same cell with zero biases.
    layer = keras.layers.LSTM(HIDDEN, use_bias=False, return_sequences=True, return_state=True)
    layer.build((BATCH, STEPS, INPUT))
    weights = [np.asarray(w) for w in layer.get_weights()]
    assert len(weights) == 2
    sd = P.keras_to_torch([weights], "lstm")
    assert not np.any(sd["bias_ih_l0"]) and not np.any(sd["bias_hh_l0"])
    x = _inputs()
    y = np.asarray(layer(x)[0])
    assert P.max_abs_diff(y, P.numpy_forward("torch", sd, x, cell="lstm")[0]) < TOL
    assert [w.shape for w in P.torch_to_keras(sd, "lstm", use_bias=False)[0]] == [
        w.shape for w in weights
    ]
    with pytest.raises(ValueError, match="bias_ih_l0 is nonzero but use_bias=False"):
        P.torch_to_keras(P.random_state_dict("lstm", INPUT, HIDDEN), "lstm", use_bias=False)


def test_torch_lstm_projection_is_refused():
    model = torch.nn.LSTM(INPUT, HIDDEN, proj_size=4, batch_first=True)
    for convert in (P.torch_to_keras, P.torch_to_linen, P.torch_to_nnx):
        with pytest.raises(ValueError, match="weight_hr_l0.*proj_size"):
            convert(_state_dict(model), "lstm")


# --------------------------------------------------------------------------- round trips


ROUND_TRIPS = {
    "keras": (P.torch_to_keras, P.keras_to_torch),
    "linen": (P.torch_to_linen, P.linen_to_torch),
    "nnx": (P.torch_to_nnx, P.nnx_to_torch),
}


@pytest.mark.parametrize("framework", sorted(ROUND_TRIPS))
@pytest.mark.parametrize("cell", CELLS)
def test_round_trips(framework, cell):
    to, back = ROUND_TRIPS[framework]
    sd = P.random_state_dict(cell, INPUT, HIDDEN, num_layers=2, bidirectional=True, seed=5)
    if framework == "nnx" and cell == "gru":
        sd = _zero_b_hn(sd)
    # torch -> framework -> torch: the same network, summed biases moved onto bias_ih
    # (a Keras GRU keeps both bias rows, so it returns the original).
    returned = back(to(sd, cell), cell)
    canonical = sd if (framework, cell) == ("keras", "gru") else P.canonical_torch(sd, cell)
    assert sorted(returned) == sorted(sd)
    for key in sd:
        assert returned[key].dtype == np.float32
        assert P.max_abs_diff(returned[key], canonical[key]) == 0, key
    # framework -> torch -> framework: exactly the same arrays.
    native = to(sd, cell)
    again = to(back(native, cell), cell)
    flat = jax.tree_util.tree_leaves(native)
    assert len(flat) == len(jax.tree_util.tree_leaves(again))
    for a, b in zip(flat, jax.tree_util.tree_leaves(again), strict=True):
        assert a.shape == b.shape and P.max_abs_diff(a, b) == 0
    # and the canonical form computes the same function as the original.
    x = _inputs()
    assert (
        P.max_abs_diff(
            P.numpy_forward("torch", sd, x, cell=cell),
            P.numpy_forward("torch", canonical, x, cell=cell),
        )
        < 1e-6
    )


@pytest.mark.parametrize("cell", CELLS)
def test_state_layouts_round_trip(cell):
    rng = np.random.default_rng(0)
    comps = tuple(rng.normal(size=(4, BATCH, HIDDEN)) for _ in range(2 if cell == "lstm" else 1))
    state = comps if cell == "lstm" else comps[0]
    for bidirectional in (False, True):
        keras_states = P.torch_state_to_keras(state, cell, bidirectional=bidirectional)
        assert len(keras_states) == (2 if bidirectional else 4)
        flax_carries = P.torch_state_to_flax(state, cell, bidirectional=bidirectional)
        for back in (
            P.keras_state_to_torch(keras_states, cell, bidirectional=bidirectional),
            P.flax_state_to_torch(flax_carries, cell, bidirectional=bidirectional),
        ):
            assert P.max_abs_diff(back, state) == 0
    if cell == "lstm":  # Flax's carry is (c, h)
        c, h = P.torch_state_to_flax(state, cell)[3]
        np.testing.assert_array_equal(h, comps[0][3])
        np.testing.assert_array_equal(c, comps[1][3])


# --------------------------------------------------------------------------- bad input


def test_missing_keys_are_named():
    sd = P.random_state_dict("gru", INPUT, HIDDEN, num_layers=2, bidirectional=True)
    del sd["bias_hh_l1_reverse"]
    for convert in (P.torch_to_keras, P.torch_to_linen, P.torch_to_nnx, P.canonical_torch):
        with pytest.raises(ValueError, match="missing key 'bias_hh_l1_reverse'"):
            convert(sd, "gru")
    trees = P.torch_to_linen(P.random_state_dict("gru", INPUT, HIDDEN), "gru")
    del trees[0]["cell"]["hn"]["bias"]
    with pytest.raises(ValueError, match="missing key 'layer 0/cell/hn/bias'"):
        P.linen_to_torch(trees, "gru")
    trees = P.torch_to_nnx(P.random_state_dict("lstm", INPUT, HIDDEN), "lstm")
    del trees[0]["cell"]["if_"]
    with pytest.raises(ValueError, match="missing key 'layer 0/cell/if_'"):
        P.nnx_to_torch(trees, "lstm")
    trees = P.torch_to_nnx(P.random_state_dict("rnn", INPUT, HIDDEN, bidirectional=True), "rnn")
    del trees[0]["backward_rnn"]
    with pytest.raises(ValueError, match="missing key 'layer 0/backward_rnn'"):
        P.nnx_to_torch(trees, "rnn")


def test_mismatched_shapes_are_named():
    sd = P.random_state_dict("lstm", INPUT, HIDDEN, num_layers=2)
    sd["weight_ih_l1"] = sd["weight_ih_l1"][:, :-1]
    with pytest.raises(ValueError, match=r"weight_ih_l1 has shape \(64, 15\); expected \(64, 16\)"):
        P.torch_to_keras(sd, "lstm")
    sd = P.random_state_dict("gru", INPUT, HIDDEN)
    with pytest.raises(ValueError, match="weight_hh_l0 has shape .* a lstm needs"):
        P.torch_to_linen(sd, "lstm")  # a GRU's weights read as an LSTM's
    weights = P.torch_to_keras(sd, "gru")
    weights[0][2] = weights[0][2][:, :-1]
    with pytest.raises(ValueError, match=r"layer 0 bias has shape \(2, 47\)"):
        P.keras_to_torch(weights, "gru")
    trees = P.torch_to_nnx(_zero_b_hn(sd), "gru")
    trees[0]["cell"]["dense_h"]["kernel"] = np.zeros((HIDDEN, 2 * HIDDEN), np.float32)
    with pytest.raises(ValueError, match="layer 0/cell/dense_h/kernel has shape"):
        P.nnx_to_torch(trees, "gru")
    with pytest.raises(ValueError, match=r"state has shape \(1, 4, 8\)"):
        P.numpy_forward("torch", sd, _inputs(), np.zeros((1, BATCH, 8)), cell="gru")


def test_unexpected_keys_and_unsupported_options_are_named():
    sd = P.random_state_dict("rnn", INPUT, HIDDEN)
    with pytest.raises(ValueError, match="unexpected key 'weight_ih_l0_extra'"):
        P.torch_to_keras({**sd, "weight_ih_l0_extra": sd["weight_ih_l0"]}, "rnn")
    trees = P.torch_to_nnx(sd, "rnn")
    trees[0]["cell"]["dense_h"]["bias"] = np.zeros(HIDDEN, np.float32)
    with pytest.raises(ValueError, match="unexpected key 'layer 0/cell/dense_h/bias'"):
        P.nnx_to_torch(trees, "rnn")
    with pytest.raises(ValueError, match="unsupported cell 'mgu'"):
        P.torch_to_linen(sd, "mgu")
    with pytest.raises(ValueError, match="unsupported lstm_cell 'ConvLSTMCell'"):
        P.torch_to_nnx(sd, "lstm", lstm_cell="ConvLSTMCell")
    with pytest.raises(ValueError, match="unsupported nonlinearity 'gelu'"):
        P.numpy_forward("torch", sd, _inputs(), cell="rnn", nonlinearity="gelu")
    with pytest.raises(ValueError, match="unknown framework 'jax'"):
        P.numpy_forward("jax", sd, _inputs(), cell="rnn")
    with pytest.raises(ValueError, match="layer 0: expected \\[kernel, recurrent_kernel, bias\\]"):
        P.keras_to_torch([[np.zeros((INPUT, HIDDEN))]], "rnn")
    with pytest.raises(ValueError, match="state has 3 rows"):
        P.torch_state_to_keras(np.zeros((3, BATCH, HIDDEN)), "gru", bidirectional=True)
    with pytest.raises(ValueError, match=r"an LSTM state must be a pair \(h, c\)"):
        P.torch_state_to_flax(np.zeros((1, BATCH, HIDDEN)), "lstm")


# --------------------------------------------------------------------------- learned state
# A learned initial state is one vector per layer, direction and component. Trained in
# one framework (with the network's weights), both are moved to the others: the
# weights with the converters, the vectors with learned_state_per_layer (each
# framework's wrapper holds a (directions, features) array per layer).

LEARN_STEPS, LEARN_RATE = 15, 0.02


def _target(bidirectional: bool) -> np.ndarray:
    shape = (BATCH, STEPS, HIDDEN * (2 if bidirectional else 1))
    return np.tanh(np.random.default_rng(2).normal(size=shape)).astype(np.float32)


def _torch_learned_model(cell, sd, learned, num_layers, bidirectional):
    model = ri.InitialStateRNN(_torch_model(cell, num_layers, bidirectional), "learnable")
    model.rnn.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()})
    comps = learned if cell == "lstm" else (learned,)
    with torch.no_grad():
        for name, value in zip(("h0", "c0"), comps, strict=False):
            getattr(model.initial_state, name).copy_(torch.from_numpy(np.asarray(value)))
    return model


def _torch_predict(cell, sd, learned, num_layers, bidirectional, x):
    model = _torch_learned_model(cell, sd, learned, num_layers, bidirectional)
    with torch.no_grad():
        return model(torch.from_numpy(x))[0].numpy()


def _train_torch(cell, num_layers, bidirectional, x):
    model = ri.InitialStateRNN(_torch_model(cell, num_layers, bidirectional), "learnable")
    if cell == "gru":
        # b_hn held at zero, so that the GRU also exists in NNX (whose GRUCell has none).
        mask = torch.ones(3 * HIDDEN)
        mask[2 * HIDDEN :] = 0
        for name, p in model.rnn.named_parameters():
            if name.startswith("bias_hh"):
                with torch.no_grad():
                    p.mul_(mask)
                p.register_hook(lambda g: g * mask)
    opt = torch.optim.Adam(model.parameters(), lr=LEARN_RATE)
    target = torch.from_numpy(_target(bidirectional))
    for _ in range(LEARN_STEPS):
        opt.zero_grad()
        loss = ((model(torch.from_numpy(x))[0] - target) ** 2).mean()
        loss.backward()
        opt.step()
    sd = _state_dict(model.rnn)
    init = model.initial_state
    learned = (
        (init.h0.detach().numpy().copy(), init.c0.detach().numpy().copy())
        if cell == "lstm"
        else init.h0.detach().numpy().copy()
    )
    return sd, learned


def _keras_stack(cell, num_layers, bidirectional):
    from reference_impl import tensorflow as rk

    layers, features = [], INPUT
    for _ in range(num_layers):
        base = KERAS_LAYERS[cell](HIDDEN, return_sequences=True)
        if bidirectional:
            base = keras.layers.Bidirectional(base, merge_mode="concat")
        layer = rk.InitialStateRNN(base, "learnable")
        layer.build((BATCH, STEPS, features))
        layers.append(layer)
        features = HIDDEN * (2 if bidirectional else 1)
    return layers


def _keras_run(layers, x):
    h = x
    for layer in layers:
        h = layer(h)
    return h


def _keras_predict(cell, sd, learned, num_layers, bidirectional, x):
    layers = _keras_stack(cell, num_layers, bidirectional)
    per_layer = P.learned_state_per_layer(learned, cell, bidirectional=bidirectional)
    for layer, w, vectors in zip(layers, P.torch_to_keras(sd, cell), per_layer, strict=True):
        layer.rnn.set_weights(w)
        for name, value in vectors.items():  # "h" -> h0, "c" -> c0
            getattr(layer.initial_state, name + "0").assign(value)
    return np.asarray(_keras_run(layers, x))


def _train_keras(cell, num_layers, bidirectional, x):
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    layers = _keras_stack(cell, num_layers, bidirectional)
    variables = [v for layer in layers for v in layer.trainable_variables]
    opt = keras.optimizers.Adam(LEARN_RATE)
    target = _target(bidirectional)
    for _ in range(LEARN_STEPS):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((_keras_run(layers, x) - target) ** 2)
        opt.apply(tape.gradient(loss, variables), variables)
    sd = P.keras_to_torch([layer.rnn.get_weights() for layer in layers], cell)
    per_layer = [
        {n: np.asarray(getattr(layer.initial_state, n + "0")) for n in "hc"[: _ncomp(cell)]}
        for layer in layers
    ]
    return sd, P.learned_state_from_layers(per_layer, cell)


def _ncomp(cell):
    return 2 if cell == "lstm" else 1


def _linen_model(cell, num_layers, bidirectional):
    from reference_impl.flax import linen as rl

    def rnn():
        return nn.RNN(LINEN_CELLS[cell](HIDDEN))

    stack = [nn.Bidirectional(rnn(), rnn()) if bidirectional else rnn() for _ in range(num_layers)]
    return rl.InitialStateRNN(stack, strategy="learnable")


def _linen_params(cell, sd, learned, bidirectional):
    trees = P.torch_to_linen(sd, cell)
    per_layer = P.learned_state_per_layer(learned, cell, bidirectional=bidirectional)
    params = {}
    for k, (tree, vectors) in enumerate(zip(trees, per_layer, strict=True)):
        params[f"rnn_{k}"] = tree
        params[f"initial_state_{k}"] = vectors
    return params


def _linen_predict(cell, sd, learned, num_layers, bidirectional, x):
    model = _linen_model(cell, num_layers, bidirectional)
    params = _linen_params(cell, sd, learned, bidirectional)
    return np.asarray(model.apply({"params": params}, x))


def _train_linen(cell, num_layers, bidirectional, x):
    import optax

    model = _linen_model(cell, num_layers, bidirectional)
    params = model.init(jax.random.key(0), x)["params"]
    target = _target(bidirectional)
    opt = optax.adam(LEARN_RATE)

    @jax.jit
    def step(params, opt_state):
        def loss(p):
            return ((model.apply({"params": p}, x) - target) ** 2).mean()

        updates, opt_state = opt.update(jax.grad(loss)(params), opt_state)
        return optax.apply_updates(params, updates), opt_state

    opt_state = opt.init(params)
    for _ in range(LEARN_STEPS):
        params, opt_state = step(params, opt_state)
    params = jax.tree_util.tree_map(np.asarray, params)
    sd = P.linen_to_torch([params[f"rnn_{k}"] for k in range(num_layers)], cell)
    per_layer = [params[f"initial_state_{k}"] for k in range(num_layers)]
    return sd, P.learned_state_from_layers(per_layer, cell)


def _nnx_model(cell, num_layers, bidirectional):
    from reference_impl.flax import nnx as rn

    def rnn(fin):
        return nnx.RNN(NNX_CELLS[cell](fin, HIDDEN, rngs=nnx.Rngs(0)))

    stack = []
    for k in range(num_layers):
        fin = INPUT if k == 0 else HIDDEN * (2 if bidirectional else 1)
        stack.append(nnx.Bidirectional(rnn(fin), rnn(fin)) if bidirectional else rnn(fin))
    return rn.InitialStateRNN(stack, strategy="learnable", rngs=nnx.Rngs(0))


def _nnx_load(module, tree):
    params = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(params, tree)
    nnx.update(module, params)


def _nnx_predict(cell, sd, learned, num_layers, bidirectional, x):
    model = _nnx_model(cell, num_layers, bidirectional)
    per_layer = P.learned_state_per_layer(learned, cell, bidirectional=bidirectional)
    for k, (tree, vectors) in enumerate(zip(P.torch_to_nnx(sd, cell), per_layer, strict=True)):
        _nnx_load(model.rnn[k], tree)
        _nnx_load(model.initial_state[k], vectors)
    return np.asarray(model(x))


def _train_nnx(cell, num_layers, bidirectional, x):
    import optax

    model = _nnx_model(cell, num_layers, bidirectional)
    target = _target(bidirectional)
    optimizer = nnx.Optimizer(model, optax.adam(LEARN_RATE), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        def loss(model):
            return ((model(x) - target) ** 2).mean()

        optimizer.update(model, nnx.grad(loss)(model))

    for _ in range(LEARN_STEPS):
        step(model, optimizer)
    trees = [nnx.to_pure_dict(nnx.state(model.rnn[k], nnx.Param)) for k in range(num_layers)]
    trees = jax.tree_util.tree_map(np.asarray, trees)
    per_layer = [
        {n: np.asarray(getattr(model.initial_state[k], n)[...]) for n in "hc"[: _ncomp(cell)]}
        for k in range(num_layers)
    ]
    return P.nnx_to_torch(trees, cell), P.learned_state_from_layers(per_layer, cell)


PREDICT = {
    "torch": _torch_predict,
    "keras": _keras_predict,
    "linen": _linen_predict,
    "nnx": _nnx_predict,
}
TRAIN = {"torch": _train_torch, "keras": _train_keras, "linen": _train_linen, "nnx": _train_nnx}
LEARNED_CASES = [("torch", c, n, b) for c in CELLS for n, b in ((1, False), (2, True))] + [
    (f, "lstm", 1, True) for f in ("keras", "linen", "nnx")
]


@pytest.mark.parametrize(
    ("trained_in", "cell", "num_layers", "bidirectional"),
    LEARNED_CASES,
    ids=[f"{f}-{c}-{n}layer-{'bi' if b else 'uni'}" for f, c, n, b in LEARNED_CASES],
)
def test_learned_state_moves_between_frameworks(trained_in, cell, num_layers, bidirectional):
    x = _inputs()
    sd, learned = TRAIN[trained_in](cell, num_layers, bidirectional, x)
    comps = learned if cell == "lstm" else (learned,)
    rows = num_layers * (2 if bidirectional else 1)
    assert all(c.shape == (rows, HIDDEN) for c in comps)
    assert min(np.abs(c).max() for c in comps) > 0.05  # really learned, not zeros
    # The numpy reference: the learned vectors broadcast over the batch.
    state = tuple(np.broadcast_to(c[:, None, :], (rows, BATCH, HIDDEN)) for c in comps)
    ref, _ = P.numpy_forward("torch", sd, x, state if cell == "lstm" else state[0], cell=cell)
    zero_state, _ = P.numpy_forward("torch", sd, x, cell=cell)
    assert P.max_abs_diff(ref, zero_state) > 100 * TOL  # the learned state matters
    for framework, predict in PREDICT.items():
        y = predict(cell, sd, learned, num_layers, bidirectional, x)
        d = P.max_abs_diff(y, ref)
        assert d < TOL, f"trained in {trained_in}, run in {framework}: {d:.2e} >= {TOL}"


def test_a_trained_b_hn_does_not_move_to_nnx():
    # A GRU trained in Keras (or linen, or PyTorch without holding b_hn at zero)
    # learns a nonzero b_hn; NNX's GRUCell cannot hold it, and the converter says so.
    x = _inputs()
    sd, learned = _train_keras("gru", 1, False, x)
    assert np.abs(sd["bias_hh_l0"][2 * HIDDEN :]).max() > 1e-3
    with pytest.raises(ValueError, match="b_hn"):
        P.torch_to_nnx(sd, "gru")
    ref = _torch_predict("gru", sd, learned, 1, False, x)
    assert P.max_abs_diff(_linen_predict("gru", sd, learned, 1, False, x), ref) < TOL
