"""reference_impl.tensorflow against reference_impl.spec: values, statistics, gradients,
bad input. Model-level behaviour (fit, save/load, graph mode, wrappers) is in
test_tensorflow_models.py."""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
if keras.backend.backend() != "tensorflow":  # pragma: no cover
    pytest.skip("these tests need the TensorFlow backend", allow_module_level=True)

from reference_impl import STRATEGIES, spec  # noqa: E402
from reference_impl import tensorflow as ri  # noqa: E402

CELLS = ("gru", "lstm", "rnn")


def spec_layout(states, init: ri.InitialState) -> tuple[np.ndarray, ...]:
    """Keras's list ``[h_fw, c_fw, h_bw, c_bw]`` as spec's ``(rows, batch, features)`` arrays."""
    n = len(init.features)
    arrays = [np.asarray(s, dtype=np.float64) for s in states]
    return tuple(np.stack([arrays[d * n + i] for d in range(init.directions)]) for i in range(n))


def inputs(batch: int, time: int = 3, features: int = 2) -> np.ndarray:
    return np.zeros((batch, time, features), "float32")


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_layout_shapes_and_dtype(strategy, cell, bidirectional):
    init = ri.InitialState(strategy, units=6, cell=cell, bidirectional=bidirectional)
    states = init(inputs(5))
    n = (2 if cell == "lstm" else 1) * (2 if bidirectional else 1)
    assert len(states) == n == len(init.state_names)
    assert all(tuple(s.shape) == (5, 6) and s.dtype == tf.float32 for s in states)
    rows, batch, features = spec.state_shapes(
        cell, hidden_size=6, batch_size=5, bidirectional=bidirectional
    )[0]
    assert [a.shape for a in spec_layout(states, init)] == [(rows, batch, features)] * (n // rows)


@settings(max_examples=12, deadline=None)
@given(
    strategy=st.sampled_from(STRATEGIES),
    cell=st.sampled_from(CELLS),
    bidirectional=st.booleans(),
    batch=st.integers(1, 9),
    units=st.integers(1, 17),
    training=st.booleans(),
)
def test_any_sizes_give_spec_shapes_and_bounds(
    strategy, cell, bidirectional, batch, units, training
):
    seed = {"seed": 3} if "seed" in spec.OPTIONS[strategy] else {}
    init = ri.InitialState(strategy, units=units, cell=cell, bidirectional=bidirectional, **seed)
    states = init.get_initial_state(batch, training=training)
    ref = spec.reference_state(
        strategy,
        cell,
        hidden_size=units,
        batch_size=batch,
        bidirectional=bidirectional,
        training=training,
        **seed,
    )
    got = spec_layout(states, init)
    assert [a.shape for a in got] == [r.shape for r in ref]
    if strategy in ("uniform", "xavier"):
        b = spec.uniform_bound(units) if strategy == "uniform" else spec.xavier_bound(units)
        assert all(np.abs(a).max() <= b for a in got)
    if strategy in ("zero", "learnable") or (strategy == "noisy" and not training):
        for a, r in zip(got, ref, strict=True):
            np.testing.assert_array_equal(a, r)  # deterministic: exactly the spec


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("strategy", ["uniform", "xavier"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_resample_false_draws_once_and_broadcasts(strategy, cell):
    init = ri.InitialState(strategy, units=8, cell=cell, bidirectional=True, resample=False)
    a = spec_layout(init(inputs(5)), init)
    b = spec_layout(init(inputs(5)), init)
    bound = spec.uniform_bound(8) if strategy == "uniform" else spec.xavier_bound(8)
    stored = [np.asarray(w) for w in init.non_trainable_weights]
    assert [w.shape for w in stored] == [(2, 8)] * len(init.features)
    assert not init.trainable_weights
    for x, y, w in zip(a, b, stored, strict=True):
        np.testing.assert_array_equal(x, y)  # the same every call
        np.testing.assert_array_equal(x, np.broadcast_to(w[:, None, :], x.shape))
        assert np.abs(w).max() <= bound
        assert not np.allclose(w[0], w[1])  # one vector per direction
    if cell == "lstm":
        assert not np.allclose(stored[0], stored[1])  # h0 and c0 drawn independently


@pytest.mark.parametrize(
    ("strategy", "options"),
    [
        ("uniform", {}),
        ("xavier", {"resample": False}),
        ("learnable", {"init": "uniform"}),
        ("noisy", {"noise_std": 0.5}),
    ],
)
def test_seed_reproduces_the_draws(strategy, options):
    def draw(seed):
        init = ri.InitialState(strategy, units=8, cell="lstm", seed=seed, **options)
        return [np.asarray(s) for s in init.get_initial_state(4, training=True)]

    for a, b in zip(draw(7), draw(7), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(draw(7)[0], draw(8)[0])


@pytest.mark.parametrize("init_name", ["zeros", "uniform", "xavier"])
def test_learnable_named_inits(init_name):
    init = ri.InitialState("learnable", units=64, init=init_name, seed=0)
    h0 = np.asarray(init.h0)
    if init_name == "zeros":
        assert not h0.any()
    else:
        b = spec.uniform_bound(64) if init_name == "uniform" else spec.xavier_bound(64)
        assert 0.8 * b < np.abs(h0).max() <= b


def test_learnable_accepts_a_keras_initializer():
    init = ri.InitialState("learnable", units=3, init=keras.initializers.Constant(0.5))
    np.testing.assert_array_equal(init(inputs(2))[0], np.full((2, 3), 0.5))
    with pytest.raises(ValueError, match=r"init returned shape \(3,\); expected \(1, 3\)"):
        ri.InitialState("learnable", units=3, init=lambda shape, dtype=None: np.zeros(3))


def test_gradient_reaches_each_learned_vector_once_per_batch_row():
    init = ri.InitialState("learnable", units=4, cell="lstm", bidirectional=True)
    weights = tf.constant(np.arange(1.0, 6.0, dtype="float32")[:, None])  # (batch=5, 1)
    with tf.GradientTape() as tape:
        states = init(inputs(5))
        loss = sum(float(k + 1) * tf.reduce_sum(s * weights) for k, s in enumerate(states))
    grads = tape.gradient(loss, [init.h0, init.c0])
    total = float(weights.numpy().sum())
    # states are [h_fw, c_fw, h_bw, c_bw]: h0 row 0 got factor 1, c0 row 0 factor 2, ...
    np.testing.assert_allclose(grads[0], [[1 * total] * 4, [3 * total] * 4])
    np.testing.assert_allclose(grads[1], [[2 * total] * 4, [4 * total] * 4])


# --------------------------------------------------------------------------- noisy


@pytest.mark.parametrize("base", spec.NOISY_BASES)
def test_noisy_is_exactly_the_base_outside_training(base):
    init = ri.InitialState("noisy", units=6, cell="lstm", base=base, noise_std=0.3)
    if base == "learnable":
        init.h0.assign(np.full((1, 6), 0.25, "float32"))
    for training in (False, None):
        got = spec_layout(init(inputs(4), training=training), init)
        ref = spec.reference_state(
            "noisy",
            "lstm",
            hidden_size=6,
            batch_size=4,
            base=base,
            training=False,
            learned=[np.asarray(init.h0), np.asarray(init.c0)] if base == "learnable" else None,
        )
        for a, r in zip(got, ref, strict=True):
            np.testing.assert_array_equal(a, r)


@pytest.mark.parametrize("base", spec.NOISY_BASES)
def test_noisy_draws_fresh_gaussian_noise_in_training(base):
    init = ri.InitialState("noisy", units=32, base=base, noise_std=0.2, seed=0)
    if base == "learnable":
        init.h0.assign(np.full((1, 32), 1.0, "float32"))
    offset = 1.0 if base == "learnable" else 0.0
    (a,) = init(inputs(1024), training=True)
    (b,) = init(inputs(1024), training=True)
    a, b = np.asarray(a) - offset, np.asarray(b) - offset
    assert abs(a.mean()) < 0.01
    assert a.std() == pytest.approx(0.2, rel=0.03)
    assert not np.allclose(a, b)


def test_learnable_std_is_positive_with_a_floor_and_gets_gradients():
    init = ri.InitialState("noisy", units=8, noise_std=0.3, learnable_std=True, min_std=0.05)
    assert [w.name for w in init.trainable_weights] == ["std_raw"]
    assert float(init.noise_std) == pytest.approx(0.3, rel=1e-6)
    with tf.GradientTape() as tape:
        (h,) = init(inputs(64), training=True)
        loss = tf.reduce_sum(h**2)
    (grad,) = tape.gradient(loss, [init.std_raw])
    assert np.isfinite(grad) and float(grad) > 0  # more sigma, more loss
    init.std_raw.assign(-50.0)  # however far rho goes, sigma stays at least min_std
    assert float(init.noise_std) >= 0.05
    assert float(init.noise_std) == pytest.approx(
        float(spec.noise_std_from_raw(-50.0, 0.05)), rel=1e-6
    )


@pytest.mark.parametrize("learnable_std", [False, True])
def test_set_noise_std_for_a_schedule(learnable_std):
    init = ri.InitialState("noisy", units=16, noise_std=0.5, learnable_std=learnable_std, seed=1)
    init.set_noise_std(0.05)
    assert float(init.noise_std) == pytest.approx(0.05, rel=1e-5)
    (h,) = init(inputs(2048), training=True)
    assert np.asarray(h).std() == pytest.approx(0.05, rel=0.04)
    with pytest.raises(ValueError, match="noise_std must be a finite number >= 0; got -1.0"):
        init.set_noise_std(-1.0)
    with pytest.raises(AttributeError, match="strategy 'zero' has no noise_std"):
        ri.InitialState("zero", units=2).set_noise_std(0.1)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"strategy": "gaussian"}, ValueError, "unknown strategy 'gaussian'; expected one of"),
        ({"strategy": 3}, TypeError, "strategy must be a string"),
        ({"strategy": "zero", "bound": 1.0}, ValueError, r"unknown option\(s\) \['bound'\]"),
        ({"strategy": "noisy", "noise_std": -0.1}, ValueError, "noise_std must be a finite"),
        (
            {"strategy": "noisy", "noise_std": 0.1, "min_std": 0.2, "learnable_std": True},
            ValueError,
            "must start above min_std",
        ),
        ({"strategy": "uniform", "bound": 0}, ValueError, "bound must be > 0"),
        ({"strategy": "uniform", "resample": "yes"}, TypeError, "resample must be True or False"),
        ({"strategy": "learnable", "init": "normal"}, ValueError, "unknown init 'normal'"),
        ({"strategy": "noisy", "base": "uniform"}, ValueError, "unknown base 'uniform'"),
        ({"strategy": "zero", "cell": "transformer"}, ValueError, "unsupported cell 'transformer'"),
        ({"strategy": "zero", "units": 0}, ValueError, "units must be a positive integer; got 0"),
        ({"strategy": "zero", "units": 2.5}, TypeError, "units must be an integer"),
        ({"strategy": "zero", "bidirectional": 1}, TypeError, "bidirectional must be True"),
        ({"strategy": "xavier", "seed": 1.5}, TypeError, "seed must be an integer or None"),
    ],
)
def test_initial_state_rejects_bad_options(kwargs, error, message):
    kwargs = {"units": 4, **kwargs}
    with pytest.raises(error, match=message):
        ri.InitialState(**kwargs)


def test_initial_state_needs_a_batch_dimension():
    with pytest.raises(ValueError, match=r"batch dimension first.*got shape \(3,\)"):
        ri.InitialState("zero", units=4)(np.zeros(3, "float32"))


def test_noise_std_only_exists_for_noisy():
    with pytest.raises(AttributeError, match="strategy 'learnable' has no noise_std"):
        _ = ri.InitialState("learnable", units=4).noise_std


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (lambda: keras.layers.Dense(4), "got Dense"),
        (lambda: keras.layers.GRUCell(4), r"got GRUCell \(a single cell: wrap it in"),
        (lambda: keras.layers.LSTMCell(4), r"got LSTMCell \(a single cell: wrap it in"),
    ],
)
def test_initial_state_rnn_rejects_unsupported_layers(layer, message):
    with pytest.raises(TypeError, match=message):
        ri.InitialStateRNN(layer())


def test_initial_state_rnn_rejects_mismatched_directions():
    bidi = keras.layers.Bidirectional(
        keras.layers.GRU(4), backward_layer=keras.layers.GRU(5, go_backwards=True)
    )
    with pytest.raises(ValueError, match=r"differ \(cell, units\) \('gru', 4\) vs \('gru', 5\)"):
        ri.InitialStateRNN(bidi)
    with pytest.raises(ValueError, match="unknown strategy 'learned'"):
        ri.InitialStateRNN(keras.layers.GRU(4), strategy="learned")


@pytest.mark.parametrize(
    ("state", "error", "message"),
    [
        (
            [np.zeros((2, 4), "float32")],
            TypeError,
            r"structured as \[h\(2, 4\), c\(2, 4\)\] \(a list of \(batch, 4\) tensors\); "
            r"got \[array\(2, 4\)\]",
        ),
        ([np.zeros((2, 4), "float32")] * 3, TypeError, r"got \[array\(2, 4\), array"),
        (
            [np.zeros((2, 5), "float32")] * 2,
            ValueError,
            r"state h has shape \(2, 5\); expected \(2, 4\)",
        ),
        (
            [np.zeros((3, 4), "float32")] * 2,
            ValueError,
            r"state h has shape \(3, 4\); expected \(2, 4\)",
        ),
        ([np.zeros((2, 1, 4), "float32")] * 2, ValueError, r"state h has shape \(2, 1, 4\)"),
    ],
)
def test_explicit_state_of_the_wrong_count_or_shape(state, error, message):
    layer = ri.InitialStateRNN(keras.layers.LSTM(4))
    with pytest.raises(error, match=message):
        layer(np.zeros((2, 3, 2), "float32"), initial_state=state)


def test_explicit_state_must_be_flat():
    layer = ri.InitialStateRNN(keras.layers.LSTM(4))
    nested = [[np.zeros((2, 4), "float32")] * 2, np.zeros((2, 4), "float32")]
    with pytest.raises(TypeError, match=r"got \[\[array\(2, 4\), array\(2, 4\)\], array"):
        layer(np.zeros((2, 3, 2), "float32"), initial_state=nested)


def test_noisy_cell_rejects_bad_input():
    with pytest.raises(TypeError, match="NoisyCell wraps keras.layers.GRUCell.*got Dense"):
        ri.NoisyCell(keras.layers.Dense(3))
    with pytest.raises(TypeError, match="got GRU$"):
        ri.NoisyCell(keras.layers.GRU(3))
    with pytest.raises(ValueError, match="noise_std must be a finite number >= 0; got -0.5"):
        ri.NoisyCell(keras.layers.GRUCell(3), noise_std=-0.5)
    with pytest.raises(ValueError, match="must start above min_std"):
        ri.NoisyCell(keras.layers.GRUCell(3), noise_std=0.1, learnable_std=True, min_std=0.1)
    with pytest.raises(TypeError, match="learnable_std must be True or False"):
        ri.NoisyCell(keras.layers.GRUCell(3), learnable_std="yes")
    with pytest.raises(TypeError, match="seed must be an integer or None"):
        ri.NoisyCell(keras.layers.GRUCell(3), seed="1")


def test_a_strategy_value_is_the_same_as_its_name_and_options():
    plan = spec.make("uniform", bound=0.2, resample=False, seed=3)
    by_value = ri.InitialState(plan, units=5, cell="lstm", name="s")
    by_name = ri.InitialState(
        "uniform", units=5, cell="lstm", bound=0.2, resample=False, seed=3, name="s"
    )
    assert by_value.plan == by_name.plan == plan
    assert by_value.strategy == "uniform" and by_value.options == plan.options()
    for a, b in zip(by_value.weights, by_name.weights, strict=True):
        np.testing.assert_array_equal(a, b)  # the same draws
    assert by_value.get_config() == by_name.get_config()  # serialized as name and options
    wrapper = ri.InitialStateRNN(keras.layers.GRU(3), spec.make("noisy", noise_std=0.3))
    assert wrapper.strategy == "noisy"
    assert float(wrapper.initial_state.noise_std) == pytest.approx(0.3)
    with pytest.raises(ValueError, match=r"is already a value; options \['seed'\] belong in it"):
        ri.InitialState(plan, units=5, seed=1)


# --------------------------------------------------------------------------- configs

# A value other than the default for every option of every strategy, and of the layers.
NON_DEFAULT = {
    "seed": [5],
    "bound": [0.3],
    "gain": [2.5],
    "resample": [False],
    "init": ["uniform", "xavier", lambda: keras.initializers.Constant(0.25)],
    "noise_std": [0.37],
    "learnable_std": [True],
    "min_std": [0.05],
    "base": ["learnable"],
}
OPTION_CASES = [
    (strategy, option, value)
    for strategy, options in spec.OPTIONS.items()
    for option in options
    for value in NON_DEFAULT[option]
]


def case_id(case) -> str:
    strategy, option, value = case
    return f"{strategy}-{option}-{value if not callable(value) else 'initializer'}"


def fresh(value):
    return value() if callable(value) else value


def assert_same_options(clone_options: dict, options: dict) -> None:
    assert list(clone_options) == list(options)
    for key, value in options.items():
        got = clone_options[key]
        if isinstance(value, keras.initializers.Initializer):
            assert type(got) is type(value) and got.get_config() == value.get_config()
        else:
            assert got == value and type(got) is type(value), key


def from_json_config(layer):
    """``cls.from_config`` of the layer's config through JSON: no weights involved."""
    config = json.loads(json.dumps(layer.get_config()))
    return type(layer).from_config(config)


@pytest.mark.parametrize("case", OPTION_CASES, ids=case_id)
@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_initial_state_config_keeps_every_option(case, cell):
    strategy, option, value = case
    layer = ri.InitialState(
        strategy, units=7, cell=cell, bidirectional=True, **{option: fresh(value)}
    )
    clone = from_json_config(layer)
    assert (clone.strategy, clone.units, clone.cell, clone.bidirectional) == (
        strategy,
        7,
        cell,
        True,
    )
    default = spec.OPTIONS[strategy][option]
    assert layer.options[option] != default and clone.plan.source == layer.plan.source
    assert_same_options(clone.options, layer.options)
    if strategy == "noisy":  # the fresh weight holds the configured sigma
        assert float(clone.noise_std) == pytest.approx(float(layer.noise_std), rel=1e-6)


@pytest.mark.parametrize("case", OPTION_CASES, ids=case_id)
def test_initial_state_rnn_config_keeps_every_option(case):
    strategy, option, value = case
    inner = keras.layers.Bidirectional(keras.layers.LSTM(7, return_sequences=True))
    layer = ri.InitialStateRNN(inner, strategy, **{option: fresh(value)})
    clone = from_json_config(layer)
    assert clone.strategy == strategy
    init = clone.initial_state
    assert (init.units, init.cell, init.bidirectional) == (7, "lstm", True)
    assert_same_options(init.options, layer.initial_state.options)
    assert clone.layer.get_config() == layer.layer.get_config()


@pytest.mark.parametrize(
    "make_cell",
    [
        lambda: keras.layers.GRUCell(7, dropout=0.25, reset_after=False),
        lambda: keras.layers.LSTMCell(7, recurrent_dropout=0.1),
        lambda: keras.layers.SimpleRNNCell(7, activation="relu"),
    ],
    ids=["gru", "lstm", "rnn"],
)
@pytest.mark.parametrize(
    "options",
    [
        {"noise_std": 0.37},
        {"learnable_std": True},
        {"min_std": 0.05},
        {"seed": 11},
        {"noise_std": 0.37, "learnable_std": True, "min_std": 0.05, "seed": 11},
    ],
    ids=["noise_std", "learnable_std", "min_std", "seed", "all"],
)
def test_noisy_cell_config_keeps_every_option(make_cell, options):
    cell = ri.NoisyCell(make_cell(), **options)
    wrapped = ri.InitialStateRNN(keras.layers.RNN(cell), "zero")
    for clone in (from_json_config(cell), from_json_config(wrapped).layer.cell):
        assert clone.noise_rule == cell.noise_rule
        assert (clone.initial_noise_std, clone.learnable_std, clone.min_std, clone.seed) == (
            cell.initial_noise_std,
            cell.learnable_std,
            cell.min_std,
            cell.seed,
        )
        for key, value in options.items():
            assert clone.get_config()[key] == value
        assert type(clone.cell) is type(cell.cell)
        assert clone.cell.get_config() == cell.cell.get_config()
        assert float(clone.noise_std) == pytest.approx(float(cell.noise_std), rel=1e-6)
