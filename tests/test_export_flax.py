"""Flax checkpoints with orbax: a learned initial state restored into a freshly built model.

The learned state is an ordinary parameter (linen ``params``, NNX ``nnx.Param``), so an
orbax checkpoint of the parameters carries it; restoring into a model built from
another seed must give back the trained model's outputs exactly.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from reference_impl.flax import linen as ri_linen
from reference_impl.flax import nnx as ri_nnx

ocp = pytest.importorskip("orbax.checkpoint")

X = np.random.default_rng(0).normal(size=(5, 6, 3)).astype("float32")


def save_and_restore(path, state, target):
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, state)
    checkpointer.wait_until_finished()
    return checkpointer.restore(path, target)


@pytest.mark.parametrize("strategy", ["learnable", "noisy"])
@pytest.mark.parametrize("cell", [nn.GRUCell, nn.OptimizedLSTMCell])
def test_linen_orbax_round_trip(cell, strategy, tmp_path):
    options = {"noise_std": 0.2, "base": "learnable"} if strategy == "noisy" else {}
    if strategy == "noisy":
        options["deterministic"] = True  # evaluation: the learned base, no noise
    model = ri_linen.InitialStateRNN(cell(features=8), strategy=strategy, **options)
    params = model.init(jax.random.key(0), X)["params"]
    # a learned state that is not the zero default
    params = jax.tree.map(lambda p: p + 0.5, params)
    fresh = model.init(jax.random.key(1), X)["params"]
    restored = save_and_restore(tmp_path / "ckpt", params, fresh)
    out = model.apply({"params": params}, X)
    assert float(jnp.abs(model.apply({"params": fresh}, X) - out).max()) > 1e-3
    np.testing.assert_array_equal(model.apply({"params": restored}, X), out)
    assert jax.tree.structure(restored) == jax.tree.structure(params)


class Model(nnx.Module):
    def __init__(self, cell: str, strategy: str, rngs: nnx.Rngs):
        make = {"gru": nnx.GRUCell, "lstm": nnx.OptimizedLSTMCell}[cell]
        options = {"noise_std": 0.2, "base": "learnable"} if strategy == "noisy" else {}
        self.rnn = ri_nnx.InitialStateRNN(make(3, 8, rngs=rngs), strategy=strategy, **options)
        self.head = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.head(self.rnn(x))


@pytest.mark.parametrize("strategy", ["learnable", "noisy"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_nnx_orbax_round_trip(cell, strategy, tmp_path):
    model = Model(cell, strategy, nnx.Rngs(0))
    _, state, _ = nnx.split(model, nnx.Param, ...)
    nnx.update(model, jax.tree.map(lambda p: p + 0.5, state))
    model.eval()
    out = model(X)
    _, params, _ = nnx.split(model, nnx.Param, ...)

    fresh = Model(cell, strategy, nnx.Rngs(1))
    fresh.eval()
    assert float(jnp.abs(fresh(X) - out).max()) > 1e-3
    _, target, _ = nnx.split(fresh, nnx.Param, ...)
    restored = save_and_restore(tmp_path / "ckpt", params, target)
    nnx.update(fresh, restored)
    np.testing.assert_array_equal(fresh(X), out)


def serve_any_batch(fn, params):
    """jax.export with a symbolic batch, serialized and read back, run at two batch sizes."""
    (batch,) = jax.export.symbolic_shape("b")
    exported = jax.export.export(jax.jit(fn))(
        params, jax.ShapeDtypeStruct((batch, 6, 3), jnp.float32)
    )
    served = jax.export.deserialize(exported.serialize())
    diffs = []
    for b in (1, 9):
        x = np.random.default_rng(b).normal(size=(b, 6, 3)).astype("float32")
        out = served.call(params, x)
        assert out.shape == (b, 6, 8) or out.shape == (b, 6, 1)
        diffs.append(float(jnp.abs(out - fn(params, x)).max()))
    return max(diffs)


@pytest.mark.parametrize("strategy", ["zero", "learnable", "noisy"])
@pytest.mark.parametrize("cell", [nn.GRUCell, nn.OptimizedLSTMCell])
def test_linen_jax_export_with_a_dynamic_batch(cell, strategy):
    options = {"noise_std": 0.2, "base": "learnable", "deterministic": True}
    model = ri_linen.InitialStateRNN(
        cell(features=8), strategy=strategy, **(options if strategy == "noisy" else {})
    )
    params = jax.tree.map(lambda p: p + 0.5, model.init(jax.random.key(0), X)["params"])
    assert serve_any_batch(lambda p, x: model.apply({"params": p}, x), params) <= 1e-6


@pytest.mark.parametrize("strategy", ["learnable", "noisy"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_nnx_jax_export_with_a_dynamic_batch(cell, strategy):
    model = Model(cell, strategy, nnx.Rngs(0))
    model.eval()
    graphdef, template, rest = nnx.split(model, nnx.Param, ...)
    # a serialized export takes plain arrays: the parameters as a pure dict
    params = jax.tree.map(lambda p: p + 0.5, template.to_pure_dict())

    def forward(p, x):
        state = jax.tree.map(lambda v: v, template)
        nnx.replace_by_pure_dict(state, p)
        return nnx.merge(graphdef, state, rest)(x)

    assert serve_any_batch(forward, params) <= 1e-6
