"""Noisy initial state in plain Keras 3: a learned base state plus
N(0, sigma^2) noise when training=True (fit), else exactly the base."""

import keras


@keras.saving.register_keras_serializable(package="plain")
class NoisyState(keras.layers.Layer):
    def __init__(self, units, sigma=0.1, lstm=False, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.units, self.sigma, self.lstm = units, sigma, lstm
        self.vectors = [
            self.add_weight(shape=(1, units), initializer="zeros", name=name)
            for name in (["h0", "c0"] if lstm else ["h0"])
        ]
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):  # [h] or [h, c], (batch, units)
        shape = (keras.ops.shape(inputs)[0], self.units)
        states = [keras.ops.broadcast_to(v, shape) for v in self.vectors]
        if training:
            gen = self.seed_generator  # the layer's own seeded generator
            noise = keras.random.normal
            states = [s + self.sigma * noise(shape, seed=gen) for s in states]
        return states

    def get_config(self):
        config = {"units": self.units, "sigma": self.sigma}
        config |= {"lstm": self.lstm, "seed": self.seed}
        return {**super().get_config(), **config}


# inputs = keras.Input((None, 1))
# states = NoisyState(8, sigma=0.1)(inputs)
# outputs = keras.layers.GRU(8)(inputs, initial_state=states)
