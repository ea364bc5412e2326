"""The result of a comparison: per-trial errors, the paired statistics, a verdict, a plot.

The statistics are the experiment grid's (:mod:`reference_impl.experiments.stats`): per
strategy against the reference, over the seeds (pairs), the mean difference with a 95%
bootstrap interval, the ratio of mean errors with a 95% bootstrap interval, the Wilcoxon
signed-rank test and the equivalence test (TOST) within ``margin``, both Holm-corrected
across the strategies compared, and :func:`~reference_impl.experiments.stats.verdict`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from reference_impl.experiments import stats

#: Colour (Okabe-Ito), marker and line style of the plot's strategies, in their order.
PLOT_STYLES = (
    ("#000000", "o", "-"),
    ("#0072B2", "s", "--"),
    ("#D55E00", "^", "-."),
    ("#009E73", "D", ":"),
    ("#CC79A7", "v", (0, (5, 1))),
    ("#E69F00", "P", (0, (3, 1, 1, 1, 1, 1))),
)


def min_seeds(comparisons: int, alpha: float = 0.05) -> int:
    """The fewest seeds with which the Holm-corrected two-sided signed-rank test of
    ``comparisons`` strategies can reach ``p < alpha`` (its smallest p is 2 / 2**n).

    >>> min_seeds(1), min_seeds(2), min_seeds(4)
    (6, 7, 8)
    """
    n = 1
    while comparisons * 2.0 / 2**n >= alpha:
        n += 1
    return n


def _steps_text(steps: tuple[int, int], total: int) -> str:
    a, b = steps
    if (a, b) == (0, total):
        return f"all {total} steps"
    if a == 0:
        return "the first step" if b == 1 else f"the first {b} steps"
    if b == total:
        return "the last step" if b - a == 1 else f"the last {b - a} steps"
    return f"steps {a + 1} to {b}"


def _pct(ratio: float) -> str:
    return f"{abs(1 - ratio) * 100:.0f}%"


def _ratio_text(ratio: float, lo: float, hi: float) -> str:
    """``ratio 0.97 [0.96, 0.99]``, with more decimals (up to 5) while the interval's
    ends would print the same: a tight interval never reads as ``[1.00, 1.00]``."""
    digits = 2
    while digits < 5 and lo != hi and f"{lo:.{digits}f}" == f"{hi:.{digits}f}":
        digits += 1
    return f"ratio {ratio:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


class Report:
    """What :func:`reference_impl.compare.run` returns.

    ``trials``: one row per trial (strategy, seed, the error over the counted steps,
    epochs, best epoch, seconds); ``comparison``: one row per strategy against the
    reference; ``curves``: per strategy, the per-step test errors as a (seeds, steps)
    matrix; ``header``: the data's fingerprint, the settings and the provenance.
    """

    def __init__(
        self,
        records: list[dict[str, Any]],
        *,
        reference: str,
        strategies: Sequence[str],
        steps: tuple[int, int],
        total_steps: int,
        margin: float,
        alpha: float = 0.05,
        header: dict[str, Any] | None = None,
        executor: str = "inline",
        seconds: float = float("nan"),
    ) -> None:
        self.reference, self.strategies = reference, list(strategies)
        self.steps, self.total_steps = tuple(steps), int(total_steps)
        self.margin, self.alpha = float(margin), float(alpha)
        self.header = header or {}
        self.executor, self.seconds = executor, seconds
        a, b = self.steps
        rows, curves = [], {}
        for r in records:
            c = r["config"]
            test = np.asarray(r["test"], np.float64)
            rows.append(
                {
                    "strategy": c["strategy"],
                    "seed": int(c["seed"]),
                    "value": float(np.nanmean(test[a:b])),
                    "epochs": r["epochs"],
                    "best_epoch": r["best_epoch"],
                    "seconds": r["seconds"],
                    "framework": c["framework"],
                    "cell": c["cell"],
                    "framework_version": r["framework_version"],
                    "device": r["device"],
                }
            )
            curves.setdefault(c["strategy"], {})[int(c["seed"])] = test
        self.trials = pd.DataFrame(rows)
        if not self.trials.empty:
            self.trials = self.trials.sort_values(["strategy", "seed"]).reset_index(drop=True)
        self.curves = {
            s: np.stack([curves[s][k] for k in sorted(curves[s])])
            for s in self.strategies
            if s in curves
        }
        self.comparison = self._compare()

    # ------------------------------------------------------------------ statistics

    def _compare(self) -> pd.DataFrame:
        if self.trials.empty:
            return pd.DataFrame()
        wide = self.trials.pivot_table(index="seed", columns="strategy", values="value")
        ref = wide[self.reference].to_numpy()
        rows = []
        for s in self.strategies:
            if s == self.reference or s not in wide:
                continue
            a_all = wide[s].to_numpy()
            keep = np.isfinite(a_all) & np.isfinite(ref)
            a, b = a_all[keep], ref[keep]
            diff, diff_lo, diff_hi = stats.bootstrap_ci(a - b)
            ratio, lo, hi = stats.ratio_of_means(a, b)
            rows.append(
                {
                    "strategy": s,
                    "seeds": int(a.size),
                    "error": float(a.mean()),
                    "reference_error": float(b.mean()),
                    "diff": diff,
                    "diff_lo": diff_lo,
                    "diff_hi": diff_hi,
                    "ratio": ratio,
                    "ratio_lo": lo,
                    "ratio_hi": hi,
                    "p": stats.paired_test(a, b),
                    "p_equivalent": stats.tost(a, b, self.margin),
                }
            )
        out = pd.DataFrame(rows)
        if out.empty:
            return out
        out["p_holm"] = stats.holm(out["p"].to_numpy())
        out["p_equivalent_holm"] = stats.holm(out["p_equivalent"].to_numpy())
        out["verdict"] = [self._verdict(r) for r in out.itertuples()]
        return out

    def _verdict(self, r: Any) -> str:
        """The grid's verdict (:func:`~reference_impl.experiments.stats.verdict`): a
        difference shown to lie inside the margin is "equivalent" (a smaller difference
        that the test also detects is named in :meth:`sentence`)."""
        return stats.verdict(r.p_holm, r.ratio_lo, r.ratio_hi, r.p_equivalent_holm, self.alpha)

    def table(self, per_step: bool = False) -> pd.DataFrame:
        """One row per strategy (the reference first): its mean error over the counted
        steps, and against the reference the paired difference and ratio with their 95%
        intervals, the Holm-corrected p-values of the paired test and of the equivalence
        test, and the verdict. ``per_step``: add each step's mean error (``step 1``, ...).
        """
        ref_row = {
            "strategy": self.reference,
            "seeds": int(self.trials["strategy"].eq(self.reference).sum()),
            "error": float(
                self.trials.loc[self.trials["strategy"] == self.reference, "value"].mean()
            ),
        }
        cols = [
            "strategy",
            "seeds",
            "error",
            "diff",
            "diff_lo",
            "diff_hi",
            "ratio",
            "ratio_lo",
            "ratio_hi",
            "p_holm",
            "p_equivalent_holm",
            "verdict",
        ]
        table = pd.concat([pd.DataFrame([ref_row]), self.comparison], ignore_index=True)
        table = table.reindex(columns=cols)
        table.loc[0, "verdict"] = "reference"
        if per_step:
            for t in range(self.total_steps):
                table[f"step {t + 1}"] = [
                    float(self.curves[s][:, t].mean()) if s in self.curves else np.nan
                    for s in table["strategy"]
                ]
        return table.set_index("strategy")

    def verdicts(self) -> dict[str, str]:
        """Per strategy: "better", "worse", "equivalent" or "not shown"."""
        return dict(zip(self.comparison["strategy"], self.comparison["verdict"], strict=True))

    def sentence(self, strategy: str) -> str:
        """The verdict on one strategy as a sentence that states the steps, the ratio
        with its interval, the margin and the number of seeds."""
        r = self.comparison.set_index("strategy").loc[strategy]
        where = _steps_text(self.steps, self.total_steps)
        ref, m = self.reference, f"±{self.margin * 100:g}%"
        ci = _ratio_text(r.ratio, r.ratio_lo, r.ratio_hi)
        n = f"{int(r.seeds)} seeds"
        if r.verdict == "better":
            return (
                f"{strategy} beats {ref} on {where} by {_pct(r.ratio)} "
                f"[{_pct(r.ratio_hi)}, {_pct(r.ratio_lo)}] ({ci}, Holm p = {_p(r.p_holm)}, {n})"
            )
        if r.verdict == "worse":
            return (
                f"{strategy} is worse than {ref} on {where} by {_pct(r.ratio)} "
                f"[{_pct(r.ratio_lo)}, {_pct(r.ratio_hi)}] ({ci}, Holm p = {_p(r.p_holm)}, {n})"
            )
        if r.verdict == "equivalent":
            small = ""
            if r.p_holm < self.alpha and (r.ratio_hi < 1 or r.ratio_lo > 1):
                lower = r.ratio_hi < 1
                a, b = (r.ratio_hi, r.ratio_lo) if lower else (r.ratio_lo, r.ratio_hi)
                small = (
                    f"; a smaller difference is shown: {_pct(r.ratio)} "
                    f"{'lower' if lower else 'higher'} [{_pct(a)}, {_pct(b)}], Holm p = "
                    f"{_p(r.p_holm)}"
                )
            return (
                f"{strategy} is equivalent to {ref} on {where} within {m} of {ref}'s error "
                f"({ci}, equivalence p = {_p(r.p_equivalent_holm)}, {n}{small})"
            )
        return (
            f"{strategy} vs {ref} on {where}: not shown, neither a difference (Holm p = "
            f"{_p(r.p_holm)}) nor equivalence within {m} (p = {_p(r.p_equivalent_holm)}) "
            f"({ci}, {n})"
        )

    def verdict(self) -> str:
        """One sentence per strategy compared (see :meth:`sentence`)."""
        return "\n".join(self.sentence(s) for s in self.comparison["strategy"])

    # ------------------------------------------------------------------ plot

    def plot(self, figsize: tuple[float, float] = (10.0, 3.4)):
        """Per-step test error of each strategy (mean over seeds, 95% bootstrap band; the
        counted steps shaded) and each strategy's ratio to the reference with its 95%
        interval (the equivalence margin shaded). Returns a matplotlib Figure.

        Each strategy has a colour of the Okabe-Ito palette (told apart by readers with
        any colour vision), a marker and a line style of its own; the legend sits beside
        the panel and the step axis has whole-number ticks."""
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        fig, (ax, bx) = plt.subplots(
            1, 2, figsize=figsize, gridspec_kw={"width_ratios": [3, 2]}, layout="constrained"
        )
        steps = np.arange(1, self.total_steps + 1)
        drawn = [s for s in self.strategies if s in self.curves]
        for i, s in enumerate(drawn):
            color, marker, style = PLOT_STYLES[i % len(PLOT_STYLES)]
            mean, lo, hi = stats.bootstrap_band(self.curves[s])
            ax.plot(steps, mean, style, color=color, marker=marker, markersize=4, label=s)
            ax.fill_between(steps, lo, hi, color=color, alpha=0.2, linewidth=0)
        a, b = self.steps
        if (a, b) != (0, self.total_steps):
            ax.axvspan(a + 0.5, b + 0.5, color="0.9", zorder=0, label="counted steps")
        ax.set(xlabel="step", ylabel="test error (mean over seeds)", title="Error per step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(frameon=False, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
        comp = self.comparison
        y = np.arange(len(comp))
        bx.axvspan(1 - self.margin, 1 + self.margin, color="0.9", label=f"±{self.margin:.0%}")
        bx.axvline(1, color="0.4", linewidth=0.8)
        bx.errorbar(
            comp["ratio"],
            y,
            xerr=[comp["ratio"] - comp["ratio_lo"], comp["ratio_hi"] - comp["ratio"]],
            fmt="o",
            color="k",
            capsize=3,
        )
        bx.set_yticks(
            y, [f"{s}\n({v})" for s, v in zip(comp["strategy"], comp["verdict"], strict=True)]
        )
        bx.set_ylim(-0.7, len(comp) - 0.3)
        bx.set(xlabel=f"error / {self.reference}'s (95% CI)", title="Paired ratio")
        bx.legend(frameon=False, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
        return fig

    def __repr__(self) -> str:
        with pd.option_context(
            "display.width", 200, "display.max_columns", None, "display.precision", 3
        ):
            return f"{self.table()}\n\n{self.verdict()}"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


__all__ = ["Report", "min_seeds"]
