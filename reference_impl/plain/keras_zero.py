"""The zero initial state in plain Keras: what GRU and LSTM use by default.

Pass it explicitly to reset a state you carry from one call to the next."""

import keras


class ZeroState(keras.layers.Layer):
    """[h], or [h, c] for an LSTM: (batch, units) zeros for `initial_state=`."""

    def __init__(self, units, lstm=False, **kwargs):
        super().__init__(**kwargs)
        self.units, self.components = units, 2 if lstm else 1

    def call(self, inputs):
        shape = (keras.ops.shape(inputs)[0], self.units)  # the input's batch
        zeros = keras.ops.zeros(shape, dtype=self.compute_dtype)
        return [zeros] * self.components


if __name__ == "__main__":
    gru = keras.layers.GRU(8, return_sequences=True)
    x = keras.random.normal((4, 10, 3), seed=0)  # (batch, time, features)
    y = gru(x, initial_state=ZeroState(8)(x))
    assert bool(keras.ops.all(y == gru(x)))  # exactly what gru(x) does
