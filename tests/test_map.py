"""The map of regimes: its tasks, its training plan, its statistics, a tiny map on Ray Tune."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reference_impl.experiments import (
    LENGTH_TASKS,
    MAP_CORNERS,
    MAP_START_TASKS,
    REAL_MAP_TASKS,
    common,
    grid,
    stats,
    tasks,
)

# ---------------------------------------------------------------------- tasks


def _raw_start(name: str, seed: int = 0) -> np.ndarray:
    """The true states before the first input, in raw units, re-drawn as the task does."""
    sizes = common.budget_settings("standard", name)
    n = sizes["n_train"] + sizes["n_val"] + sizes["n_test"]
    m, s = tasks.map_start(name)
    rng = tasks._rng(seed, name)
    _, _, start = tasks._integrator(
        rng, n, sizes["steps"], m * tasks.STATIONARY_SD, s * tasks.STATIONARY_SD
    )
    return start


@pytest.mark.parametrize("name", MAP_START_TASKS)
def test_map_starts_have_the_named_mean_and_spread(name):
    m, s = tasks.map_start(name)
    start = _raw_start(name) / tasks.STATIONARY_SD
    if s == 0:  # every sequence starts at the same state
        np.testing.assert_array_equal(start, np.full_like(start, m))
    else:
        assert start.mean() == pytest.approx(m, abs=4 * s / np.sqrt(start.size))
        assert start.std() == pytest.approx(s, rel=0.15)
    d = tasks.load_task(name, seed=0, budget="standard")
    assert d.train_x.shape == (256, 20, 1) and d.test_y.shape == (256, 20, 1)


def test_the_stationary_spread_is_the_integrators():
    # a long run of y = 0.8 y + x, x ~ N(0, 0.5^2) has the spread the map's units use
    rng = np.random.default_rng(0)
    _, y, _ = tasks._integrator(rng, 2000, 60, 0.0, 0.0)
    assert y[:, -1].std() == pytest.approx(tasks.STATIONARY_SD, rel=0.05)


def test_a_shared_start_makes_the_first_target_nearly_constant_and_a_spread_does_not():
    # first target y0 = 0.8 * start + x0: with s = 0 its spread is the input's alone
    shared = tasks.load_task("start_m3_s0", seed=0, budget="standard")
    spread = tasks.load_task("start_m3_s3", seed=0, budget="standard")
    _, ys = shared.norm
    _, yv = spread.norm
    assert shared.train_y[:, 0, 0].std() * ys == pytest.approx(0.5, rel=0.15)
    assert spread.train_y[:, 0, 0].std() * yv > 3 * 0.5


@pytest.mark.parametrize("name", [LENGTH_TASKS[0], LENGTH_TASKS[-1]])
def test_length_tasks_have_their_length(name):
    d = tasks.load_task(name, seed=0, budget="quick")
    assert d.steps == int(name.rsplit("_T", 1)[1])
    assert 0 < d.washout < d.steps


def test_real_map_tasks_are_split_by_year_and_share_or_vary_their_start():
    years, temps = tasks._elnino_years()
    e = tasks.load_task("elnino_years", seed=0, budget="standard")
    assert e.steps == 11 and len(e.train_x) + len(e.val_x) + len(e.test_x) == len(years)
    mu, sd = e.norm
    # the last test sequence is the last year, January to November as inputs
    np.testing.assert_allclose(e.test_x[-1, :, 0] * sd + mu, temps[-1, :11], rtol=1e-5)
    np.testing.assert_allclose(e.test_y[-1, :, 0] * sd + mu, temps[-1, 1:], rtol=1e-5)
    year, diff = tasks._co2_weekly()
    shared = tasks.load_task("co2_years", seed=0, budget="standard")
    varied = tasks.load_task("co2_windows", seed=0, budget="standard")
    assert shared.test_x.shape == varied.test_x.shape == (7, 51, 1)
    mu, sd = shared.norm
    first_test_year = np.unique(year)[-7]
    start = np.flatnonzero(year == first_test_year)[0]
    np.testing.assert_allclose(
        shared.test_x[0, :, 0] * sd + mu, diff[start : start + 51], rtol=1e-4
    )
    # aligned to January, the sequences begin in the same phase of the seasonal cycle:
    # their first inputs agree far more than those of windows at random offsets
    assert shared.train_x[:, 0, 0].std() < 0.5 * varied.train_x[:, 0, 0].std()
    # the same data for every seed (test sequences can be resampled as blocks)
    np.testing.assert_array_equal(
        varied.train_x, tasks.load_task("co2_windows", seed=5, budget="standard").train_x
    )


# ---------------------------------------------------------------------- training plan


def test_the_training_plan_takes_checkpoints_at_epoch_ends():
    plan = common.training_plan({"checkpoints": (50, 100, 200), "batch_size": 32}, 250)
    # 8 updates an epoch: 50 -> end of epoch 6 (56 updates), 100 -> 104, 200 -> 200
    assert plan.checkpoints == {6: 56, 12: 104, 24: 200} and plan.epochs == 25
    assert plan.evaluates(6) and not plan.evaluates(7) and not plan.stops(24, 0)
    early = common.training_plan({"max_epochs": 10, "patience": 3, "batch_size": 32}, 250)
    assert early.checkpoints == {} and early.evaluates(7) and early.stops(5, 2)
    assert not early.stops(4, 2)


@pytest.mark.parametrize("fw", ["torch", "flax", "keras"])
def test_a_map_trial_records_its_checkpoints_and_keeps_the_best(fw):
    import importlib

    mod = importlib.import_module(f"reference_impl.experiments.train_{fw}")
    cfg = {"task": "start_m3_s0", "framework": fw, "cell": "gru", "strategy": "learnable"}
    out = mod.run_trial({**cfg, "seed": 0, "budget": "quick"})
    points = out["checkpoints"]
    assert [p["updates"] for p in points] == [8, 16]  # 64 rows, batch 32: 2 updates an epoch
    assert out["scalars"]["epochs"] == 8
    best = min(points, key=lambda p: p["val"])
    # the final model is the best validation checkpoint's: the same test error
    assert out["scalars"]["first_mse"] == pytest.approx(best["first_mse"], rel=1e-5)
    assert out["scalars"]["all_mse"] == pytest.approx(best["all_mse"], rel=1e-5)
    assert out["curves"]["val_by_epoch"] == pytest.approx([p["val"] for p in points])


@pytest.mark.parametrize("fw", ["torch", "flax", "keras"])
def test_real_map_trials_record_per_sequence_errors(fw):
    import importlib

    mod = importlib.import_module(f"reference_impl.experiments.train_{fw}")
    cfg = {"task": "elnino_years", "framework": fw, "cell": "gru", "strategy": "zero"}
    out = mod.run_trial({**cfg, "seed": 0, "budget": "quick"})
    seq_all = np.array(out["curves"]["seq_all"])
    assert seq_all.shape == (9,)  # one per test year
    # the mean over test sequences is the mean over steps of the per-step curve
    assert seq_all.mean() == pytest.approx(np.mean(out["curves"]["test"]), rel=1e-5)
    first = np.array(out["curves"]["seq_first"]).mean()
    assert first == pytest.approx(out["scalars"]["first_mse"], rel=1e-5)


def test_the_noise_sweep_runs_noisy_with_its_sigma():
    cfg = common.TrialConfig.from_dict(
        {"task": "start_m3_s1", "framework": "torch", "cell": "gru", "strategy": "noisy_0.5"}
        | {"seed": 3, "budget": "quick"}
    )
    assert cfg.base_strategy == "noisy"
    assert cfg.strategy_options() == {"base": "learnable", "noise_std": 0.5, "seed": 3}
    with pytest.raises(ValueError, match="needs a 'windows' task"):
        common.TrialConfig.from_dict({**cfg.as_dict(), "task": "stream_chunks"})


# ---------------------------------------------------------------------- the map's trials


def test_the_map_at_the_cpu_budget_has_its_parts():
    configs = grid.map_configs("standard")
    df = pd.DataFrame(configs)
    assert len(df) == len(df.drop_duplicates())
    per_cell = df.groupby(["task", "framework", "cell", "strategy"])["seed"].nunique()
    assert per_cell.min() == 10  # at least 10 seeds in every cell
    # every start cell in two frameworks, the corners and the real series in all three
    fws = df.groupby("task")["framework"].agg(lambda f: set(f))
    assert all(fws[t] >= {"torch", "flax"} for t in MAP_START_TASKS + LENGTH_TASKS)
    assert all(fws[t] == {"torch", "flax", "keras"} for t in MAP_CORNERS + REAL_MAP_TASKS)
    strategies = df[df["task"].isin(MAP_START_TASKS)].groupby("task")["strategy"].agg(set)
    assert all(s >= {"zero", "learnable", "noisy", "xavier"} for s in strategies)
    assert set(df["cell"]) == {"gru", "lstm"}
    full = pd.DataFrame(grid.map_configs("full", seeds=1))
    assert set(full["framework"]) == {"torch", "flax", "keras"}
    assert len(full) > len(df[df["seed"] == 0])


def test_a_table_from_before_the_updates_column_reads_as_final_models(tmp_path):
    # the grid's table in the layout written before the column existed
    old = pd.read_parquet("results/experiments-standard.parquet").head(50)
    old = old.drop(columns="updates", errors="ignore")
    path = tmp_path / "old.parquet"
    old.to_parquet(path)
    df = grid.load_results(path)
    assert (df["updates"] == -1).all() and len(df) == 50


def test_a_tiny_map_end_to_end_on_ray_tune(tmp_path):
    pytest.importorskip("ray")
    import ray

    sel = {
        "tasks": ["start_m3_s0"],
        "frameworks": ["torch"],
        "cells": ["gru"],
        "strategies": ["zero", "learnable"],
        "seeds": 2,
        "num_cpus": 1,
    }
    try:
        out = grid.run_grid(
            "quick", study="map", results_dir=tmp_path, storage=tmp_path / "ray", **sel
        )
    finally:
        ray.shutdown()
    if out["executor"] != "ray":
        pytest.skip("a local Ray instance could not start on this (saturated) machine")
    assert out["ran"] == 4 and out["table"].name == "map-quick.parquet"
    df = grid.load_results(out["table"])
    points = df[(df["updates"] >= 0) & (df["metric"] == "first_mse")]
    assert sorted(points["updates"].unique()) == [8, 16]
    assert len(points) == 4 * 2  # every trial, every checkpoint
    final = grid.scalar_table(df, "first_mse")  # final models only
    assert len(final) == 4 and (final["value"] > 0).all()
    again = grid.run_grid("quick", study="map", results_dir=tmp_path, executor="local", **sel)
    assert again["ran"] == 0 and again["skipped"] == 4


# ---------------------------------------------------------------------- statistics


def test_fdr_bh_matches_a_hand_computed_example_and_is_less_strict_than_holm():
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 0.02, 0.02, 0.04, 0.04 after the running min
    p = [0.01, 0.04, 0.03, 0.005]
    np.testing.assert_allclose(stats.fdr_bh(p), [0.02, 0.04, 0.04, 0.02])
    assert np.all(stats.fdr_bh(p) <= stats.holm(p))
    assert np.isnan(stats.fdr_bh([np.nan, 0.2])[0])
    # with all nulls true the expected number of discoveries at q = 0.05 stays small
    rng = np.random.default_rng(0)
    found = [(stats.fdr_bh(rng.uniform(size=50)) < 0.05).any() for _ in range(400)]
    assert np.mean(found) < 0.08


def test_tost_says_equivalent_for_a_tiny_difference_and_not_for_a_noisy_or_large_one():
    rng = np.random.default_rng(1)
    b = rng.normal(1.0, 0.1, 12)
    same = b * (1 + rng.normal(0, 0.01, 12))  # within +-1%
    assert stats.tost(same, b, 0.05) < 0.01
    noisy = b * (1 + rng.normal(0, 0.3, 12))  # maybe equal, but too noisy to show it
    assert stats.tost(noisy, b, 0.05) > 0.05
    worse = b * 1.10  # exactly 10% worse: outside a 5% margin
    assert stats.tost(worse, b, 0.05) > 0.99
    with pytest.raises(ValueError, match="margin"):
        stats.tost(b, b, 0.0)


def test_tost_has_its_size_at_the_margin():
    # true difference exactly at the margin: equivalence "shown" about 5% of the time
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(2000):
        b = np.ones(10)
        a = b + 0.05 + rng.normal(0, 0.02, 10)
        hits += stats.tost(a, b, 0.05) < 0.05
    assert 0.02 < hits / 2000 < 0.08


def test_verdicts_on_known_cases():
    rng = np.random.default_rng(3)
    b = rng.normal(1.0, 0.05, 10)
    cases = {
        "better": b * 0.7,
        "worse": b * 1.3,
        "equivalent": b * (1 + rng.normal(0, 0.005, 10)),
        "not shown": b * (1 + rng.normal(0, 0.2, 10)),
    }
    for want, a in cases.items():
        est, lo, hi = stats.ratio_of_means(a, b)
        got = stats.verdict(stats.paired_test(a, b), lo, hi, stats.tost(a, b, 0.05))
        assert got == want, (want, est, lo, hi)


def test_geometric_mean_ratio_pools_implementations():
    a1, b1 = np.array([2.0, 2.2, 1.8]), np.array([1.0, 1.1, 0.9])  # ratio 2
    a2, b2 = np.array([0.5, 0.55, 0.45]), np.array([1.0, 1.1, 0.9])  # ratio 0.5
    est, lo, hi = stats.geometric_mean_ratio([(a1, b1), (a2, b2)])
    assert est == pytest.approx(1.0)
    est, lo, hi = stats.geometric_mean_ratio([(a1, b1), (a1 * 1.0, b1)])
    assert est == pytest.approx(2.0) and lo == pytest.approx(2.0) and hi == pytest.approx(2.0)


def test_two_level_ratio_widens_with_test_sequence_spread():
    rng = np.random.default_rng(4)
    seqs = rng.lognormal(0, 1.0, 8)  # very different test sequences
    b = np.outer(np.ones(10), seqs) * rng.normal(1, 0.02, (10, 1))
    a = b * 0.8
    a[:, 0] *= 2.0  # the strategy is much worse on one test sequence
    est, lo, hi = stats.two_level_ratio(a, b)
    seeds_only = stats.ratio_of_means(a.mean(1), b.mean(1))
    assert lo < seeds_only[1] and hi > seeds_only[2]  # wider: the test sample counts too
    assert lo <= est <= hi


# ---------------------------------------------------------------------- the map's report


def _values(ratios: dict[tuple[str, str], float], n: int = 10, noise: float = 0.01):
    """Trial values of zero and other strategies for (framework, strategy): ratio."""
    rng = np.random.default_rng(5)
    base = rng.lognormal(0, 0.3, n)
    rows = []
    for fw in sorted({f for f, _ in ratios}):
        for seed in range(n):
            rows.append((fw, "zero", seed, base[seed]))
        for (f, s), r in ratios.items():
            if f == fw:
                for seed in range(n):
                    rows.append((fw, s, seed, base[seed] * r * (1 + noise * rng.standard_normal())))
    df = pd.DataFrame(rows, columns=["framework", "strategy", "seed", "value"])
    return df.assign(task="t", cell="gru", budget="standard")


def test_map_compare_gives_verdicts_and_both_corrections():
    from reference_impl.experiments import report

    v = _values({("torch", "learnable"): 0.5, ("torch", "noisy"): 1.0, ("torch", "xavier"): 3.0})
    out = report.map_compare(v).set_index("strategy")
    assert out.loc["learnable", "verdict"] == "better"
    assert out.loc["noisy", "verdict"] == "equivalent"
    assert out.loc["xavier", "verdict"] == "worse"
    assert out.loc["learnable", "ratio"] == pytest.approx(0.5, rel=0.02)
    np.testing.assert_allclose(out["p_holm"], stats.holm(out["p"]))
    np.testing.assert_allclose(out["p_fdr"], stats.fdr_bh(out["p"]))
    assert (out["n"] == 10).all()


def test_pooling_agrees_or_says_the_frameworks_disagree():
    from reference_impl.experiments import report

    v = _values({("torch", "learnable"): 0.5, ("flax", "learnable"): 0.5})
    pool = report.pool_frameworks(v, report.map_compare(v)).iloc[0]
    assert pool["agree"] and pool["verdict"] == "better"
    assert pool["ratio"] == pytest.approx(0.5, rel=0.02) and pool["frameworks"] == "flax, torch"
    v = _values({("torch", "learnable"): 0.5, ("flax", "learnable"): 2.0})
    pool = report.pool_frameworks(v, report.map_compare(v)).iloc[0]
    assert not pool["agree"] and pool["verdict"] == "frameworks disagree"
    assert pool["ratio"] == pytest.approx(1.0, rel=0.02)  # geometric mean of 0.5 and 2


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        ({"cells": ["rnn"]}, "unknown cell 'rnn'"),
        ({"strategies": ["orthogonal"]}, "unknown strategy 'orthogonal'"),
        ({"frameworks": ["mxnet"]}, "unknown framework 'mxnet'"),
    ],
)
def test_the_map_names_an_unknown_selection_as_the_grid_does(selection, message):
    for configs in (grid.map_configs, grid.grid_configs):
        with pytest.raises(ValueError, match=message):
            configs("quick", **selection)
