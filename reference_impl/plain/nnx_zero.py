"""The zero initial carry in plain Flax NNX: what nnx.RNN uses by default.

Pass it explicitly to reset a carry you keep from one call to the next."""

import jax
import jax.numpy as jnp
from flax import nnx


def zero_carry(batch_size, features, lstm=False, dtype=jnp.float32):
    """The carry of a GRU cell, or (c, h) of an LSTM cell: zeros."""
    h = jnp.zeros((batch_size, features), dtype)  # (batch, features)
    return (jnp.zeros_like(h), h) if lstm else h


if __name__ == "__main__":
    rnn = nnx.RNN(nnx.GRUCell(3, 8, rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(0), (4, 10, 3))  # (batch, time, in)
    y = rnn(x, initial_carry=zero_carry(4, 8))
    assert bool((y == rnn(x)).all())  # exactly what rnn(x) does
