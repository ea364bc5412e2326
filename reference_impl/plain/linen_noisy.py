"""Noisy initial state in plain Flax linen: a learned base state plus
N(0, sigma^2) noise from the "noise" rng stream when deterministic=False,
exactly the base state when deterministic=True."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class NoisyStateRNN(nn.Module):
    features: int
    sigma: float = 0.1
    lstm: bool = False

    @nn.compact
    def __call__(self, x, deterministic: bool):  # x: (batch, time, in)
        shape = (x.shape[0], self.features)

        def start(name):
            base = self.param(name, nn.initializers.zeros, shape[1:])
            if deterministic:
                return jnp.broadcast_to(base, shape)
            key = self.make_rng("noise")
            return base + self.sigma * jax.random.normal(key, shape)

        if not self.lstm:
            rnn = nn.RNN(nn.GRUCell(self.features))
            return rnn(x, initial_carry=start("h0"))
        rnn = nn.RNN(nn.LSTMCell(self.features))
        carry = (start("c0"), start("h0"))  # Flax LSTM cells carry (c, h)
        return rnn(x, initial_carry=carry)
