"""A uniform random initial state in plain Keras: U(-b, b), b = 1/sqrt(units)."""

import keras


class UniformState(keras.layers.Layer):
    """[h], or [h, c] for an LSTM: (batch, units) states for `initial_state=`."""

    def __init__(self, units, lstm=False, bound=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.units, self.components = units, 2 if lstm else 1
        self.bound = bound or 1 / units**0.5  # the state's size, not the batch
        self.seeds = keras.random.SeedGenerator(seed)  # same seed, same states

    def call(self, inputs):  # resampled every call, in training and evaluation
        shape = (keras.ops.shape(inputs)[0], self.units)  # the input's batch
        b, dtype = self.bound, self.compute_dtype
        return [
            keras.random.uniform(shape, -b, b, dtype=dtype, seed=self.seeds)
            for _ in range(self.components)
        ]


if __name__ == "__main__":
    inputs = keras.Input((10, 3))  # (time, features); the batch comes later
    state = UniformState(8, seed=0)(inputs)
    outputs = keras.layers.GRU(8)(inputs, initial_state=state)
    model = keras.Model(inputs, outputs)
    y = model(keras.random.normal((4, 10, 3), seed=0))
