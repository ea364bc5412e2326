"""The zero initial carry in plain Flax linen: what nn.RNN uses by default.

Pass it explicitly to reset a carry you keep from one call to the next."""

import flax.linen as nn
import jax
import jax.numpy as jnp


def zero_carry(batch_size, features, lstm=False, dtype=jnp.float32):
    """The carry of a GRU cell, or (c, h) of an LSTM cell: zeros."""
    h = jnp.zeros((batch_size, features), dtype)  # (batch, features)
    return (jnp.zeros_like(h), h) if lstm else h


if __name__ == "__main__":
    rnn = nn.RNN(nn.GRUCell(features=8))
    x = jax.random.normal(jax.random.key(0), (4, 10, 3))  # (batch, time, in)
    variables = rnn.init(jax.random.key(1), x)
    y = rnn.apply(variables, x, initial_carry=zero_carry(4, 8))
    assert bool((y == rnn.apply(variables, x)).all())  # exactly the default
