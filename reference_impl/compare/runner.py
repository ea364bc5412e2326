"""Running a comparison's trials: in this process, on a local process pool, or on Ray
Tune, each finished trial appended at once to a results file that a later call resumes.

The results file holds JSON lines: a header (the data's fingerprint and shape, the
training settings, the provenance of the run that started it), then one line per
finished trial (its config, its per-step test error, its training record and the
framework version and device that produced it). Reading it back skips the trials it
holds; a header for other data or other training settings is refused.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reference_impl.experiments.common import TrialConfig

EXECUTORS = ("ray", "processes", "inline")

#: What each framework's trainer imports, and the extra that installs it.
FRAMEWORK_NEEDS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "torch": (("torch",), "PyTorch", '"initial-states[torch]"'),
    "keras": (("tensorflow", "keras"), "Keras 3 on TensorFlow", '"initial-states[tensorflow]"'),
    "flax": (("jax", "flax", "optax"), "JAX, Flax and optax", '"initial-states[flax]"'),
}
#: The settings of the header that must match to resume (the data's fingerprint apart).
SETTING_KEYS = ("hidden", "batch_size", "lr", "max_epochs", "patience", "loss_steps")


def check_installed(framework: str) -> None:
    """Raise ModuleNotFoundError naming the extra when ``framework`` is not installed."""
    modules, what, extra = FRAMEWORK_NEEDS[framework]
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(
                f"framework {framework!r} needs {what}: module {module!r} is not installed. "
                f"Install it with: pip install {extra}",
                name=module,
            )


def trial_key(cfg: dict[str, Any]) -> tuple:
    return (cfg["framework"], cfg["cell"], cfg["strategy"], int(cfg["seed"]))


def run_trial(cfg: dict[str, Any], settings: dict[str, Any], data: Any) -> dict[str, Any]:
    """Train and evaluate one trial with its framework's trainer; a JSON-ready record."""
    want = int(os.environ.get("EXPERIMENTS_NICE", "0"))
    if os.getpriority(os.PRIO_PROCESS, 0) < want:  # never run trials above the caller
        os.setpriority(os.PRIO_PROCESS, 0, want)
    trial = TrialConfig.custom(
        cfg["fingerprint"], cfg["framework"], cfg["cell"], cfg["strategy"], cfg["seed"]
    )
    module = importlib.import_module(f"reference_impl.experiments.train_{trial.framework}")
    start = time.perf_counter()
    out = module._run(trial, settings, data)
    return {
        "config": {k: cfg[k] for k in ("framework", "cell", "strategy", "seed")},
        "test": out["curves"]["test"],
        "val_by_epoch": out["curves"]["val_by_epoch"],
        "epochs": int(out["scalars"]["epochs"]),
        "best_epoch": int(out["scalars"]["best_epoch"]),
        "seconds": time.perf_counter() - start,
        "framework_version": out["framework_version"],
        "device": out["device"],
    }


class ResultsFile:
    """The JSON-lines results file of one comparison (see the module docstring)."""

    def __init__(self, path: str | os.PathLike | None, header: dict[str, Any]) -> None:
        self.path = None if path is None else Path(path)
        self.header = header
        self.records: list[dict[str, Any]] = []
        if self.path is not None and self.path.exists() and self.path.stat().st_size:
            self._read()
        elif self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"header": header}) + "\n")

    def _read(self) -> None:
        lines = self.path.read_text().splitlines()
        try:
            head = json.loads(lines[0])["header"]
        except (json.JSONDecodeError, KeyError, TypeError, IndexError) as err:
            raise ValueError(
                f"{self.path} is not a comparison's results file (no header line); pass "
                f"another results path"
            ) from err
        if head.get("fingerprint") != self.header["fingerprint"]:
            raise ValueError(
                f"{self.path} holds the results of another data set (fingerprint "
                f"{head.get('fingerprint')} of {head.get('data')!r}; this data: "
                f"{self.header['fingerprint']} of {self.header['data']!r}). Pass another "
                f"results path, or delete that file to start over"
            )
        mine, theirs = self.header["settings"], head.get("settings", {})
        differ = [k for k in SETTING_KEYS if mine.get(k) != theirs.get(k)]
        if differ:
            shown = ", ".join(f"{k}={theirs.get(k)!r} (now {mine.get(k)!r})" for k in differ)
            raise ValueError(
                f"{self.path} was written with other training settings: {shown}. Pass the "
                f"same settings to resume, or another results path"
            )
        for line in lines[1:]:
            try:
                self.records.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by an interruption
                continue

    def done(self) -> set[tuple]:
        return {trial_key(r["config"]) for r in self.records}

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.path is None:
            return
        data = self.path.read_bytes()
        torn = bool(data) and not data.endswith(b"\n")
        with self.path.open("a") as f:
            # One line per trial: an interruption tears at most the last line.
            f.write(("\n" if torn else "") + json.dumps(record) + "\n")


class Progress:
    """One line per finished trial: a bar, the trial, its error, elapsed time and ETA."""

    def __init__(self, total: int, log: Any = sys.stdout, width: int = 20) -> None:
        self.total, self.log, self.width = total, log, width
        self.finished = 0
        self.start = time.time()

    def __call__(self, record: dict[str, Any], value: float) -> None:
        self.finished += 1
        if self.log is None:
            return
        elapsed = time.time() - self.start
        eta = elapsed / self.finished * (self.total - self.finished)
        full = round(self.width * self.finished / self.total)
        c = record["config"]
        print(
            f"[{'#' * full}{'.' * (self.width - full)}] {self.finished}/{self.total} "
            f"{c['framework']}/{c['cell']}/{c['strategy']}/seed {c['seed']}: error {value:.4g} "
            f"({record['seconds']:.1f} s; elapsed {elapsed:.0f} s, left ~{eta:.0f} s)",
            file=self.log,
            flush=True,
        )


def _trainable(config: dict[str, Any], settings=None, data=None) -> dict[str, Any]:
    """The Ray Tune function trainable (the data come through the object store)."""
    return {"payload": json.dumps(run_trial(config["trial"], settings, data))}


def execute(
    todo: list[dict[str, Any]],
    settings: dict[str, Any],
    data: Any,
    on_record: Callable[[dict[str, Any]], None],
    executor: str,
    num_cpus: int | None,
    log: Any = sys.stdout,
) -> str:
    """Run ``todo``; ``on_record`` gets each finished trial's record as it comes.
    Returns the executor used (Ray falls back to the process pool if it cannot start)."""
    if not todo:
        return "none"
    if executor == "inline":
        for cfg in todo:
            on_record(run_trial(cfg, settings, data))
        return "inline"
    if executor == "ray":
        if importlib.util.find_spec("ray") is None:
            print("Ray is not installed: the trials run on a local process pool", file=log)
        else:
            from reference_impl.experiments.grid import _init_ray

            if _init_ray(num_cpus, log):
                _run_ray(todo, settings, data, on_record)
                return "ray"
            print("running the trials on a local process pool instead", file=log)
    _run_processes(todo, settings, data, on_record, num_cpus)
    return "processes"


def _run_processes(todo, settings, data, on_record, num_cpus) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    os.environ["EXPERIMENTS_NICE"] = str(os.getpriority(os.PRIO_PROCESS, 0))
    workers = min(len(todo), num_cpus or os.cpu_count() or 1)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(run_trial, cfg, settings, data) for cfg in todo]
        for fut in as_completed(futures):
            on_record(fut.result())


def _run_ray(todo, settings, data, on_record) -> None:
    import ray
    from ray import tune

    gpus = ray.cluster_resources().get("GPU", 0)
    resources = {"cpu": 1, "gpu": 0.25} if gpus else {"cpu": 1}
    storage = Path(
        os.environ.get("EXPERIMENTS_RAY_STORAGE")
        or Path.home() / ".cache" / "reference_impl" / "ray_results"
    )

    class _Callback(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "payload" in result:
                on_record(json.loads(result["payload"]))

    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(_trainable, settings=settings, data=data), resources
        ),
        param_space={"trial": tune.grid_search(todo)},
        tune_config=tune.TuneConfig(reuse_actors=True, num_samples=1),
        run_config=tune.RunConfig(
            name=f"compare-{int(time.time())}",
            storage_path=str(storage.resolve()),
            callbacks=[_Callback()],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )
    tuner.fit()


__all__ = ["EXECUTORS", "FRAMEWORK_NEEDS", "ResultsFile", "check_installed", "execute", "run_trial"]
