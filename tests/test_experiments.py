"""The experiment suite: statistics, tasks, the PyTorch trainer, the grid on Ray Tune."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from reference_impl.experiments import REAL_MAP_TASKS, TASK_KINDS, TASKS, common, grid, stats, tasks
from reference_impl.experiments.common import TrialConfig

# ---------------------------------------------------------------------- statistics


def test_bootstrap_ci_covers_a_known_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = 0
    reps = 200
    for i in range(reps):
        x = rng.normal(2.0, 1.0, 30)
        _, lo, hi = stats.bootstrap_ci(x, n_boot=1000, seed=i)
        covered += lo <= 2.0 <= hi
    # percentile bootstrap with n = 30 covers a little less than 95%
    assert 0.88 <= covered / reps <= 0.99


def test_bootstrap_band_is_per_step_and_contains_the_mean():
    rng = np.random.default_rng(1)
    curves = rng.normal(0.0, 1.0, (12, 5)) + np.arange(5)
    mean, lo, hi = stats.bootstrap_band(curves)
    assert mean.shape == lo.shape == hi.shape == (5,)
    assert np.all(lo <= mean) and np.all(mean <= hi)
    np.testing.assert_allclose(mean, curves.mean(0))


def test_paired_test_p_is_one_for_identical_and_symmetric_differences():
    a = np.linspace(1, 2, 12)
    assert stats.paired_test(a, a) == 1.0
    d = np.array([0.1, -0.1, 0.2, -0.2, 0.3, -0.3, 0.4, -0.4, 0.5, -0.5])
    b = np.linspace(1, 2, 10)
    assert stats.paired_test(b + d, b) > 0.9


def test_paired_test_p_is_tiny_for_a_consistent_difference():
    rng = np.random.default_rng(2)
    b = rng.normal(1.0, 0.2, 20)
    a = b + 0.5 + rng.normal(0, 0.05, 20)
    assert stats.paired_test(a, b) < 1e-4


def test_holm_matches_a_hand_computed_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max 0.06
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])
    assert np.isnan(stats.holm([np.nan, 0.01])[0])


def test_effect_sizes_on_hand_cases():
    assert stats.rank_biserial([2, 3, 4], [1, 1, 1]) == 1.0
    assert stats.rank_biserial([0, 0, 0], [1, 2, 3]) == -1.0
    # differences 1, -2, 3: ranks 1, 2, 3 -> (1 + 3 - 2) / 6
    assert stats.rank_biserial([2, 0, 4], [1, 2, 1]) == pytest.approx(1 / 3)
    assert stats.rank_biserial([1, 2], [1, 2]) == 0.0
    assert stats.median_ratio([2, 4, 6], [1, 2, 2]) == 2.0


def test_compare_to_pairs_by_seed_and_corrects_over_the_table():
    rows = []
    for seed in range(10):
        base = 1.0 + 0.1 * seed
        rows += [
            {
                "task": "t",
                "framework": "torch",
                "cell": "gru",
                "strategy": "zero",
                "seed": seed,
                "value": base,
            },
            {
                "task": "t",
                "framework": "torch",
                "cell": "gru",
                "strategy": "learnable",
                "seed": seed,
                "value": base * 0.5,
            },
            {
                "task": "t",
                "framework": "torch",
                "cell": "gru",
                "strategy": "uniform",
                "seed": seed,
                "value": base + (0.01 if seed % 2 else -0.01),
            },
        ]
    # shuffled rows: the pairing must come from the seed, not the order
    out = stats.compare_to(pd.DataFrame(rows).sample(frac=1, random_state=0))
    learn = out.set_index("strategy").loc["learnable"]
    assert learn["n"] == 10
    assert learn["ratio"] == pytest.approx(0.5)
    assert learn["rank_biserial"] == -1.0
    assert learn["diff_hi"] < 0 and learn["p"] < 0.01
    uni = out.set_index("strategy").loc["uniform"]
    assert uni["p"] > 0.5 and uni["diff_lo"] < 0 < uni["diff_hi"]
    np.testing.assert_allclose(out["p_holm"], stats.holm(out["p"]))
    # Holm's family is one (task, framework, cell): a second cell is corrected apart
    other = pd.DataFrame(rows).assign(cell="lstm")
    both = stats.compare_to(pd.concat([pd.DataFrame(rows), other]))
    assert len(both) == 2 * len(out)
    for _, g in both.groupby("cell"):
        np.testing.assert_allclose(g["p_holm"], stats.holm(g["p"]))
    with pytest.raises(ValueError, match="seed"):
        stats.compare_to(pd.DataFrame(rows).drop(columns="seed"))


# ---------------------------------------------------------------------- tasks


@pytest.mark.parametrize("name", TASKS)
def test_every_task_has_the_contract_shapes_and_baselines(name):
    d = tasks.load_task(name, seed=0, budget="quick")
    assert d.kind == TASK_KINDS[name]
    ndim = 3 if d.kind == "windows" else 4
    for split in ("train", "val", "test"):
        x, y = getattr(d, f"{split}_x"), getattr(d, f"{split}_y")
        assert x.dtype == y.dtype == np.float32
        assert x.shape == y.shape and x.ndim == ndim and x.shape[-1] == 1
        assert np.isfinite(x).all() and np.isfinite(y).all()
    assert 0 < d.washout < d.steps
    assert d.state_note
    for curve in d.baselines.values():
        assert curve.shape == (d.steps,) and np.isfinite(curve).all()
    assert "mean" in d.baselines
    np.testing.assert_allclose(
        d.baselines["mean"], common.per_step_mse(np.zeros_like(d.test_y), d.test_y)
    )
    if "last value" in d.baselines:
        np.testing.assert_allclose(
            d.baselines["last value"], common.per_step_mse(d.test_x, d.test_y), rtol=1e-6
        )


@pytest.mark.parametrize("name", TASKS)
def test_tasks_are_deterministic_per_seed(name):
    a = tasks.load_task(name, seed=3, budget="quick")
    b = tasks.load_task(name, seed=3, budget="quick")
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.test_y, b.test_y)
    c = tasks.load_task(name, seed=4, budget="quick")
    if name in ("sunspots", "co2", *REAL_MAP_TASKS):  # real: the same data for every seed
        np.testing.assert_array_equal(a.train_x, c.train_x)
    else:
        assert not np.array_equal(a.train_x, c.train_x)


@pytest.mark.parametrize("name", ["sunspots", "co2"])
def test_real_series_are_split_by_time_and_normalized_on_the_training_part(name):
    d = tasks.load_task(name, seed=0, budget="standard")
    raw = tasks._raw_series(name)
    (a0, a1), (b0, b1), (c0, c1) = d.spans["train"], d.spans["val"], d.spans["test"]
    assert a0 == 0 and a1 == b0 and b1 == c0 and c1 == raw.size  # in time order, disjoint
    mu, sd = d.norm
    assert mu == pytest.approx(raw[:a1].mean()) and sd == pytest.approx(raw[:a1].std())
    # the whole series has other statistics (so the check above can fail)
    assert abs(raw.mean() - mu) > 0.01 * sd or abs(raw.std() - sd) > 0.01 * sd
    # every window lies inside its own part: the first test input is raw[c0]
    np.testing.assert_allclose(d.test_x[0, 0, 0], (raw[c0] - mu) / sd, rtol=1e-5)
    np.testing.assert_allclose(d.val_x[0, 0, 0], (raw[b0] - mu) / sd, rtol=1e-5)
    sizes = common.budget_settings("standard", name)
    last = np.arange(0, a1 - sizes["steps"], sizes["stride"])[-1] + sizes["steps"]
    assert last <= a1 - 1  # the last training target is still in the training part
    np.testing.assert_allclose(d.train_y[-1, -1, 0], (raw[last] - mu) / sd, rtol=1e-5)
    # next-step targets
    np.testing.assert_array_equal(d.test_x[:, 1:], d.test_y[:, :-1])
    assert not np.isnan(raw).any()


def test_generated_tasks_normalize_on_training_sequences_only():
    d = tasks.load_task("variable_start", seed=0, budget="quick")
    train = np.concatenate([d.train_x[:, :1, 0], d.train_y[:, :, 0]], axis=1)
    assert train.mean() == pytest.approx(0.0, abs=1e-5)
    assert train.std() == pytest.approx(1.0, abs=1e-4)


def test_variable_start_really_varies_and_fixed_start_does_not():
    v = tasks.load_task("variable_start", seed=0, budget="standard")
    # first observations spread about as widely as the series itself
    assert v.train_x[:, 0, 0].std() > 0.5 * v.train_x.std()
    f = tasks.load_task("fixed_start", seed=0, budget="quick")
    assert f.baselines["known dynamics, mean start"].max() < 1e-10


def test_unknown_task_or_budget_is_named():
    with pytest.raises(ValueError, match="unknown task 'nope'.*variable_start"):
        tasks.load_task("nope", seed=0, budget="quick")
    with pytest.raises(ValueError, match="unknown budget 'huge'"):
        tasks.load_task("co2", seed=0, budget="huge")


# ---------------------------------------------------------------------- trial config

GOOD = {
    "task": "co2",
    "framework": "torch",
    "cell": "gru",
    "strategy": "zero",
    "seed": 0,
    "budget": "quick",
}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("task", "nope", "unknown task 'nope'"),
        ("strategy", "orthogonal", "unknown strategy 'orthogonal'"),
        ("framework", "mxnet", "unknown framework 'mxnet'"),
        ("budget", "huge", "unknown budget 'huge'"),
        ("cell", "rnn", "unknown cell 'rnn'"),
        ("seed", -1, "seed must be a non-negative integer"),
        ("strategy", "stateful", "'stateful' needs a 'chunks' task"),
    ],
)
def test_trial_config_names_what_is_wrong(key, value, message):
    with pytest.raises(ValueError, match=message):
        TrialConfig.from_dict({**GOOD, key: value})


def test_trial_config_names_missing_keys_and_seeds_random_strategies():
    with pytest.raises(ValueError, match=r"lacks key\(s\) \['seed'\]"):
        TrialConfig.from_dict({k: v for k, v in GOOD.items() if k != "seed"})
    cfg = TrialConfig.from_dict({**GOOD, "strategy": "noisy", "seed": 7})
    assert cfg.strategy_options() == {"base": "learnable", "noise_std": 0.2, "seed": 7}
    assert TrialConfig.from_dict({**GOOD, "strategy": "washout"}).base_strategy == "zero"


# ---------------------------------------------------------------------- torch trainer

torch = pytest.importorskip("torch")


def _trial(**kw):
    from reference_impl.experiments import train_torch

    return train_torch.run_trial({**GOOD, "task": "variable_start", **kw})


def test_torch_trial_returns_finite_curves_of_the_right_lengths():
    out = _trial(cell="lstm", strategy="learnable")
    steps = tasks.load_task("variable_start", seed=0, budget="quick").steps
    curves, scalars = out["curves"], out["scalars"]
    assert set(curves) == {"test", "val_by_epoch"} | {
        f"perturbed@{s}" for s in common.PERTURB_SCALES
    }
    for name in curves:
        if name != "val_by_epoch":
            assert len(curves[name]) == steps and np.isfinite(curves[name]).all()
    assert len(curves["val_by_epoch"]) == scalars["epochs"] <= 3
    assert 0 <= scalars["best_epoch"] < scalars["epochs"]
    assert scalars["first_mse"] == pytest.approx(np.mean(curves["test"][:3]))
    assert scalars["state_rms"] > 0
    assert out["framework_version"].startswith("torch ") and out["device"]
    # a perturbed start changes the first steps
    assert curves["perturbed@2.0"][0] != curves["test"][0]
    json.dumps(out)  # plain Python types only


def test_torch_baselines_are_evaluated_from_step_k_only():
    out = _trial(strategy="data_driven")
    k = tasks.load_task("variable_start", seed=0, budget="quick").washout
    test = np.asarray(out["curves"]["test"])
    assert np.isnan(test[:k]).all() and np.isfinite(test[k:]).all()
    assert np.isnan(out["scalars"]["first_mse"])
    assert np.isfinite(_trial(strategy="washout")["curves"]["test"][k:]).all()


def test_torch_chunks_stateful_carries_the_state():
    from reference_impl.experiments import train_torch

    cfg = {**GOOD, "task": "stream_chunks"}
    stateful = train_torch.run_trial({**cfg, "strategy": "stateful"})
    zero = train_torch.run_trial({**cfg, "strategy": "zero"})
    length = tasks.load_task("stream_chunks", seed=0, budget="quick").steps
    assert len(stateful["curves"]["test"]) == len(zero["curves"]["test"]) == length
    # carrying the state helps most right after the chunk boundary
    assert stateful["scalars"]["first_mse"] < zero["scalars"]["first_mse"]


def test_torch_pairing_same_seed_same_initial_weights():
    from reference_impl.experiments.train_torch import Model

    def weights(strategy, seed=0):
        cfg = TrialConfig.from_dict({**GOOD, "strategy": strategy, "seed": seed})
        m = Model(cfg, hidden=8, washout=5)
        return [p.detach().clone() for p in (*m.rnn.rnn.parameters(), *m.head.parameters())]

    zero, learn, uni = weights("zero"), weights("learnable"), weights("uniform")
    dd = weights("data_driven")
    for a, b, c, d in zip(zero, learn, uni, dd, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)
    other = weights("zero", seed=1)
    assert not torch.equal(zero[0], other[0])


# ---------------------------------------------------------------------- grid


def test_grid_configs_cover_the_grid_and_reject_bad_names():
    configs = grid.grid_configs("standard")
    keys = {grid._key(c) for c in configs}
    assert len(keys) == len(configs)
    assert {c["framework"] for c in configs} == {"torch", "keras", "flax"}
    assert {c["seed"] for c in configs} == set(range(10))
    assert {c["strategy"] for c in configs if c["task"] == "stream_chunks"} >= {"stateful"}
    assert {c["strategy"] for c in configs if c["framework"] == "keras"} >= {"zero", "noisy"}
    assert not any(c["strategy"] == "washout" and c["framework"] != "torch" for c in configs)
    assert len(grid.grid_configs("full", frameworks=["torch"], tasks=["co2"])) == 20 * 2 * 7
    for kwargs, message in [
        ({"tasks": ["nope"]}, "unknown task 'nope'"),
        ({"frameworks": ["mxnet"]}, "unknown framework 'mxnet'"),
        ({"strategies": ["orthogonal"]}, "unknown strategy 'orthogonal'"),
        ({"cells": ["rnn"]}, "unknown cell 'rnn'"),
    ]:
        with pytest.raises(ValueError, match=message):
            grid.grid_configs("quick", **kwargs)
    with pytest.raises(ValueError, match="unknown budget 'huge'"):
        grid.grid_configs("huge")
    with pytest.raises(ValueError, match="unknown executor"):
        grid.run_grid("quick", executor="slurm")


def test_results_table_with_missing_columns_is_rejected(tmp_path):
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"task": ["co2"], "value": [1.0]}).to_parquet(bad)
    with pytest.raises(ValueError, match="lacks column.*'framework'.*'commit'"):
        grid.load_results(bad)


def test_a_torn_journal_line_is_skipped(tmp_path):
    journal = tmp_path / "t.journal.jsonl"
    journal.write_text(json.dumps({"config": GOOD, "rows": []}) + "\n" + '{"config": {"ta')
    assert len(grid._read_journal(journal)) == 1


def test_cli_reports_bad_names(capsys):
    from reference_impl.experiments.__main__ import main

    assert main(["list", "--budget", "huge"]) == 2
    assert "unknown budget 'huge'" in capsys.readouterr().err


def _check_tiny_table(tmp_path, n_trials):
    df = grid.load_results(tmp_path / "experiments-quick.parquet")
    assert list(df.columns) == list(grid.COLUMNS)
    trials = df[list(grid.KEY_COLUMNS)].drop_duplicates()
    assert len(trials) == n_trials
    # no trial twice: one row per (trial, metric, step)
    assert not df.duplicated(subset=[*grid.KEY_COLUMNS, "metric", "step"]).any()
    assert set(df["metric"]) >= {"test", "first_mse", "val_by_epoch", "perturbed@1.0"}
    row = df.iloc[0]
    assert row["framework_version"].startswith("torch") and row["device"] == "cpu"
    assert row["package_version"] and row["commit"] and row["date"].endswith("Z")
    assert row["python"].count(".") == 2 and row["host_cpu"]
    firsts = grid.scalar_table(df, "first_mse")
    assert len(firsts) == n_trials and np.isfinite(firsts["value"]).all()
    window = grid.window_table(df, 0, 3)
    merged = firsts.merge(window, on=list(grid.KEY_COLUMNS))
    np.testing.assert_allclose(merged["value_x"], merged["value_y"])


TINY = {
    "tasks": ["fixed_start"],
    "frameworks": ["torch"],
    "cells": ["gru"],
    "strategies": ["zero", "learnable"],
    "seeds": 2,
    "num_cpus": 1,
}


def test_an_interrupted_grid_resumes_without_repeating_a_trial(tmp_path):
    first = grid.run_grid("quick", max_trials=3, executor="local", results_dir=tmp_path, **TINY)
    assert first["ran"] == 3
    # an interruption mid-trial leaves a torn last line in the journal: it is skipped
    journal = tmp_path / "experiments-quick.journal.jsonl"
    assert not journal.exists()  # folded into the table
    with journal.open("a") as f:
        f.write('{"config": {"task": "fixed_st')
    second = grid.run_grid("quick", executor="local", results_dir=tmp_path, **TINY)
    assert second["ran"] == 1 and second["skipped"] == 3  # only the missing one ran
    _check_tiny_table(tmp_path, 4)
    third = grid.run_grid("quick", executor="local", results_dir=tmp_path, **TINY)
    assert third["ran"] == 0 and third["skipped"] == 4


def test_tiny_grid_end_to_end_on_ray_tune(tmp_path):
    pytest.importorskip("ray")
    import ray

    try:
        out = grid.run_grid(
            "quick", max_trials=2, results_dir=tmp_path, storage=tmp_path / "ray", **TINY
        )
        if out["executor"] != "ray":
            pytest.skip("a local Ray instance could not start on this (saturated) machine")
        assert out["ran"] == 2
        _check_tiny_table(tmp_path, 2)
        again = grid.run_grid("quick", results_dir=tmp_path, storage=tmp_path / "ray", **TINY)
    finally:
        ray.shutdown()
    assert again["executor"] == "ray" and again["ran"] == 2 and again["skipped"] == 2
    _check_tiny_table(tmp_path, 4)
