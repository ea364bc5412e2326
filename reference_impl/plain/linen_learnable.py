"""Learnable initial state in plain Flax linen: self.param vectors broadcast
over the batch and given to nn.RNN as its initial_carry."""

import flax.linen as nn
import jax.numpy as jnp


class LearnableStateRNN(nn.Module):
    features: int
    lstm: bool = False

    @nn.compact
    def __call__(self, x):  # x: (batch, time, in_features)
        shape = (x.shape[0], self.features)

        def start(name):
            vector = self.param(name, nn.initializers.zeros, shape[1:])
            return jnp.broadcast_to(vector, shape)

        if not self.lstm:
            rnn = nn.RNN(nn.GRUCell(self.features))
            return rnn(x, initial_carry=start("h0"))
        rnn = nn.RNN(nn.LSTMCell(self.features))
        carry = (start("c0"), start("h0"))  # Flax LSTM cells carry (c, h)
        return rnn(x, initial_carry=carry)
