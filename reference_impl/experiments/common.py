"""What every trainer shares: the trial configuration, the budgets, batch order, metrics.

numpy only. Each ``train_<framework>.run_trial`` validates its config with
:meth:`TrialConfig.from_dict`, takes its sizes from :func:`budget_settings`, draws its
batch order with :func:`epoch_batches` and computes its scalars with :func:`summarize`,
so the three frameworks run the same experiment.

>>> cfg = TrialConfig.from_dict(
...     {"task": "co2", "framework": "torch", "cell": "gru", "strategy": "zero",
...      "seed": 0, "budget": "quick"})
>>> cfg.kind, budget_settings("quick", "co2")["hidden"]
('windows', 8)
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from reference_impl.experiments import (
    ALL_STRATEGIES,
    BUDGETS,
    CELLS,
    FRAMEWORKS,
    MAP_TASKS,
    NOISE_SWEEP,
    REAL_MAP_TASKS,
    TASK_KINDS,
    TASKS,
    VARIANT_KINDS,
)

#: Perturbation scales of the start, in units of the rms of that state component.
PERTURB_SCALES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
#: "First steps": the test error averaged over steps 0..FIRST_STEPS-1.
FIRST_STEPS = 3
#: Seeds per cell of the grid, per budget.
SEEDS: dict[str, int] = {"quick": 2, "standard": 10, "full": 20}

#: Strategy options used by every framework (random strategies also get ``seed``).
#: noisy: a learnable base plus training noise of fixed sigma, as Zimmermann, Tietz &
#: Grothmann (2012) use it.
STRATEGY_OPTIONS: dict[str, dict[str, Any]] = {
    "zero": {},
    "uniform": {},
    "xavier": {},
    "learnable": {},
    "noisy": {"base": "learnable", "noise_std": 0.2},
}
#: The package strategy a variant runs with: washout and stateful (chunk 0) start from
#: zeros; data_driven replaces the start by its initializer's output.
VARIANT_BASE: dict[str, str] = {
    "washout": "zero",
    "data_driven": "zero",
    "stateful": "zero",
    **{name: "noisy" for name in NOISE_SWEEP},
}

#: The task name (before ``:<fingerprint>``) and budget of a trial on a reader's data.
CUSTOM_TASK = "custom"

REQUIRED_KEYS = ("task", "framework", "cell", "strategy", "seed", "budget")


def _check_name(kind: str, value: Any, known: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in known:
        shown = list(known) if len(known) <= 8 else [*known[:6], "..."]
        raise ValueError(f"unknown {kind} {value!r}; expected one of {shown}")
    return value


def check_task(name: Any) -> str:
    """Return ``name`` if it is a known task, else raise ValueError naming the known ones."""
    return _check_name("task", name, TASKS)


def check_budget(name: Any) -> str:
    """Return ``name`` if it is a known budget, else raise ValueError."""
    return _check_name("budget", name, BUDGETS)


def check_framework(name: Any) -> str:
    """Return ``name`` if it is a known framework, else raise ValueError."""
    return _check_name("framework", name, FRAMEWORKS)


def check_strategy(name: Any) -> str:
    """Return ``name`` if it is a strategy or a variant, else raise ValueError."""
    return _check_name("strategy", name, ALL_STRATEGIES)


@dataclasses.dataclass(frozen=True)
class TrialConfig:
    """One trial: a (task, framework, cell, strategy, seed) at a budget."""

    task: str
    framework: str
    cell: str
    strategy: str
    seed: int
    budget: str

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> TrialConfig:
        """Validate a config dict (extra keys are ignored) and return the trial.

        >>> TrialConfig.from_dict({"task": "nope"})
        Traceback (most recent call last):
        ...
        ValueError: trial config lacks key(s) ['budget', 'cell', 'framework', 'seed', 'strategy']
        """
        if not isinstance(config, dict):
            raise TypeError(f"a trial config is a dict; got {type(config).__name__}")
        missing = sorted(set(REQUIRED_KEYS) - set(config))
        if missing:
            raise ValueError(f"trial config lacks key(s) {missing}")
        task = check_task(config["task"])
        strategy = check_strategy(config["strategy"])
        need = VARIANT_KINDS.get(strategy)
        if need is not None and TASK_KINDS[task] != need:
            raise ValueError(
                f"strategy {strategy!r} needs a {need!r} task; task {task!r} is "
                f"{TASK_KINDS[task]!r}"
            )
        seed = config["seed"]
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
        return cls(
            task=task,
            framework=check_framework(config["framework"]),
            cell=_check_name("cell", config["cell"], CELLS),
            strategy=strategy,
            seed=int(seed),
            budget=check_budget(config["budget"]),
        )

    @classmethod
    def custom(
        cls, fingerprint: str, framework: str, cell: str, strategy: str, seed: int
    ) -> TrialConfig:
        """A trial on a reader's own data (``reference_impl.compare``): the task is
        ``custom:<fingerprint>`` (windows; the data travel beside the config) and the
        budget ``custom`` (the sizes are the caller's).

        >>> TrialConfig.custom("ab12", "torch", "gru", "learnable", 0).key
        'custom:ab12/torch/gru/learnable/0/custom'
        """
        if strategy not in STRATEGY_OPTIONS:
            check_strategy(strategy)
            raise ValueError(f"strategy {strategy!r} runs on the suite's own tasks only")
        seed_ok = not isinstance(seed, bool) and isinstance(seed, (int, np.integer))
        if not seed_ok or seed < 0:
            raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
        return cls(
            task=f"{CUSTOM_TASK}:{fingerprint}",
            framework=check_framework(framework),
            cell=_check_name("cell", cell, CELLS),
            strategy=strategy,
            seed=int(seed),
            budget=CUSTOM_TASK,
        )

    @property
    def kind(self) -> str:
        """ "windows" or "chunks" (a reader's own data: windows)."""
        if self.task.startswith(f"{CUSTOM_TASK}:"):
            return "windows"
        return TASK_KINDS[self.task]

    @property
    def base_strategy(self) -> str:
        """The package strategy the model is built with (variants map to ``zero``)."""
        return VARIANT_BASE.get(self.strategy, self.strategy)

    def strategy_options(self) -> dict[str, Any]:
        """Keyword options for ``InitialStateRNN`` (seeded where the strategy draws)."""
        base = self.base_strategy
        opts = dict(STRATEGY_OPTIONS[base])
        if self.strategy in NOISE_SWEEP:
            opts["noise_std"] = NOISE_SWEEP[self.strategy]
        if base in ("uniform", "xavier", "noisy"):
            opts["seed"] = self.seed
        return opts

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def key(self) -> str:
        """A stable identifier, used to skip trials that are already done."""
        return "/".join(
            str(v)
            for v in (self.task, self.framework, self.cell, self.strategy, self.seed, self.budget)
        )


# ---------------------------------------------------------------------- budgets

# Training sizes, identical for every framework. The task sizes (number of
# sequences, steps) are read by tasks.load_task.
_TRAIN = {
    "quick": {"hidden": 8, "batch_size": 32, "lr": 0.01, "max_epochs": 3, "patience": 2},
    "standard": {"hidden": 16, "batch_size": 32, "lr": 0.02, "max_epochs": 20, "patience": 5},
    "full": {"hidden": 32, "batch_size": 32, "lr": 0.005, "max_epochs": 200, "patience": 20},
}
_TASK_SIZES: dict[str, dict[str, dict[str, int]]] = {
    "quick": {
        "variable_start": {"n_train": 64, "n_val": 32, "n_test": 32, "steps": 20},
        "long_control": {"n_train": 32, "n_val": 16, "n_test": 16, "steps": 200},
        "fixed_start": {"n_train": 64, "n_val": 32, "n_test": 32, "steps": 20},
        "stream_chunks": {"n_train": 8, "n_val": 4, "n_test": 4, "chunks": 4, "chunk_len": 10},
        "sunspots": {"steps": 20, "stride": 2},
        "co2": {"steps": 24, "stride": 4},
    },
    "standard": {
        "variable_start": {"n_train": 128, "n_val": 64, "n_test": 128, "steps": 30},
        "long_control": {"n_train": 32, "n_val": 16, "n_test": 32, "steps": 200},
        "fixed_start": {"n_train": 128, "n_val": 64, "n_test": 128, "steps": 20},
        "stream_chunks": {"n_train": 16, "n_val": 8, "n_test": 16, "chunks": 6, "chunk_len": 20},
        "sunspots": {"steps": 20, "stride": 2},
        "co2": {"steps": 24, "stride": 3},
    },
    "full": {
        "variable_start": {"n_train": 2048, "n_val": 256, "n_test": 512, "steps": 40},
        "long_control": {"n_train": 512, "n_val": 128, "n_test": 256, "steps": 300},
        "fixed_start": {"n_train": 1024, "n_val": 256, "n_test": 512, "steps": 20},
        "stream_chunks": {
            "n_train": 128,
            "n_val": 32,
            "n_test": 64,
            "chunks": 16,
            "chunk_len": 20,
        },
        "sunspots": {"steps": 20, "stride": 1},
        "co2": {"steps": 24, "stride": 1},
    },
}


# The map of regimes trains by optimizer updates, not epochs, and records the test error
# at checkpoints on the way (``checkpoints``: update counts; each is taken at the end of
# the first epoch that reaches it). No early stopping: the model of the checkpoint with
# the lowest validation error is the trial's final model, the others give the budget
# curves.
_MAP_TRAIN = {
    "quick": {"hidden": 8, "batch_size": 32, "lr": 0.01, "checkpoints": (8, 16)},
    "standard": {
        "hidden": 16,
        "batch_size": 32,
        "lr": 0.01,
        "checkpoints": (50, 100, 200, 400, 800),
    },
    "full": {
        "hidden": 32,
        "batch_size": 32,
        "lr": 0.005,
        "checkpoints": (50, 100, 200, 500, 1000, 2000, 4000),
    },
}
#: The length sweep stops earlier at the CPU budget (a 200-step sequence costs ten
#: times a 20-step one per update).
_LENGTH_CHECKPOINTS = {"quick": (8, 16), "standard": (50, 100, 200, 400), "full": None}
_MAP_SIZES = {
    "quick": {"n_train": 64, "n_val": 32, "n_test": 32, "steps": 20},
    "standard": {"n_train": 256, "n_val": 64, "n_test": 256, "steps": 20},
    "full": {"n_train": 1024, "n_val": 256, "n_test": 512, "steps": 20},
}


def _map_settings(budget: str, task: str) -> dict[str, Any]:
    train = dict(_MAP_TRAIN[budget])
    sizes = dict(_MAP_SIZES[budget])
    if task in REAL_MAP_TASKS:  # sizes come from the series; test sequences are resampled
        sizes = {"per_sequence": True}
    if task.startswith("length_"):
        sizes["steps"] = int(task.rsplit("_T", 1)[1])
        if _LENGTH_CHECKPOINTS[budget] is not None:
            train["checkpoints"] = _LENGTH_CHECKPOINTS[budget]
    return {**train, **sizes, "max_epochs": None, "patience": None, "seeds": SEEDS[budget]}


def budget_settings(budget: str, task: str) -> dict[str, Any]:
    """Sizes for one task at one budget: training (``hidden``, ``batch_size``, ``lr``,
    ``max_epochs``, ``patience``; the map's tasks ``checkpoints`` instead of the last
    two) and data (``n_train``, ``steps``, ...), plus ``seeds``.

    >>> s = budget_settings("standard", "variable_start")
    >>> s["hidden"], s["seeds"], s["steps"]
    (16, 10, 30)
    >>> budget_settings("standard", "length_m0_s1_T50")["checkpoints"]
    (50, 100, 200, 400)
    """
    check_budget(budget)
    check_task(task)
    if task in MAP_TASKS:
        return _map_settings(budget, task)
    return {**_TRAIN[budget], **_TASK_SIZES[budget][task], "seeds": SEEDS[budget]}


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """When a trainer validates, records a checkpoint and stops (one for every framework).

    Epoch-based (``checkpoints`` empty): validate after every epoch, stop ``patience``
    epochs after the best one or at ``epochs``. Update-based (the map): validate only at
    the checkpoints (``{epoch: updates done by its end}``), never stop early.
    """

    epochs: int
    checkpoints: dict[int, int]
    patience: int | None

    def evaluates(self, epoch: int) -> bool:
        return not self.checkpoints or epoch in self.checkpoints

    def stops(self, epoch: int, best_epoch: int) -> bool:
        return self.patience is not None and epoch - best_epoch >= self.patience


def training_plan(settings: dict[str, Any], n_train: int) -> TrainingPlan:
    """The :class:`TrainingPlan` of a budget's ``settings`` for ``n_train`` training rows
    (sequences, or streams of chunks: one update per batch of rows and chunk).

    >>> p = training_plan({"checkpoints": (50, 100), "batch_size": 32}, 256)
    >>> p.epochs, p.checkpoints
    (13, {6: 56, 12: 104})
    """
    if settings.get("checkpoints"):
        per_epoch = -(-int(n_train) // int(settings["batch_size"]))
        plan = checkpoint_epochs(tuple(settings["checkpoints"]), per_epoch)
        return TrainingPlan(epochs=max(plan) + 1, checkpoints=plan, patience=None)
    return TrainingPlan(
        epochs=int(settings["max_epochs"]), checkpoints={}, patience=int(settings["patience"])
    )


def checkpoint_record(updates: int, val: float, test_curve: Any) -> dict[str, float]:
    """One checkpoint of a trial: the updates done, the validation MSE, and the test
    scalars of :func:`summarize` at that point.

    >>> checkpoint_record(56, 0.5, [1.0, 1.0, 1.0, 0.0])["all_mse"]
    0.75
    """
    return {"updates": int(updates), "val": float(val), **summarize({"test": list(test_curve)})}


def checkpoint_epochs(checkpoints: tuple[int, ...], updates_per_epoch: int) -> dict[int, int]:
    """The epoch (0-based) at whose end each checkpoint is taken, and the updates done by then.

    >>> checkpoint_epochs((50, 100), 8)
    {6: 56, 12: 104}
    """
    if updates_per_epoch < 1:
        raise ValueError(f"updates_per_epoch must be >= 1; got {updates_per_epoch}")
    out: dict[int, int] = {}
    for c in sorted(checkpoints):
        epoch = -(-int(c) // updates_per_epoch) - 1
        out[epoch] = (epoch + 1) * updates_per_epoch
    return out


# ---------------------------------------------------------------------- batch order


def batch_rng(seed: int) -> np.random.Generator:
    """The generator every trainer draws its batch order from (one per trial)."""
    return np.random.default_rng([int(seed), 20240601])


def epoch_batches(rng: np.random.Generator, n: int, batch_size: int) -> list[np.ndarray]:
    """Indices of the batches of one epoch: a permutation of ``range(n)`` cut in order.

    For "chunks" tasks the indices pick streams; a trainer walks each batch of streams
    through the chunks in order.

    >>> [b.tolist() for b in epoch_batches(np.random.default_rng(0), 5, 2)]
    [[2, 4], [3, 0], [1]]
    """
    perm = rng.permutation(n)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def perturb_noise(seed: int, scale_index: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal noise for the perturbed-start evaluation (float32).

    Multiply by ``PERTURB_SCALES[scale_index] * rms`` of each state component (h, and c
    for an LSTM: the same draw, scaled by each component's rms) and add it to the
    model's own start; ``shape = (n_test, hidden)`` for windows or
    ``(n_test_streams, chunks, hidden)`` for chunks (one draw per chunk start).
    """
    rng = np.random.default_rng([int(seed), 7919, int(scale_index), len(shape), *shape])
    return rng.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------- metrics


def per_step_mse(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """MSE per time step of "windows" ``(N, T, 1)`` or "chunks" ``(S, C, L, 1)`` arrays.

    For chunks the error is averaged over streams and chunks: one value per step
    within a chunk.

    >>> per_step_mse(np.ones((2, 3, 1)), np.zeros((2, 3, 1))).tolist()
    [1.0, 1.0, 1.0]
    """
    p, t = np.asarray(prediction, np.float64), np.asarray(target, np.float64)
    if p.shape != t.shape:
        raise ValueError(f"shapes differ: prediction {p.shape}, target {t.shape}")
    if p.ndim == 3:
        return ((p - t) ** 2).mean(axis=(0, 2))
    if p.ndim == 4:
        return ((p - t) ** 2).mean(axis=(0, 1, 3))
    raise ValueError(f"expected (N, T, 1) or (S, C, L, 1) arrays; got {p.shape}")


def per_step_error(prediction: np.ndarray, target: np.ndarray, classes: int = 0) -> np.ndarray:
    """Error per time step of "windows" arrays: the MSE (``classes`` 0, as
    :func:`per_step_mse`) or, for ``classes`` C > 0, the cross-entropy of the logits
    ``prediction`` ``(N, T, C)`` against the class indices ``target`` ``(N, T, 1)``.

    >>> per_step_error(np.zeros((1, 2, 2)), np.zeros((1, 2, 1)), classes=2).round(4).tolist()
    [0.6931, 0.6931]
    """
    if not classes:
        return per_step_mse(prediction, target)
    logits = np.asarray(prediction, np.float64)
    labels = np.asarray(target)[..., 0].astype(np.int64)
    if logits.ndim != 3 or logits.shape[:2] != labels.shape or logits.shape[-1] != classes:
        raise ValueError(
            f"expected logits (N, T, {classes}) and labels (N, T, 1); got {logits.shape}, "
            f"{np.shape(target)}"
        )
    top = logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
    picked = np.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return (log_z - picked).mean(axis=0)


def window_mean(curve: Any, steps: tuple[int, int] | None) -> float:
    """Mean of a per-step curve over the half-open step range ``steps`` (None: all steps).

    >>> window_mean([1.0, 2.0, 3.0], (1, 3))
    2.5
    """
    c = np.asarray(curve, np.float64)
    if steps is not None:
        c = c[steps[0] : steps[1]]
    return float(np.nanmean(c))


def summarize(curves: dict[str, list[float]]) -> dict[str, float]:
    """Scalars every trainer reports from its test curve: ``first_mse`` (steps
    0..FIRST_STEPS-1), ``all_mse`` (all steps), ``late_mse`` (the last half).

    Steps a variant does not predict (washout, data_driven: the first k) are NaN in
    the curve and left out of the means (a mean of none is NaN).

    >>> summarize({"test": [4.0, 2.0, 0.0, 1.0, 1.0, 1.0]})
    {'first_mse': 2.0, 'all_mse': 1.5, 'late_mse': 1.0}
    """
    test = np.asarray(curves["test"], np.float64)
    if test.ndim != 1 or test.size == 0:
        raise ValueError(f"the test curve must be a non-empty list of floats; got {test.shape}")

    def mean(a: np.ndarray) -> float:
        a = a[np.isfinite(a)]
        return float(a.mean()) if a.size else float("nan")

    return {
        "first_mse": mean(test[:FIRST_STEPS]),
        "all_mse": mean(test),
        "late_mse": mean(test[test.size // 2 :]),
    }


def sequence_curves(prediction: np.ndarray, target: np.ndarray, first: int = 0) -> dict:
    """Per test sequence: ``seq_first`` (steps 0..FIRST_STEPS-1) and ``seq_all`` (all
    steps), as lists indexed by sequence, for resampling test sequences as blocks.

    ``prediction`` may be shorter in time than ``target`` (a variant that predicts from
    step k): it is aligned to the end; steps before ``first`` do not count.

    >>> sequence_curves(np.ones((2, 4, 1)), np.zeros((2, 4, 1)))["seq_all"]
    [1.0, 1.0]
    """
    p = np.full(target.shape, np.nan)
    p[:, target.shape[1] - prediction.shape[1] :] = prediction
    p[:, :first] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a sequence with no step counted
        return {
            "seq_first": per_sequence_mse(p, target, stop=FIRST_STEPS).tolist(),
            "seq_all": per_sequence_mse(p, target).tolist(),
        }


def per_sequence_mse(prediction: np.ndarray, target: np.ndarray, stop: int | None = None):
    """MSE of each sequence of "windows" arrays ``(N, T, 1)`` over steps ``0..stop-1``
    (NaN steps, which a variant does not predict, left out).

    >>> per_sequence_mse(np.ones((2, 3, 1)), np.zeros((2, 3, 1)), stop=2).tolist()
    [1.0, 1.0]
    """
    p, t = np.asarray(prediction, np.float64), np.asarray(target, np.float64)
    if p.shape != t.shape or p.ndim != 3:
        raise ValueError(f"expected two (N, T, 1) arrays; got {p.shape}, {t.shape}")
    err = ((p - t) ** 2).mean(axis=2)[:, :stop]
    return np.nanmean(err, axis=1)


def state_rms(states: np.ndarray) -> float:
    """Root mean square of a state component over every sequence, step and unit."""
    s = np.asarray(states, np.float64)
    return float(np.sqrt(np.mean(s**2)))
