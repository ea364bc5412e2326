"""reference_impl.compare: known answers in every framework, the pairing, bad input,
resuming, the input forms and the command line. Every comparison here is tiny."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from reference_impl import compare
from reference_impl.compare import examples, runner
from reference_impl.compare.__main__ import main as cli
from reference_impl.experiments import FRAMEWORKS, common

#: The training budget of every comparison here: seconds per framework.
TINY = {"hidden": 8, "max_epochs": 10, "patience": 3, "lr": 0.02, "executor": "inline"}


def _constant(framework):
    x, y = examples.constant_start(128, 15)
    return compare.run(x, y, framework=framework, seeds=6, steps="first:3", progress=False, **TINY)


def _forgotten(framework):
    x, y = examples.forgotten_start(128, 50)
    return compare.run(
        x, y, framework=framework, seeds=6, steps="last:10", loss_steps="last:10",
        progress=False, **TINY,
    )  # fmt: skip


# ---------------------------------------------------------------------- known answers


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_learnable_wins_on_a_constant_non_zero_start(framework):
    report = _constant(framework)
    assert report.verdicts() == {"learnable": "better"}
    row = report.comparison.iloc[0]
    assert row.ratio_hi < 0.5 and row.p_holm < 0.05
    sentence = report.verdict()
    assert sentence.startswith("learnable beats zero on the first 3 steps by ")
    assert f"[{row.ratio_lo:.2f}, {row.ratio_hi:.2f}]" in sentence


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_nothing_differs_where_the_start_is_forgotten(framework):
    report = _forgotten(framework)
    assert report.verdicts() == {"learnable": "equivalent"}
    row = report.comparison.iloc[0]
    assert 0.95 < row.ratio_lo <= row.ratio_hi < 1.05
    assert "equivalent to zero on the last 10 steps within ±5%" in report.verdict()


# ---------------------------------------------------------------------- the pairing


def _record_pairing(monkeypatch, framework):
    """Record, per (strategy, seed), the initial bare weights and every batch drawn."""
    seen: dict[tuple, dict] = {}
    current: list[tuple] = []
    run_trial = runner.run_trial

    def tracked(cfg, settings, data):
        current[:] = [(cfg["strategy"], cfg["seed"])]
        seen[current[0]] = {"weights": None, "batches": []}
        return run_trial(cfg, settings, data)

    monkeypatch.setattr(runner, "run_trial", tracked)
    epoch_batches = common.epoch_batches

    def batches(rng, n, size):
        out = epoch_batches(rng, n, size)
        seen[current[0]]["batches"].append([b.tolist() for b in out])
        return out

    monkeypatch.setattr(common, "epoch_batches", batches)

    def keep(weights):
        seen[current[0]]["weights"] = [np.array(w, copy=True) for w in weights]

    if framework == "torch":
        from reference_impl.experiments import train_torch as mod

        init = mod.Model.__init__

        def model_init(self, *a, **k):
            init(self, *a, **k)
            keep(
                [p.detach().numpy() for p in (*self.rnn.rnn.parameters(), *self.head.parameters())]
            )

        monkeypatch.setattr(mod.Model, "__init__", model_init)
    elif framework == "keras":
        from reference_impl.experiments import train_keras as mod

        make = mod._model

        def model(*a, **k):
            m = make(*a, **k)
            keep([v.numpy() for v in m.bare])
            return m

        monkeypatch.setattr(mod, "_model", model)
    else:
        import jax

        from reference_impl.experiments import train_flax as mod

        init_params = mod._Compiled.init_params

        def params(self, seed):
            p = init_params(self, seed)
            keep(jax.tree.leaves({"cell": p["rnn"]["rnn"], "head": p["head"]}))
            return p

        monkeypatch.setattr(mod._Compiled, "init_params", params)
    return seen


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_strategy_of_a_seed_starts_from_the_same_weights_and_batches(monkeypatch, framework):
    seen = _record_pairing(monkeypatch, framework)
    x, y = examples.constant_start(48, 8)
    opts = {**TINY, "max_epochs": 2}
    compare.run(x, y, framework=framework, seeds=7, strategies=("zero", "learnable", "noisy"),
                progress=False, **opts)  # fmt: skip
    assert len(seen) == 21
    for seed in range(7):
        ref = seen[("zero", seed)]
        assert len(ref["batches"]) == 2 and ref["weights"]
        for strategy in ("learnable", "noisy"):
            other = seen[(strategy, seed)]
            assert other["batches"] == ref["batches"]
            for a, b in zip(other["weights"], ref["weights"], strict=True):
                np.testing.assert_array_equal(a, b)
    # ... and seeds differ, so the seeds are replications, not copies.
    assert seen[("zero", 0)]["batches"] != seen[("zero", 1)]["batches"]
    pairs = zip(seen[("zero", 0)]["weights"], seen[("zero", 1)]["weights"], strict=True)
    assert not all(np.array_equal(a, b) for a, b in pairs)


# ---------------------------------------------------------------------- bad input

X, Y = examples.constant_start(40, 6)


def _run(*arrays, **kw):
    opts = {"seeds": 6, "progress": False, **TINY, **kw}
    return compare.run(*(arrays or (X, Y)), **opts)


def test_an_array_of_the_wrong_rank_is_refused():
    with pytest.raises(ValueError, match=r"x_train must be a 3-D array .* got shape \(40, 6\).*"
                       r"x_train\[\.\.\., None\]"):  # fmt: skip
        _run(X[..., 0], Y)


def test_mismatched_numbers_of_sequences_are_refused():
    with pytest.raises(ValueError, match="x_train holds 40 sequences but y_train holds 39"):
        _run(X, Y[:39])


def test_mismatched_numbers_of_steps_are_refused():
    with pytest.raises(ValueError, match="x_train has 6 steps per sequence but y_train has 5"):
        _run(X, Y[:, :5])


def test_nan_values_are_refused_with_their_place():
    x = X.copy()
    x[3, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"x_train holds 1 NaN or infinite value\(s\) \(the "
                       r"first at sequence 3, step 2\); drop .* or fill"):  # fmt: skip
        _run(x, Y)


def test_infinite_values_are_refused():
    y = Y.copy()
    y[5, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"y_train holds 1 NaN or infinite"):
        _run(X, y)


def test_too_few_sequences_for_a_split_are_refused():
    with pytest.raises(ValueError, match=r"the val part holds 1 sequence\(s\); a comparison "
                       r"needs at least 2"):  # fmt: skip
        _run(X[:8], Y[:8])


def test_too_few_seeds_for_the_paired_test_are_refused():
    with pytest.raises(ValueError, match=r"5 seed\(s\) are too few: with 2 strategies compared"
                       r".* use seeds=7 or more"):  # fmt: skip
        _run(strategies=("zero", "learnable", "noisy"), seeds=5)


@pytest.mark.parametrize(
    ("option", "value", "known"),
    [
        ("framework", "jax", "torch"),
        ("strategy", "learned", "learnable"),
        ("cell", "rnn", "lstm"),
    ],
)
def test_unknown_names_are_refused_with_the_known_ones(option, value, known):
    kw = {"strategies": ("zero", value)} if option == "strategy" else {option: value}
    with pytest.raises(ValueError, match=rf"unknown {option} '{value}'; expected one of .*{known}"):
        _run(**kw)


def test_a_framework_not_installed_names_its_extra(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "jax" else find_spec(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match=r"framework 'flax' needs JAX, Flax and optax: "
                       r"module 'jax' is not installed\. Install it with: pip install "
                       r'"initial-states\[flax\]"'):  # fmt: skip
        _run(framework="flax")


def test_a_results_file_of_another_data_set_is_refused(tmp_path):
    path = tmp_path / "results.jsonl"
    runner.ResultsFile(path, {"fingerprint": "0123456789abcdef", "data": "other", "settings": {}})
    with pytest.raises(ValueError, match=r"holds the results of another data set \(fingerprint "
                       r"0123456789abcdef .* Pass another results path"):  # fmt: skip
        _run(results=path)


def test_a_results_file_of_other_training_settings_is_refused(tmp_path):
    path = tmp_path / "results.jsonl"
    _run(results=path, max_epochs=1)
    with pytest.raises(ValueError, match=r"other training settings: max_epochs=1 \(now 2\)"):
        _run(results=path, max_epochs=2)


def test_bad_steps_are_refused():
    with pytest.raises(ValueError, match=r"steps must be 'all', 'first:k' or 'last:k' with "
                       r"1 <= k <= 6"):  # fmt: skip
        _run(steps="first:9")


def test_a_missing_column_is_refused():
    frame = pd.DataFrame({"a": np.arange(50.0)})
    with pytest.raises(ValueError, match=r"column 'b' is not in the data; its columns are \['a'\]"):
        _run(frame, target="b", length=5)


# ---------------------------------------------------------------------- resuming


def test_an_interrupted_comparison_resumes_without_repeating_trials(monkeypatch, tmp_path):
    path = tmp_path / "results.jsonl"
    calls: list[tuple] = []
    stop = [True]
    run_trial = runner.run_trial

    def flaky(cfg, settings, data):
        if stop[0] and len(calls) == 5:
            raise KeyboardInterrupt  # the reader stops it after five trials
        calls.append(runner.trial_key(cfg))
        return run_trial(cfg, settings, data)

    monkeypatch.setattr(runner, "run_trial", flaky)
    with pytest.raises(KeyboardInterrupt):
        _run(results=path)
    assert len(path.read_text().splitlines()) == 1 + 5  # the header and five trials
    with path.open("a") as f:
        f.write('{"config": {"framework": "tor')  # a line torn by the interruption
    calls.clear()
    stop[0] = False
    resumed = _run(results=path)
    assert len(calls) == 7 and len(set(calls)) == 7  # only the seven missing trials ran
    assert len(resumed.trials) == 12
    monkeypatch.setattr(runner, "run_trial", run_trial)
    again = _run(results=path)  # nothing left to run: the same answer from the file
    pd.testing.assert_frame_equal(again.table(), resumed.table())
    fresh = _run()  # the resumed comparison equals one that was never interrupted
    np.testing.assert_allclose(
        resumed.trials["value"].to_numpy(), fresh.trials["value"].to_numpy(), rtol=1e-6
    )
    header = json.loads(path.read_text().splitlines()[0])["header"]
    assert {"fingerprint", "settings", "package_version", "commit", "created"} <= set(header)
    record = json.loads(path.read_text().splitlines()[-1])
    assert {"framework_version", "device", "date", "commit"} <= set(record)


# ---------------------------------------------------------------------- input forms


def _series_frame(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    level = np.zeros(n)
    for t in range(1, n):
        level[t] = 0.8 * level[t - 1] + x[t]
    return pd.DataFrame({"t": np.arange(n), "x": x, "level": level})


def test_a_frame_of_several_series_is_split_by_time_then_windowed():
    frame = pd.concat(
        [_series_frame(100, 0).assign(id="a"), _series_frame(100, 1).assign(id="b")]
    ).sample(frac=1, random_state=0)  # shuffled rows: the time column restores the order
    data = compare.load(frame, target="level", inputs=["x", "t"], length=10, stride=5,
                        series="id", time="t", normalize=False)  # fmt: skip
    # Per series: 70 / 15 / 15 steps, each cut into windows of 10 every 5 steps.
    assert data.sizes == {"train": 2 * 13, "val": 2 * 2, "test": 2 * 2}
    assert data.train_x.shape[1:] == (10, 2) and data.train_y.shape[1:] == (10, 1)
    assert data.train_x[..., 1].max() < 70 <= data.val_x[..., 1].min()  # no leak in time
    assert data.val_x[..., 1].max() < 85 <= data.test_x[..., 1].min()


def test_a_next_step_forecast_is_the_default_when_the_target_is_an_input():
    data = compare.load(_series_frame(60), target="level", length=5, normalize=False)
    np.testing.assert_array_equal(data.train_x[:, 1:, 0], data.train_y[:, :-1, 0])


def test_per_step_classification_runs_with_a_cross_entropy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8, 2)).astype(np.float32)
    y = (x[..., 0] > 0).astype(np.int64) + (x[..., 1] > 1)  # three classes per step
    report = _run(x, y, task="classification", max_epochs=1)
    assert set(report.verdicts()) == {"learnable"}
    # one epoch from random weights: close to the entropy of a uniform guess, ln 3
    assert 0.5 < report.trials["value"].mean() < 2.0


def test_the_table_and_the_plot():
    import matplotlib

    matplotlib.use("Agg")
    report = _run(strategies=("zero", "learnable", "noisy"), seeds=7, max_epochs=1)
    table = report.table(per_step=True)
    assert list(table.index) == ["zero", "learnable", "noisy"]
    assert {"diff", "diff_lo", "ratio", "ratio_hi", "p_holm", "verdict", "step 6"} <= set(table)
    assert table.loc["zero", "verdict"] == "reference"
    fig = report.plot()
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 3
    lines = fig.axes[0].lines
    # each strategy told apart by colour, marker and line style, the legend beside the panel
    for attr in ("get_color", "get_marker", "get_linestyle"):
        assert len({getattr(line, attr)() for line in lines}) == 3, attr
    assert [line.get_label() for line in lines] == ["zero", "learnable", "noisy"]
    fig.canvas.draw()
    legend = fig.axes[0].get_legend().get_window_extent()
    assert legend.x0 >= fig.axes[0].get_window_extent().x1
    ticks = fig.axes[0].get_xticks()
    assert np.allclose(ticks, np.round(ticks))  # steps are counted: whole numbers


def test_a_tight_interval_is_printed_with_the_digits_that_tell_its_ends_apart():
    from reference_impl.compare.report import _ratio_text

    assert _ratio_text(0.973, 0.961, 0.988) == "ratio 0.97 [0.96, 0.99]"
    assert _ratio_text(1.00004, 0.99996, 1.00012) == "ratio 1.0000 [1.0000, 1.0001]"
    assert _ratio_text(1.0, 1.0, 1.0) == "ratio 1.00 [1.00, 1.00]"  # a point: nothing to tell


def test_importing_compare_loads_no_framework():
    code = (
        "import sys, reference_impl.compare; "
        "print([m for m in ('torch', 'tensorflow', 'jax', 'keras') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------- command line


def test_the_command_line_prints_the_table_and_verdict_and_writes_the_plot(tmp_path, capsys):
    csv = tmp_path / "series.csv"
    _series_frame(300).to_csv(csv, index=False)
    png = tmp_path / "plot.png"
    rc = cli([str(csv), "--target", "level", "--inputs", "x", "--horizon", "0", "--length", "10",
              "--stride", "2", "--seeds", "6", "--hidden", "8", "--max-epochs", "2",
              "--executor", "inline", "--plot", str(png), "--quiet"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "learnable" in out and "verdict" in out and "learnable " in out.splitlines()[-2]
    assert png.stat().st_size > 1000


def test_the_command_line_reports_bad_input_as_an_error(tmp_path, capsys):
    csv = tmp_path / "series.csv"
    _series_frame(50).to_csv(csv, index=False)
    rc = cli([str(csv), "--target", "nope", "--length", "5", "--executor", "inline"])
    assert rc == 2
    assert "error: column 'nope' is not in the data" in capsys.readouterr().err


def test_a_comparison_on_ray_tune_gives_the_inline_results(tmp_path):
    pytest.importorskip("ray")
    import ray

    x, y = examples.constant_start(64, 10)
    opts = {**TINY, "seeds": 6, "strategies": ("zero", "learnable"), "progress": False}
    inline = compare.run(x, y, framework="torch", **opts)
    try:
        on_ray = compare.run(
            x, y, framework="torch", **{**opts, "executor": "ray"}, num_cpus=1,
            results=tmp_path / "ray.jsonl",
        )  # fmt: skip
    finally:
        ray.shutdown()
    if on_ray.executor != "ray":
        pytest.skip("a local Ray instance could not start on this (saturated) machine")
    a = inline.trials.sort_values(["strategy", "seed"])["value"].to_numpy()
    b = on_ray.trials.sort_values(["strategy", "seed"])["value"].to_numpy()
    np.testing.assert_allclose(a, b, rtol=1e-6)  # the same trials, run by Ray's workers
    assert len(open(tmp_path / "ray.jsonl").read().splitlines()) >= 12  # every trial journaled
