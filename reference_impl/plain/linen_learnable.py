"""Learnable initial state in plain Flax linen: self.param vectors broadcast over the
batch and given to nn.RNN as its initial_carry."""

import flax.linen as nn
import jax.numpy as jnp


class LearnableStateRNN(nn.Module):
    features: int
    lstm: bool = False

    @nn.compact
    def __call__(self, x):  # x: (batch, time, in_features)
        shape = (x.shape[0], self.features)
        h = jnp.broadcast_to(self.param("h0", nn.initializers.zeros, (self.features,)), shape)
        if not self.lstm:
            return nn.RNN(nn.GRUCell(self.features))(x, initial_carry=h)
        c = jnp.broadcast_to(self.param("c0", nn.initializers.zeros, (self.features,)), shape)
        return nn.RNN(nn.LSTMCell(self.features))(x, initial_carry=(c, h))  # Flax: (c, h)
