"""reference_impl.flax.linen against spec.py: values, statistics, gradients, round trips, errors."""

import subprocess
import sys
from functools import partial

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_impl import STRATEGIES, spec
from reference_impl.flax import linen as ri

FEATURES, HIDDEN, BATCH, TIME = 3, 5, 4, 6
CELLS = {
    "gru": lambda f=HIDDEN: nn.GRUCell(features=f),
    "lstm": lambda f=HIDDEN: nn.LSTMCell(features=f),
    "optimized_lstm": lambda f=HIDDEN: nn.OptimizedLSTMCell(features=f),
    "rnn": lambda f=HIDDEN: nn.SimpleCell(features=f),
}
KIND = {"gru": "gru", "lstm": "lstm", "optimized_lstm": "lstm", "rnn": "rnn"}


def key(i=0):
    return jax.random.key(i)


def inputs(batch=(BATCH,), i=1):
    return jax.random.normal(key(i), (*batch, TIME, FEATURES))


def randomize(variables, i=5):
    """Every variable set to non-trivial values (learned states start at zero)."""
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(key(i), len(leaves))
    new = [0.5 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(treedef, new)


def random_variables(model, *args, i=5, **kwargs):
    """The variables ``model.init`` would make, with random values; nothing is compiled."""
    return randomize(jax.eval_shape(lambda k: model.init(k, *args, **kwargs), key()), i)


# --------------------------------------------------------------------------- InitialState


@settings(max_examples=30, deadline=None)
@given(
    strategy=st.sampled_from(STRATEGIES),
    cell=st.sampled_from(sorted(CELLS)),
    features=st.integers(1, 9),
    batch_shape=st.lists(st.integers(1, 4), max_size=2).map(tuple),
    bidirectional=st.booleans(),
)
def test_carry_has_the_cells_own_layout(strategy, cell, features, batch_shape, bidirectional):
    layer = CELLS[cell](features)
    state = ri.InitialState(strategy, cell=layer, bidirectional=bidirectional)
    # shapes only: traced abstractly, nothing is compiled
    carry, _ = jax.eval_shape(
        lambda k: state.init_with_output(k, batch_shape, deterministic=False), key()
    )
    own = layer.initialize_carry(key(), (*batch_shape, FEATURES))
    expected = (own, own) if bidirectional else own
    assert jax.tree.structure(carry) == jax.tree.structure(expected)
    assert [x.shape for x in jax.tree.leaves(carry)] == [x.shape for x in jax.tree.leaves(expected)]
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(carry))


def test_jax_glorot_uniform_on_the_carry_depends_on_the_batch():
    """The widely copied mistake, measured with JAX's initializer; the package's
    bound (the conformance suite) does not move with the batch."""
    stds = {}
    for batch in (4, 1024):
        naive = jax.nn.initializers.glorot_uniform()(key(3), (batch, 64))
        assert float(jnp.abs(naive).max()) <= spec.naive_glorot_bound((batch, 64))
        stds[batch] = float(naive.std())
    assert stds[4] > 3 * stds[1024]
    assert spec.xavier_bound(64) > 2 * spec.naive_glorot_bound((1024, 64))


@pytest.mark.parametrize("strategy", ["uniform", "xavier"])
def test_resample_false_draws_once_into_the_buffers_collection(strategy):
    state = ri.InitialState(strategy, cell="lstm", features=16, resample=False)
    variables = state.init(key(), (5,))
    assert "params" not in variables
    assert {k: v.shape for k, v in variables[ri.BUFFERS].items()} == {"h": (1, 16), "c": (1, 16)}
    c1, h1 = state.apply(variables, (5,))
    c2, h2 = state.apply(variables, (5, 2))  # no rng needed, same vector everywhere
    np.testing.assert_array_equal(h1, np.broadcast_to(variables[ri.BUFFERS]["h"][0], (5, 16)))
    np.testing.assert_array_equal(c2[:, 1], c1)
    bound = spec.uniform_bound(16) if strategy == "uniform" else spec.xavier_bound(16)
    assert float(jnp.abs(variables[ri.BUFFERS]["h"]).max()) <= bound
    other = state.init(key(1), (5,))
    assert not np.allclose(other[ri.BUFFERS]["h"], variables[ri.BUFFERS]["h"])


@pytest.mark.parametrize(
    ("init", "check"),
    [
        ("zeros", lambda v: np.all(v == 0)),
        ("uniform", lambda v: 0 < np.abs(v).max() <= spec.uniform_bound(32)),
        ("xavier", lambda v: 0 < np.abs(v).max() <= spec.xavier_bound(32)),
        (nn.initializers.constant(0.25), lambda v: np.all(v == 0.25)),
    ],
)
def test_learnable_init(init, check):
    state = ri.InitialState("learnable", cell="gru", features=32, bidirectional=True, init=init)
    h = np.asarray(state.init(key(), ())["params"]["h"])
    assert h.shape == (2, 32) and check(h)


# --------------------------------------------------------------------------- InitialStateRNN


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_learnable_rnn_equals_bare_rnn_from_the_learned_carry(cell):
    model = ri.InitialStateRNN(CELLS[cell](), strategy="learnable")
    x = inputs()
    variables = random_variables(model, x)
    params = variables["params"]
    assert jax.tree.map(jnp.shape, params["initial_state"]) == (
        {"h": (1, HIDDEN), "c": (1, HIDDEN)} if KIND[cell] == "lstm" else {"h": (1, HIDDEN)}
    )
    vec = {n: jnp.broadcast_to(v[0], (BATCH, HIDDEN)) for n, v in params["initial_state"].items()}
    carry = (vec["c"], vec["h"]) if KIND[cell] == "lstm" else vec["h"]
    bare = nn.RNN(CELLS[cell]())
    expected = jax.jit(bare.apply)({"params": params["rnn"]}, x, initial_carry=carry)

    def loss(p):
        out = model.apply({"params": p}, x)
        return (out**2).sum(), out

    grads, out = jax.jit(jax.grad(loss, has_aux=True))(params)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # the gradient of a loss reaches every entry of the initial carry
    assert grads["initial_state"].keys() == params["initial_state"].keys()
    for g in jax.tree.leaves(grads["initial_state"]):
        assert g.shape == (1, HIDDEN) and float(jnp.abs(g).min()) > 0


def test_unbatched_input_and_explicit_carry():
    model = ri.InitialStateRNN(nn.LSTMCell(HIDDEN), strategy="learnable")
    x = inputs()
    variables = random_variables(model, x)
    apply = jax.jit(model.apply)
    batched = apply(variables, x)
    # unbatched (time, features) input: the same numbers as one batch row
    np.testing.assert_allclose(apply(variables, x[1]), batched[1], rtol=1e-5, atol=1e-6)
    # an explicit carry wins over the learned one: zeros give the bare layer's output
    zero = (jnp.zeros((BATCH, HIDDEN)),) * 2
    bare = nn.RNN(nn.LSTMCell(HIDDEN)).apply({"params": variables["params"]["rnn"]}, x)
    np.testing.assert_allclose(apply(variables, x, initial_carry=zero), bare, rtol=1e-5, atol=1e-6)
    # at init an explicit carry still creates the learned state
    params = model.init(key(), x, initial_carry=zero)["params"]
    assert params["initial_state"]["h"].shape == (1, HIDDEN)


def test_bidirectional_stack_uses_one_row_per_direction_and_layer():
    def layers():
        return [
            nn.GRUCell(features=HIDDEN),
            nn.Bidirectional(nn.RNN(nn.LSTMCell(4)), nn.RNN(nn.LSTMCell(4))),
        ]

    model = ri.InitialStateRNN(layers(), strategy="learnable", init="uniform")
    x = inputs()
    params = random_variables(model, x)["params"]
    assert sorted(params) == ["initial_state_0", "initial_state_1", "rnn_0", "rnn_1"]
    assert params["initial_state_1"]["c"].shape == (2, 4)

    def loss(p):
        carry, out = model.apply({"params": p}, x, return_carry=True)
        return out.sum(), (carry, out)

    grads, ((h0, (fwd, bwd)), out) = jax.jit(jax.grad(loss, has_aux=True))(params)
    assert out.shape == (BATCH, TIME, 8) and h0.shape == (BATCH, HIDDEN)
    assert fwd[0].shape == bwd[1].shape == (BATCH, 4)
    for name in ("initial_state_0", "initial_state_1"):
        for g in jax.tree.leaves(grads[name]):
            assert bool((jnp.abs(g).sum(axis=-1) > 0).all())  # every row is used

    # the same computation by hand, row 0 forward, row 1 backward
    def by_hand(params):
        first, second = layers()
        s0, s1 = params["initial_state_0"], params["initial_state_1"]
        carry0 = jnp.broadcast_to(s0["h"][0], (BATCH, HIDDEN))
        y = nn.RNN(first).apply({"params": params["rnn_0"]}, x, initial_carry=carry0)
        rows = [tuple(jnp.broadcast_to(s1[n][d], (BATCH, 4)) for n in ("c", "h")) for d in (0, 1)]
        return second.apply({"params": params["rnn_1"]}, y, initial_carry=tuple(rows))

    np.testing.assert_allclose(out, jax.jit(by_hand)(params), rtol=1e-5, atol=1e-6)


def test_works_inside_another_module_and_under_jit_and_vmap():
    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(ri.InitialStateRNN(nn.GRUCell(HIDDEN))(x))

    model = Model()
    x = inputs()
    variables = random_variables(model, x)
    assert variables["params"]["InitialStateRNN_0"]["initial_state"]["h"].shape == (1, HIDDEN)
    batched = jax.jit(model.apply)(variables, x)
    per_row = jax.jit(jax.vmap(model.apply, in_axes=(None, 0)))(variables, x)
    np.testing.assert_allclose(per_row, batched, rtol=1e-5, atol=1e-6)


def test_resampled_state_under_vmap_follows_the_keys():
    model = ri.InitialStateRNN(nn.GRUCell(HIDDEN), strategy="uniform")
    x = inputs()
    variables = model.init(key(), x)

    def run(x, k):
        return model.apply(variables, x, rngs={"initial_state": k})

    keys = jnp.stack([key(3), key(3), key(4)])
    out = jax.vmap(run)(x[:1].repeat(3, 0), keys)  # one unbatched sequence per key
    np.testing.assert_array_equal(out[0], out[1])  # the same key, the same draw
    assert not np.allclose(out[0], out[2])


@pytest.mark.parametrize("strategy", ["uniform", "learnable", "noisy"])
def test_one_optax_step_under_jit(strategy):
    model = ri.InitialStateRNN(
        nn.LSTMCell(HIDDEN),
        strategy=strategy,
        **({"base": "learnable"} if strategy == "noisy" else {}),
    )
    x, y = inputs(), jnp.ones((BATCH, TIME, HIDDEN))
    variables = random_variables(model, x)
    tx = optax.adam(0.1)
    opt_state = tx.init(variables["params"])

    @jax.jit
    def step(variables, opt_state, k):
        def loss(params):
            out = model.apply(
                {**variables, "params": params},
                x,
                rngs={"initial_state": k, "noise": k},
                deterministic=False,
            )
            return ((out - y) ** 2).mean()

        value, grads = jax.value_and_grad(loss)(variables["params"])
        updates, opt_state = tx.update(grads, opt_state)
        return {**variables, "params": optax.apply_updates(variables["params"], updates)}, value

    new, _ = step(variables, opt_state, key(7))
    old_cell, new_cell = variables["params"]["rnn"], new["params"]["rnn"]
    moved = jax.tree.map(lambda a, b: bool((a != b).any()), old_cell, new_cell)
    assert all(jax.tree.leaves(moved))
    if strategy in ("learnable", "noisy"):
        for name in ("h", "c"):
            before = variables["params"]["initial_state"][name]
            after = new["params"]["initial_state"][name]
            assert float(jnp.abs(after - before).min()) > 0.05  # adam: about lr per entry
    else:
        assert "initial_state" not in new["params"]


@pytest.mark.parametrize(
    "options",
    [
        {"strategy": "uniform", "resample": False},
        {"strategy": "noisy", "base": "learnable", "learnable_std": True},
    ],
)
def test_variables_round_trip_through_msgpack(options):
    model = ri.InitialStateRNN(nn.OptimizedLSTMCell(HIDDEN), **options)
    x = inputs()
    apply = jax.jit(partial(model.apply, deterministic=True))
    variables = random_variables(model, x)
    blob = flax.serialization.to_bytes(variables)
    assert isinstance(blob, bytes)
    template = random_variables(model, x, i=9)
    restored = flax.serialization.from_bytes(template, blob)
    for a, b in zip(*map(jax.tree.leaves, (variables, restored)), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(apply(restored, x), apply(variables, x))
    assert not np.allclose(apply(template, x), apply(variables, x))


# --------------------------------------------------------------------------- noise


@pytest.mark.parametrize("base", ["zero", "learnable"])
def test_noisy_state_in_training_and_evaluation(base):
    state = ri.InitialState("noisy", cell="lstm", features=64, noise_std=0.3, base=base)
    variables = randomize(state.init(key(), (256,)))
    base_state = state.apply(variables, (256,), deterministic=True)
    if base == "zero":
        assert all(float(jnp.abs(x).max()) == 0 for x in base_state)
    else:
        np.testing.assert_array_equal(base_state[1][7], variables["params"]["h"][0])
    noisy = state.apply(variables, (256,), rngs={"noise": key(1)}, deterministic=False)
    for x, b in zip(noisy, base_state, strict=True):
        assert float((x - b).std()) == pytest.approx(0.3, rel=0.03)
        assert float((x - b).mean()) == pytest.approx(0.0, abs=0.01)
    np.testing.assert_array_equal(
        noisy[0], state.apply(variables, (256,), rngs={"noise": key(1)}, deterministic=False)[0]
    )
    with pytest.raises(ValueError, match="'noise' rng stream"):
        state.apply(variables, (256,), deterministic=False)
    with pytest.raises(ValueError, match="deterministic=True"):
        state.apply(variables, (256,))


def test_learnable_std_starts_at_noise_std_and_keeps_its_floor():
    model = ri.InitialStateRNN(
        nn.GRUCell(HIDDEN), strategy="noisy", noise_std=0.5, learnable_std=True, min_std=0.1
    )
    x = inputs()
    params = model.init(key(), x)["params"]

    def sigma(p):
        return float(spec.noise_std_from_raw(p["initial_state"]["std_raw"], 0.1))

    assert params["initial_state"]["std_raw"].shape == ()
    assert sigma(params) == pytest.approx(0.5, rel=1e-5)
    tx = optax.adam(0.5)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, k):
        def loss(p):  # noise only hurts this loss, so sigma is pushed down
            out = model.apply({"params": p}, x, rngs={"noise": k}, deterministic=False)
            return (out**2).mean()

        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state)
        return optax.apply_updates(params, updates), opt_state

    for i in range(30):
        params, opt_state = step(params, opt_state, key(i))
    assert 0.1 < sigma(params) < 0.2


class Echo(nn.GRUCell):
    """A GRU cell that outputs the carry it reads: the NoisyCell's noise made visible."""

    @nn.compact
    def __call__(self, carry, inputs):
        return carry, carry


class EchoLSTM(nn.LSTMCell):
    @nn.compact
    def __call__(self, carry, inputs):
        return carry, jnp.concatenate(carry, axis=-1)


@pytest.mark.parametrize("echo", [Echo, EchoLSTM])
def test_noisy_cell_adds_fresh_noise_to_every_component_at_every_step(echo):
    x = jnp.zeros((512, 8, 2))
    train = nn.RNN(
        ri.NoisyCell(echo(features=16), noise_std=0.2, deterministic=False),
        split_rngs={"params": False, "noise": True},
    )
    variables = {}  # neither the echo nor a fixed-std NoisyCell has variables
    out = train.apply(variables, x, rngs={"noise": key(1)})
    # the carry passes through, so each step's noise is the increment of the output
    steps = jnp.diff(out, axis=1, prepend=0.0)
    assert float(steps.std()) == pytest.approx(0.2, rel=0.02)
    per_step = steps.reshape(512, 8, -1).std(axis=(0, 2))
    np.testing.assert_allclose(per_step, 0.2, rtol=0.05)  # no step is left out
    corr = np.corrcoef(np.asarray(steps[:, 3]).ravel(), np.asarray(steps[:, 4]).ravel())[0, 1]
    assert abs(corr) < 0.03  # a new draw every step
    evaluate = nn.RNN(ri.NoisyCell(echo(features=16), noise_std=0.2, deterministic=True))
    assert float(jnp.abs(evaluate.apply(variables, x)).max()) == 0.0


def test_noisy_cell_inside_initial_state_rnn():
    model = ri.InitialStateRNN(
        ri.NoisyCell(nn.LSTMCell(HIDDEN), noise_std=0.1, learnable_std=True), strategy="zero"
    )
    x = inputs()
    params = random_variables(model, x)["params"]
    assert params["rnn"]["cell"]["std_raw"].shape == ()
    apply = jax.jit(model.apply, static_argnames="deterministic")
    bare = jax.jit(nn.RNN(nn.LSTMCell(HIDDEN)).apply)({"params": params["rnn"]["cell"]}, x)
    evaluated = apply({"params": params}, x, deterministic=True)
    np.testing.assert_allclose(evaluated, bare, rtol=1e-6, atol=1e-7)
    a = apply({"params": params}, x, deterministic=False, rngs={"noise": key(1)})
    b = apply({"params": params}, x, deterministic=False, rngs={"noise": key(2)})
    assert not np.allclose(a, b) and not np.allclose(a, bare)

    def loss(p):
        out = model.apply({"params": p}, x, deterministic=False, rngs={"noise": key(1)})
        return (out**2).sum()

    assert float(jnp.abs(jax.grad(loss)(params)["rnn"]["cell"]["std_raw"])) > 0
    with pytest.raises(ValueError, match="split_rngs"):
        nn.RNN(ri.NoisyCell(nn.LSTMCell(HIDDEN), learnable_std=True, deterministic=False)).apply(
            {"params": params["rnn"]}, x, rngs={"noise": key(1)}
        )


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: ri.InitialStateRNN(nn.GRUCell(4), strategy="gaussian"), ValueError, "gaussian"),
        (lambda: ri.InitialState(3, cell="gru", features=4), TypeError, "strategy"),
        (lambda: ri.InitialStateRNN(nn.GRUCell(4), "zero", bound=1.0), ValueError, "bound"),
        (lambda: ri.InitialStateRNN(nn.GRUCell(4), "noisy", noise_std=-0.1), ValueError, "-0.1"),
        (
            lambda: ri.InitialStateRNN(nn.GRUCell(4), "noisy", learnable_std=True, noise_std=0.0),
            ValueError,
            "min_std",
        ),
        (lambda: ri.InitialStateRNN(nn.GRUCell(4), "xavier", seed=0), ValueError, "rng stream"),
        (lambda: ri.NoisyCell(nn.MGUCell(4)), TypeError, "MGUCell"),  # built-in cells only
        (lambda: ri.InitialStateRNN(nn.Dense(4)), TypeError, "Dense"),
        (lambda: ri.InitialStateRNN([]), ValueError, "at least one layer"),
        (lambda: ri.InitialState("zero", cell="conv"), ValueError, "conv"),
        (lambda: ri.InitialState("zero", cell="gru"), ValueError, "features"),
        (lambda: ri.InitialState("learnable", features=4, init="normal"), ValueError, "normal"),
        (lambda: ri.NoisyCell(nn.GRUCell(4), noise_std=-1.0), ValueError, "-1.0"),
        (lambda: ri.NoisyCell(nn.Dense(4)), TypeError, "Dense"),
        (
            lambda: ri.InitialStateRNN(
                nn.Bidirectional(nn.RNN(nn.GRUCell(4)), nn.RNN(nn.LSTMCell(4)))
            ),
            ValueError,
            "same cell kind",
        ),
    ],
)
def test_bad_configuration_is_rejected_at_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_carry_and_inputs_are_rejected():
    lstm = ri.InitialStateRNN(nn.LSTMCell(HIDDEN))
    x = inputs()
    variables = lstm.init(key(), x)
    h = jnp.zeros((BATCH, HIDDEN))
    with pytest.raises(TypeError, match=r"\(c, h\)"):
        lstm.apply(variables, x, initial_carry=h)
    with pytest.raises(ValueError, match=r"initial state h has shape \(5, 5\); expected \(4, 5\)"):
        lstm.apply(variables, x, initial_carry=(h, jnp.zeros((BATCH + 1, HIDDEN))))
    with pytest.raises(ValueError, match="time, features"):
        lstm.apply(variables, x[0, 0])
    with pytest.raises(ValueError, match="init returned shape"):
        ri.InitialState("learnable", features=4, init=lambda k, s, d: jnp.zeros(4)).init(key())


def test_missing_streams_and_collections_are_named():
    model = ri.InitialStateRNN(nn.GRUCell(HIDDEN), strategy="uniform")
    x = inputs()
    variables = model.init(key(), x)  # init falls back to the params stream
    with pytest.raises(ValueError, match="'initial_state' rng stream"):
        model.apply(variables, x)
    stored = ri.InitialStateRNN(nn.GRUCell(HIDDEN), strategy="uniform", resample=False)
    variables = stored.init(key(), x)
    with pytest.raises(ValueError, match="'buffers' collection"):
        stored.apply({"params": variables["params"]}, x)


def test_importing_the_package_loads_no_framework():
    code = "import sys, reference_impl.flax; print('jax' in sys.modules, 'flax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
