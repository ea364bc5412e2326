"""Noisy initial state in plain Flax linen: a learned base state plus N(0, sigma^2) noise
from the "noise" rng stream when deterministic=False, exactly the base state otherwise."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class NoisyStateRNN(nn.Module):
    features: int
    sigma: float = 0.1
    lstm: bool = False

    @nn.compact
    def __call__(self, x, deterministic: bool):  # x: (batch, time, in_features)
        shape = (x.shape[0], self.features)

        def start(name):
            base = self.param(name, nn.initializers.zeros, (self.features,))
            if deterministic:
                return jnp.broadcast_to(base, shape)
            return base + self.sigma * jax.random.normal(self.make_rng("noise"), shape)

        if not self.lstm:
            return nn.RNN(nn.GRUCell(self.features))(x, initial_carry=start("h0"))
        carry = (start("c0"), start("h0"))  # Flax LSTM cells carry (c, h)
        return nn.RNN(nn.LSTMCell(self.features))(x, initial_carry=carry)
