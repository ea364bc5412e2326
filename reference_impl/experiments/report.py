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


def values(df: pd.DataFrame, what: str | tuple[int, int | None], updates: int = -1) -> pd.DataFrame:
    """One value per trial: a scalar metric by name (of the final model, or at the
    checkpoint of ``updates`` optimizer updates), or the mean test error over a window of
    steps ``(start, stop)`` (``stop`` None: to the end)."""
    if isinstance(what, str):
        return scalar_table(df, what, updates)
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
    rows = []
    for group, s, a, b in _paired(values(df, what), reference):
        if a.size == 0:
            continue
        ratio, lo, hi = stats.ratio_of_means(a, b, n_boot=n_boot)
        rows.append({**group, "strategy": s, "ratio": ratio, "lo": lo, "hi": hi, "n": a.size})
    return pd.DataFrame(rows)


def _paired(values_: pd.DataFrame, reference: str):
    """Per (task, framework, cell) and strategy other than ``reference``: the group's keys
    as a dict, the strategy, and its and the reference's values paired by seed."""
    for keys, g in values_.groupby(list(GROUP), observed=True, sort=True):
        table = g.pivot_table(index="seed", columns="strategy", values="value")
        if reference not in table:
            continue
        for s in table.columns:
            if s != reference:
                both = table[[s, reference]].dropna()
                group = dict(zip(GROUP, keys, strict=True))
                yield group, s, both[s].to_numpy(), both[reference].to_numpy()


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
    "MARGIN",
    "checkpoints",
    "compare",
    "curves",
    "fmt_ci",
    "fmt_p",
    "map_compare",
    "markdown_table",
    "pool_frameworks",
    "provenance_summary",
    "ratio_ci",
    "values",
]


# ---------------------------------------------------------------------- the map of regimes

#: The equivalence margin of every "no difference" the book states: +-5% of zero's error.
MARGIN = 0.05


def checkpoints(df: pd.DataFrame, task: str) -> list[int]:
    """The checkpoints (optimizer updates) recorded for ``task``, in order."""
    df = check_table(df)
    sub = df[(df["task"] == task) & (df["updates"] >= 0)]
    return sorted(int(u) for u in sub["updates"].unique())


def map_compare(
    values_: pd.DataFrame,
    reference: str = "zero",
    *,
    margin: float = MARGIN,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Every strategy against ``reference`` per (task, framework, cell), paired by seed.

    One row each: ``n`` pairs, ``ratio`` (ratio of mean errors) with its 95% bootstrap
    CI ``lo``/``hi``, ``p`` (Wilcoxon signed-rank), ``p_equiv`` (:func:`stats.tost`
    within ``margin`` of the reference's mean error), each corrected two ways: Holm
    within a (task, framework, cell) family (``p_holm``, ``p_equiv_holm``) and
    Benjamini-Hochberg over every comparison of the table (``p_fdr``, ``p_equiv_fdr``),
    and the ``verdict`` (:func:`stats.verdict`) from the Holm-corrected values.
    """
    rows = []
    for group, s, a, b in _paired(values_, reference):
        est, lo, hi = stats.ratio_of_means(a, b)
        rows.append(
            {
                **group,
                "strategy": s,
                "n": int(a.size),
                "ratio": est,
                "lo": lo,
                "hi": hi,
                "p": stats.paired_test(a, b),
                "p_equiv": stats.tost(a, b, margin) if a.size > 1 else np.nan,
            }
        )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    fam = out.groupby(list(GROUP), sort=False)
    out["p_holm"] = fam["p"].transform(lambda p: stats.holm(p.to_numpy()))
    out["p_equiv_holm"] = fam["p_equiv"].transform(lambda p: stats.holm(p.to_numpy()))
    out["p_fdr"] = stats.fdr_bh(out["p"].to_numpy())
    out["p_equiv_fdr"] = stats.fdr_bh(out["p_equiv"].to_numpy())
    out["verdict"] = [
        stats.verdict(r.p_holm, r.lo, r.hi, r.p_equiv_holm, alpha) for r in out.itertuples()
    ]
    return out


def pool_frameworks(
    values_: pd.DataFrame, comparison: pd.DataFrame, reference: str = "zero"
) -> pd.DataFrame:
    """Per (task, cell, strategy): the frameworks' ratios pooled as a geometric mean with
    a bootstrap CI (:func:`stats.geometric_mean_ratio`), the frameworks it pools, and
    whether their verdicts agree (``agree``; ``verdict`` is the common one, else
    "frameworks disagree")."""
    pairs = {
        (group["task"], group["framework"], group["cell"], s): (a, b)
        for group, s, a, b in _paired(values_, reference)
    }
    rows = []
    for (task, cell, s), g in comparison.groupby(["task", "cell", "strategy"], sort=True):
        groups = [pairs[task, f, cell, s] for f in sorted(g["framework"])]
        est, lo, hi = stats.geometric_mean_ratio(groups)
        verdicts = set(g["verdict"])
        rows.append(
            {
                "task": task,
                "cell": cell,
                "strategy": s,
                "frameworks": ", ".join(sorted(g["framework"])),
                "ratio": est,
                "lo": lo,
                "hi": hi,
                "agree": len(verdicts) == 1,
                "verdict": verdicts.pop() if len(verdicts) == 1 else "frameworks disagree",
                "n_better": int((g["verdict"] == "better").sum()),
                "n_worse": int((g["verdict"] == "worse").sum()),
                "n": len(g),
            }
        )
    return pd.DataFrame(rows)
