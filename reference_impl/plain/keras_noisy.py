"""Noisy initial state in plain Keras 3: a learned base state plus N(0, sigma^2) noise
when training=True (fit), exactly the base state otherwise (predict, evaluate)."""

import keras


@keras.saving.register_keras_serializable(package="plain")
class NoisyState(keras.layers.Layer):
    def __init__(self, units, sigma=0.1, lstm=False, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.units, self.sigma, self.lstm, self.seed = units, sigma, lstm, seed
        names = ("h0", "c0") if lstm else ("h0",)
        self.vectors = [
            self.add_weight(shape=(1, units), initializer="zeros", name=n) for n in names
        ]
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):  # returns [h] or [h, c], each (batch, units)
        shape = (keras.ops.shape(inputs)[0], self.units)
        states = [keras.ops.broadcast_to(v, shape) for v in self.vectors]
        if training:
            draw = keras.random.normal  # from the layer's own seeded generator
            states = [s + self.sigma * draw(shape, seed=self.seed_generator) for s in states]
        return states

    def get_config(self):
        config = {"units": self.units, "sigma": self.sigma, "lstm": self.lstm, "seed": self.seed}
        return {**super().get_config(), **config}


# inputs = keras.Input((None, 1))
# outputs = keras.layers.GRU(8)(inputs, initial_state=NoisyState(8, sigma=0.1)(inputs))
