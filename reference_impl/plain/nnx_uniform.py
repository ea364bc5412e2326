"""A uniform random initial carry in plain Flax NNX: U(-b, b), b = 1/sqrt(H)."""

import jax
import jax.numpy as jnp
from flax import nnx


class UniformCarry(nnx.Module):
    """The carry of a GRU cell, or (c, h) of an LSTM cell: (batch, features)."""

    def __init__(self, features, *, lstm=False, bound=None, rngs: nnx.Rngs):
        self.features, self.lstm = features, lstm
        self.bound = bound or 1 / features**0.5  # the state's size, not the batch
        self.rngs = rngs  # nnx.Rngs(seed): the same seed gives the same states

    def __call__(self, batch_size):  # resampled every call: advances self.rngs
        shape, b = (batch_size, self.features), self.bound
        keys = jax.random.split(self.rngs())
        h, c = (jax.random.uniform(k, shape, jnp.float32, -b, b) for k in keys)
        return (c, h) if self.lstm else h


if __name__ == "__main__":
    rnn = nnx.RNN(nnx.GRUCell(3, 8, rngs=nnx.Rngs(0)))
    carry = UniformCarry(8, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(0), (4, 10, 3))  # (batch, time, in)
    y = rnn(x, initial_carry=carry(x.shape[0]))
