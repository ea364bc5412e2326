"""reference_impl.tensorflow in models: wrapped layers, fit, graph mode and XLA,
save/load, mixed precision, NoisyCell, and one model on the JAX backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
if keras.backend.backend() != "tensorflow":  # pragma: no cover
    pytest.skip("these tests need the TensorFlow backend", allow_module_level=True)

from reference_impl import spec  # noqa: E402
from reference_impl import tensorflow as ri  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 20, 10)).astype("float32")
Y = RNG.normal(size=(16, 20, 5)).astype("float32")


def set_learned(init: ri.InitialState, seed: int = 0) -> list[np.ndarray]:
    """Give the learned vectors distinct values, so a wrong row or broadcast shows."""
    rng = np.random.default_rng(seed)
    values = []
    for w in init.trainable_weights:
        if w.name in ("h0", "c0"):
            value = rng.normal(size=tuple(w.shape)).astype("float32")
            w.assign(value)
            values.append(value)
    return values


def broadcast_states(init: ri.InitialState, batch: int) -> list[np.ndarray]:
    """The state a learnable InitialState must produce, built by hand from its weights."""
    vectors = [np.asarray(init.h0)] + ([np.asarray(init.c0)] if init.cell == "lstm" else [])
    return [
        np.broadcast_to(v[d], (batch, init.units)).copy()
        for d in range(init.directions)
        for v in vectors
    ]


def as_list(y):
    return [np.asarray(t) for t in y] if isinstance(y, (list, tuple)) else [np.asarray(y)]


# --------------------------------------------------------------------------- models


def gru_model(style: str) -> keras.Model:
    if style == "sequential":
        return keras.Sequential(
            [
                keras.Input((20, 10)),
                ri.InitialStateRNN(keras.layers.GRU(32, return_sequences=True), "learnable"),
                keras.layers.Dense(5),
            ]
        )
    if style == "functional":
        inputs = keras.Input((20, 10))
        x = ri.InitialStateRNN(keras.layers.GRU(32, return_sequences=True), "learnable")(inputs)
        return keras.Model(inputs, keras.layers.Dense(5)(x))

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.rnn = ri.InitialStateRNN(keras.layers.GRU(32, return_sequences=True))
            self.head = keras.layers.Dense(5)

        def call(self, x, training=None):
            return self.head(self.rnn(x, training=training))

    return Subclassed()


@pytest.mark.parametrize("style", ["sequential", "functional", "subclassed"])
def test_learnable_state_in_every_model_style_trains(style):
    model = gru_model(style)
    assert tuple(model(X).shape) == (16, 20, 5)
    learned = [w for w in model.trainable_weights if w.name == "h0"]
    assert [tuple(w.shape) for w in learned] == [(1, 32)]
    before = np.asarray(learned[0]).copy()
    assert not before.any()  # starts at zeros
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(X, Y, epochs=1, batch_size=8, verbose=0)
    after = np.asarray(learned[0])
    assert np.abs(after - before).min() > 0  # every unit of the state moved


def test_initial_state_layer_with_an_unknown_batch_feeds_each_recurrent_layer():
    inputs = keras.Input((None, 3))  # batch and time unknown
    pairs, outs = [], []
    for rnn, cell in [
        (keras.layers.GRU(4), "gru"),
        (keras.layers.LSTM(4), "lstm"),
        (keras.layers.SimpleRNN(4), "rnn"),
        (keras.layers.RNN(keras.layers.GRUCell(4)), "gru"),
    ]:
        init = ri.InitialState("learnable", units=4, cell=cell)
        states = init(inputs)
        assert [tuple(s.shape) for s in states] == [(None, 4)] * len(init.features)
        outs.append(rnn(inputs, initial_state=states))
        pairs.append((init, rnn))
    model = keras.Model(inputs, outs)
    for k, (init, _) in enumerate(pairs):
        set_learned(init, seed=k)
    for batch, time in [(3, 5), (7, 2)]:
        x = RNG.normal(size=(batch, time, 3)).astype("float32")
        got = model(x)
        assert [tuple(y.shape) for y in got] == [(batch, 4)] * 4
        for y, (init, rnn) in zip(got, pairs, strict=True):
            want = rnn(x, initial_state=broadcast_states(init, batch))
            np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.layers.GRU(6, return_sequences=True),
        lambda: keras.layers.LSTM(6, return_state=True),
        lambda: keras.layers.SimpleRNN(6, go_backwards=True, return_sequences=True),
        lambda: keras.layers.RNN(keras.layers.LSTMCell(6), return_state=True),
        lambda: keras.layers.RNN(ri.NoisyCell(keras.layers.GRUCell(6)), return_sequences=True),
        lambda: keras.layers.Bidirectional(keras.layers.GRU(6, return_sequences=True)),
        lambda: keras.layers.Bidirectional(keras.layers.LSTM(6, return_state=True)),
    ],
    ids=[
        "gru-seq",
        "lstm-state",
        "rnn-backwards",
        "rnn-lstmcell",
        "rnn-noisycell",
        "bidi-gru",
        "bidi-lstm",
    ],
)
def test_wrapper_equals_the_layer_run_from_the_learned_state(make):
    wrapper = ri.InitialStateRNN(make(), strategy="learnable")
    x = X[:4, :7, :3]
    plain = as_list(wrapper.layer(x))  # builds the layer; zero state
    set_learned(wrapper.initial_state)
    got = as_list(wrapper(x))
    want = as_list(wrapper.layer(x, initial_state=broadcast_states(wrapper.initial_state, 4)))
    assert [a.shape for a in got] == [a.shape for a in want] == [a.shape for a in plain]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert not np.allclose(got[0], plain[0])  # the learned state made a difference
    # and an explicit state still wins
    explicit = [
        RNG.normal(size=(4, 6)).astype("float32") for _ in wrapper.initial_state.state_names
    ]
    for a, b in zip(
        as_list(wrapper(x, initial_state=explicit)),
        as_list(wrapper.layer(x, initial_state=explicit)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_bidirectional_gives_each_direction_its_own_row():
    wrapper = ri.InitialStateRNN(
        keras.layers.Bidirectional(keras.layers.GRU(5, return_sequences=True)), "learnable"
    )
    x = X[:2, :4, :3]
    wrapper(x)
    assert tuple(wrapper.initial_state.h0.shape) == (2, 5)
    base = np.asarray(wrapper(x))
    h0 = np.zeros((2, 5), "float32")
    h0[1] = 1.0  # change only the backward row
    wrapper.initial_state.h0.assign(h0)
    moved = np.asarray(wrapper(x))
    np.testing.assert_array_equal(moved[..., :5], base[..., :5])  # forward half unchanged
    assert not np.allclose(moved[..., 5:], base[..., 5:])


def test_masking_works_as_in_the_wrapped_layer():
    tokens = np.array([[3, 1, 4, 0, 0], [2, 7, 1, 8, 0]])
    inputs = keras.Input((5,), dtype="int32")
    embedded = keras.layers.Embedding(10, 3, mask_zero=True)(inputs)
    wrapper = ri.InitialStateRNN(keras.layers.GRU(4, return_sequences=True), "learnable")
    model = keras.Model(inputs, wrapper(embedded))
    set_learned(wrapper.initial_state)
    got = np.asarray(model(tokens))
    emb = model.layers[1]
    e = emb(tokens)
    want = wrapper.layer(
        e, mask=tokens != 0, initial_state=broadcast_states(wrapper.initial_state, 2)
    )
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # masked steps carry the last state forward, as the GRU does with a mask
    np.testing.assert_array_equal(got[0, 3], got[0, 2])
    np.testing.assert_array_equal(got[0, 4], got[0, 2])
    # and the mask goes on to the next layer when sequences are returned
    assert wrapper.compute_mask(e, tokens != 0) is not None


def test_wrapping_keeps_the_layer_eligible_for_cudnn():
    gru = keras.layers.GRU(8)
    config = gru.get_config()
    wrapper = ri.InitialStateRNN(gru)
    assert wrapper.layer is gru
    assert gru.get_config() == config
    assert gru.use_cudnn == "auto" and gru.cell.reset_after and not gru.cell.recurrent_dropout


# --------------------------------------------------------------------------- graph mode


@pytest.mark.parametrize("jit", [False, True])
def test_tf_function_and_xla_give_eager_values_and_fresh_draws(jit):
    learn = ri.InitialStateRNN(keras.layers.LSTM(4), "learnable")
    draw = ri.InitialStateRNN(keras.layers.GRU(4, return_sequences=True), "uniform", seed=1)
    noisy = ri.InitialStateRNN(keras.layers.GRU(4), "noisy", noise_std=0.5, seed=2)
    x = X[:3, :6, :2]
    eager = np.asarray(learn(x))
    set_learned(learn.initial_state)
    eager = np.asarray(learn(x))

    @tf.function(jit_compile=jit, reduce_retracing=True)
    def run(x, training):
        return learn(x), draw(x), noisy(x, training=training)

    a = [np.asarray(t) for t in run(x, True)]
    b = [np.asarray(t) for t in run(x, True)]
    np.testing.assert_allclose(a[0], eager, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[1], b[1])  # resampled per call, not frozen into the graph
    assert not np.allclose(a[2], b[2])  # noise per call in training
    c = [np.asarray(t) for t in run(x, False)]
    d = [np.asarray(t) for t in run(x, False)]
    np.testing.assert_array_equal(c[2], d[2])  # no noise outside training
    # unknown batch in the graph: the state follows the batch that arrives
    spec = tf.TensorSpec((None, 6, 2), tf.float32)
    graph = tf.function(lambda x: learn(x), input_signature=[spec], jit_compile=jit)
    assert tuple(graph(X[:5, :6, :2]).shape) == (5, 4)


def test_fit_evaluate_predict_with_jit_compile_and_noise_only_in_training():
    model = keras.Sequential(
        [
            keras.Input((6, 10)),
            ri.InitialStateRNN(
                keras.layers.GRU(8, return_sequences=True),
                "noisy",
                base="learnable",
                noise_std=0.5,
                learnable_std=True,
                seed=0,
            ),
            keras.layers.Dense(5),
        ]
    )
    x, y = X[:, :6], Y[:, :6]
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse", jit_compile=True)
    assert model.jit_compile
    init = model.layers[0].initial_state
    h0, rho = np.asarray(init.h0).copy(), float(init.std_raw)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert not np.allclose(np.asarray(init.h0), h0)
    assert float(init.std_raw) != rho  # the learnable sigma got gradients
    p1 = model.predict(x, verbose=0)
    p2 = model.predict(x, verbose=0)
    np.testing.assert_array_equal(p1, p2)  # inference: exactly the base state
    np.testing.assert_allclose(p1, model(x, training=False), rtol=1e-5, atol=1e-6)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(float(np.mean((p1 - y) ** 2)), rel=1e-4)
    t1, t2 = model(x, training=True), model(x, training=True)
    assert not np.allclose(t1, t2)


# --------------------------------------------------------------------------- save / load


def saving_models():
    inputs = keras.Input((6, 3))
    yield (
        "learnable-lstm",
        keras.Sequential(
            [inputs, ri.InitialStateRNN(keras.layers.LSTM(4), "learnable", init="uniform", seed=1)]
        ),
    )
    yield (
        "stored-xavier-bidi",
        keras.Sequential(
            [
                keras.Input((6, 3)),
                ri.InitialStateRNN(
                    keras.layers.Bidirectional(keras.layers.GRU(4)), "xavier", resample=False
                ),
            ]
        ),
    )
    yield (
        "noisy-learnable-std",
        keras.Sequential(
            [
                keras.Input((6, 3)),
                ri.InitialStateRNN(
                    keras.layers.SimpleRNN(4),
                    "noisy",
                    base="learnable",
                    learnable_std=True,
                    noise_std=0.3,
                    min_std=0.01,
                ),
            ]
        ),
    )
    inputs = keras.Input((6, 3))
    states = ri.InitialState("uniform", units=4, resample=False, bound=0.5)(inputs)
    cell = ri.NoisyCell(keras.layers.GRUCell(4), noise_std=0.2, learnable_std=True)
    y = keras.layers.RNN(cell)(inputs, initial_state=states)
    yield "initial-state-and-noisy-cell", keras.Model(inputs, y)


@pytest.mark.parametrize("name", [name for name, _ in saving_models()])
def test_keras_file_and_weights_round_trip(name, tmp_path):
    model = dict(saving_models())[name]
    x = X[:4, :6, :3]
    for layer in model.layers:
        inner = getattr(layer, "initial_state", layer)
        if isinstance(inner, ri.InitialState):
            set_learned(inner, seed=3)
    for w in model.weights:  # move every sigma off its start value
        if w.name == "std_raw":
            w.assign(float(w) + 0.25)
    want = np.asarray(model.predict(x, verbose=0))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), want)
    # the same weights in the same order (paths depend on the scope a layer was built in)
    assert [w.name for w in loaded.weights] == [w.name for w in model.weights]
    assert {"h0", "std_raw"} & {w.name for w in model.weights}
    for a, b in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    # weights only, into a fresh model of the same config
    weights = tmp_path / "model.weights.h5"
    model.save_weights(weights)
    fresh = (
        keras.Model.from_config(model.get_config())
        if not isinstance(model, keras.Sequential)
        else keras.Sequential.from_config(model.get_config())
    )
    fresh.load_weights(weights)
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), want)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ri.InitialState("learnable", units=3, cell="lstm", init="xavier", seed=4),
        lambda: ri.InitialState("noisy", units=3, bidirectional=True, noise_std=0.2, seed=1),
        lambda: ri.InitialState("learnable", units=3, init=keras.initializers.Constant(0.5)),
        lambda: ri.InitialStateRNN(keras.layers.GRU(3), "uniform", bound=0.2, resample=False),
        lambda: ri.NoisyCell(keras.layers.LSTMCell(3), 0.3, True, min_std=0.1, seed=5),
        lambda: keras.layers.RNN(ri.NoisyCell(keras.layers.GRUCell(3, dropout=0.1))),
    ],
    ids=["learnable", "noisy", "initializer", "wrapper", "noisy-cell", "rnn-of-noisy-cell"],
)
def test_config_round_trips_through_json(make):
    layer = make()
    blob = json.dumps(keras.saving.serialize_keras_object(layer))
    clone = keras.saving.deserialize_keras_object(json.loads(blob))
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
    registered = keras.saving.get_registered_name(type(layer))
    assert registered.startswith("reference_impl>") or isinstance(layer, keras.layers.RNN)


# --------------------------------------------------------------------------- precision


# --------------------------------------------------------------------------- stateful


def bare_and_wrapped(make, strategy="zero", **options):
    """A bare stateful layer and the same layer wrapped, with the same weights, built
    at a batch of 2 and reset."""
    x = np.zeros((2, 1, 3), "float32")
    bare, wrapped = make(), ri.InitialStateRNN(make(), strategy, **options)
    bare(x), wrapped(x)
    wrapped.layer.set_weights(bare.get_weights())
    bare.reset_state(), wrapped.reset_state()
    return bare, wrapped


STATEFUL = {
    "gru": lambda: keras.layers.GRU(4, return_sequences=True, stateful=True),
    "lstm-state": lambda: keras.layers.LSTM(4, return_state=True, stateful=True),
    "simple": lambda: keras.layers.SimpleRNN(4, return_sequences=True, stateful=True),
    "bidirectional": lambda: keras.layers.Bidirectional(
        keras.layers.LSTM(4, return_sequences=True, stateful=True)
    ),
}


@pytest.mark.parametrize("make", STATEFUL.values(), ids=STATEFUL.keys())
def test_a_stateful_layer_wrapped_with_zero_is_the_bare_layer(make):
    """Chunk after chunk, and after reset_state() or reset_states(), the same numbers."""
    bare, wrapped = bare_and_wrapped(make)
    x = np.random.default_rng(0).normal(size=(2, 6, 3)).astype("float32")
    for reset in ("reset_state", "reset_states"):
        for chunk in (x[:, :2], x[:, 2:5], x[:, 5:]):
            for a, b in zip(as_list(bare(chunk)), as_list(wrapped(chunk)), strict=True):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
        getattr(bare, reset)(), getattr(wrapped, reset)()


def test_a_stateful_wrapper_starts_each_stream_from_the_learned_state():
    _, wrapped = bare_and_wrapped(STATEFUL["gru"], "learnable", init="uniform", seed=0)
    x = np.random.default_rng(1).normal(size=(2, 5, 3)).astype("float32")
    h0 = np.broadcast_to(wrapped.initial_state.h0.numpy(), (2, 4))
    want = np.asarray(keras.layers.RNN(wrapped.layer.cell, return_sequences=True)(x, [h0]))
    for _ in range(2):  # the first stream, then one after reset_state()
        np.testing.assert_allclose(np.asarray(wrapped(x)), want, rtol=1e-6, atol=1e-6)
        assert np.abs(np.asarray(wrapped(x)) - want).max() > 1e-3  # carried, not restarted
        wrapped.reset_state()


def test_a_stateful_model_trains_predicts_and_reloads_from_the_strategy_start(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3, 3), batch_size=2)
    layer = ri.InitialStateRNN(keras.layers.GRU(4, stateful=True), "learnable", init="uniform")
    model = keras.Model(inputs, keras.layers.Dense(1)(layer(inputs)))
    model.compile("adam", "mse")
    x = np.random.default_rng(2).normal(size=(2, 6, 3)).astype("float32")
    before = layer.initial_state.h0.numpy().copy()
    for chunk in (x[:, :3], x[:, 3:]):
        model.train_on_batch(chunk, np.ones((2, 1)))
    assert np.abs(layer.initial_state.h0.numpy() - before).max() > 0  # the start learns
    layer.reset_state()
    first = model.predict(x[:, :3], verbose=0)
    assert np.abs(model.predict(x[:, :3], verbose=0) - first).max() > 1e-4  # carried
    # Keras saves no carried state: a loaded model starts a stream, from the learned state
    model.save(tmp_path / "stateful.keras")
    loaded = keras.models.load_model(tmp_path / "stateful.keras")
    np.testing.assert_allclose(loaded.predict(x[:, :3], verbose=0), first, rtol=1e-6, atol=1e-6)
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_stateful_wrapper_keeps_the_bare_layers_batch_rules():
    # A stateful layer needs a fixed batch size: refused alike.
    for wrap in (lambda r: r, lambda r: ri.InitialStateRNN(r, "learnable")):
        with pytest.raises(ValueError, match="batch size must be static"):
            keras.Sequential([keras.Input((3, 3)), wrap(keras.layers.GRU(4, stateful=True))])
    _, wrapped = bare_and_wrapped(STATEFUL["gru"], "learnable")
    with pytest.raises(ValueError, match="carries a state for a batch of 2; got a batch of 3"):
        wrapped(np.zeros((3, 2, 3), "float32"))
    with pytest.raises(AttributeError, match="not stateful"):
        ri.InitialStateRNN(keras.layers.GRU(4)).reset_state()


# --------------------------------------------------------------------------- any cell


@keras.saving.register_keras_serializable(package="tests")
class LayerNormLSTMCell(keras.layers.Layer):
    """A user's cell of the Keras protocol: an LSTM with layer normalization of its
    gates, ``state_size`` a list ``[units, units]``."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units, self.state_size, self.output_size = units, [units, units], units
        self.norm = keras.layers.LayerNormalization()

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1] + self.units, 4 * self.units))
        self.norm.build((None, 4 * self.units))

    def call(self, inputs, states):
        h, c = states
        z = self.norm(keras.ops.matmul(keras.ops.concatenate([inputs, h], -1), self.kernel))
        i, f, g, o = keras.ops.split(z, 4, -1)
        c = keras.ops.sigmoid(f) * c + keras.ops.sigmoid(i) * keras.ops.tanh(g)
        h = keras.ops.sigmoid(o) * keras.ops.tanh(c)
        return h, [h, c]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="tests")
class MinimalCell(keras.layers.Layer):
    """The smallest cell of the protocol: ``state_size`` an int, no get_initial_state."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = self.state_size = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1] + self.units, self.units))

    def call(self, inputs, states):
        h = keras.ops.tanh(
            keras.ops.matmul(keras.ops.concatenate([inputs, states[0]], -1), self.kernel)
        )
        return h, [h]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


SEQ = np.random.default_rng(3).normal(size=(2, 5, 3)).astype("float32")
GRID = np.random.default_rng(4).normal(size=(2, 3, 4, 4, 2)).astype("float32")
ANY_CELL = {  # name: (layer, input, the shape of each state without the batch axis)
    "int": (lambda: keras.layers.RNN(MinimalCell(4), return_sequences=True), SEQ, [(4,)]),
    "list": (lambda: keras.layers.RNN(LayerNormLSTMCell(4)), SEQ, [(4,), (4,)]),
    "nested": (
        lambda: keras.layers.RNN([keras.layers.GRUCell(4), keras.layers.LSTMCell(5)]),
        SEQ,
        [(4,), (5,), (5,)],
    ),
    "bidirectional": (
        lambda: keras.layers.Bidirectional(keras.layers.RNN(LayerNormLSTMCell(4))),
        SEQ,
        [(4,), (4,)],
    ),
    "conv-lstm-2d": (
        lambda: keras.layers.ConvLSTM2D(3, 3, padding="same", return_sequences=True),
        GRID,
        [(4, 4, 3), (4, 4, 3)],
    ),
}


def same_weights(make, x, strategy, **options):
    keras.utils.set_random_seed(0)
    bare, wrapped = make(), ri.InitialStateRNN(make(), strategy, seed=0, **options)
    bare(x), wrapped(x)
    wrapped.layer.set_weights(bare.get_weights())
    return bare, wrapped


@pytest.mark.parametrize("name", ANY_CELL)
def test_any_cell_of_the_protocol_wrapped_with_zero_is_the_bare_layer(name):
    make, x, shapes = ANY_CELL[name]
    bare, wrapped = same_weights(make, x, "zero")
    directions = 2 if name == "bidirectional" else 1
    assert wrapped.initial_state.shapes == tuple(shapes)
    for training in (False, True):
        want, got = bare(x, training=training), wrapped(x, training=training)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    # a state given explicitly, in the structure the bare layer takes, still wins
    one = [layer.get_initial_state(2) for layer in ri._directions(bare)]
    given = [keras.tree.map_structure(lambda s: s + 0.5, s) for part in one for s in part]
    want = bare(x, initial_state=given)
    got = wrapped(x, initial_state=given)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
    assert len(given) == directions * len(one[0])


@pytest.mark.parametrize("name", ANY_CELL)
def test_a_learnable_state_of_any_cell_has_one_weight_per_element(name):
    """Each state's weight has the state's whole shape (a ConvLSTM's: one start per
    position and channel), broadcast over the batch only; the wrapped layer runs from
    it, and it is trained."""
    make, x, shapes = ANY_CELL[name]
    bare, wrapped = same_weights(make, x, "learnable", init="uniform")
    directions = 2 if name == "bidirectional" else 1
    vectors = [w.numpy() for w in wrapped.initial_state.weights]
    assert [v.shape for v in vectors] == [(directions, *s) for s in shapes]
    states = [np.broadcast_to(v[d], (2, *v.shape[1:])) for d in range(directions) for v in vectors]
    given = wrapped._pack([keras.ops.convert_to_tensor(s) for s in states])
    want = bare(x, initial_state=given)
    np.testing.assert_allclose(np.asarray(wrapped(x)), np.asarray(want), rtol=1e-6, atol=1e-6)
    weights = wrapped.initial_state.trainable_weights
    with tf.GradientTape() as tape:
        loss = keras.ops.sum(wrapped(x) ** 2)
    for grad in tape.gradient(loss, weights):
        assert grad is not None and float(keras.ops.max(keras.ops.abs(grad))) > 0


@pytest.mark.parametrize("name", ["list", "conv-lstm-2d"])
def test_a_noisy_state_of_any_cell_is_the_base_outside_training(name):
    make, x, _ = ANY_CELL[name]
    bare, wrapped = same_weights(make, x, "noisy", noise_std=0.5)
    evaluated = np.asarray(wrapped(x))
    np.testing.assert_allclose(evaluated, np.asarray(bare(x)), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(evaluated, np.asarray(wrapped(x)))
    assert np.abs(np.asarray(wrapped(x, training=True)) - evaluated).max() > 1e-3


def test_any_cell_saves_loads_and_runs_stateful(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, 3), batch_size=2)
    layer = ri.InitialStateRNN(
        keras.layers.RNN(LayerNormLSTMCell(4), stateful=True), "learnable", init="uniform"
    )
    model = keras.Model(inputs, layer(inputs))
    first = np.asarray(model(SEQ[:, :2]))
    second = np.asarray(model(SEQ[:, 2:]))
    layer.reset_state()
    np.testing.assert_array_equal(np.asarray(model(SEQ[:, :2])), first)
    model.save(tmp_path / "cell.keras")
    loaded = keras.models.load_model(tmp_path / "cell.keras")
    np.testing.assert_allclose(np.asarray(loaded(SEQ[:, :2])), first, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(loaded(SEQ[:, 2:])), second, rtol=1e-6, atol=1e-6)
    names = [w.name for w in loaded.layers[1].initial_state.weights]
    assert names == ["state_0", "state_1"]


def test_initial_state_takes_any_shapes_and_refuses_bad_ones():
    init = ri.InitialState("learnable", shapes=[(4, 4, 3), (4, 4, 3)], init="uniform", seed=0)
    states = init.get_initial_state(2)
    assert [tuple(s.shape) for s in states] == [(2, 4, 4, 3)] * 2
    bound = spec.uniform_bound(3)  # the last axis: the features at one position
    assert 0 < float(keras.ops.max(keras.ops.abs(states[0]))) <= bound
    config = init.get_config()
    assert ri.InitialState.from_config(config).shapes == ((4, 4, 3), (4, 4, 3))
    with pytest.raises(TypeError, match="shapes must be a non-empty list"):
        ri.InitialState("zero", shapes=[4])
    with pytest.raises(TypeError, match="needs units="):
        ri.InitialState("zero")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_state_comes_in_the_compute_dtype(policy):
    compute = policy.split("_")[1]
    init = ri.InitialState("noisy", units=4, base="learnable", learnable_std=True, dtype=policy)
    states = init(X[:2, :3, :2], training=True)
    assert [s.dtype.name for s in states] == [compute]
    assert {w.dtype for w in init.weights} == {"float32"}
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        wrapper = ri.InitialStateRNN(keras.layers.LSTM(4), "learnable", init="uniform")
        x = X[:2, :3, :2]
        with tf.GradientTape() as tape:
            y = wrapper(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, "float32"))
        grads = tape.gradient(loss, [wrapper.initial_state.h0, wrapper.initial_state.c0])
        assert y.dtype.name == compute
        states = wrapper.initial_state.get_initial_state(2)
        assert [s.dtype.name for s in states] == [compute, compute]
        assert all(g is not None and g.dtype == tf.float32 and np.any(g) for g in grads)
    finally:
        keras.config.set_dtype_policy(previous)


# --------------------------------------------------------------------------- NoisyCell


def random_walk_cell(units: int = 4) -> keras.layers.SimpleRNNCell:
    """h_t = h_{t-1} (+ the cell's noise): the state's variance counts the draws."""
    return keras.layers.SimpleRNNCell(
        units,
        activation=None,
        use_bias=False,
        kernel_initializer="zeros",
        recurrent_initializer="identity",
    )


def wrapped(rnn: keras.layers.Layer, style: str) -> keras.layers.Layer:
    """``rnn`` alone (per-step draws) or in InitialStateRNN (noise drawn before the loop)."""
    return rnn if style == "bare" else ri.InitialStateRNN(rnn, "zero")


@pytest.mark.parametrize("style", ["bare", "wrapped"])
def test_noisy_cell_adds_independent_noise_at_every_step_in_training_only(style):
    sigma, steps = 0.5, 5
    cell = ri.NoisyCell(random_walk_cell(), noise_std=sigma, seed=0)
    rnn = wrapped(keras.layers.RNN(cell, return_sequences=True), style)
    x = np.zeros((4000, steps, 2), "float32")
    y = np.asarray(tf.function(lambda x: rnn(x, training=True))(x))
    # step t has read t + 1 independent draws (the initial state's included)
    want = sigma**2 * np.arange(1, steps + 1)
    np.testing.assert_allclose(y.var(axis=(0, 2)), want, rtol=0.06)
    np.testing.assert_allclose(y.mean(axis=(0, 2)), 0.0, atol=0.02)
    assert not np.asarray(rnn(x)).any()  # inference: exactly the (zero) walk


@pytest.mark.parametrize("style", ["bare", "wrapped"])
@pytest.mark.parametrize("make_cell", [keras.layers.GRUCell, keras.layers.LSTMCell])
def test_noisy_cell_is_exactly_the_wrapped_cell_outside_training(make_cell, style):
    cell = make_cell(5)
    noisy = wrapped(keras.layers.RNN(ri.NoisyCell(cell, noise_std=1.0), return_state=True), style)
    bare = keras.layers.RNN(cell, return_state=True)  # shares the cell's weights
    x = X[:3, :6, :4]
    for a, b in zip(as_list(noisy(x)), as_list(bare(x)), strict=True):
        np.testing.assert_array_equal(a, b)
    trained = as_list(noisy(x, training=True))
    assert len(trained) == (3 if make_cell is keras.layers.LSTMCell else 2)
    assert all(not np.allclose(a, b) for a, b in zip(trained, as_list(bare(x)), strict=True))


def test_noisy_cell_lstm_noises_both_components():
    lstm = keras.layers.LSTMCell(3)
    noisy = ri.NoisyCell(lstm, noise_std=1.0, seed=0)
    noisy.build((None, 2))
    x = tf.zeros((2000, 2))
    h, c = tf.zeros((2000, 3)), tf.zeros((2000, 3))
    _, (h_c, c_c) = noisy(x, [h, c], training=False)
    _, (h_n, c_n) = noisy(x, [h, c], training=True)
    assert not np.allclose(c_n, c_c)  # c got noise (it is what the cell carries)
    assert not np.allclose(h_n, h_c)  # and h, through the gates


@pytest.mark.parametrize("style", ["bare", "wrapped"])
def test_noisy_cell_learnable_std_trains_and_stays_positive(style):
    cell = ri.NoisyCell(keras.layers.GRUCell(8), noise_std=0.3, learnable_std=True, min_std=0.02)
    rnn = wrapped(keras.layers.RNN(cell), style)
    model = keras.Sequential([keras.Input((20, 10)), rnn, keras.layers.Dense(5)])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(X, training=True) - Y[:, -1]) ** 2)
    (grad,) = tape.gradient(loss, [cell.std_raw])
    assert grad is not None and np.isfinite(grad) and float(grad) != 0
    rho = float(cell.std_raw)
    model.fit(X, Y[:, -1], epochs=2, batch_size=8, verbose=0)
    assert float(cell.std_raw) != rho
    assert float(cell.noise_std) > 0.02
    cell.set_noise_std(0.05)
    assert float(cell.noise_std) == pytest.approx(0.05, rel=1e-5)


@pytest.mark.parametrize("style", ["bare", "wrapped"])
def test_noisy_cell_keeps_the_wrapped_cells_dropout_working_in_graph_mode(style):
    cell = keras.layers.GRUCell(4, dropout=0.5, recurrent_dropout=0.5, seed=0)
    rnn = wrapped(keras.layers.RNN(ri.NoisyCell(cell, noise_std=0.1, seed=0)), style)
    run = tf.function(lambda x: rnn(x, training=True))
    x = X[:8, :5, :3]
    a, b = np.asarray(run(x)), np.asarray(run(x))  # a second trace used to see a stale mask
    assert a.shape == (8, 4) and not np.allclose(a, b)
    assert cell._dropout_mask is None and cell._recurrent_dropout_mask is None


def numpy_step(cell: keras.layers.Layer):
    """One step of the Keras cell on numpy arrays, as ``spec.noisy_cell_step`` takes it."""

    def step(x_t, state):
        parts = state if isinstance(state, tuple) else (state,)
        parts = [tf.constant(p, tf.float32) for p in parts]
        out, new = cell(tf.constant(x_t, tf.float32), parts if len(parts) > 1 else parts[0])
        new = tuple(np.asarray(n) for n in (new if isinstance(new, (list, tuple)) else [new]))
        return np.asarray(out), new if len(new) > 1 else new[0]

    return step


@pytest.mark.parametrize(
    ("make_cell", "go_backwards"),
    [
        (keras.layers.GRUCell, False),
        (keras.layers.LSTMCell, True),
        (keras.layers.SimpleRNNCell, False),
    ],
    ids=["gru", "lstm-backwards", "rnn"],
)
def test_predrawn_noise_steps_equal_the_spec_step(make_cell, go_backwards):
    batch, steps, units, sigma, seed = 3, 5, 4, 0.3, 7
    cell = make_cell(units)
    noisy = ri.NoisyCell(cell, noise_std=sigma, seed=seed)
    rnn = keras.layers.RNN(
        noisy, return_sequences=True, return_state=True, go_backwards=go_backwards
    )
    layer = ri.InitialStateRNN(rnn, "zero")
    x = X[:batch, :steps, :2]
    got = as_list(layer(x, training=True))
    # The noise of all steps is one standard-normal draw of (batch, time, components *
    # units) from the cell's generator: a generator with the same seed gives it again.
    width = noisy.noise_size
    eps = keras.random.normal((batch, steps, width), seed=keras.random.SeedGenerator(seed))
    eps = np.asarray(eps)
    lstm = make_cell is keras.layers.LSTMCell
    state = (np.zeros((batch, units)),) * 2 if lstm else np.zeros((batch, units))
    order = range(steps - 1, -1, -1) if go_backwards else range(steps)
    for k, t in enumerate(order):
        noise = (eps[:, t, :units], eps[:, t, units:]) if lstm else eps[:, t]
        out, state = spec.noisy_cell_step(numpy_step(cell), x[:, t], state, sigma, noise=noise)
        np.testing.assert_allclose(got[0][:, k], out, rtol=1e-5, atol=1e-6)
    for a, b in zip(got[1:], state if lstm else (state,), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_predrawn_noise_same_seed_same_numbers():
    def run(seed):
        keras.utils.set_random_seed(0)  # the same GRU weights every time
        cell = ri.NoisyCell(keras.layers.GRUCell(4), noise_std=0.5, seed=seed)
        layer = ri.InitialStateRNN(keras.layers.RNN(cell, return_sequences=True), "zero")
        x = X[:4, :6, :3]
        return [np.asarray(layer(x, training=True)) for _ in range(2)] + [np.asarray(layer(x))]

    a, b, c = run(3), run(3), run(4)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.allclose(a[0], a[1])  # fresh noise every call
    assert not np.allclose(a[0], c[0])  # another seed, other noise
    np.testing.assert_array_equal(a[2], c[2])  # evaluation: no noise at all


def test_predrawn_noise_follows_set_noise_std():
    cell = ri.NoisyCell(keras.layers.GRUCell(4), noise_std=0.5, learnable_std=True, seed=0)
    layer = ri.InitialStateRNN(keras.layers.RNN(cell, return_sequences=True), "zero")
    x = X[:4, :6, :3]
    run = tf.function(lambda x: layer(x, training=True))  # traced once, sigma a variable
    assert not np.allclose(run(x), layer(x))
    cell.set_noise_std(1e-9)  # learnable: the floor is min_std=0, so sigma must stay > 0
    np.testing.assert_allclose(run(x), layer(x), atol=1e-7)
    fixed = ri.NoisyCell(keras.layers.GRUCell(4), noise_std=0.5)
    layer = ri.InitialStateRNN(keras.layers.RNN(fixed, return_sequences=True), "zero")
    fixed.set_noise_std(0.0)
    np.testing.assert_array_equal(layer(x, training=True), layer(x))


def test_bidirectional_noisy_cell_gets_different_noise_per_direction():
    sigma, steps, units = 0.5, 5, 4
    cell = ri.NoisyCell(random_walk_cell(units), noise_std=sigma, seed=0)  # one seed for both
    bidi = keras.layers.Bidirectional(keras.layers.RNN(cell, return_sequences=True))
    layer = ri.InitialStateRNN(bidi, "zero")
    y = np.asarray(layer(np.zeros((4000, steps, 2), "float32"), training=True))
    forward, backward = y[..., :units], y[..., units:]
    # each direction reads one draw per step it has taken, the initial state's included
    np.testing.assert_allclose(forward.var(axis=(0, 2)), sigma**2 * np.arange(1, 6), rtol=0.08)
    np.testing.assert_allclose(backward.var(axis=(0, 2)), sigma**2 * np.arange(5, 0, -1), rtol=0.08)
    # both end states sum all their draws: the same noise would make them equal
    corr = np.corrcoef(forward[:, -1].ravel(), backward[:, 0].ravel())[0, 1]
    assert abs(corr) < 0.05


def test_predrawn_noise_with_a_mask_keeps_masked_steps():
    tokens = np.array([[3, 1, 4, 0, 0], [2, 7, 1, 8, 0]])
    inputs = keras.Input((5,), dtype="int32")
    embedded = keras.layers.Embedding(10, 3, mask_zero=True)(inputs)
    cell = ri.NoisyCell(keras.layers.GRUCell(4), noise_std=0.5)
    layer = ri.InitialStateRNN(keras.layers.RNN(cell, return_sequences=True), "zero")
    model = keras.Model(inputs, layer(embedded))
    a, b = np.asarray(model(tokens, training=True)), np.asarray(model(tokens, training=True))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a[0, 3], a[0, 2])  # masked steps carry the state
    np.testing.assert_array_equal(a[0, 4], a[0, 2])
    np.testing.assert_array_equal(a[1, 4], a[1, 3])


@pytest.mark.parametrize("style", ["initial-state", "noisy-cell"])
def test_stacked_noisy_layers_with_a_std_per_layer(style):
    sizes, stds = (64, 32, 16), (0.3, 0.2, 0.1)
    layers = []
    for i, (units, std) in enumerate(zip(sizes, stds, strict=True)):
        last = i == len(sizes) - 1
        if style == "initial-state":
            layers.append(
                ri.InitialStateRNN(
                    keras.layers.GRU(units, return_sequences=not last), "noisy", noise_std=std
                )
            )
        else:
            cell = ri.NoisyCell(keras.layers.GRUCell(units), noise_std=std)
            layers.append(keras.layers.RNN(cell, return_sequences=not last))
    x, y = X[:8, :6], Y[:8, -1, :1].repeat(16, axis=1)
    model = keras.Sequential([keras.Input((6, 10)), *layers])
    assert tuple(model(x).shape) == (8, 16)
    found = [
        float(getattr(layer, "initial_state", None).noise_std)
        if style == "initial-state"
        else float(layer.cell.noise_std)
        for layer in model.layers
    ]
    np.testing.assert_allclose(found, stds, rtol=1e-6)
    np.testing.assert_array_equal(model(x), model(x))
    assert not np.allclose(model(x, training=True), model(x, training=True))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(x, training=True) - y) ** 2)
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(g is not None and np.isfinite(g).all() for g in grads)


# --------------------------------------------------------------------------- JAX


JAX_SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ["KERAS_BACKEND"] = "jax"
    import numpy as np, keras
    from reference_impl import tensorflow as ri
    out = {"backend": keras.backend.backend()}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5, 3)).astype("float32")
    y = rng.normal(size=(8, 2)).astype("float32")
    model = keras.Sequential([
        keras.Input((5, 3)),
        ri.InitialStateRNN(keras.layers.GRU(4), "noisy", base="learnable", seed=0),
        keras.layers.Dense(2),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    out["h0_moved"] = float(np.abs(np.asarray(model.layers[0].initial_state.h0)).min())
    out["eval_equal"] = bool(np.array_equal(model(x), model(x)))
    a, b = model(x, training=True), model(x, training=True)
    out["train_differs"] = bool(not np.allclose(a, b))
    # NoisyCell trains inside InitialStateRNN: its noise is drawn before lax.scan
    cell = ri.NoisyCell(keras.layers.GRUCell(4), noise_std=0.3, learnable_std=True, seed=1)
    model = keras.Sequential([
        keras.Input((5, 3)),
        ri.InitialStateRNN(keras.layers.RNN(cell), strategy="zero"),
        keras.layers.Dense(2),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    before = [np.array(w) for w in model.trainable_weights]
    rho = float(cell.std_raw)
    history = model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    out["cell_losses"] = [float(v) for v in history.history["loss"]]
    out["cell_weights_moved"] = all(
        not np.allclose(a, np.asarray(b)) for a, b in zip(before, model.trainable_weights)
    )
    out["cell_std_moved"] = float(cell.std_raw) != rho
    out["cell_eval_equal"] = bool(np.array_equal(model(x), model(x)))
    a, b = model(x, training=True), model(x, training=True)
    out["cell_train_differs"] = bool(not np.allclose(a, b))
    bidi = ri.InitialStateRNN(
        keras.layers.Bidirectional(keras.layers.RNN(ri.NoisyCell(keras.layers.LSTMCell(4)))),
        strategy="zero",
    )
    out["bidi_train_shape"] = list(bidi(x, training=True).shape)
    rnn = keras.layers.RNN(ri.NoisyCell(keras.layers.GRUCell(4)))
    out["cell_eval_shape"] = list(rnn(x).shape)
    try:
        rnn(x, training=True)
        out["cell_training"] = "ran"
    except NotImplementedError as e:
        out["cell_training"] = str(e)
    print("RESULT" + json.dumps(out))
    """
)


def test_models_and_noisy_cell_train_on_the_jax_backend():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", JAX_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line is not None, proc.stderr[-3000:]
    out = json.loads(line[len("RESULT") :])
    assert out["backend"] == "jax"
    assert out["h0_moved"] > 0  # every unit of the learned state trained
    assert out["eval_equal"] and out["train_differs"]
    # NoisyCell trains inside InitialStateRNN
    assert len(out["cell_losses"]) == 2 and all(np.isfinite(out["cell_losses"]))
    assert out["cell_weights_moved"] and out["cell_std_moved"]
    assert out["cell_eval_equal"] and out["cell_train_differs"]
    assert out["bidi_train_shape"] == [8, 8]
    # a bare RNN(NoisyCell) evaluates, and its training names the wrapper to use
    assert out["cell_eval_shape"] == [8, 4]
    assert "cannot draw per-step noise in a bare keras.layers.RNN" in out["cell_training"]
    assert (
        'InitialStateRNN(keras.layers.RNN(NoisyCell(...)), strategy="zero")'
        in (out["cell_training"])
    )
