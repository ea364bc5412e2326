"""Noisy initial state in plain Flax NNX: a learned base state plus N(0, sigma^2) noise
after model.train(), exactly the base state after model.eval()."""

import jax
import jax.numpy as jnp
from flax import nnx


class NoisyStateRNN(nnx.Module):
    def __init__(self, in_features, features, *, sigma=0.1, lstm=False, rngs: nnx.Rngs):
        cell = (nnx.LSTMCell if lstm else nnx.GRUCell)(in_features, features, rngs=rngs)
        self.rnn = nnx.RNN(cell)
        self.h0 = nnx.Param(jnp.zeros(features))
        self.c0 = nnx.Param(jnp.zeros(features)) if lstm else None
        self.sigma, self.noise = sigma, rngs.noise.fork()  # a seeded stream of its own
        self.deterministic = False  # model.eval() sets it to True, model.train() to False

    def start(self, base, shape):
        if self.deterministic:
            return jnp.broadcast_to(base[...], shape)
        return base[...] + self.sigma * jax.random.normal(self.noise(), shape)

    def __call__(self, x):  # x: (batch, time, in_features)
        shape = (x.shape[0], self.h0.shape[-1])
        h = self.start(self.h0, shape)
        carry = h if self.c0 is None else (self.start(self.c0, shape), h)  # Flax LSTM: (c, h)
        return self.rnn(x, initial_carry=carry)
