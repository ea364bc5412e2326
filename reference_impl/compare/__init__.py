"""Compare initial-state strategies on your own sequences, paired by seed, in one call.

:func:`run` trains one recurrent model per (strategy, seed) with the experiment grid's
trainer of the chosen framework (the same data, batches and initial weights for every
strategy of a seed; early stopping on validation; the best epoch kept), then compares
every strategy with the reference (``zero``) seed by seed: the paired difference and the
ratio of mean errors with 95% bootstrap intervals, a Wilcoxon signed-rank test Holm-
corrected across the strategies compared, and an equivalence test (TOST) within a stated
margin, so that "no difference" is a measurement too. The result is a :class:`Report`.

Importing this package loads no machine-learning framework (numpy, pandas and scipy);
the framework loads when a trial runs.

>>> from reference_impl import compare
>>> compare.parse_steps("first:3", 20), compare.parse_steps("last:5", 20)
((0, 3), (15, 20))

A comparison on arrays ``(sequences, steps, features)`` (a minute or so on a CPU)::

    report = compare.run(x, y, framework="torch", cell="gru", hidden=16,
                         strategies=("zero", "learnable", "noisy"), seeds=10,
                         steps="first:3", results="my-comparison.jsonl")
    report.table()     # a pandas DataFrame
    print(report.verdict())
    report.plot()      # a matplotlib Figure
"""

from __future__ import annotations

import datetime
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from reference_impl import STRATEGIES
from reference_impl.compare import runner
from reference_impl.compare.data import Dataset, from_arrays, from_csv, from_frame, load
from reference_impl.compare.report import Report, min_seeds
from reference_impl.experiments import CELLS, FRAMEWORKS

#: Training settings of a comparison (every strategy and seed gets the same).
DEFAULTS: dict[str, Any] = {
    "hidden": 16,
    "batch_size": 32,
    "lr": 0.01,
    "max_epochs": 50,
    "patience": 5,
}


def _check(kind: str, value: Any, known: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in known:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {list(known)}")
    return value


def parse_steps(steps: Any, total: int) -> tuple[int, int]:
    """The half-open step range of ``"all"``, ``"first:k"``, ``"last:k"`` (or the tuples
    ``("first", k)``, ``("last", k)``) for sequences of ``total`` steps.

    >>> parse_steps("all", 10), parse_steps(("last", 4), 10)
    ((0, 10), (6, 10))
    """
    if isinstance(steps, str):
        if steps == "all":
            return (0, total)
        where, _, k = steps.partition(":")
    elif isinstance(steps, (tuple, list)) and len(steps) == 2:
        where, k = steps
    else:
        where, k = None, None
    try:
        k = int(k)
    except (TypeError, ValueError):
        where = None
    if where not in ("first", "last") or not 1 <= k <= total:
        raise ValueError(
            f"steps must be 'all', 'first:k' or 'last:k' with 1 <= k <= {total} (the steps "
            f"per sequence); got {steps!r}"
        )
    return (0, k) if where == "first" else (total - k, total)


def _seed_list(seeds: Any) -> list[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        return list(range(int(seeds)))
    try:
        out = [int(s) for s in seeds]
    except TypeError as err:
        raise TypeError(f"seeds is a number of seeds or a list of seeds; got {seeds!r}") from err
    if len(set(out)) != len(out) or min(out, default=0) < 0:
        raise ValueError(f"seeds must be distinct non-negative integers; got {seeds!r}")
    return out


def run(
    data: Any,
    y_train: Any = None,
    x_val: Any = None,
    y_val: Any = None,
    x_test: Any = None,
    y_test: Any = None,
    *,
    framework: str = "torch",
    cell: str = "gru",
    strategies: Sequence[str] = ("zero", "learnable"),
    reference: str = "zero",
    seeds: int | Sequence[int] = 10,
    steps: Any = "all",
    loss_steps: Any = "all",
    margin: float = 0.05,
    alpha: float = 0.05,
    hidden: int = DEFAULTS["hidden"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    max_epochs: int = DEFAULTS["max_epochs"],
    patience: int = DEFAULTS["patience"],
    task: str = "regression",
    target: str | Sequence[str] | None = None,
    length: int | None = None,
    stride: int | None = None,
    inputs: Sequence[str] | None = None,
    horizon: int | None = None,
    series: str | None = None,
    time_column: str | None = None,
    normalize: bool = True,
    split: Sequence[float] = (0.7, 0.15),
    results: Any = None,
    executor: str = "ray",
    num_cpus: int | None = None,
    progress: bool = True,
    log: Any = sys.stdout,
) -> Report:
    """Compare ``strategies`` with ``reference`` on your data, paired by seed.

    Data: arrays ``x_train, y_train[, x_val, y_val, x_test, y_test]`` of shapes
    ``(N, T, F)`` and ``(N, T, O)`` (classification: class indices ``(N, T)``); a
    pandas DataFrame or a CSV path of one or several long series with ``target`` and
    ``length`` (and ``stride``, ``inputs``, ``horizon``, ``series``, ``time_column``);
    or a :class:`Dataset`. Parts not given are cut by time (``split``).

    ``task``: "regression" (MSE per step) or "classification" (cross-entropy per step).
    ``steps``: the steps the comparison counts ("all", "first:k", "last:k");
    ``loss_steps``: the steps the training loss and early stopping count.
    ``margin``: the equivalence margin, a fraction of the reference's mean error.
    ``results``: a JSON-lines file that keeps every finished trial; an interrupted
    comparison started again with the same file runs only the trials it lacks.
    ``executor``: "ray" (Ray Tune: a local instance, or the cluster at ``RAY_ADDRESS``;
    a local process pool when Ray cannot start), "processes", or "inline" (this
    process, one trial after another: small comparisons, notebooks, tests).
    """
    t0 = time.perf_counter()
    framework = _check("framework", framework, FRAMEWORKS)
    cell = _check("cell", cell, CELLS)
    strategies = [strategies] if isinstance(strategies, str) else list(strategies)
    for s in (*strategies, reference):
        _check("strategy", s, STRATEGIES)
    names = [reference, *[s for s in dict.fromkeys(strategies) if s != reference]]
    if len(names) < 2:
        raise ValueError(
            f"strategies {strategies!r} hold nothing to compare with the reference "
            f"{reference!r}; name at least one other strategy"
        )
    _check("executor", executor, runner.EXECUTORS)
    if not 0 < margin < 1:
        raise ValueError(
            f"margin is a fraction of the reference's error, in (0, 1); got {margin!r}"
        )
    seed_list = _seed_list(seeds)
    need = min_seeds(len(names) - 1, alpha)
    if len(seed_list) < need:
        raise ValueError(
            f"{len(seed_list)} seed(s) are too few: with {len(names) - 1} strateg"
            f"{'y' if len(names) == 2 else 'ies'} compared, the Holm-corrected paired test "
            f"reaches p < {alpha} only with {need} seeds or more (a signed-rank test over n "
            f"pairs never gives p below 2 / 2**n); use seeds={need} or more (10 or more "
            f"for intervals worth reading)"
        )
    for name, v in (("hidden", hidden), ("batch_size", batch_size), ("max_epochs", max_epochs)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer; got {v!r}")
    runner.check_installed(framework)
    dataset = (
        load(
            data,
            *[a for a in (y_train, x_val, y_val, x_test, y_test)],
            task=task,
            normalize=normalize,
            split=split,
            target=target,
            length=length,
            stride=stride,
            inputs=inputs,
            horizon=horizon,
            series=series,
            time=time_column,
        )
        if not isinstance(data, Dataset)
        else data
    )
    count = parse_steps(steps, dataset.steps)
    loss_range = parse_steps(loss_steps, dataset.steps)
    settings = {
        "hidden": int(hidden),
        "batch_size": int(batch_size),
        "lr": float(lr),
        "max_epochs": int(max_epochs),
        "patience": int(patience),
        "loss_steps": list(loss_range),
    }
    header = {
        "fingerprint": dataset.fingerprint,
        "data": dataset.describe(),
        "source": dataset.source,
        "settings": settings,
        **_provenance(),
    }
    store = runner.ResultsFile(results, header)
    configs = [
        {"framework": framework, "cell": cell, "strategy": s, "seed": seed}
        for seed in seed_list
        for s in names
    ]
    done = store.done()
    todo = [
        {**c, "fingerprint": dataset.fingerprint}
        for c in configs
        if runner.trial_key(c) not in done
    ]
    if progress and log is not None:
        print(
            f"{len(configs)} trials ({len(names)} strategies x {len(seed_list)} seeds, "
            f"{framework}/{cell}) on {dataset.describe()}: {len(configs) - len(todo)} in the "
            f"results file, {len(todo)} to run",
            file=log,
            flush=True,
        )
    bar = runner.Progress(len(todo), log if progress else None)
    prov = _provenance()

    def on_record(record: dict[str, Any]) -> None:
        record = {**record, "date": _now(), **{k: prov[k] for k in ("package_version", "commit")}}
        store.append(record)
        bar(record, float(np.nanmean(np.asarray(record["test"])[count[0] : count[1]])))

    trainer_settings = {k: v for k, v in settings.items() if k != "loss_steps"}
    task_data = dataset.task_data(None if loss_range == (0, dataset.steps) else loss_range)
    used = runner.execute(todo, trainer_settings, task_data, on_record, executor, num_cpus, log)
    wanted = {runner.trial_key(c) for c in configs}
    records = [r for r in store.records if runner.trial_key(r["config"]) in wanted]
    return Report(
        records,
        reference=reference,
        strategies=names,
        steps=count,
        total_steps=dataset.steps,
        margin=margin,
        alpha=alpha,
        header=header,
        executor=used,
        seconds=time.perf_counter() - t0,
    )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _provenance() -> dict[str, str]:
    import reference_impl
    from reference_impl.experiments.grid import _commit

    return {
        "package_version": reference_impl.__version__,
        "commit": _commit(),
        "python": platform.python_version(),
        "created": _now(),
    }


__all__ = [
    "DEFAULTS",
    "Dataset",
    "Report",
    "from_arrays",
    "from_csv",
    "from_frame",
    "load",
    "min_seeds",
    "parse_steps",
    "run",
]
