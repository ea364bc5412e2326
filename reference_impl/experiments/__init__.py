"""The experiment suite: tasks, one trainer per framework, statistics, the Ray Tune grid.

Importing this package loads no machine-learning framework (numpy only); each
``train_<framework>`` module imports its own framework when it is imported.

>>> from reference_impl import experiments as ex
>>> ex.FRAMEWORKS
('torch', 'keras', 'flax')
>>> ex.TASK_KINDS["stream_chunks"]
'chunks'
"""

from __future__ import annotations

from reference_impl import STRATEGIES

#: Every task the suite knows, with its data layout ("windows" or "chunks").
TASK_KINDS: dict[str, str] = {
    "variable_start": "windows",
    "sunspots": "windows",
    "co2": "windows",
    "long_control": "windows",
    "stream_chunks": "chunks",
    "fixed_start": "windows",
}

# ---------------------------------------------------------------------- the map of regimes
#: Start distributions of the map: the true state before the first input is drawn per
#: sequence from N(mu, s^2), mu and s in units of the system's stationary state spread.
MAP_MEANS: tuple[float, ...] = (0.0, 1.0, 3.0)
MAP_SPREADS: tuple[float, ...] = (0.0, 0.5, 1.0, 3.0)
#: Sequence lengths of the map's length sweep, for a zero-mean start (mu 0, s 1: the
#: stationary distribution) and a constant non-zero start (mu 3, s 0).
MAP_LENGTHS: tuple[int, ...] = (5, 10, 20, 50, 100, 200)
LENGTH_STARTS: tuple[tuple[float, float], ...] = ((0.0, 1.0), (3.0, 0.0))


def _num(v: float) -> str:
    return f"{v:g}"


def start_task(mean: float, spread: float) -> str:
    """The name of the map task with start N(mean, spread^2) (stationary-spread units).

    >>> start_task(3, 0.5)
    'start_m3_s0.5'
    """
    return f"start_m{_num(mean)}_s{_num(spread)}"


def length_task(mean: float, spread: float, steps: int) -> str:
    """The name of the length-sweep task with ``steps`` steps.

    >>> length_task(0, 1, 50)
    'length_m0_s1_T50'
    """
    return f"{start_task(mean, spread).replace('start_', 'length_')}_T{int(steps)}"


MAP_START_TASKS: tuple[str, ...] = tuple(start_task(m, s) for m in MAP_MEANS for s in MAP_SPREADS)
#: The four corners of the map (run in every framework).
MAP_CORNERS: tuple[str, ...] = tuple(
    start_task(m, s)
    for m in (MAP_MEANS[0], MAP_MEANS[-1])
    for s in (MAP_SPREADS[0], MAP_SPREADS[-1])
)
LENGTH_TASKS: tuple[str, ...] = tuple(
    length_task(m, s, t) for m, s in LENGTH_STARTS for t in MAP_LENGTHS
)
#: Real series with a shared start (sequences aligned to the calendar) and, for CO2, the
#: same data cut at random offsets (a variable start).
REAL_MAP_TASKS: tuple[str, ...] = ("elnino_years", "co2_years", "co2_windows")
TASK_KINDS.update({t: "windows" for t in (*MAP_START_TASKS, *LENGTH_TASKS, *REAL_MAP_TASKS)})
MAP_TASKS: tuple[str, ...] = (*MAP_START_TASKS, *LENGTH_TASKS, *REAL_MAP_TASKS)
TASKS: tuple[str, ...] = tuple(TASK_KINDS)
#: The tasks of the standard and full grids (``fixed_start`` is kept for contrast).
GRID_TASKS: tuple[str, ...] = (
    "variable_start",
    "sunspots",
    "co2",
    "long_control",
    "stream_chunks",
)
FRAMEWORKS: tuple[str, ...] = ("torch", "keras", "flax")
CELLS: tuple[str, ...] = ("gru", "lstm")
BUDGETS: tuple[str, ...] = ("quick", "standard", "full")
#: Baselines and regimes beside the five strategies: ``washout`` (the first k steps
#: are left out of the loss and of the evaluation), ``data_driven`` (a small MLP maps
#: the first k observations to the initial state; Mohajerin & Waslander), both for
#: "windows" tasks and PyTorch only in the grid; ``stateful`` (carry the final state of
#: one chunk into the next) for "chunks" tasks.
VARIANTS: tuple[str, ...] = ("washout", "data_driven", "stateful")
#: The map's sweep of the training noise: ``noisy`` (a learnable base) with another fixed
#: sigma than the grid's 0.2, in units of the state (whose entries lie in (-1, 1)).
NOISE_SWEEP: dict[str, float] = {"noisy_0.05": 0.05, "noisy_0.5": 0.5, "noisy_1": 1.0}
VARIANTS = (*VARIANTS, *NOISE_SWEEP)
ALL_STRATEGIES: tuple[str, ...] = STRATEGIES + VARIANTS
#: Variants that only make sense for one kind of task.
VARIANT_KINDS: dict[str, str] = {
    "washout": "windows",
    "data_driven": "windows",
    "stateful": "chunks",
    **{name: "windows" for name in NOISE_SWEEP},
}

__all__ = [
    "ALL_STRATEGIES",
    "LENGTH_TASKS",
    "MAP_CORNERS",
    "MAP_START_TASKS",
    "MAP_TASKS",
    "NOISE_SWEEP",
    "REAL_MAP_TASKS",
    "BUDGETS",
    "CELLS",
    "FRAMEWORKS",
    "GRID_TASKS",
    "STRATEGIES",
    "TASKS",
    "TASK_KINDS",
    "VARIANTS",
    "VARIANT_KINDS",
]
