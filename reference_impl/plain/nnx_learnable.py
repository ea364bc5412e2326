"""Learnable initial state in plain Flax NNX: nnx.Param vectors broadcast
over the batch and given to nnx.RNN as its initial_carry."""

import jax.numpy as jnp
from flax import nnx


class LearnableStateRNN(nnx.Module):
    def __init__(self, in_features, features, *, lstm=False, rngs: nnx.Rngs):
        cell_type = nnx.LSTMCell if lstm else nnx.GRUCell
        self.rnn = nnx.RNN(cell_type(in_features, features, rngs=rngs))
        self.h0 = nnx.Param(jnp.zeros(features))
        self.c0 = nnx.Param(jnp.zeros(features)) if lstm else None

    def __call__(self, x):  # x: (batch, time, in_features)
        shape = (x.shape[0], self.h0.shape[-1])
        h = jnp.broadcast_to(self.h0[...], shape)
        if self.c0 is None:
            return self.rnn(x, initial_carry=h)
        c = jnp.broadcast_to(self.c0[...], shape)
        return self.rnn(x, initial_carry=(c, h))  # Flax LSTM: (c, h)
