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
ALL_STRATEGIES: tuple[str, ...] = STRATEGIES + VARIANTS
#: Variants that only make sense for one kind of task.
VARIANT_KINDS: dict[str, str] = {
    "washout": "windows",
    "data_driven": "windows",
    "stateful": "chunks",
}

__all__ = [
    "ALL_STRATEGIES",
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
