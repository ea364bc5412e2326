"""The Keras and Flax trainers of the experiment suite, on tiny configurations.

Each test runs for both frameworks (``-k tf_keras`` or ``-k jax_flax`` selects one): finite
curves of the contract's lengths, evaluation without noise (two evaluations agree),
pairing (one seed gives every strategy the same recurrent and read-out weights),
perturbed starts that hurt more as they grow, early stopping that keeps the best
epoch's parameters, the stateful chunk variant, and bad input.
"""

from __future__ import annotations

import functools
import importlib

import numpy as np
import pytest

from reference_impl.experiments import common
from reference_impl.experiments.tasks import TaskData

FRAMEWORKS = (
    # ids that the module name does not contain, so that -k picks one framework
    pytest.param("keras", id="tf_keras"),
    pytest.param("flax", id="jax_flax"),
)
# Small enough for a second per fit; lr high enough that validation bounces and early
# stopping triggers within max_epochs.
SETTINGS = {"hidden": 4, "batch_size": 8, "lr": 0.05, "max_epochs": 8, "patience": 1}
STEPS, CHUNKS, CHUNK_LEN = 8, 3, 5


def _module(fw: str):
    pytest.importorskip("tensorflow" if fw == "keras" else "flax")
    return importlib.import_module(f"reference_impl.experiments.train_{fw}")


def _cfg(fw: str, strategy: str, *, cell: str = "gru", seed: int = 0, task: str = "fixed_start"):
    return common.TrialConfig.from_dict(
        {
            "task": task,
            "framework": fw,
            "cell": cell,
            "strategy": strategy,
            "seed": seed,
            "budget": "quick",
        }
    )


def _target(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    # A start the inputs do not reveal, decaying, plus a response to the inputs.
    n, t = x.shape[:2]
    s0 = rng.normal(size=(n, 1, 1))
    return (s0 * 0.8 ** np.arange(t)[None, :, None] + 0.5 * x).astype(np.float32)


@functools.cache
def _windows() -> TaskData:
    rng = np.random.default_rng(0)
    # 20 training windows in batches of 8: the last batch (4) is partial.
    split = {}
    for name, n in (("train", 20), ("val", 8), ("test", 128)):
        x = rng.normal(size=(n, STEPS, 1)).astype(np.float32)
        split[name] = (x, _target(rng, x))
    return _task("windows", split)


@functools.cache
def _chunks() -> TaskData:
    rng = np.random.default_rng(1)
    split = {}
    for name, n in (("train", 10), ("val", 4), ("test", 4)):
        x = rng.normal(size=(n, CHUNKS * CHUNK_LEN, 1)).astype(np.float32)
        y = _target(rng, x)
        shape = (n, CHUNKS, CHUNK_LEN, 1)
        split[name] = (x.reshape(shape), y.reshape(shape))
    return _task("chunks", split)


def _task(kind: str, split: dict) -> TaskData:
    return TaskData(
        name="tiny",
        kind=kind,
        train_x=split["train"][0],
        train_y=split["train"][1],
        val_x=split["val"][0],
        val_y=split["val"][1],
        test_x=split["test"][0],
        test_y=split["test"][1],
        washout=2,
        state_note="a random start",
        baselines={},
    )


class _Fitted:
    """One fitted tiny trial, with framework-neutral evaluate() and val_mse()."""

    def __init__(self, fw: str, cfg: common.TrialConfig, task: TaskData) -> None:
        self.fw, self.cfg, self.task = fw, cfg, task
        self.mod = mod = _module(fw)
        out = mod._fit(cfg, SETTINGS, task)
        if fw == "keras":
            self.model, fit = out
            # The compiled Keras model is shared by the trials of one structure: keep
            # this trial's weights and put them back before each use.
            self.params = self.model.get_params()
        else:
            self.comp, self.params, fit = out
        self.val_by_epoch, self.best_epoch = fit.val_by_epoch, fit.best_epoch

    def evaluate(self) -> tuple[dict, list]:
        if self.fw == "keras":
            self.model.set_params(self.params)
            return self.mod._evaluate(self.model, self.cfg, self.task)
        return self.mod._evaluate(self.comp, self.params, self.cfg, self.task)

    def val_mse(self) -> float:
        if self.fw == "keras":
            self.model.set_params(self.params)
            return self.mod._val_mse(self.model, self.cfg, self.task)
        return self.mod._val_mse(self.comp, self.params, self.cfg, self.task, 0)


@functools.cache
def _fitted(fw: str, strategy: str, cell: str, kind: str = "windows", seed: int = 0) -> _Fitted:
    task = _windows() if kind == "windows" else _chunks()
    name = "fixed_start" if kind == "windows" else "stream_chunks"
    return _Fitted(fw, _cfg(fw, strategy, cell=cell, seed=seed, task=name), task)


def _initial_weights(fw: str, strategy: str, seed: int) -> list[np.ndarray]:
    """The recurrent and read-out weights a trial starts from."""
    mod = _module(fw)
    cfg = _cfg(fw, strategy, seed=seed)
    if fw == "keras":
        import keras

        model = mod._model(cfg, SETTINGS, STEPS)
        return [np.array(keras.ops.convert_to_numpy(v)) for v in model.bare]
    comp = mod._compiled("gru", cfg.base_strategy, 4, 0.05, mod._options(cfg))
    params = comp.init_params(seed)
    import jax

    return [np.asarray(a) for a in jax.tree.leaves((params["rnn"]["rnn"], params["head"]))]


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_curves_finite_with_contract_lengths(fw, cell):
    fit = _fitted(fw, "noisy", cell)
    curves, rms = fit.evaluate()
    assert sorted(curves) == [
        "perturbed@0.25",
        "perturbed@0.5",
        "perturbed@1.0",
        "perturbed@2.0",
        "test",
    ]
    for name, curve in curves.items():
        assert len(curve) == STEPS, name
        assert np.isfinite(curve).all(), name
    assert len(rms) == (2 if cell == "lstm" else 1)
    assert all(np.isfinite(r) and r > 0 for r in rms)
    assert 1 <= len(fit.val_by_epoch) <= SETTINGS["max_epochs"]
    assert np.isfinite(fit.val_by_epoch).all()


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_noisy_evaluates_without_noise(fw, cell):
    fit = _fitted(fw, "noisy", cell)
    first, _ = fit.evaluate()
    second, _ = fit.evaluate()
    assert first == second


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_pairing_same_seed_same_initial_weights(fw):
    zero, noisy = _initial_weights(fw, "zero", 3), _initial_weights(fw, "noisy", 3)
    learnable = _initial_weights(fw, "learnable", 3)
    assert len(zero) == len(noisy) == len(learnable) >= 3
    for a, b, c in zip(zero, noisy, learnable, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    other = _initial_weights(fw, "zero", 4)
    assert not any(np.array_equal(a, b) for a, b in zip(zero, other, strict=True) if a.std() > 0)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_perturbed_start_hurts_more_as_it_grows(fw, cell):
    curves, _ = _fitted(fw, "noisy", cell).evaluate()
    first = [curves[f"perturbed@{s}"][0] for s in common.PERTURB_SCALES]
    assert all(f != curves["test"][0] for f in first)
    assert first[-1] > first[0] > 0
    assert first[-1] > curves["test"][0]
    # Late steps forget the start more than step 0 does.
    gap = np.subtract(curves["perturbed@2.0"], curves["test"])
    assert abs(gap[-1]) < gap[0]


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_early_stopping_keeps_the_best_epoch(fw):
    fit = _fitted(fw, "noisy", "gru")  # noisy: evaluation must not add noise either
    val = fit.val_by_epoch
    assert fit.best_epoch == int(np.argmin(val))
    # It stopped (or ran out) after the best epoch: the check below is not trivial.
    assert fit.best_epoch < len(val) - 1
    assert (
        len(val) == SETTINGS["max_epochs"] or len(val) - 1 - fit.best_epoch == SETTINGS["patience"]
    )
    # The parameters kept are the best epoch's: they give its validation MSE again.
    assert fit.val_mse() == pytest.approx(val[fit.best_epoch], rel=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_stateful_chunks_carry_the_state(fw, cell):
    stateful = _fitted(fw, "stateful", cell, "chunks")
    curves, rms = stateful.evaluate()
    assert len(curves["test"]) == CHUNK_LEN
    assert all(np.isfinite(c).all() for c in curves.values())
    assert len(rms) == (2 if cell == "lstm" else 1)
    # The same weights without the carry (every chunk from zeros) predict differently.
    mod = stateful.mod
    zero_cfg = _cfg(fw, "zero", cell=cell, task="stream_chunks")
    if fw == "keras":
        stateful.model.set_params(stateful.params)
        carried, _ = mod._predict(stateful.model, stateful.cfg, stateful.task.test_x)
        fresh, _ = mod._predict(stateful.model, zero_cfg, stateful.task.test_x)
    else:
        import jax

        key = jax.random.key(0)
        carried, _ = mod._predict(
            stateful.comp, stateful.params, stateful.cfg, stateful.task.test_x, key
        )
        fresh, _ = mod._predict(stateful.comp, stateful.params, zero_cfg, stateful.task.test_x, key)
    np.testing.assert_allclose(carried[:, 0], fresh[:, 0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(carried[:, 1:], fresh[:, 1:])


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_run_trial_returns_the_contract(fw, monkeypatch):
    mod = _module(fw)
    # The tiny data and sizes, so that the structure compiled for the tests above is
    # reused (a real task at the quick budget works the same way, only slower).
    monkeypatch.setattr(mod, "_data", lambda task, seed, budget: _windows())
    monkeypatch.setattr(mod.common, "budget_settings", lambda budget, task: SETTINGS)
    out = mod.run_trial(
        {
            "task": "fixed_start",
            "framework": fw,
            "cell": "gru",
            "strategy": "noisy",
            "seed": 1,
            "budget": "quick",
        }
    )
    steps = STEPS
    curves, scalars = out["curves"], out["scalars"]
    assert set(curves) == {"test", "val_by_epoch"} | {
        f"perturbed@{s}" for s in common.PERTURB_SCALES
    }
    assert all(len(curves[k]) == steps for k in curves if k != "val_by_epoch")
    assert len(curves["val_by_epoch"]) == scalars["epochs"]
    assert set(scalars) == {
        "first_mse",
        "all_mse",
        "late_mse",
        "epochs",
        "best_epoch",
        "train_seconds",
        "state_rms",
    }
    assert scalars["all_mse"] == pytest.approx(np.mean(curves["test"]))
    assert all(isinstance(v, float) for c in curves.values() for v in c)
    assert out["framework_version"].startswith(fw)
    assert isinstance(out["device"], str)


@pytest.mark.parametrize(
    "change",
    [{"strategy": "nope"}, {"cell": "rnn"}, {"strategy": "washout"}, {"strategy": "stateful"}],
)
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_bad_input_raises(fw, change):
    mod = _module(fw)
    config = {
        "task": "fixed_start",
        "framework": fw,
        "cell": "gru",
        "strategy": "zero",
        "seed": 0,
        "budget": "quick",
    }
    with pytest.raises(ValueError):
        mod.run_trial({**config, **change})


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_wrong_framework_raises(fw):
    mod = _module(fw)
    other = "torch"
    config = {
        "task": "fixed_start",
        "framework": other,
        "cell": "gru",
        "strategy": "zero",
        "seed": 0,
        "budget": "quick",
    }
    with pytest.raises(ValueError, match=fw):
        mod.run_trial(config)
