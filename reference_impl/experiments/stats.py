"""Statistics for paired-by-seed comparisons (numpy and scipy).

Within a framework, every strategy of a seed sees the same data split, batch order and
initial weights, so strategies are compared by their per-seed differences:

- :func:`bootstrap_ci`: a percentile bootstrap CI of a statistic of one sample;
- :func:`bootstrap_band`: per-step 95% bands of a (seeds, steps) matrix of curves;
- :func:`paired_test`: the Wilcoxon signed-rank test of paired samples;
- :func:`holm`: Holm's step-down correction of a family of p-values;
- :func:`rank_biserial`: the matched-pairs rank-biserial correlation (effect size);
- :func:`compare_to`: every strategy against a reference (``zero``), one row each;
- :func:`fdr_bh`: Benjamini-Hochberg adjusted p-values (false-discovery rate, grid-wide);
- :func:`tost`: two one-sided tests of equivalence within a margin of the reference;
- :func:`ratio_of_means`, :func:`geometric_mean_ratio`: paired ratios with bootstrap CIs
  (the second pools implementations: frameworks that share seeds and data);
- :func:`two_level_ratio`: a ratio of means whose bootstrap resamples seeds and test
  sequences (blocks), for real series with few test sequences;
- :func:`verdict`: "better", "worse", "equivalent" or "not shown", from a test, an
  interval and an equivalence test.

>>> holm([0.01, 0.04, 0.03]).round(3).tolist()
[0.03, 0.06, 0.06]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

LEVEL = 0.95
N_BOOT = 4000


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    level: float = LEVEL,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(estimate, low, high): the statistic and its percentile-bootstrap CI.

    >>> est, lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0])
    >>> est, bool(lo < est < hi)
    (2.5, True)
    """
    x = np.asarray(values, np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return (np.nan, np.nan, np.nan)
    est = float(statistic(x))
    if x.size == 1:
        return (est, np.nan, np.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    if statistic is np.mean:
        boots = x[idx].mean(axis=1)
    else:
        boots = np.array([statistic(x[i]) for i in idx])
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return (est, float(lo), float(hi))


def bootstrap_band(
    curves: np.ndarray, *, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean curve and per-step percentile-bootstrap band of a (seeds, steps) matrix,
    resampling seeds (whole curves), so the band respects the pairing over steps."""
    c = np.asarray(curves, np.float64)
    if c.ndim != 2:
        raise ValueError(f"curves must be (seeds, steps); got shape {c.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, c.shape[0], size=(n_boot, c.shape[0]))
    boots = np.nanmean(c[idx], axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.nanquantile(boots, [alpha, 1 - alpha], axis=0)
    return np.nanmean(c, axis=0), lo, hi


def _pairs(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples must be 1-D of equal length; got {a.shape}, {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def paired_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of ``a - b`` (exact for small
    samples without ties); 1.0 when every difference is zero or there are no pairs.

    >>> paired_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    1.0
    """
    a, b = _pairs(a, b)
    d = a - b
    if d.size == 0 or np.all(d == 0):
        return 1.0
    return float(sps.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given; NaNs stay NaN).

    The i-th smallest of m p-values is multiplied by m - i (i from 0), then a running
    maximum keeps the order, and values are capped at 1.
    """
    p, out, order = _ranked(pvalues)
    m = order.size
    if m:
        out[order] = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    return out


def _ranked(pvalues: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The p-values as floats, an all-NaN output of their shape, and the indices of the
    finite ones from the smallest p-value to the largest (ties in the given order)."""
    p = np.asarray(pvalues, np.float64)
    ok = np.flatnonzero(np.isfinite(p))
    return p, np.full(p.shape, np.nan), ok[np.argsort(p[ok], kind="stable")]


def rank_biserial(a: Sequence[float], b: Sequence[float]) -> float:
    """Matched-pairs rank-biserial correlation of ``a - b``: (R+ - R-) / (R+ + R-) with
    R+ and R- the sums of the ranks of |difference| of the positive and negative
    differences (zeros dropped). +1: ``a`` larger in every pair; -1: smaller in every
    pair; 0: no tendency.

    >>> rank_biserial([2.0, 3.0, 4.0], [1.0, 1.0, 1.0])
    1.0
    """
    a, b = _pairs(a, b)
    d = a - b
    d = d[d != 0]
    if d.size == 0:
        return 0.0
    r = sps.rankdata(np.abs(d))
    plus, minus = r[d > 0].sum(), r[d < 0].sum()
    return float((plus - minus) / (plus + minus))


def median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over pairs of ``a / b`` (e.g. a strategy's error relative to zero's)."""
    a, b = _pairs(a, b)
    ok = b != 0
    return float(np.median(a[ok] / b[ok])) if ok.any() else float("nan")


def compare_to(
    wide: pd.DataFrame,
    reference: str = "zero",
    *,
    group: Sequence[str] = ("task", "framework", "cell"),
    value: str = "value",
    seed: int = 0,
) -> pd.DataFrame:
    """Every strategy against ``reference`` within each group, paired by seed.

    ``wide`` has the columns ``group``, ``strategy``, ``seed`` and ``value`` (one row
    per trial). Returns one row per (group, strategy): ``n`` pairs, ``mean`` and
    ``reference_mean``, ``diff`` (mean of strategy - reference) with its 95% bootstrap
    CI ``diff_lo``/``diff_hi``, ``p`` (Wilcoxon), ``p_holm`` (Holm within the group,
    see below), ``ratio`` (median of strategy / reference) and
    ``rank_biserial`` (positive: the strategy's error is larger).

    Holm's family is the set of comparisons with the reference within one group (one
    experiment: a task, framework and cell), the usual many-to-one family. A family
    over a whole grid would demand more than the paired test can give: with n pairs
    the smallest two-sided Wilcoxon p-value is 2 / 2**n (0.002 for n = 10).
    """
    missing = sorted((set(group) | {"strategy", "seed", value}) - set(wide.columns))
    if missing:
        raise ValueError(f"compare_to needs column(s) {missing}; got {list(wide.columns)}")
    rows = []
    for keys, g in wide.groupby(list(group), sort=False, observed=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        table = g.pivot_table(index="seed", columns="strategy", values=value, aggfunc="mean")
        if reference not in table.columns:
            continue
        ref = table[reference]
        for strategy in table.columns:
            if strategy == reference:
                continue
            a, b = _pairs(table[strategy].to_numpy(), ref.to_numpy())
            est, lo, hi = bootstrap_ci(a - b, seed=seed)
            rows.append(
                {
                    **dict(zip(group, keys, strict=True)),
                    "strategy": strategy,
                    "n": int(a.size),
                    "mean": float(a.mean()) if a.size else np.nan,
                    "reference_mean": float(b.mean()) if b.size else np.nan,
                    "diff": est,
                    "diff_lo": lo,
                    "diff_hi": hi,
                    "p": paired_test(a, b),
                    "ratio": median_ratio(a, b),
                    "rank_biserial": rank_biserial(a, b),
                }
            )
    out = pd.DataFrame(rows)
    if len(out):
        out["p_holm"] = out.groupby(list(group), sort=False)["p"].transform(
            lambda p: holm(p.to_numpy())
        )
    return out


def fdr_bh(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (same order; NaNs stay NaN): the false
    discovery rate is controlled at q by keeping the p-values whose adjusted value is
    at most q.

    >>> fdr_bh([0.01, 0.04, 0.03, 0.005]).round(3).tolist()
    [0.02, 0.04, 0.04, 0.02]
    """
    p, out, order = _ranked(pvalues)
    m = order.size
    if m:
        scaled = p[order] * m / np.arange(1, m + 1)
        out[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return out


def tost(a: Sequence[float], b: Sequence[float], margin: float = 0.05) -> float:
    """p-value of the two one-sided paired t-tests that ``a`` is equivalent to ``b``
    within ``margin`` times the mean of ``b``: H0 is mean(a - b) <= -margin * mean(b)
    or >= +margin * mean(b); a p-value below alpha shows equivalence at level alpha.
    The margin is taken as fixed (the reference's mean error over the seeds).

    >>> rng = np.random.default_rng(0)
    >>> b = rng.normal(1.0, 0.1, 20)
    >>> tost(b + rng.normal(0, 0.005, 20), b) < 0.05   # within +-5%: equivalent
    True
    >>> tost(b * 1.2, b) > 0.5                         # 20% worse: not equivalent
    True
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0; got {margin!r}")
    a, b = _pairs(a, b)
    if a.size < 2:
        return float("nan")
    d = a - b
    bound = margin * float(b.mean())
    se = float(d.std(ddof=1)) / np.sqrt(d.size)
    if se == 0:
        return 0.0 if abs(float(d.mean())) < bound else 1.0
    df = d.size - 1
    p_low = sps.t.sf((d.mean() + bound) / se, df)  # H0: mean <= -bound
    p_high = sps.t.cdf((d.mean() - bound) / se, df)  # H0: mean >= +bound
    return float(max(p_low, p_high))


def _ratio_boot(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    return a[idx].mean(1) / b[idx].mean(1)


def ratio_of_means(
    a: Sequence[float],
    b: Sequence[float],
    *,
    level: float = LEVEL,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> tuple[float, float, float]:
    """mean(a) / mean(b) over paired samples, with a percentile-bootstrap CI that
    resamples the pairs.

    >>> ratio_of_means([2.0, 4.0], [1.0, 2.0])[0]
    2.0
    """
    a, b = _pairs(a, b)
    if a.size == 0:
        return (np.nan, np.nan, np.nan)
    est = float(a.mean() / b.mean())
    if a.size == 1:
        return (est, np.nan, np.nan)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(_ratio_boot(a, b, n_boot, seed), [alpha, 1 - alpha])
    return (est, float(lo), float(hi))


def geometric_mean_ratio(
    groups: Sequence[tuple[Sequence[float], Sequence[float]]],
    *,
    level: float = LEVEL,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Pool paired comparisons made in several implementations (frameworks sharing seeds
    and data): the geometric mean over groups of each group's ratio of means, with a CI
    from bootstrapping the pairs within every group at once.

    The groups are implementations, not replications: the interval describes seeds
    (and nothing else) as each group's does.

    >>> round(geometric_mean_ratio([([2.0, 2.0], [1.0, 1.0]), ([1.0, 1.0], [2.0, 2.0])])[0], 6)
    1.0
    """
    pairs = [_pairs(a, b) for a, b in groups]
    pairs = [(a, b) for a, b in pairs if a.size]
    if not pairs:
        return (np.nan, np.nan, np.nan)
    est = float(np.exp(np.mean([np.log(a.mean() / b.mean()) for a, b in pairs])))
    if min(a.size for a, _ in pairs) < 2:
        return (est, np.nan, np.nan)
    logs = np.mean(
        [np.log(_ratio_boot(a, b, n_boot, seed + i)) for i, (a, b) in enumerate(pairs)], axis=0
    )
    alpha = (1 - level) / 2
    lo, hi = np.exp(np.quantile(logs, [alpha, 1 - alpha]))
    return (est, float(lo), float(hi))


def two_level_ratio(
    a: np.ndarray,
    b: np.ndarray,
    *,
    level: float = LEVEL,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Ratio of mean errors of two (seeds, test sequences) matrices paired in both axes,
    with a CI that resamples seeds and test sequences (each sequence a block) jointly:
    it covers the uncertainty of which test sequences the data happened to hold, not
    only of the training seed.

    >>> a = np.full((3, 4), 2.0); b = np.ones((3, 4))
    >>> two_level_ratio(a, b)
    (2.0, 2.0, 2.0)
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (seeds, sequences) matrices; got {a.shape}, {b.shape}")
    est = float(np.nanmean(a) / np.nanmean(b))
    rng = np.random.default_rng(seed)
    n_s, n_q = a.shape
    si = rng.integers(0, n_s, size=(n_boot, n_s))
    qi = rng.integers(0, n_q, size=(n_boot, n_q))
    boots = np.array(
        [np.nanmean(a[s][:, q]) / np.nanmean(b[s][:, q]) for s, q in zip(si, qi, strict=True)]
    )
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return (est, float(lo), float(hi))


VERDICTS = ("better", "worse", "equivalent", "not shown")


def verdict(p: float, lo: float, hi: float, p_equivalent: float, alpha: float = 0.05) -> str:
    """ "equivalent" when the (corrected) equivalence test ``p_equivalent`` is below
    ``alpha``: the difference lies inside the margin declared negligible, even where a
    smaller difference is also significant; otherwise "better" / "worse" than the
    reference when the (corrected) test ``p`` is below ``alpha`` and the ratio's CI
    ``[lo, hi]`` lies below / above 1; otherwise "not shown" (neither a difference nor
    its absence is measured).

    >>> verdict(0.001, 0.80, 0.90, 1.0), verdict(0.6, 0.97, 1.03, 0.01), verdict(0.6, 0.8, 1.3, 0.4)
    ('better', 'equivalent', 'not shown')
    >>> verdict(0.01, 0.96, 0.99, 0.01)  # 2.5% better, and inside a 5% margin
    'equivalent'
    """
    if np.isfinite(p_equivalent) and p_equivalent < alpha:
        return "equivalent"
    if np.isfinite(p) and p < alpha and np.isfinite(hi) and hi < 1:
        return "better"
    if np.isfinite(p) and p < alpha and np.isfinite(lo) and lo > 1:
        return "worse"
    return "not shown"
