"""The framework-neutral definition: bounds, shapes, options, the reference states."""

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_impl
from reference_impl import STRATEGIES, spec


def test_strategies_and_version():
    assert STRATEGIES == ("zero", "uniform", "xavier", "learnable", "noisy")
    assert isinstance(reference_impl.__version__, str)
    assert set(spec.OPTIONS) == set(STRATEGIES)


def test_import_reference_impl_imports_no_framework():
    code = (
        "import sys, reference_impl, reference_impl.spec;"
        "heavy = {'torch', 'tensorflow', 'keras', 'jax', 'flax'} & set(sys.modules);"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("features", [1, 16, 64, 100, 1024])
def test_bounds(features):
    assert spec.uniform_bound(features) == pytest.approx(1 / math.sqrt(features))
    assert spec.uniform_bound(features, bound=0.3) == 0.3
    assert spec.xavier_bound(features) == pytest.approx(math.sqrt(6 / (2 * features)))
    assert spec.xavier_bound(features, gain=2.0) == pytest.approx(2 * spec.xavier_bound(features))


def test_naive_glorot_depends_on_batch_but_spec_does_not():
    small = spec.naive_glorot_bound((1, 8, 64))
    large = spec.naive_glorot_bound((1, 512, 64))
    assert small > 5 * large  # the careless bound shrinks as the batch grows
    assert spec.naive_glorot_bound((8, 64)) == pytest.approx(math.sqrt(6 / 72))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        spec.naive_glorot_bound((64,))


@pytest.mark.parametrize(
    "cell,proj,expected",
    [("gru", 0, ((4, 3, 16),)), ("rnn", 0, ((4, 3, 16),)), ("lstm", 5, ((4, 3, 5), (4, 3, 16)))],
)
def test_state_shapes(cell, proj, expected):
    shapes = spec.state_shapes(
        cell, hidden_size=16, batch_size=3, num_layers=2, bidirectional=True, proj_size=proj
    )
    assert shapes == expected


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: spec.check_strategy("glorot"), ValueError, r"'glorot'.*\('zero'"),
        (lambda: spec.check_strategy(3), TypeError, "strategy must be a string"),
        (lambda: spec.check_cell("transformer"), ValueError, r"'transformer'.*'gru'"),
        (
            lambda: spec.resolve_options("zero", {"bound": 1}),
            ValueError,
            r"\['bound'\].*\['seed'\]",
        ),
        (lambda: spec.resolve_options("uniform", {"gain": 1}), ValueError, r"accepts \['bound'"),
        (lambda: spec.resolve_options("noisy", {"noise_std": -0.1}), ValueError, "-0.1"),
        (lambda: spec.resolve_options("noisy", {"noise_std": "a"}), TypeError, "'a'"),
        (lambda: spec.resolve_options("noisy", {"base": "xavier"}), ValueError, "'xavier'"),
        (
            lambda: spec.resolve_options("noisy", {"learnable_std": True, "noise_std": 0.0}),
            ValueError,
            "above min_std",
        ),
        (lambda: spec.resolve_options("learnable", {"init": "ones"}), ValueError, "'ones'"),
        (lambda: spec.resolve_options("uniform", {"bound": 0}), ValueError, "bound must be > 0"),
        (lambda: spec.resolve_options("uniform", {"seed": 1.5}), TypeError, "seed"),
        (lambda: spec.resolve_options("xavier", {"resample": "yes"}), TypeError, "'yes'"),
        (lambda: spec.component_features("gru", 16, proj_size=4), ValueError, "only supported"),
        (lambda: spec.component_features("lstm", 16, proj_size=16), ValueError, "smaller"),
        (lambda: spec.check_positive_int("hidden_size", 0), ValueError, "hidden_size"),
        (lambda: spec.check_positive_int("hidden_size", 2.0), TypeError, "hidden_size"),
    ],
)
def test_bad_options_are_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_resolve_options_fills_defaults():
    opts = spec.resolve_options("noisy", {"noise_std": 0.3, "learnable_std": True})
    assert opts == {
        "noise_std": 0.3,
        "learnable_std": True,
        "min_std": 0.0,
        "base": "zero",
        "seed": None,
    }


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=1e-4, max_value=20.0))
def test_inverse_softplus_round_trip(y):
    assert float(spec.softplus(spec.inverse_softplus(y))) == pytest.approx(y, rel=1e-9)


def test_noise_std_from_raw_respects_floor():
    raw = np.array([-50.0, 0.0, 3.0])
    sigma = spec.noise_std_from_raw(raw, min_std=0.05)
    assert np.all(sigma > 0.05 - 1e-12)
    assert sigma[1] == pytest.approx(0.05 + math.log(2))


@settings(max_examples=25, deadline=None)
@given(
    cell=st.sampled_from(spec.CELLS),
    hidden=st.integers(1, 24),
    batch=st.integers(1, 6),
    layers=st.integers(1, 3),
    bidir=st.booleans(),
)
def test_reference_state_shapes_and_zero(cell, hidden, batch, layers, bidir):
    states = spec.reference_state(
        "zero", cell, hidden_size=hidden, batch_size=batch, num_layers=layers, bidirectional=bidir
    )
    expected = spec.state_shapes(
        cell, hidden_size=hidden, batch_size=batch, num_layers=layers, bidirectional=bidir
    )
    assert tuple(s.shape for s in states) == expected
    assert all(not s.any() for s in states)


def test_reference_uniform_and_xavier_statistics():
    rng = np.random.default_rng(0)
    (h,) = spec.reference_state("uniform", "gru", hidden_size=64, batch_size=512, rng=rng)
    b = spec.uniform_bound(64)
    assert np.abs(h).max() <= b
    assert h.std() == pytest.approx(spec.uniform_std(b), rel=0.02)
    (h,) = spec.reference_state("xavier", "gru", hidden_size=64, batch_size=512, rng=rng)
    assert np.abs(h).max() <= spec.xavier_bound(64)
    assert h.std() == pytest.approx(spec.uniform_std(spec.xavier_bound(64)), rel=0.02)


def test_reference_fixed_draw_is_broadcast():
    (h,) = spec.reference_state("xavier", "gru", hidden_size=8, batch_size=5, resample=False)
    assert np.allclose(h, h[:, :1, :])


def test_reference_learnable_and_noisy():
    learned = [np.arange(8.0).reshape(1, 8)]
    (h,) = spec.reference_state("learnable", "gru", hidden_size=8, batch_size=3, learned=learned)
    assert np.array_equal(h, np.broadcast_to(learned[0][:, None], (1, 3, 8)))
    (ev,) = spec.reference_state(
        "noisy",
        "gru",
        hidden_size=8,
        batch_size=3,
        base="learnable",
        learned=learned,
        training=False,
    )
    assert np.array_equal(ev, h)
    rng = np.random.default_rng(1)
    (tr,) = spec.reference_state(
        "noisy", "gru", hidden_size=64, batch_size=2000, noise_std=0.5, rng=rng
    )
    assert tr.std() == pytest.approx(0.5, rel=0.02)
    with pytest.raises(ValueError, match="shape"):
        spec.reference_state("learnable", "gru", hidden_size=8, batch_size=3, learned=[np.zeros(8)])


def test_noisy_cell_step_adds_noise_only_in_training():
    def step(x, s):
        return s

    rng = np.random.default_rng(0)
    s = np.zeros((1000, 4))
    assert spec.noisy_cell_step(step, None, s, 0.2, rng, training=False) is s
    noisy = spec.noisy_cell_step(step, None, s, 0.2, rng, training=True)
    assert noisy.std() == pytest.approx(0.2, rel=0.05)
    pair = spec.noisy_cell_step(step, None, (s, s), 0.2, rng, training=True)
    assert isinstance(pair, tuple) and not np.array_equal(pair[0], pair[1])


# --------------------------------------------------------------------------- typed strategies

NON_DEFAULT = {
    "zero": {"seed": 3},
    "uniform": {"bound": 0.3, "resample": False, "seed": 3},
    "xavier": {"gain": 2.0, "resample": False, "seed": 3},
    "learnable": {"init": "xavier", "seed": 3},
    "noisy": {"noise_std": 0.4, "learnable_std": True, "min_std": 0.05, "base": "learnable"},
}


@pytest.mark.parametrize("name", list(NON_DEFAULT))
def test_make_keeps_every_option(name):
    plan = spec.make(name, **NON_DEFAULT[name])
    assert plan.name == name and type(plan).name == name
    assert list(plan.options()) == list(spec.OPTIONS[name])
    for key, value in NON_DEFAULT[name].items():
        assert plan.options()[key] == value
    # the value round-trips through its options, and is immutable
    assert spec.make(name, **plan.options()) == plan
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.seed = 1


@pytest.mark.parametrize(
    ("name", "options", "source"),
    [
        ("zero", {}, "zeros"),
        ("uniform", {}, "draw"),
        ("uniform", {"resample": False}, "stored"),
        ("xavier", {}, "draw"),
        ("xavier", {"resample": False}, "stored"),
        ("learnable", {}, "param"),
        ("noisy", {}, "zeros"),
        ("noisy", {"base": "learnable"}, "param"),
    ],
)
def test_plan_sources(name, options, source):
    assert spec.make(name, **options).source == source


def test_plan_bounds_and_vector_inits():
    assert spec.make("uniform").draw_bound(16) == spec.uniform_bound(16)
    assert spec.make("uniform", bound=0.3).draw_bound(16) == 0.3
    assert spec.make("xavier", gain=2.0).draw_bound(16) == spec.xavier_bound(16, 2.0)
    assert spec.make("xavier", resample=False).vector_init(16) == spec.xavier_bound(16)
    assert spec.make("learnable").vector_init(16) is None
    assert spec.make("learnable", init="uniform").vector_init(16) == spec.uniform_bound(16)
    assert spec.make("learnable", init="xavier").vector_init(16) == spec.xavier_bound(16)
    fn = np.ones
    assert spec.make("learnable", init=fn).vector_init(16) is fn
    assert spec.make("noisy", base="learnable").vector_init(16) is None
    with pytest.raises(ValueError, match="draws no uniform state"):
        spec.make("learnable").draw_bound(16)
    assert spec.make("zero").noise is None
    assert spec.make("noisy", noise_std=0.3).noise == spec.NoiseStd(0.3)


@pytest.mark.parametrize("name", list(NON_DEFAULT))
def test_make_and_resolve_options_reject_the_same_way(name):
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['nope'\]"):
        spec.make(name, nope=1)
    with pytest.raises(TypeError, match="seed must be an integer"):
        spec.make(name, seed=1.5)


def test_make_accepts_a_value_and_refuses_options_with_it():
    plan = spec.Learnable(init="uniform")
    assert spec.make(plan) is plan
    assert spec.check_strategy(plan) == "learnable"
    with pytest.raises(ValueError, match="already a value"):
        spec.make(plan, seed=1)
    with pytest.raises(ValueError, match="bound must be > 0"):
        spec.Uniform(bound=0.0)
    with pytest.raises(TypeError, match="resample must be True or False"):
        spec.Xavier(resample="no")


@pytest.mark.parametrize("min_std", [0.0, 0.1])
@pytest.mark.parametrize("value", [0.15, 0.5, 3.0])
def test_noise_std_parametrization_is_inverted_by_raw(min_std, value):
    learn = spec.NoiseStd(0.2, learnable=True, min_std=min_std)
    assert learn.from_raw(learn.raw(value)) == pytest.approx(value, rel=1e-12)
    # any raw value gives a sigma above the floor
    assert float(learn.from_raw(-5.0)) > min_std
    fixed = spec.NoiseStd(0.2, min_std=min_std)
    assert fixed.raw(value) == value and fixed.from_raw(value) == value
    assert fixed.draws and learn.draws and not spec.NoiseStd(0.0).draws


def test_noise_std_validation():
    with pytest.raises(ValueError, match="must start above min_std"):
        spec.NoiseStd(0.1, learnable=True, min_std=0.1)
    with pytest.raises(ValueError, match="below min_std"):
        spec.NoiseStd(0.1, min_std=0.2)
    with pytest.raises(ValueError, match="below min_std"):
        spec.NoiseStd(0.3, min_std=0.2).raw(0.1)
    with pytest.raises(TypeError, match="learnable_std must be True or False"):
        spec.NoiseStd(0.1, learnable=1)


def test_noisy_cell_step_with_given_noise():
    def step(x, s):
        return s

    s = (np.zeros((2, 3)), np.ones((2, 3)))
    eps = (np.full((2, 3), 1.0), np.full((2, 3), -2.0))
    h, c = spec.noisy_cell_step(step, None, s, 0.5, training=True, noise=eps)
    assert np.array_equal(h, np.full((2, 3), 0.5)) and np.array_equal(c, np.zeros((2, 3)))
    assert spec.noisy_cell_step(step, None, s, 0.5, training=False, noise=eps) is s
    with pytest.raises(ValueError, match="noise has 1 component"):
        spec.noisy_cell_step(step, None, s, 0.5, noise=eps[0])


def test_check_given_state_returns_the_arrays_in_slot_order_and_names_what_is_wrong():
    slots = (spec.Slot("c", (None, 4)), spec.Slot("h", (None, 4)))
    c, h = np.zeros((2, 4)), np.ones((2, 4))
    got = spec.check_given_state([c, h], slots, "hint")  # a list for a tuple, any batch
    assert got[0] is c and got[1] is h
    with pytest.raises(
        TypeError, match=r"structured as \(c\(None, 4\), h\(None, 4\)\) \(hint\); got array\(2, 4\)"
    ):
        spec.check_given_state(c, slots, "hint")
    with pytest.raises(TypeError, match=r"got \(array\(2, 4\), \[int\]\)"):
        spec.check_given_state((c, [1]), slots, "hint")
    with pytest.raises(
        ValueError, match=r"initial state h has shape \(2, 5\); expected \(None, 4\)"
    ):
        spec.check_given_state((c, np.zeros((2, 5))), slots, "hint")
    with pytest.raises(ValueError, match=r"initial state c has shape \(4,\)"):
        spec.check_given_state((np.zeros(4), h), slots, "hint")
