"""Flax NoisyCell inside InitialStateRNN: the noise of every step drawn before the scan.

Both Flax APIs: the result equals ``spec.noisy_cell_step`` step for step given the
same noise, the scan body draws nothing, the same keys give the same numbers,
evaluation is the bare cell; plus ``seq_lengths`` and reading and setting sigma.
"""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from reference_impl import spec
from reference_impl.flax import _common
from reference_impl.flax import linen as ri
from reference_impl.flax import nnx as ri_nnx

B, T, F_IN, F = 3, 5, 2, 4
X = np.asarray(jax.random.normal(jax.random.key(11), (B, T, F_IN)))
LINEN = {"gru": nn.GRUCell, "lstm": nn.LSTMCell, "rnn": nn.SimpleCell}
NNX = {"gru": nnx.GRUCell, "lstm": nnx.LSTMCell, "rnn": nnx.SimpleCell}


@pytest.fixture
def drawn(monkeypatch):
    """Records the inputs-with-noise arrays InitialStateRNN builds before each scan."""
    seen = []
    original = _common.append_noise

    def spy(inputs, key, info):
        out = original(inputs, key, info)
        seen.append(np.asarray(out[..., inputs.shape[-1] :]))
        return out

    monkeypatch.setattr(_common, "append_noise", spy)
    return seen


def reference(step, eps, kind, sigma, direction=0, directions=1):
    """Outputs of one direction from ``spec.noisy_cell_step`` fed the recorded noise."""
    width = F * (2 if kind == "lstm" else 1)
    block = eps[..., direction * width : (direction + 1) * width]
    state = (np.zeros((B, F)),) * 2 if kind == "lstm" else np.zeros((B, F))
    times = range(T - 1, -1, -1) if direction == 1 else range(T)
    outs = np.zeros((B, T, F))
    for t in times:
        e = block[:, t]
        noise = (e[:, F:], e[:, :F]) if kind == "lstm" else e  # Flax carries (c, h)
        out, state = spec.noisy_cell_step(step, X[:, t], state, sigma, noise=noise)
        outs[:, t] = out
    return outs, state


def linen_step(cell, params):
    def step(x_t, state):
        carry, out = cell.apply({"params": params}, state, jnp.asarray(x_t, jnp.float32))
        return np.asarray(out), jax.tree.map(np.asarray, carry)

    return step


def nnx_step(cell):
    def step(x_t, state):
        carry, out = cell(state, jnp.asarray(x_t, jnp.float32))
        return np.asarray(out), jax.tree.map(np.asarray, carry)

    return step


@pytest.mark.parametrize("kind", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("bidirectional", [True])  # one direction: tests/test_conformance.py
def test_linen_predrawn_noise_equals_the_spec_step(drawn, kind, bidirectional):
    sigma = 0.3

    def noisy():
        return ri.NoisyCell(LINEN[kind](F), noise_std=sigma)

    layer = nn.Bidirectional(nn.RNN(noisy()), nn.RNN(noisy())) if bidirectional else noisy()
    model = ri.InitialStateRNN(layer, "zero", deterministic=False)
    variables = model.init(jax.random.key(0), X)
    drawn.clear()  # init ran in training too
    got = np.asarray(model.apply(variables, X, rngs={"noise": jax.random.key(1)}))
    assert len(drawn) == 1 and drawn[0].shape == (
        B,
        T,
        (1 + bidirectional) * F * (1 + (kind == "lstm")),
    )
    params = variables["params"]["rnn"]
    for d in range(1 + bidirectional):
        p = params[("forward_rnn", "backward_rnn")[d]] if bidirectional else params
        want, _ = reference(linen_step(LINEN[kind](F), p["cell"]["cell"]), drawn[0], kind, sigma, d)
        np.testing.assert_allclose(got[..., d * F : (d + 1) * F], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["gru", "lstm", "rnn"])
@pytest.mark.parametrize("bidirectional", [True])  # one direction: tests/test_conformance.py
def test_nnx_predrawn_noise_equals_the_spec_step(drawn, kind, bidirectional):
    sigma, rngs = 0.3, nnx.Rngs(0)

    def noisy():
        return ri_nnx.NoisyCell(NNX[kind](F_IN, F, rngs=rngs), noise_std=sigma, seed=4)

    layer = nnx.Bidirectional(nnx.RNN(noisy()), nnx.RNN(noisy())) if bidirectional else noisy()
    model = ri_nnx.InitialStateRNN(layer, "zero")
    got = np.asarray(model(X))
    assert len(drawn) == 1
    rnns = (model.rnn.forward_rnn, model.rnn.backward_rnn) if bidirectional else (model.rnn,)
    for d, rnn in enumerate(rnns):
        want, _ = reference(nnx_step(rnn.cell.cell), drawn[0], kind, sigma, d)
        np.testing.assert_allclose(got[..., d * F : (d + 1) * F], want, rtol=1e-5, atol=1e-6)
    assert all(rnn.cell.noise_block is None for rnn in rnns)  # reset after the call


def test_scan_body_draws_nothing():
    """The recurrence reads its noise as an input: no random op inside the scan."""

    def random_ops(jaxpr, inside=False):
        count = 0
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if inside and ("random" in name or "threefry" in name):
                count += 1
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                count += random_ops(sub, inside or name == "scan")
        return count

    model = ri.InitialStateRNN(ri.NoisyCell(nn.GRUCell(F), noise_std=0.2), "zero")
    variables = model.init(jax.random.key(0), X)

    def run(v, deterministic):
        return model.apply(v, X, deterministic=deterministic, rngs={"noise": jax.random.key(1)})

    assert random_ops(jax.make_jaxpr(run, static_argnums=1)(variables, False).jaxpr) == 0
    bare = nn.RNN(
        ri.NoisyCell(nn.GRUCell(F), noise_std=0.2, deterministic=False),
        split_rngs={"params": False, "noise": True},
    )
    per_step = jax.make_jaxpr(lambda v: bare.apply(v, X, rngs={"noise": jax.random.key(1)}))(
        bare.init(jax.random.key(0), X)
    )
    assert random_ops(per_step.jaxpr) > 0  # the check sees draws where there are some


def test_linen_same_key_same_numbers_and_eval_is_the_bare_cell():
    cell = ri.NoisyCell(nn.LSTMCell(F), noise_std=0.3, learnable_std=True)
    model = ri.InitialStateRNN(cell, "learnable")
    variables = model.init(jax.random.key(0), X)

    def run(key, deterministic=False):
        rngs = {"noise": jax.random.key(key)}
        return np.asarray(model.apply(variables, X, deterministic=deterministic, rngs=rngs))

    np.testing.assert_array_equal(run(1), run(1))
    assert np.abs(run(1) - run(2)).max() > 1e-3
    bare = ri.InitialStateRNN(nn.LSTMCell(F), "learnable")
    params = dict(variables["params"])
    params["rnn"] = {"cell": params["rnn"]["cell"]["cell"]}
    want = np.asarray(bare.apply({"params": params}, X))
    np.testing.assert_array_equal(run(1, True), want)
    np.testing.assert_array_equal(run(2, True), want)


def test_nnx_seed_gives_the_same_numbers_and_eval_is_the_bare_cell():
    def build():
        cell = nnx.GRUCell(F_IN, F, rngs=nnx.Rngs(0))
        return ri_nnx.InitialStateRNN(ri_nnx.NoisyCell(cell, noise_std=0.3, seed=5), "zero")

    a, b = build(), build()
    first = np.asarray(a(X))
    np.testing.assert_array_equal(first, np.asarray(b(X)))
    assert np.abs(first - np.asarray(a(X))).max() > 1e-3  # the stream advances per call
    a.eval()
    bare = ri_nnx.InitialStateRNN(a.rnn.cell.cell, "zero")
    np.testing.assert_array_equal(np.asarray(a(X)), np.asarray(bare(X)))


def test_nnx_predrawn_noise_under_jit_and_grad():
    cell = ri_nnx.NoisyCell(
        nnx.GRUCell(F_IN, F, rngs=nnx.Rngs(0)), noise_std=0.3, learnable_std=True, seed=1
    )
    model = ri_nnx.InitialStateRNN(cell, "learnable")

    @nnx.jit
    def loss(model, x):
        return (model(x) ** 2).mean()

    grads = nnx.grad(loss)(model, jnp.asarray(X))
    assert float(jnp.abs(grads.rnn.cell.std_raw[...])) > 0  # sigma is trained
    assert float(jnp.abs(grads.initial_state.h[...]).sum()) > 0
    first, second = float(loss(model, X)), float(loss(model, X))
    assert first != second  # a fresh draw per call under jit


@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_seq_lengths_stop_each_sequence_at_its_length(api, kind):
    """Each row's final carry is the carry after its own last step, and its outputs
    match the same row run alone on the truncated sequence (both Flax APIs)."""
    lengths = np.array([5, 2, 3])
    if api == "linen":
        model = ri.InitialStateRNN(LINEN[kind](F), "uniform", resample=False)
        variables = model.init(jax.random.key(0), X)

        def run(x, **kw):
            return model.apply(variables, x, return_carry=True, **kw)
    else:
        cell = NNX[kind](F_IN, F, rngs=nnx.Rngs(0))
        model = ri_nnx.InitialStateRNN(cell, "uniform", resample=False, seed=2)

        def run(x, **kw):
            return model(x, return_carry=True, **kw)

    carry, out = run(X, seq_lengths=jnp.asarray(lengths))
    for row, length in enumerate(lengths):
        alone_carry, alone_out = run(X[row : row + 1, :length])
        np.testing.assert_allclose(out[row, :length], alone_out[0], rtol=1e-6, atol=1e-6)
        for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(alone_carry), strict=True):
            np.testing.assert_allclose(a[row], b[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("learnable", [False, True])
def test_nnx_set_noise_std(learnable):
    rngs = nnx.Rngs(0)
    state = ri_nnx.InitialState(
        "noisy", features=F, noise_std=0.5, learnable_std=learnable, min_std=0.1, rngs=rngs
    )
    cell = ri_nnx.NoisyCell(nnx.GRUCell(F_IN, F, rngs=rngs), 0.5, learnable, min_std=0.1, rngs=rngs)
    for module in (state, cell):
        assert float(module.noise_std) == pytest.approx(0.5, abs=1e-6)
        module.set_noise_std(0.2)
        assert float(module.noise_std) == pytest.approx(0.2, abs=1e-6)
        with pytest.raises(ValueError, match="min_std"):
            module.set_noise_std(0.05)  # below the floor: refused, as at construction
        assert float(module.noise_std) == pytest.approx(0.2, abs=1e-6)
    # The new sigma is what the state draws with: its spread scales with it.
    draws = np.asarray(state((4000,), rngs=nnx.Rngs(3)))
    assert draws.std() == pytest.approx(0.2, rel=0.05)
    state.set_noise_std(0.1 if not learnable else 0.4)
    assert np.asarray(state((4000,), rngs=nnx.Rngs(3))).std() == pytest.approx(
        0.1 if not learnable else 0.4, rel=0.05
    )
    with pytest.raises(AttributeError, match="no noise_std"):
        _ = ri_nnx.InitialState("zero", features=F).noise_std
