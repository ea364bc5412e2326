"""Learnable initial state in plain Keras 3: a layer that owns one trainable
vector per state (h; and c for an LSTM) and broadcasts it over the batch."""

import keras


@keras.saving.register_keras_serializable(package="plain")
class LearnableState(keras.layers.Layer):
    def __init__(self, units, lstm=False, **kwargs):
        super().__init__(**kwargs)
        self.units, self.lstm = units, lstm
        self.vectors = [
            self.add_weight(shape=(1, units), initializer="zeros", name=name)
            for name in (["h0", "c0"] if lstm else ["h0"])
        ]

    def call(self, inputs):  # returns [h] or [h, c], each (batch, units)
        shape = (keras.ops.shape(inputs)[0], self.units)
        return [keras.ops.broadcast_to(v, shape) for v in self.vectors]

    def get_config(self):
        config = {"units": self.units, "lstm": self.lstm}
        return {**super().get_config(), **config}


# inputs = keras.Input((None, 1))
# states = LearnableState(8)(inputs)
# outputs = keras.layers.GRU(8)(inputs, initial_state=states)
