"""Any cell of the Flax protocol, wrapped: linen and NNX ``InitialStateRNN`` over an
``RNNCellBase`` other than the built-in ones (a user's layer-normalized LSTM, linen's
``ConvLSTMCell`` and ``MGUCell``, an NNX cell with a spatial carry). The carry's
structure and shapes come from the cell's ``initialize_carry``; with ``strategy="zero"``
the wrapper computes what the bare layer computes."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")
jnp = jax.numpy

from reference_impl import spec  # noqa: E402
from reference_impl.flax import linen as ri  # noqa: E402
from reference_impl.flax import nnx as ri_nnx  # noqa: E402

SEQ = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
GRID = np.random.default_rng(1).normal(size=(2, 3, 4, 4, 2)).astype(np.float32)


def gates(z, c):
    i, f, g, o = jnp.split(z, 4, -1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return c, jax.nn.sigmoid(o) * jnp.tanh(c)


class LayerNormLSTMCell(nn.RNNCellBase):
    """A user's linen cell: an LSTM with layer-normalized gates, carry ``(c, h)``."""

    features: int

    @nn.compact
    def __call__(self, carry, x):
        c, h = carry
        z = nn.LayerNorm()(nn.Dense(4 * self.features)(jnp.concatenate([x, h], -1)))
        c, h = gates(z, c)
        return (c, h), h

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        zeros = jnp.zeros((*input_shape[:-1], self.features))
        return zeros, zeros

    @property
    def num_feature_axes(self) -> int:
        return 1


LINEN = {  # name: (cell, input, the carry's shapes without batch axes)
    "layer-norm-lstm": (lambda: LayerNormLSTMCell(4), SEQ, [(4,), (4,)]),
    "mgu": (lambda: nn.MGUCell(4), SEQ, [(4,)]),
    "conv-lstm": (lambda: nn.ConvLSTMCell(3, (3, 3)), GRID, [(4, 4, 3), (4, 4, 3)]),
}


def linen_pair(name, strategy, bidirectional=False, **options):
    make, x, shapes = LINEN[name]
    bare = nn.Bidirectional(nn.RNN(make()), nn.RNN(make())) if bidirectional else nn.RNN(make())
    variables = bare.init(jax.random.key(0), x)
    model = ri.InitialStateRNN(bare, strategy, **options)
    own = model.init(jax.random.key(1), x)
    own = {**own, "params": {**own["params"], "rnn": variables["params"]}}  # the same weights
    return bare, variables, model, own, x, shapes


@pytest.mark.parametrize("name", LINEN)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_linen_any_cell_with_zero_is_the_bare_layer(name, bidirectional):
    bare, variables, model, own, x, _ = linen_pair(name, "zero", bidirectional)
    want = bare.apply(variables, x)
    np.testing.assert_allclose(model.apply(own, x), want, rtol=1e-6, atol=1e-6)
    # an explicit carry, in the cell's own structure, still wins
    carry = bare.apply(variables, x, return_carry=True)[0]
    want = bare.apply(variables, x, initial_carry=carry)
    got = model.apply(own, x, initial_carry=carry)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", LINEN)
def test_linen_a_learnable_carry_has_one_parameter_per_element(name):
    """Every array of the carry gets a parameter of its own shape (a ConvLSTMCell's: a
    start for each position and channel), broadcast over the batch axes only; the layer
    runs from it, and gradients reach it."""
    bare, variables, model, own, x, shapes = linen_pair(name, "learnable", init="uniform")
    params = own["params"]["initial_state"]
    names = [f"state_{i}" for i in range(len(shapes))]
    assert {n: params[n].shape for n in names} == {
        n: (1, *s) for n, s in zip(names, shapes, strict=True)
    }
    bound = spec.uniform_bound(shapes[0][-1])  # the last axis sets the bound
    assert 0 < float(jnp.abs(params["state_0"]).max()) <= bound
    leaves = [jnp.broadcast_to(params[n][0], (2, *s)) for n, s in zip(names, shapes, strict=True)]
    treedef = jax.tree.structure(bare.apply(variables, x, return_carry=True)[0])
    want = bare.apply(variables, x, initial_carry=jax.tree.unflatten(treedef, leaves))
    np.testing.assert_allclose(model.apply(own, x), want, rtol=1e-6, atol=1e-6)
    grads = jax.grad(lambda p: (model.apply({"params": p}, x) ** 2).sum())(own["params"])
    for n in names:
        assert float(jnp.abs(grads["initial_state"][n]).sum()) > 0


@pytest.mark.parametrize("name", ["layer-norm-lstm", "conv-lstm"])
def test_linen_a_noisy_carry_is_the_base_in_evaluation(name):
    bare, variables, model, own, x, _ = linen_pair(name, "noisy", noise_std=0.5)
    evaluated = model.apply(own, x, deterministic=True)
    np.testing.assert_allclose(evaluated, bare.apply(variables, x), rtol=1e-6, atol=1e-6)
    noisy = model.apply(own, x, deterministic=False, rngs={"noise": jax.random.key(2)})
    assert float(jnp.abs(noisy - evaluated).max()) > 1e-3


def test_linen_a_stack_of_any_cells_and_its_given_carries():
    model = ri.InitialStateRNN([LayerNormLSTMCell(4), nn.MGUCell(5)], "learnable")
    variables = model.init(jax.random.key(0), SEQ)
    carry, y = model.apply(variables, SEQ, return_carry=True)
    assert y.shape == (2, 5, 5)
    assert jax.tree.map(jnp.shape, carry) == (((2, 4), (2, 4)), (2, 5))
    np.testing.assert_array_equal(model.apply(variables, SEQ, initial_carry=carry).shape, y.shape)
    wrong = (carry[0], jnp.zeros((2, 6)))
    with pytest.raises(ValueError, match=r"initial state state_0\[1\] has shape \(2, 6\)"):
        model.apply(variables, SEQ, initial_carry=wrong)


class NoCarry(nn.RNNCellBase):
    features: int = 4

    @nn.compact
    def __call__(self, carry, x):
        return carry, x


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        (lambda: nn.Dense(4), "got Dense, which is not an nn.RNNCellBase"),
        (lambda: NoCarry(), "NoCarry does not define initialize_carry, and does not define num"),
    ],
)
def test_linen_a_cell_outside_the_protocol_is_named(cell, message):
    with pytest.raises(TypeError, match=message):
        ri.InitialStateRNN(cell(), "zero")


def test_linen_noisy_cell_still_wraps_the_built_in_cells_only():
    with pytest.raises(TypeError, match="unsupported cell LayerNormLSTMCell"):
        ri.NoisyCell(LayerNormLSTMCell(4))


def test_linen_initial_state_of_any_carry():
    cell = nn.ConvLSTMCell(3, (3, 3))
    carry = jax.eval_shape(lambda: cell.initialize_carry(jax.random.key(0), (4, 4, 2)))
    state = ri.InitialState("xavier", carry=carry, resample=False)
    variables = state.init(jax.random.key(0), (2,))
    c, h = state.apply(variables, (2,))
    assert c.shape == h.shape == (2, 4, 4, 3)
    assert float(jnp.abs(h).max()) <= spec.xavier_bound(3) and bool((h == h[0]).all())
    with pytest.raises(ValueError, match="needs carry="):
        ri.InitialState("zero", cell=LayerNormLSTMCell(4))


# --------------------------------------------------------------------------- NNX


class NNXLayerNormLSTMCell(nnx.RNNCellBase):
    """The same user's cell in NNX (no ``in_features`` attribute)."""

    def __init__(self, fin: int, features: int, rngs: nnx.Rngs):
        self.features = features
        self.dense = nnx.Linear(fin + features, 4 * features, rngs=rngs)
        self.norm = nnx.LayerNorm(4 * features, rngs=rngs)

    def __call__(self, carry, x):
        c, h = gates(self.norm(self.dense(jnp.concatenate([x, carry[1]], -1))), carry[0])
        return (c, h), h

    def initialize_carry(self, input_shape, rngs=None):
        zeros = jnp.zeros((*input_shape[:-1], self.features))
        return zeros, zeros

    @property
    def num_feature_axes(self) -> int:
        return 1


class NNXConvCell(nnx.RNNCellBase):
    """An NNX cell with a spatial carry ``(*batch, width, features)``: inputs
    ``(*batch, width, channels)``, two feature axes."""

    def __init__(self, channels: int, features: int, rngs: nnx.Rngs):
        self.features = features
        self.conv = nnx.Conv(channels + features, features, (3,), padding="SAME", rngs=rngs)

    def __call__(self, carry, x):
        h = jnp.tanh(self.conv(jnp.concatenate([x, carry], -1)))
        return h, h

    def initialize_carry(self, input_shape, rngs=None):
        return jnp.zeros((*input_shape[:-1], self.features))

    @property
    def num_feature_axes(self) -> int:
        return 2


STRIP = GRID[:, :, 0]  # (batch, time, width, channels)


@pytest.mark.parametrize("strategy", ["zero", "learnable", "noisy"])
def test_nnx_any_cell(strategy):
    cell = NNXLayerNormLSTMCell(3, 4, nnx.Rngs(0))
    model = (
        ri_nnx.InitialStateRNN(cell, strategy, seed=0, init="uniform")
        if strategy == "learnable"
        else ri_nnx.InitialStateRNN(cell, strategy, seed=0)
    )
    want = nnx.RNN(cell)(SEQ)
    if strategy == "learnable":
        start = model.initial_state
        assert start.state_0.shape == start.state_1.shape == (1, 4)
        carry = (
            jnp.broadcast_to(start.state_0[0], (2, 4)),
            jnp.broadcast_to(start.state_1[0], (2, 4)),
        )
        want = nnx.RNN(cell)(SEQ, initial_carry=carry)
    model.eval()
    np.testing.assert_allclose(model(SEQ), want, rtol=1e-6, atol=1e-6)
    if strategy == "noisy":
        model.train()
        assert float(jnp.abs(model(SEQ) - want).max()) > 1e-3


def test_nnx_a_spatial_carry_needs_the_input_features():
    cell = NNXConvCell(2, 3, nnx.Rngs(0))
    with pytest.raises(ValueError, match="input_features="):
        ri_nnx.InitialStateRNN(cell, "learnable")
    model = ri_nnx.InitialStateRNN(cell, "learnable", input_features=(4, 2), init="uniform", seed=0)
    assert model.initial_state.state_0.shape == (1, 4, 3)  # one start per position
    start = jnp.broadcast_to(model.initial_state.state_0[0], (2, 4, 3))
    want = nnx.RNN(cell)(STRIP, initial_carry=start)
    np.testing.assert_allclose(model(STRIP), want, rtol=1e-6, atol=1e-6)
    zero = ri_nnx.InitialStateRNN(cell, "zero", input_features=(4, 2))
    np.testing.assert_allclose(zero(STRIP), nnx.RNN(cell)(STRIP), rtol=1e-6, atol=1e-6)
