"""A uniform random initial carry in plain Flax linen: U(-b, b), b = 1/sqrt(H)."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class UniformCarry(nn.Module):
    """The carry of a GRU cell, or (c, h) of an LSTM cell: (batch, features)."""

    features: int
    lstm: bool = False
    bound: float | None = None

    @nn.compact
    def __call__(self, batch_size):  # resampled every call: "initial_state" rng
        b = self.bound or 1 / self.features**0.5  # not the batch size
        keys = jax.random.split(self.make_rng("initial_state"))
        shape = (batch_size, self.features)
        h, c = (jax.random.uniform(k, shape, jnp.float32, -b, b) for k in keys)
        return (c, h) if self.lstm else h


class Encoder(nn.Module):  # how a model uses it: the carry goes to nn.RNN
    @nn.compact
    def __call__(self, x):
        carry = UniformCarry(features=8)(x.shape[0])
        return nn.RNN(nn.GRUCell(features=8))(x, initial_carry=carry)


if __name__ == "__main__":
    x = jax.random.normal(jax.random.key(0), (4, 10, 3))  # (batch, time, in)
    variables = Encoder().init(jax.random.key(1), x)  # init: the "params" key
    rngs = {"initial_state": jax.random.key(2)}  # same key, same states
    y = Encoder().apply(variables, x, rngs=rngs)
