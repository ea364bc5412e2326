"""reference_impl.flax.nnx against spec.py: values, statistics, gradients, round trips, errors."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx

from reference_impl import spec
from reference_impl.flax import nnx as ri

FEATURES, HIDDEN, BATCH, TIME = 3, 5, 4, 6
CELLS = {
    "gru": nnx.GRUCell,
    "lstm": nnx.LSTMCell,
    "optimized_lstm": nnx.OptimizedLSTMCell,
    "rnn": nnx.SimpleCell,
}
KIND = {"gru": "gru", "lstm": "lstm", "optimized_lstm": "lstm", "rnn": "rnn"}


def make_cell(name, in_features=FEATURES, hidden=HIDDEN, seed=0):
    return CELLS[name](in_features, hidden, rngs=nnx.Rngs(seed))


def inputs(batch=(BATCH,), i=1):
    return jax.random.normal(jax.random.key(i), (*batch, TIME, FEATURES))


def randomize(model, filter=nnx.Param, i=5):
    """Set the selected variables to non-trivial values (learned states start at zero)."""
    state = nnx.state(model, filter)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(i), len(leaves))
    new = [0.5 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    nnx.update(model, jax.tree.unflatten(treedef, new))


@nnx.jit
def forward(model, x):
    return model(x)


# --------------------------------------------------------------------------- InitialState


def test_a_resampled_state_draws_from_its_own_stream_or_the_calls_rngs():
    """The bound and statistics are the conformance suite's; here the NNX streams."""
    state = ri.InitialState("uniform", cell="lstm", features=8, seed=0)
    h = state((16,))[1]
    assert not np.allclose(state((16,))[1], h)  # the stream advances
    twin = ri.InitialState("uniform", cell="lstm", features=8, seed=0)
    np.testing.assert_array_equal(twin((16,))[1], h)  # the same seed, the same sequence
    np.testing.assert_array_equal(
        state((16,), rngs=nnx.Rngs(3))[1], twin((16,), rngs=nnx.Rngs(3))[1]
    )


def test_resample_false_is_a_buffer_that_optimizers_never_see():
    state = ri.InitialState("uniform", cell="lstm", features=16, resample=False, rngs=nnx.Rngs(0))
    assert isinstance(state.h, ri.Buffer) and state.h.shape == (1, 16)
    assert not jax.tree.leaves(nnx.state(state, nnx.Param))
    c, h = state((5, 2))
    np.testing.assert_array_equal(h, np.broadcast_to(state.h[...][0], (5, 2, 16)))
    assert float(jnp.abs(c).max()) <= spec.uniform_bound(16)
    other = ri.InitialState("uniform", cell="lstm", features=16, resample=False, seed=1)
    assert not np.allclose(other.h[...], state.h[...])
    nnx.update(other, nnx.state(state, ri.Buffer))  # saved and restored with the state
    np.testing.assert_array_equal(other((5, 2))[1], h)


@pytest.mark.parametrize(
    ("init", "check"),
    [
        ("zeros", lambda v: np.all(v == 0)),
        ("uniform", lambda v: 0 < np.abs(v).max() <= spec.uniform_bound(32)),
        ("xavier", lambda v: 0 < np.abs(v).max() <= spec.xavier_bound(32)),
        (jax.nn.initializers.constant(0.25), lambda v: np.all(v == 0.25)),
    ],
)
def test_learnable_init(init, check):
    state = ri.InitialState("learnable", features=32, bidirectional=True, init=init, seed=0)
    assert isinstance(state.h, nnx.Param)
    assert state.h.shape == (2, 32) and check(np.asarray(state.h[...]))


# --------------------------------------------------------------------------- InitialStateRNN


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_learnable_rnn_equals_bare_rnn_and_gets_gradients(cell):
    model = ri.InitialStateRNN(make_cell(cell), strategy="learnable")
    randomize(model)
    names = ("h", "c") if KIND[cell] == "lstm" else ("h",)
    assert {n: getattr(model.initial_state, n).shape for n in names} == {
        n: (1, HIDDEN) for n in names
    }
    x = inputs()
    vec = {
        n: jnp.broadcast_to(getattr(model.initial_state, n)[...][0], (BATCH, HIDDEN)) for n in names
    }
    carry = (vec["c"], vec["h"]) if KIND[cell] == "lstm" else vec["h"]

    @nnx.jit
    def run(model, x, carry):
        def loss(model):
            out = model(x)
            return (out**2).sum(), out

        grads, out = nnx.grad(loss, has_aux=True)(model)
        return grads, out, model.rnn(x, initial_carry=carry)

    grads, out, expected = run(model, x, carry)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    for n in names:
        g = getattr(grads.initial_state, n)[...]
        assert g.shape == (1, HIDDEN) and float(jnp.abs(g).min()) > 0


def test_unbatched_input_explicit_carry_and_bad_carry():
    model = ri.InitialStateRNN(make_cell("lstm"), strategy="learnable")
    randomize(model)
    x = inputs()
    batched = forward(model, x)
    np.testing.assert_allclose(forward(model, x[1]), batched[1], rtol=1e-5, atol=1e-6)
    zero = (jnp.zeros((BATCH, HIDDEN)),) * 2
    np.testing.assert_allclose(model(x, initial_carry=zero), model.rnn(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match=r"\(c, h\)"):
        model(x, initial_carry=zero[0])
    with pytest.raises(ValueError, match=r"initial state h has shape \(4, 6\); expected \(4, 5\)"):
        model(x, initial_carry=(zero[0], jnp.zeros((BATCH, HIDDEN + 1))))
    with pytest.raises(ValueError, match="time, features"):
        model(x[0, 0])


def test_bidirectional_stack_uses_one_row_per_direction_and_layer():
    bidirectional = nnx.Bidirectional(
        nnx.RNN(nnx.LSTMCell(HIDDEN, 4, rngs=nnx.Rngs(1))),
        nnx.RNN(nnx.LSTMCell(HIDDEN, 4, rngs=nnx.Rngs(2))),
    )
    model = ri.InitialStateRNN([make_cell("gru"), bidirectional], init="uniform", seed=0)
    assert isinstance(model.rnn, nnx.List) and isinstance(model.initial_state, nnx.List)
    first, second = model.initial_state
    assert first.h.shape == (1, HIDDEN) and second.c.shape == (2, 4)
    assert not np.allclose(first.h[...][0, :4], second.h[...][0])  # layers draw apart
    x = inputs()

    @nnx.jit
    def run(model, x):
        def loss(model):
            carry, out = model(x, return_carry=True)
            return out.sum(), (carry, out)

        grads, (carry, out) = nnx.grad(loss, has_aux=True)(model)
        # the same computation by hand, row 0 forward, row 1 backward
        y = model.rnn[0](x, initial_carry=jnp.broadcast_to(first.h[...][0], (BATCH, HIDDEN)))
        rows = [
            tuple(jnp.broadcast_to(getattr(second, n)[...][d], (BATCH, 4)) for n in ("c", "h"))
            for d in (0, 1)
        ]
        return grads, carry, out, model.rnn[1](y, initial_carry=tuple(rows))

    grads, (h0, (fwd, bwd)), out, expected = run(model, x)
    assert out.shape == (BATCH, TIME, 8) and h0.shape == (BATCH, HIDDEN)
    assert fwd[0].shape == bwd[1].shape == (BATCH, 4)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    for i in (0, 1):
        for g in jax.tree.leaves(grads.initial_state[i]):
            assert bool((jnp.abs(g).sum(axis=-1) > 0).all())  # every row is used


@pytest.mark.parametrize("strategy", ["uniform", "learnable", "noisy"])
def test_one_optimizer_step_under_nnx_jit(strategy):
    options = {"base": "learnable", "learnable_std": True} if strategy == "noisy" else {}
    model = ri.InitialStateRNN(make_cell("lstm"), strategy=strategy, seed=0, **options)
    optimizer = nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)
    x, y = inputs(), jnp.ones((BATCH, TIME, HIDDEN))

    @nnx.jit
    def step(model, optimizer, x):
        def loss(model):
            return ((model(x) - y) ** 2).mean()

        value, grads = nnx.value_and_grad(loss)(model)
        optimizer.update(model, grads)
        return value

    before = nnx.clone(nnx.state(model))
    step(model, optimizer, x)
    after = nnx.state(model)
    assert not np.allclose(
        before["rnn"]["cell"]["hi"]["kernel"][...], after["rnn"]["cell"]["hi"]["kernel"][...]
    )
    if strategy == "uniform":
        assert not jax.tree.leaves(nnx.state(model.initial_state, nnx.Param))
        count = [s["initial_state"]["rngs"]["count"][...] for s in (before, after)]
        assert int(count[1]) == int(count[0]) + 1  # the stream advanced under jit
    else:
        for n in ("h", "c"):
            moved = after["initial_state"][n][...] - before["initial_state"][n][...]
            assert float(jnp.abs(moved).min()) > 0.05  # adam: about lr per entry


def test_state_round_trips_through_nnx_state_and_msgpack():
    def build(seed):
        cell = make_cell("optimized_lstm", seed=seed)
        return ri.InitialStateRNN(
            cell, strategy="noisy", base="learnable", learnable_std=True, seed=seed
        )

    model, other = build(0), build(1)
    randomize(model)
    model.eval(), other.eval()
    x = inputs()
    expected = forward(model, x)
    assert not np.allclose(forward(other, x), expected)
    nnx.update(other, nnx.state(model))
    np.testing.assert_array_equal(forward(other, x), expected)

    # to bytes and back, through a plain dict of the parameters and buffers (rng
    # streams hold typed keys, which msgpack cannot store)
    saved = nnx.Any(nnx.Param, ri.Buffer)
    blob = flax.serialization.to_bytes(nnx.to_pure_dict(nnx.state(model, saved)))
    restored = build(2)
    restored.eval()
    state = nnx.state(restored, saved)
    nnx.replace_by_pure_dict(state, flax.serialization.msgpack_restore(blob))
    nnx.update(restored, state)
    np.testing.assert_array_equal(forward(restored, x), expected)
    std = [m.initial_state.std_raw[...] for m in (restored, model)]
    np.testing.assert_array_equal(*std)


# --------------------------------------------------------------------------- noise


def test_noise_is_on_in_train_and_off_in_eval():
    model = ri.InitialStateRNN(
        make_cell("gru"), strategy="noisy", base="learnable", noise_std=0.3, seed=0
    )
    randomize(model)
    x = inputs()
    a, b = forward(model, x), forward(model, x)
    assert not np.allclose(a, b)
    model.eval()
    base = forward(model, x)
    carry = jnp.broadcast_to(model.initial_state.h[...][0], (BATCH, HIDDEN))
    np.testing.assert_allclose(base, model.rnn(x, initial_carry=carry), rtol=1e-6)
    np.testing.assert_array_equal(forward(model, x), base)
    trained = nnx.view(model, deterministic=False)
    assert not np.allclose(forward(trained, x), base)
    # the noise itself: N(0, 0.3^2) around the base, from the module's own stream
    state = ri.InitialState("noisy", cell="lstm", features=64, noise_std=0.3, seed=0)
    c, h = state((256,))
    assert float(h.std()) == pytest.approx(0.3, rel=0.03)
    assert float(c.mean()) == pytest.approx(0.0, abs=0.01)
    state.eval()
    assert float(jnp.abs(state((256,))[0]).max()) == 0.0


def test_learnable_std_keeps_its_floor():
    model = ri.InitialStateRNN(
        make_cell("gru"), strategy="noisy", noise_std=0.5, learnable_std=True, min_std=0.1, seed=0
    )
    assert float(model.initial_state.noise_std) == pytest.approx(0.5, rel=1e-5)
    optimizer = nnx.Optimizer(model, optax.adam(0.5), wrt=nnx.Param)
    x = inputs()

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: (m(x) ** 2).mean())(model)
        optimizer.update(model, grads)

    for _ in range(30):
        step(model, optimizer)
    assert 0.1 < float(model.initial_state.noise_std) < 0.2


class Echo(nnx.GRUCell):
    """A GRU cell that outputs the carry it reads: the NoisyCell's noise made visible."""

    def __call__(self, carry, inputs):
        return carry, carry


class EchoLSTM(nnx.LSTMCell):
    def __call__(self, carry, inputs):
        return carry, jnp.concatenate(carry, axis=-1)


@pytest.mark.parametrize("echo", [Echo, EchoLSTM])
def test_noisy_cell_adds_fresh_noise_to_every_component_at_every_step(echo):
    cell = ri.NoisyCell(echo(2, 16, rngs=nnx.Rngs(0)), noise_std=0.2, seed=1)
    rnn = nnx.RNN(cell)
    x = jnp.zeros((512, 8, 2))
    out = forward(rnn, x)
    # the carry passes through, so each step's noise is the increment of the output
    steps = jnp.diff(out, axis=1, prepend=0.0)
    assert float(steps.std()) == pytest.approx(0.2, rel=0.02)
    np.testing.assert_allclose(steps.reshape(512, 8, -1).std(axis=(0, 2)), 0.2, rtol=0.05)
    corr = np.corrcoef(np.asarray(steps[:, 3]).ravel(), np.asarray(steps[:, 4]).ravel())[0, 1]
    assert abs(corr) < 0.03  # a new key every step
    rnn.eval()
    assert float(jnp.abs(forward(rnn, x)).max()) == 0.0


def test_noisy_cell_inside_initial_state_rnn():
    cell = ri.NoisyCell(make_cell("lstm"), noise_std=0.1, learnable_std=True, rngs=nnx.Rngs(3))
    model = ri.InitialStateRNN(cell, strategy="zero", deterministic=True)
    assert model.rnn.cell.deterministic and model.initial_state.deterministic
    x = inputs()
    evaluated = forward(model, x)
    np.testing.assert_allclose(evaluated, nnx.RNN(cell.cell)(x), rtol=1e-6, atol=1e-7)
    model.train()
    assert not np.allclose(forward(model, x), evaluated)
    grads = nnx.grad(lambda m: (m(x) ** 2).sum())(model)
    assert float(jnp.abs(grads.rnn.cell.std_raw[...])) > 0


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: ri.InitialStateRNN(make_cell("gru"), strategy="gaussian"), ValueError, "gaussian"),
        (lambda: ri.InitialStateRNN(make_cell("gru"), "zero", bound=1.0), ValueError, "bound"),
        (lambda: ri.InitialStateRNN(make_cell("gru"), "noisy", noise_std=-0.1), ValueError, "-0.1"),
        (lambda: ri.InitialStateRNN(linen.GRUCell(4)), TypeError, "GRUCell"),
        (lambda: ri.InitialStateRNN(nnx.Linear(2, 3, rngs=nnx.Rngs(0))), TypeError, "Linear"),
        (lambda: ri.NoisyCell(nnx.Linear(2, 3, rngs=nnx.Rngs(0))), TypeError, "Linear"),
        (lambda: ri.NoisyCell(make_cell("gru"), noise_std=-1.0), ValueError, "-1.0"),
        (lambda: ri.InitialState("zero", cell="gru"), ValueError, "features"),
        (
            lambda: ri.InitialState("xavier", features=4, seed=0, rngs=nnx.Rngs(0)),
            ValueError,
            "not both",
        ),
        (lambda: ri.InitialState("learnable", features=4, init="xavier"), ValueError, "rngs"),
        (lambda: ri.InitialState("uniform", features=4, resample=False), ValueError, "rngs"),
        (
            lambda: ri.InitialState("noisy", features=4, rngs=nnx.Rngs(params=0)),
            ValueError,
            "'noise' stream",
        ),
    ],
)
def test_bad_configuration_is_rejected_at_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_missing_rngs_at_call_name_the_stream():
    with pytest.raises(ValueError, match="'initial_state' rng stream"):
        ri.InitialState("uniform", features=4)((2,))
    with pytest.raises(ValueError, match="'noise' rng stream"):
        ri.InitialState("noisy", features=4)((2,))
    assert ri.InitialState("noisy", features=4, deterministic=True)((2,)).shape == (2, 4)
    state = ri.InitialState("uniform", features=4)
    assert state((2,), rngs=nnx.Rngs(0)).shape == (2, 4)


def test_the_classes_signatures_are_their_constructors_and_an_instance_is_its_call():
    import inspect

    for cls, first in (
        (ri.InitialStateRNN, ["rnn", "strategy"]),
        (ri.InitialState, ["strategy"]),
        (ri.NoisyCell, ["cell", "noise_std", "learnable_std"]),
    ):
        names = list(inspect.signature(cls).parameters)
        assert names[: len(first)] == first, names  # not NNX's metaclass (*args, **kwargs)
        assert "rngs" in names and "self" not in names
    model = ri.InitialStateRNN(nnx.RNN(nnx.GRUCell(3, 4, rngs=nnx.Rngs(0))), "zero")
    assert list(inspect.signature(model).parameters)[0] == "inputs"
    graph, state = nnx.split(model)  # the class attribute is not part of the module's state
    assert "__signature__" not in str(graph)
    assert nnx.merge(graph, state)(jnp.ones((2, 5, 3))).shape == (2, 5, 4)
