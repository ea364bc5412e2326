"""Noisy initial state in plain Flax NNX: a learned base state plus
N(0, sigma^2) noise after model.train(); exactly the base after eval()."""

import jax
import jax.numpy as jnp
from flax import nnx


class NoisyStateRNN(nnx.Module):
    def __init__(self, in_features, features, *, sigma=0.1, lstm=False, rngs):
        cell_type = nnx.LSTMCell if lstm else nnx.GRUCell
        self.rnn = nnx.RNN(cell_type(in_features, features, rngs=rngs))
        self.h0 = nnx.Param(jnp.zeros(features))
        self.c0 = nnx.Param(jnp.zeros(features)) if lstm else None
        self.sigma = sigma
        self.noise = rngs.noise.fork()  # a seeded stream of its own
        self.deterministic = False  # model.eval() sets True, train() False

    def start(self, base, shape):
        if self.deterministic:
            return jnp.broadcast_to(base[...], shape)
        noise = jax.random.normal(self.noise(), shape)
        return base[...] + self.sigma * noise

    def __call__(self, x):  # x: (batch, time, in_features)
        shape = (x.shape[0], self.h0.shape[-1])
        h = self.start(self.h0, shape)
        if self.c0 is None:
            return self.rnn(x, initial_carry=h)
        c = self.start(self.c0, shape)
        return self.rnn(x, initial_carry=(c, h))  # Flax LSTM: (c, h)
