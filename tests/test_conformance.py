"""One suite that holds every framework to the spec.

Each test runs once per framework (PyTorch, Keras, Flax linen, Flax NNX) through the
adapters of ``tests/adapters.py``, which use only the public API and return numpy
arrays in one layout, so every assertion here is written once. What is specific to
one framework (PackedSequence, masks, ``.keras`` files, msgpack, ``lax.scan``,
mixed precision, export) stays in that framework's own test file.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from reference_impl import STRATEGIES, spec

F, B, T = 3, 3, 4  # features, batch, time steps
X = np.random.default_rng(0).normal(size=(B, T, 2)).astype(np.float32)
CELLS = ("gru", "lstm", "rnn")
BOUNDS = {"uniform": spec.uniform_bound, "xavier": spec.xavier_bound}


# The keywords the four modules share, with their defaults.
SIGNATURES = {
    "InitialState": {"strategy": "zero", "cell": "gru", "bidirectional": False},
    "InitialStateRNN": {"strategy": "learnable"},
    "NoisyCell": {"noise_std": 0.1, "learnable_std": False, "min_std": 0.0, "seed": None},
}


def names(cell):
    return ("h", "c") if cell == "lstm" else ("h",)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_state_shapes_values_and_bounds(framework, strategy, cell, directions):
    state = framework.initial_state(strategy, cell, F, directions, seed=3)
    first, second = state.draw(B), state.draw(B)
    assert sorted(first) == sorted(names(cell))
    for name in names(cell):
        a, b = first[name], second[name]
        assert a.shape == (directions, B, F) and np.isfinite(a).all()
        if strategy in ("zero", "learnable", "noisy"):  # zero base, or zeros init; eval
            np.testing.assert_array_equal(a, 0.0)
        else:
            assert np.abs(a).max() <= BOUNDS[strategy](F) + 1e-7
            assert np.abs(a).max() > 0
            assert not np.array_equal(a, b)  # resample=True: a fresh draw per call
            assert not np.allclose(a[:, 0], a[:, 1])  # and per batch row


@pytest.mark.parametrize("batch", [1, 2048])
def test_the_xavier_scale_does_not_depend_on_the_batch(framework, batch):
    """The bound is the features' alone: the same spread for one row as for 2,048."""
    state = framework.initial_state("xavier", "gru", 32, 1, seed=5)
    bound = spec.xavier_bound(32)
    draws = 64 if batch == 1 else 1  # at least 2,048 values for the spread
    h = np.concatenate([state.draw(batch)["h"].ravel() for _ in range(draws)])
    assert np.abs(h).max() <= bound + 1e-7
    assert h.std() == pytest.approx(spec.uniform_std(bound), rel=0.05)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize(
    ("strategy", "options"),
    [
        ("uniform", {"resample": False}),
        ("xavier", {"resample": False}),
        ("learnable", {"init": "uniform"}),
    ],
    ids=["uniform-stored", "xavier-stored", "learnable-uniform"],
)
def test_stored_and_learnable_vectors_are_broadcast_over_the_batch(
    framework, strategy, options, cell, directions
):
    state = framework.initial_state(strategy, cell, F, directions, seed=5, **options)
    vectors = state.vectors()
    first, second = state.draw(B), state.draw(B)
    bound = spec.uniform_bound(F) if strategy != "xavier" else spec.xavier_bound(F)
    for name in names(cell):
        assert vectors[name].shape == (directions, F)
        assert 0 < np.abs(vectors[name]).max() <= bound + 1e-7
        want = np.broadcast_to(vectors[name][:, None], (directions, B, F))
        np.testing.assert_allclose(first[name], want, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(first[name], second[name])  # the same every call
    if cell == "lstm":
        assert not np.allclose(vectors["h"], vectors["c"])  # h and c drawn independently
    if directions == 2:
        assert not np.allclose(vectors["h"][0], vectors["h"][1])  # one vector per direction


@pytest.mark.parametrize(
    ("strategy", "options", "b"),
    [
        ("uniform", {}, spec.uniform_bound(64)),
        ("uniform", {"bound": 0.05}, 0.05),
        ("xavier", {}, spec.xavier_bound(64)),
        ("xavier", {"gain": 2.0}, spec.xavier_bound(64, 2.0)),
    ],
    ids=["uniform", "uniform-bound", "xavier", "xavier-gain"],
)
def test_draw_statistics(framework, strategy, options, b):
    """A large draw is U(-b, b) with the option's bound: mean 0, std b / sqrt(3), the
    whole range used and never beyond it."""
    batch = 500
    state = framework.initial_state(strategy, "gru", 64, 1, seed=1, **options)
    h = state.draw(batch)["h"].ravel()
    n = h.size
    assert 0.95 * b < np.abs(h).max() <= b + 1e-7
    assert abs(h.mean()) < 5 * (b / np.sqrt(3)) / np.sqrt(n)
    assert h.std() == pytest.approx(spec.uniform_std(b), rel=0.02)


@pytest.mark.parametrize("learnable_std", [False, True])
def test_noise_statistics_and_sigma_read_and_set(framework, learnable_std):
    """Training noise has the std sigma reads, before and after sigma is set."""
    state = framework.initial_state(
        "noisy", "gru", 64, 1, seed=2, noise_std=0.5, learnable_std=learnable_std, min_std=0.1
    )
    assert state.noise_std() == pytest.approx(0.5, abs=1e-6)
    assert state.draw(400, training=True)["h"].std() == pytest.approx(0.5, rel=0.03)
    state.set_noise_std(0.2)
    assert state.noise_std() == pytest.approx(0.2, abs=1e-6)
    assert state.draw(400, training=True)["h"].std() == pytest.approx(0.2, rel=0.03)
    with pytest.raises(ValueError, match="min_std"):
        state.set_noise_std(0.05)  # below the floor: refused by the spec's rule
    np.testing.assert_array_equal(state.draw(8)["h"], 0.0)  # evaluation: the base


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize(
    ("strategy", "options", "expected"),
    [
        ("learnable", {}, {"h", "c"}),
        ("noisy", {"base": "learnable", "learnable_std": True}, {"h", "c", "std_raw"}),
    ],
    ids=["learnable", "noisy-learnable"],
)
def test_gradients_reach_the_state(framework, strategy, options, expected, cell):
    state = framework.initial_state(strategy, cell, F, 2, seed=4, **options)
    rng = np.random.default_rng(0)
    weights = {n: rng.normal(size=(2, B, F)).astype(np.float32) for n in names(cell)}
    grads = state.grads(B, weights)
    assert set(grads) == {n for n in expected if n in names(cell) or n == "std_raw"}
    for name in names(cell):
        # d sum(w * broadcast(v)) / dv = w summed over the batch, for every framework
        np.testing.assert_allclose(grads[name], weights[name].sum(1), rtol=1e-5, atol=1e-5)
    if "std_raw" in grads:
        assert np.isfinite(grads["std_raw"]) and abs(float(grads["std_raw"])) > 0


def test_evaluation_is_deterministic_and_seeds_reproduce(framework):
    noisy = framework.initial_state("noisy", "lstm", F, 2, seed=9, noise_std=0.3)
    for name, value in noisy.draw(B).items():
        np.testing.assert_array_equal(value, 0.0)
        np.testing.assert_array_equal(value, noisy.draw(B)[name])
    train = noisy.draw(B, training=True)["h"]
    assert np.abs(train).max() > 0 and not np.array_equal(train, noisy.draw(B, training=True)["h"])
    same = [framework.initial_state("uniform", "gru", F, 1, seed=s).draw(B)["h"] for s in (7, 7, 8)]
    np.testing.assert_array_equal(same[0], same[1])
    assert not np.allclose(same[0], same[2])


@pytest.mark.parametrize(
    ("strategy", "options"),
    [
        ("learnable", {"init": "uniform"}),
        ("uniform", {"resample": False}),
        ("noisy", {"base": "learnable", "learnable_std": True, "noise_std": 0.3}),
    ],
    ids=["learnable", "stored", "noisy"],
)
def test_save_and_load_round_trip(framework, strategy, options):
    state = framework.initial_state(strategy, "lstm", F, 2, seed=6, **options)
    if strategy == "noisy":
        state.set_noise_std(0.4)  # a value that differs from the constructor's
    restored = state.save_load()
    before, after = state.vectors(), restored.vectors()
    assert sorted(before) == sorted(after)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
    for name, value in state.draw(B).items():
        np.testing.assert_array_equal(value, restored.draw(B)[name])
    if strategy == "noisy":
        assert restored.noise_std() == pytest.approx(0.4, abs=1e-6)


@pytest.mark.parametrize(
    ("cell", "layers", "directions"),
    [(c, 1, 1) for c in CELLS] + [(c, 2, 2) for c in CELLS] + [("gru", 1, 2), ("lstm", 2, 1)],
)
def test_the_model_starts_from_its_own_state(framework, cell, layers, directions):
    """InitialStateRNN runs from each layer's own vectors: the same outputs as the same
    layers given those vectors explicitly, different from a zero start."""
    model = framework.model(cell, F, layers, directions, "learnable", init="uniform")
    vectors = model.vectors()
    assert len(vectors) == layers
    if layers == 2:
        assert not np.allclose(vectors[0]["h"], vectors[1]["h"])  # each layer its own draw
    explicit = [
        {n: np.broadcast_to(v[n][:, None], (directions, B, F)) for n in names(cell)}
        for v in vectors
    ]
    out = model.run(X)
    assert out.shape == (B, T, directions * F)
    np.testing.assert_allclose(out, model.run(X, state=explicit), rtol=1e-6, atol=1e-6)
    zeros = [{n: np.zeros((directions, B, F)) for n in names(cell)} for _ in vectors]
    assert np.abs(out - model.run(X, state=zeros)).max() > 1e-4


def _follows_the_spec_step(noisy, cell, sigma):
    """Training outputs equal spec.noisy_cell_step fed the same noise, step by step."""
    out, eps = noisy.run(X, training=True)
    assert eps.shape == (B, T, F * len(names(cell)))
    assert 0.5 < eps.std() < 1.5  # standard normal, scaled by sigma where it is used
    state = (np.zeros((B, F)),) * 2 if cell == "lstm" else np.zeros((B, F))
    for t in range(T):
        e = eps[:, t]
        noise = (e[:, :F], e[:, F:]) if cell == "lstm" else e
        step_out, state = spec.noisy_cell_step(noisy.step, X[:, t], state, sigma, noise=noise)
        np.testing.assert_allclose(out[:, t], step_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_noisy_cell_follows_the_spec_step(framework, cell):
    """In training, NoisyCell over a sequence equals spec.noisy_cell_step fed the same
    noise, step by step; in evaluation it is exactly the bare cell."""
    noisy = framework.noisy_cell(cell, F, 0.3)
    _follows_the_spec_step(noisy, cell, 0.3)
    evaluated, none = noisy.run(X, training=False)
    assert none is None  # evaluation draws nothing
    np.testing.assert_allclose(evaluated, noisy.bare_run(X), rtol=1e-6, atol=1e-6)
    again, _ = noisy.run(X, training=False)
    np.testing.assert_array_equal(evaluated, again)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_noisy_cell_uses_the_sigma_set_after_construction(framework, cell):
    """set_noise_std (linen: a new module with the new field) is read back and is the
    sigma the next training run scales its noise by."""
    noisy = framework.noisy_cell(cell, F, 0.3)
    noisy.set_noise_std(0.15)
    assert noisy.noise_std() == pytest.approx(0.15, abs=1e-6)
    _follows_the_spec_step(noisy, cell, 0.15)


@pytest.mark.parametrize(
    ("strategy", "options", "error", "message"),
    [
        ("bogus", {}, ValueError, "unknown strategy"),
        ("uniform", {"bound": -1.0}, ValueError, "bound"),
        ("uniform", {"resample": "yes"}, TypeError, "resample"),
        ("xavier", {"gain": -1.0}, ValueError, "gain"),
        ("learnable", {"init": "bogus"}, ValueError, "init"),
        ("noisy", {"noise_std": -1.0}, ValueError, "noise_std"),
        ("noisy", {"noise_std": 0.1, "min_std": 0.2}, ValueError, "min_std"),
        ("zero", {"bound": 1.0}, ValueError, "unknown option"),
    ],
    ids=["strategy", "bound", "resample", "gain", "init", "noise_std", "min_std", "option"],
)
def test_the_same_error_for_the_same_bad_input(framework, strategy, options, error, message):
    with pytest.raises(error, match=message) as caught:
        framework.initial_state(strategy, "gru", F, 1, **options)
    try:  # the spec's own message, word for word
        spec.make(strategy, **options)
    except error as expected:
        assert str(caught.value) == str(expected)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("wrong", ["batch", "features"])
def test_a_given_state_of_the_wrong_shape_is_refused_alike(framework, cell, wrong):
    """spec.check_given_state in every framework: a ValueError naming the component,
    its shape and the expected one, before the layer runs."""
    model = framework.model(cell, F, 1, 1, "zero")
    shape = (1, B + 1, F) if wrong == "batch" else (1, B, F + 1)
    with pytest.raises(ValueError, match=r"initial state [hc]0? has shape \(.*\); expected \("):
        model.run(X, state=[{n: np.zeros(shape) for n in names(cell)}])


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_an_empty_batch_passes_through(framework, strategy, cell):
    """A batch of size 0 runs as through the bare layer: empty outputs of the bare layer's
    shape, in training and evaluation; where the bare layer refuses it (Keras's LSTM on
    TensorFlow), the same kind of error. The initial state alone is empty."""
    model = framework.model(cell, F, 1, 2, strategy)
    try:
        want = framework.bare_run(cell, F, 2, X[:0])
    except Exception as error:  # the bare layer refuses it: the wrapped one alike
        for training in (False, True):
            with pytest.raises(type(error)):
                model.run(X[:0], training=training)
    else:
        assert want.shape == (0, T, 2 * F)
        for training in (False, True):
            assert model.run(X[:0], training=training).shape == want.shape
    state = framework.initial_state(strategy, cell, F, 2, seed=1)
    for training in (False, True):
        drawn = state.draw(0, training=training)
        assert {name: a.shape for name, a in drawn.items()} == {n: (2, 0, F) for n in names(cell)}


STREAM_CASES = [
    ("zero", {}),
    ("learnable", {"init": "uniform"}),
    ("noisy", {"base": "learnable", "noise_std": 0.5}),
]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize(("strategy", "options"), STREAM_CASES, ids=[c[0] for c in STREAM_CASES])
def test_a_stream_cut_into_chunks_carries_its_state(framework, cell, strategy, options):
    """The framework's idiom for a stream (Keras: a stateful layer and reset_state();
    PyTorch and Flax: the final state passed back in, None at a reset) starts from the
    strategy's state, carries the state across chunks, starts again after a reset, and
    survives a save and load; the noisy strategy's noise is drawn where a stream starts,
    in training only."""
    stream = framework.stream(cell, F, strategy, seed=3, **options)
    whole = stream.chunk(X)  # the first call: the strategy's start
    start = {n: np.broadcast_to(v[:, None], (1, B, F)) for n, v in stream.vectors().items()}
    start = {n: start.get(n, np.zeros((1, B, F))) for n in names(cell)}
    np.testing.assert_allclose(whole, stream.explicit(X, start), rtol=1e-6, atol=1e-6)
    if strategy == "learnable":
        zeros = {n: np.zeros((1, B, F)) for n in names(cell)}
        assert np.abs(whole - stream.explicit(X, zeros)).max() > 1e-4
    for restored in (stream, stream.save_load()):
        restored.reset()
        parts = [restored.chunk(X[:, :1]), restored.chunk(X[:, 1:3]), restored.chunk(X[:, 3:])]
        np.testing.assert_allclose(np.concatenate(parts, 1), whole, rtol=1e-5, atol=1e-5)
        restored.reset()
        np.testing.assert_allclose(restored.chunk(X[:, :2]), whole[:, :2], rtol=1e-6, atol=1e-6)
    if strategy == "noisy":
        stream.reset()
        first = stream.chunk(X[:, :2], training=True)
        assert np.abs(first - whole[:, :2]).max() > 1e-3  # a noisy start
        carried = stream.carried()
        second = stream.chunk(X[:, 2:], training=True)
        # no new noise within a stream: the rest runs from the carried state
        np.testing.assert_allclose(second, stream.explicit(X[:, 2:], carried), rtol=1e-5, atol=1e-5)
        stream.reset()
        again = stream.chunk(X[:, :2], training=True)
        assert np.abs(again - first).max() > 1e-3  # a fresh draw for a new stream


@pytest.mark.parametrize("name", SIGNATURES)
def test_the_same_keywords_and_defaults(framework, name):
    params = inspect.signature(getattr(framework.ri, name).__init__).parameters
    got = {key: params[key].default for key in SIGNATURES[name] if key in params}
    assert got == SIGNATURES[name]


def test_the_same_section_order(framework):
    lines = [inspect.getsourcelines(getattr(framework.ri, name))[1] for name in SIGNATURES]
    assert lines == sorted(lines)  # InitialState, InitialStateRNN, NoisyCell
