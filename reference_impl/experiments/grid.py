"""The experiment grid: which trials a budget runs, the Ray Tune runner, the results table.

:func:`grid_configs` lists the trials of a budget (one per task, framework, cell,
strategy and seed). :func:`run_grid` runs those not done yet on Ray Tune, one trial per
CPU (and a GPU fraction where there is one): a local Ray instance started on the spot,
or the cluster at ``RAY_ADDRESS``. Every finished trial is appended at once to a
journal beside the table, so an interrupted grid goes on where it stopped: a trial
whose rows exist is never run again. At the end the journal is folded into one tidy
Parquet table (:data:`COLUMNS`, see :func:`trial_rows`).

>>> len(grid_configs("quick", frameworks=("torch",), tasks=("co2",)))
28
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import reference_impl
from reference_impl import STRATEGIES
from reference_impl.experiments import (
    ALL_STRATEGIES,
    CELLS,
    FRAMEWORKS,
    GRID_TASKS,
    LENGTH_TASKS,
    MAP_CORNERS,
    MAP_START_TASKS,
    NOISE_SWEEP,
    REAL_MAP_TASKS,
    TASK_KINDS,
)
from reference_impl.experiments.common import (
    SEEDS,
    TrialConfig,
    check_budget,
    check_framework,
    check_task,
)

KEY_COLUMNS = ("task", "framework", "cell", "strategy", "seed", "budget")
PROVENANCE = (
    "package_version",
    "framework_version",
    "device",
    "commit",
    "date",
    "python",
    "host_cpu",
)
#: ``updates``: -1 for the trial's final model (the best validation epoch or checkpoint);
#: for the map's budget curves, the optimizer updates done at that checkpoint.
COLUMNS = (*KEY_COLUMNS, "metric", "step", "updates", "value", *PROVENANCE)
#: The studies: the grid of tasks (``experiments-<budget>.parquet``) and the map of
#: regimes (``map-<budget>.parquet``).
STUDIES = ("grid", "map")
#: Where results live, relative to the repository root (or ``$EXPERIMENTS_RESULTS``).
RESULTS_DIR = Path(os.environ.get("EXPERIMENTS_RESULTS", "results"))
#: Variants the grid runs only in PyTorch (the baselines from the literature).
TORCH_ONLY = ("washout", "data_driven")


def strategies_for(task: str, framework: str) -> tuple[str, ...]:
    """The strategies and variants the grid runs for a task in a framework."""
    kind = TASK_KINDS[check_task(task)]
    check_framework(framework)
    if kind == "chunks":
        return (*STRATEGIES, "stateful")
    return (*STRATEGIES, *TORCH_ONLY) if framework == "torch" else STRATEGIES


def _check_selection(budget, tasks, frameworks, cells, strategies, seeds) -> list[int]:
    """Check a budget and the names a selection keeps (None keeps all); return the seeds:
    the budget's number of seeds, an int, or an explicit list."""
    check_budget(budget)
    for t in tasks or ():
        check_task(t)
    for f in frameworks or ():
        check_framework(f)
    for c in cells or ():
        if c not in CELLS:
            raise ValueError(f"unknown cell {c!r}; expected one of {list(CELLS)}")
    bad = [s for s in strategies or () if s not in ALL_STRATEGIES]
    if bad:
        raise ValueError(f"unknown strategy {bad[0]!r}; expected one of {list(ALL_STRATEGIES)}")
    if seeds is None:
        seeds = SEEDS[budget]
    return list(range(seeds)) if isinstance(seeds, int) else list(seeds)


def grid_configs(
    budget: str,
    *,
    tasks: Iterable[str] | None = None,
    frameworks: Iterable[str] | None = None,
    cells: Iterable[str] | None = None,
    strategies: Iterable[str] | None = None,
    seeds: int | Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Every trial config of a budget, seed-major (a partial grid covers every cell).

    ``tasks`` defaults to the grid tasks (``fixed_start`` only when asked for),
    ``seeds`` to the budget's number of seeds (an int) or an explicit list.
    """
    seed_list = _check_selection(budget, tasks, frameworks, cells, strategies, seeds)
    tasks = tuple(GRID_TASKS if tasks is None else tasks)
    frameworks = tuple(FRAMEWORKS if frameworks is None else frameworks)
    cells = tuple(CELLS if cells is None else cells)
    if strategies is not None:
        strategies = tuple(strategies)
    configs = []
    for seed in seed_list:
        for task in tasks:
            for framework in frameworks:
                for cell in cells:
                    for strategy in strategies_for(task, framework):
                        if strategies is not None and strategy not in strategies:
                            continue
                        cfg = {
                            "task": task,
                            "framework": framework,
                            "cell": cell,
                            "strategy": strategy,
                            "seed": seed,
                            "budget": budget,
                        }
                        TrialConfig.from_dict(cfg)
                        configs.append(cfg)
    return configs


# ---------------------------------------------------------------------- the map of regimes

#: The strategies compared with ``zero`` in every cell of the map.
MAP_STRATEGIES = ("zero", "learnable", "noisy", "xavier")
#: The task of the training-noise sweep: a non-zero mean start that varies (mu 3, s 1).
SWEEP_TASK = "start_m3_s1"


def map_plan(budget: str) -> list[tuple[tuple[str, ...], ...]]:
    """The parts of the map at a budget: (tasks, frameworks, cells, strategies) each.

    At ``full`` (a cluster or a GPU runner) every part runs in every framework and cell.
    At ``quick`` and ``standard`` (the CPU budget the book shows) the start map runs in
    PyTorch and Flax with the GRU, its corners also with the LSTM and in Keras; the length
    sweep compares zero and learnable (GRU, PyTorch and Flax); the real series run in
    PyTorch and Flax with both cells and in Keras (GRU, zero and learnable); the noise
    sweep and the two baselines (PyTorch only) run at the map's budget.
    """
    check_budget(budget)
    if budget == "full":
        return [
            (MAP_START_TASKS, FRAMEWORKS, CELLS, MAP_STRATEGIES),
            (LENGTH_TASKS, FRAMEWORKS, CELLS, ("zero", "learnable", "noisy")),
            (REAL_MAP_TASKS, FRAMEWORKS, CELLS, MAP_STRATEGIES),
            ((SWEEP_TASK,), FRAMEWORKS, CELLS, tuple(NOISE_SWEEP)),
            (MAP_CORNERS, ("torch",), CELLS, TORCH_ONLY),
        ]
    two = ("torch", "flax")
    return [
        (MAP_START_TASKS, two, ("gru",), MAP_STRATEGIES),
        (MAP_CORNERS, two, ("lstm",), MAP_STRATEGIES),
        (MAP_CORNERS, ("keras",), ("gru",), MAP_STRATEGIES),
        (LENGTH_TASKS, two, ("gru",), ("zero", "learnable")),
        (REAL_MAP_TASKS, two, CELLS, MAP_STRATEGIES),
        (REAL_MAP_TASKS, ("keras",), ("gru",), ("zero", "learnable")),
        ((SWEEP_TASK,), two, ("gru",), tuple(NOISE_SWEEP)),
        (MAP_CORNERS, ("torch",), ("gru",), TORCH_ONLY),
    ]


def map_configs(
    budget: str,
    *,
    tasks: Iterable[str] | None = None,
    frameworks: Iterable[str] | None = None,
    cells: Iterable[str] | None = None,
    strategies: Iterable[str] | None = None,
    seeds: int | Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Every trial of the map at a budget (:func:`map_plan`), seed-major; the keywords
    keep only the trials they name.

    >>> len(map_configs("standard", seeds=1))
    260
    """
    seed_list = _check_selection(budget, tasks, frameworks, cells, strategies, seeds)
    keep = {
        "task": None if tasks is None else set(tasks),
        "framework": None if frameworks is None else set(frameworks),
        "cell": None if cells is None else set(cells),
        "strategy": None if strategies is None else set(strategies),
    }
    configs: list[dict[str, Any]] = []
    for seed in seed_list:
        for part in map_plan(budget):
            for task, framework, cell, strategy in itertools.product(*part):
                cfg = {
                    "task": task,
                    "framework": framework,
                    "cell": cell,
                    "strategy": strategy,
                    "seed": seed,
                    "budget": budget,
                }
                if any(v is not None and cfg[k] not in v for k, v in keep.items()):
                    continue
                TrialConfig.from_dict(cfg)
                configs.append(cfg)
    return configs


def study_configs(study: str, budget: str, **selection: Any) -> list[dict[str, Any]]:
    """The trials of ``study`` ("grid" or "map") at ``budget``."""
    if study not in STUDIES:
        raise ValueError(f"unknown study {study!r}; expected one of {list(STUDIES)}")
    return (grid_configs if study == "grid" else map_configs)(budget, **selection)


# ---------------------------------------------------------------------- provenance


def _commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "reference_impl"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _host_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance() -> dict[str, str]:
    """The provenance shared by every row written in this run (the trial adds its own
    framework version, device and date)."""
    return {
        "package_version": reference_impl.__version__,
        "commit": _commit(),
        "python": platform.python_version(),
        "host_cpu": _host_cpu(),
    }


def trial_rows(
    config: dict[str, Any], result: dict[str, Any], prov: dict[str, str], date: str
) -> list[dict[str, Any]]:
    """The tidy rows of one trial: one per (curve, step) and one per scalar (step -1) of
    the final model (``updates`` -1), and one per scalar of each checkpoint (``updates``
    the optimizer updates done then)."""
    base = {k: config[k] for k in KEY_COLUMNS}
    extra = {
        **prov,
        "framework_version": result["framework_version"],
        "device": result["device"],
        "date": date,
    }
    rows = []
    for metric, curve in result["curves"].items():
        for step, v in enumerate(curve):
            rows.append(
                {**base, "metric": metric, "step": step, "updates": -1, "value": float(v), **extra}
            )
    for metric, v in result["scalars"].items():
        rows.append(
            {**base, "metric": metric, "step": -1, "updates": -1, "value": float(v), **extra}
        )
    for point in result.get("checkpoints", ()):
        for metric, v in point.items():
            if metric != "updates":
                rows.append(
                    {
                        **base,
                        "metric": metric,
                        "step": -1,
                        "updates": int(point["updates"]),
                        "value": float(v),
                        **extra,
                    }
                )
    return rows


# ---------------------------------------------------------------------- the table


def results_path(budget: str, directory: Path | str | None = None, study: str = "grid") -> Path:
    """``experiments-<budget>.parquet`` (the grid) or ``map-<budget>.parquet`` (the map)."""
    if study not in STUDIES:
        raise ValueError(f"unknown study {study!r}; expected one of {list(STUDIES)}")
    name = "experiments" if study == "grid" else "map"
    return Path(directory or RESULTS_DIR) / f"{name}-{check_budget(budget)}.parquet"


def _journal_path(table: Path) -> Path:
    return table.with_suffix(".journal.jsonl")


def check_table(df: pd.DataFrame) -> pd.DataFrame:
    """Return ``df`` if it has every column of :data:`COLUMNS`, else raise ValueError
    naming the missing ones. A table written before the ``updates`` column holds final
    models only: it gets ``updates`` -1."""
    if "updates" not in df.columns and "value" in df.columns:
        df = df.assign(updates=np.int32(-1))
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"results table lacks column(s) {missing}")
    return df


def load_results(path: Path | str) -> pd.DataFrame:
    """Read a results table (Parquet) and check its columns."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no results table at {path}; run `make experiments` first")
    return check_table(pd.read_parquet(path))


def _read_journal(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by an interruption
            continue
    return records


def _key(cfg: dict[str, Any]) -> tuple:
    return tuple(cfg[k] for k in KEY_COLUMNS)


def done_keys(table: Path) -> set[tuple]:
    """Keys of the trials already in the table or its journal."""
    keys: set[tuple] = set()
    if table.exists():
        df = pd.read_parquet(table, columns=list(KEY_COLUMNS))
        keys |= {tuple(r) for r in df.drop_duplicates().itertuples(index=False)}
    keys |= {_key(r["config"]) for r in _read_journal(_journal_path(table))}
    return keys


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    df = df.loc[:, list(COLUMNS)].copy()
    for c in df.columns:
        if c not in ("seed", "step", "updates", "value"):
            df[c] = df[c].astype("category")
    df["seed"] = df["seed"].astype("int32")
    df["step"] = df["step"].astype("int32")
    df["updates"] = df["updates"].astype("int32")
    df["value"] = df["value"].astype("float64")
    return df.sort_values(list(KEY_COLUMNS) + ["metric", "updates", "step"]).reset_index(drop=True)


def consolidate(table: Path) -> pd.DataFrame:
    """Fold the journal into the Parquet table (keeping the first copy of a trial)."""
    parts = []
    if table.exists():
        parts.append(check_table(pd.read_parquet(table)))
    rows = []
    for record in _read_journal(_journal_path(table)):
        rows.extend(record["rows"])
    if rows:
        parts.append(pd.DataFrame(rows))
    if not parts:
        raise ValueError(f"no results for {table}")
    text = [c for c in COLUMNS if c not in ("seed", "step", "updates", "value")]
    parts = [p.astype({c: "object" for c in text if c in p.columns}) for p in parts]
    df = pd.concat(parts, ignore_index=True)
    key_metric = list(KEY_COLUMNS) + ["metric", "updates", "step"]
    df = df.drop_duplicates(subset=key_metric, keep="first")
    df = _tidy(check_table(df))
    table.parent.mkdir(parents=True, exist_ok=True)
    tmp = table.with_suffix(".tmp.parquet")
    df.to_parquet(tmp, compression="zstd", index=False)
    tmp.replace(table)
    _journal_path(table).unlink(missing_ok=True)
    return df


# ---------------------------------------------------------------------- the runner


def _run_one(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one trial in this process; its result as JSON and its duration."""
    import importlib

    want = int(os.environ.get("EXPERIMENTS_NICE", "0"))
    if os.getpriority(os.PRIO_PROCESS, 0) < want:  # never run trials above the caller
        os.setpriority(os.PRIO_PROCESS, 0, want)
    module = importlib.import_module(f"reference_impl.experiments.train_{cfg['framework']}")
    start = time.perf_counter()
    result = module.run_trial(cfg)
    return {
        "payload": json.dumps(result),
        "trial_seconds": time.perf_counter() - start,
        "first_mse": result["scalars"]["first_mse"],
    }


def _trainable(config: dict[str, Any]) -> dict[str, Any]:
    """The Ray Tune function trainable (its return value is the trial's last result)."""
    return _run_one(config["trial"])


def _ends_in_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class _Journal:
    """Appends each finished trial's rows to the journal and prints one progress line."""

    def __init__(self, table: Path, total: int, prov: dict[str, str], log=sys.stdout):
        self.path = _journal_path(table)
        self.total, self.prov, self.log = total, prov, log
        self.start = time.time()
        self.finished = 0
        self.seconds: list[tuple[str, float]] = []

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; a log stream cannot be
        # pickled (the copy is never used to record).
        return {**self.__dict__, "log": None}

    def record(self, cfg: dict[str, Any], result: dict[str, Any]) -> None:
        out = json.loads(result["payload"])
        date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        record = {
            "config": cfg,
            "rows": trial_rows(cfg, out, self.prov, date),
            "seconds": result["trial_seconds"],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One line per trial: an interruption tears at most the last line, and the next
        # record starts on a line of its own.
        torn = self.path.exists() and self.path.stat().st_size and not _ends_in_newline(self.path)
        with self.path.open("a") as f:
            f.write(("\n" if torn else "") + json.dumps(record) + "\n")
        self.finished += 1
        self.seconds.append((cfg["framework"], result["trial_seconds"]))
        elapsed = time.time() - self.start
        eta = elapsed / self.finished * (self.total - self.finished)
        print(
            f"[{self.finished}/{self.total}] {'/'.join(str(v) for v in _key(cfg))} "
            f"first_mse={out['scalars']['first_mse']:.4f} "
            f"({result['trial_seconds']:.1f}s; elapsed {elapsed / 60:.1f} min, "
            f"eta {eta / 60:.1f} min)",
            file=self.log or sys.stdout,
            flush=True,
        )

    def tune_callback(self):
        from ray.tune import Callback

        journal = self

        class _Callback(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                if "payload" in result:
                    journal.record(trial.config["trial"], result)

        return _Callback()


def _jax_cache_env() -> dict[str, str]:
    """A persistent XLA compilation cache outside the repository, shared by the workers
    (each worker would otherwise compile every Flax structure again)."""
    cache = Path.home() / ".cache" / "reference_impl" / "jax"
    return {
        "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR", str(cache)),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.1",
    }


def _init_ray(num_cpus: int | None, log=sys.stdout) -> bool:
    """Connect to ``RAY_ADDRESS`` or start a local instance; False if it cannot start."""
    import logging

    import ray

    if ray.is_initialized():
        return True
    kwargs: dict[str, Any] = {
        "logging_level": logging.ERROR,
        "log_to_driver": False,
        "include_dashboard": False,
    }
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
        return True
    # The workers import this package from the same place as the driver, and run at
    # the driver's priority.
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    for k in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "XLA_PYTHON_CLIENT_PREALLOCATE"):
        if k in os.environ:
            env[k] = os.environ[k]
    env["EXPERIMENTS_NICE"] = str(os.getpriority(os.PRIO_PROCESS, 0))
    env.update(_jax_cache_env())
    # Ray's node start fails when its agents take more than 15 s to come up, which
    # happens on a saturated machine; try a few times.
    for attempt in range(3):
        try:
            ray.init(num_cpus=num_cpus, runtime_env={"env_vars": env}, **kwargs)
            return True
        except Exception as err:  # Ray raises a bare Exception on a start timeout
            ray.shutdown()  # stop what the failed start left running
            if "timed out" not in str(err):
                raise
            print(f"the local Ray instance did not start (attempt {attempt + 1})", file=log)
    return False


def _run_ray(todo, journal: _Journal, budget: str, num_cpus, storage) -> None:
    import ray
    from ray import tune

    gpus = ray.cluster_resources().get("GPU", 0)
    resources = {"cpu": 1, "gpu": 0.25} if gpus else {"cpu": 1}
    storage = Path(
        storage
        or os.environ.get("EXPERIMENTS_RAY_STORAGE")
        or Path.home() / ".cache" / "reference_impl" / "ray_results"
    )
    tuner = tune.Tuner(
        tune.with_resources(_trainable, resources),
        param_space={"trial": tune.grid_search(todo)},
        # Function trainables are reused too: a worker process keeps its framework
        # imports and compiled functions from one trial to the next.
        tune_config=tune.TuneConfig(reuse_actors=True, num_samples=1),
        run_config=tune.RunConfig(
            name=f"{budget}-{int(time.time())}",
            storage_path=str(storage.resolve()),
            callbacks=[journal.tune_callback()],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )
    tuner.fit()


def _run_local(todo, journal: _Journal, num_cpus) -> None:
    """The same trials on a local process pool (no Ray): workers are reused too."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    os.environ["EXPERIMENTS_NICE"] = str(os.getpriority(os.PRIO_PROCESS, 0))
    for k, v in _jax_cache_env().items():
        os.environ.setdefault(k, v)
    workers = num_cpus or os.cpu_count() or 1
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(_run_one, cfg): cfg for cfg in todo}
        for fut in as_completed(futures):
            journal.record(futures[fut], fut.result())


EXECUTORS = ("ray", "local")


def run_grid(
    budget: str,
    *,
    tasks: Iterable[str] | None = None,
    frameworks: Iterable[str] | None = None,
    cells: Iterable[str] | None = None,
    strategies: Iterable[str] | None = None,
    seeds: int | Sequence[int] | None = None,
    results_dir: Path | str | None = None,
    num_cpus: int | None = None,
    max_trials: int | None = None,
    executor: str = "ray",
    storage: Path | str | None = None,
    study: str = "grid",
    log=sys.stdout,
) -> dict[str, Any]:
    """Run the trials of a budget that are not done yet, then write the table.

    ``executor="ray"`` runs them on Ray Tune (a local instance, or ``RAY_ADDRESS``);
    if a local instance cannot start, the local process pool takes over (said in the
    log). ``max_trials`` stops after that many new trials (the rest stays for a later
    call). Returns ``{"ran", "skipped", "table", "rows", "seconds": [(framework, s)],
    "wall_seconds", "executor"}``.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; expected one of {list(EXECUTORS)}")
    table = results_path(budget, results_dir, study)
    configs = study_configs(
        study,
        budget,
        tasks=tasks,
        frameworks=frameworks,
        cells=cells,
        strategies=strategies,
        seeds=seeds,
    )
    done = done_keys(table)
    todo = [c for c in configs if _key(c) not in done]
    if max_trials is not None:
        todo = todo[:max_trials]
    n_done = sum(_key(c) in done for c in configs)
    print(f"{len(configs)} trials in the {study}, {n_done} done, {len(todo)} to run", file=log)
    start = time.time()
    journal = _Journal(table, len(todo), provenance(), log)
    used = None
    if todo:
        if executor == "ray" and _init_ray(num_cpus, log):
            used = "ray"
            _run_ray(todo, journal, f"{study}-{budget}", num_cpus, storage)
        else:
            if executor == "ray":
                print("running the trials on a local process pool instead", file=log)
            used = "local"
            _run_local(todo, journal, num_cpus)
    df = consolidate(table) if (table.exists() or _journal_path(table).exists()) else None
    return {
        "ran": journal.finished,
        "skipped": n_done,
        "table": table,
        "rows": 0 if df is None else len(df),
        "seconds": journal.seconds,
        "wall_seconds": time.time() - start,
        "executor": used,
    }


def scalar_table(df: pd.DataFrame, metric: str, updates: int = -1) -> pd.DataFrame:
    """One row per trial: the scalar ``metric`` (step -1) as column ``value``, of the
    final model (``updates`` -1) or at the checkpoint of ``updates`` optimizer updates."""
    df = check_table(df)
    sub = df[(df["metric"] == metric) & (df["step"] == -1) & (df["updates"] == updates)]
    return sub[list(KEY_COLUMNS) + ["value"]].astype({"strategy": str}).reset_index(drop=True)


def window_table(df: pd.DataFrame, start: int, stop: int | None = None, curve: str = "test"):
    """One row per trial: the mean of ``curve`` over steps ``start <= step < stop``."""
    check_table(df)
    sub = df[(df["metric"] == curve) & (df["step"] >= start)]
    if stop is not None:
        sub = sub[sub["step"] < stop]
    out = (
        sub.groupby(list(KEY_COLUMNS), observed=True)["value"]
        .agg(lambda v: float(np.nanmean(v)) if np.isfinite(v).any() else np.nan)
        .reset_index()
    )
    return out.astype({"strategy": str})


__all__ = [
    "COLUMNS",
    "KEY_COLUMNS",
    "PROVENANCE",
    "check_table",
    "consolidate",
    "grid_configs",
    "load_results",
    "map_configs",
    "map_plan",
    "provenance",
    "results_path",
    "run_grid",
    "scalar_table",
    "strategies_for",
    "study_configs",
    "trial_rows",
    "window_table",
]
