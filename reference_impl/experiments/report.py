"""Reading a results table: provenance, per-trial values, comparisons, curves, tables.

The experiments chapter calls these on the committed table, so what it prints and
plots is computed the same way for every budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from reference_impl.experiments import stats
from reference_impl.experiments.grid import KEY_COLUMNS, check_table, scalar_table, window_table

GROUP = ("task", "framework", "cell")


def provenance_summary(df: pd.DataFrame) -> dict[str, str]:
    """What the table holds: budgets, devices, framework versions, dates, commits, and
    the number of trials and of seeds per cell (min and max)."""
    check_table(df)
    trials = df[list(KEY_COLUMNS)].drop_duplicates()
    per_cell = trials.groupby([*GROUP, "strategy"], observed=True)["seed"].nunique()
    dates = sorted(df["date"].astype(str).unique())

    def join(col: str) -> str:
        return ", ".join(sorted(df[col].astype(str).unique()))

    return {
        "budget": join("budget"),
        "device": join("device"),
        "frameworks": join("framework_version"),
        "package": join("package_version"),
        "commit": join("commit"),
        "host_cpu": join("host_cpu"),
        "first_date": dates[0][:10],
        "last_date": dates[-1][:10],
        "trials": str(len(trials)),
        "min_seeds": str(int(per_cell.min())),
        "max_seeds": str(int(per_cell.max())),
    }


def values(df: pd.DataFrame, what: str | tuple[int, int | None]) -> pd.DataFrame:
    """One value per trial: a scalar metric by name, or the mean test error over a
    window of steps ``(start, stop)`` (``stop`` None: to the end)."""
    if isinstance(what, str):
        return scalar_table(df, what)
    start, stop = what
    return window_table(df, start, stop)


def compare(
    df: pd.DataFrame,
    what: str | tuple[int, int | None],
    reference: str = "zero",
    *,
    strategies: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Every strategy against ``reference`` per (task, framework, cell), paired by seed,
    Holm-corrected within each (task, framework, cell)."""
    v = values(df, what)
    if strategies is not None:
        v = v[v["strategy"].isin([reference, *strategies])]
    if tasks is not None:
        v = v[v["task"].isin(tasks)]
    return stats.compare_to(v, reference, group=GROUP)


def ratio_ci(
    df: pd.DataFrame,
    what: str | tuple[int, int | None],
    reference: str = "zero",
    *,
    n_boot: int = 2000,
) -> pd.DataFrame:
    """Mean error of each strategy divided by the reference's mean, per (task,
    framework, cell), with a 95% bootstrap CI that resamples seeds (pairs) jointly."""
    v = values(df, what)
    rows = []
    for keys, g in v.groupby(list(GROUP), observed=True, sort=True):
        table = g.pivot_table(index="seed", columns="strategy", values="value")
        if reference not in table:
            continue
        for s in table.columns:
            both = table[[s, reference]].dropna()
            if s == reference or both.empty:
                continue
            a, b = both[s].to_numpy(), both[reference].to_numpy()
            rng = np.random.default_rng(0)
            idx = rng.integers(0, a.size, size=(n_boot, a.size))
            boots = a[idx].mean(1) / b[idx].mean(1)
            lo, hi = np.quantile(boots, [0.025, 0.975])
            rows.append(
                {
                    **dict(zip(GROUP, keys, strict=True)),
                    "strategy": s,
                    "ratio": a.mean() / b.mean(),
                    "lo": lo,
                    "hi": hi,
                    "n": a.size,
                }
            )
    return pd.DataFrame(rows)


def curves(
    df: pd.DataFrame, task: str, framework: str, cell: str, strategy: str, metric: str = "test"
) -> np.ndarray:
    """The per-step curves of one cell as a (seeds, steps) matrix (NaN where missing)."""
    sub = df[
        (df["task"] == task)
        & (df["framework"] == framework)
        & (df["cell"] == cell)
        & (df["strategy"] == strategy)
        & (df["metric"] == metric)
    ]
    if sub.empty:
        return np.empty((0, 0))
    wide = sub.pivot_table(index="seed", columns="step", values="value", dropna=False)
    return wide.to_numpy(dtype=np.float64)


def fmt_ci(est: float, lo: float, hi: float, digits: int = 3) -> str:
    """``est [lo, hi]`` rounded."""
    if not np.isfinite(est):
        return "n/a"
    return f"{est:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown_table(frame: pd.DataFrame) -> str:
    """A MyST/GitHub markdown table of a small frame (values as they are)."""
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


__all__ = [
    "compare",
    "curves",
    "fmt_ci",
    "fmt_p",
    "markdown_table",
    "provenance_summary",
    "ratio_ci",
    "values",
]
