"""Timing the wrappers against the bare layers: rounds, provenance, ratios, intervals.

Shared by the scripts in ``benchmarks/`` (which write ``results/bench-*.csv``) and the
performance chapter (which reads those files and runs one small live check). Imports
no framework: each caller passes its own step functions, already compiled and warmed
up, that block until their result is computed.

Every variant is timed once per round, in an order shuffled afresh each round, so a
drift in machine load hits all of them alike; the ratio of a variant to the bare
layer is taken *within* each round (the paired ratio) before any summary.


>>> times = {"bare": [1.0, 2.0, 1.0, 2.0], "wrapped": [1.1, 2.2, 1.1, 2.2]}
>>> [round(float(r), 3) for r in paired_ratios(times["wrapped"], times["bare"])]
[1.1, 1.1, 1.1, 1.1]
>>> median, low, high = bootstrap_median(paired_ratios(times["wrapped"], times["bare"]))
>>> round(median, 3), round(low, 3), round(high, 3)
(1.1, 1.1, 1.1)
"""

from __future__ import annotations

import csv
import datetime
import os
import platform
import random
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "FIELDS",
    "bootstrap_median",
    "bootstrap_ratio_of_medians",
    "cpu_model",
    "interleaved_rounds",
    "paired_ratios",
    "provenance",
    "read_results",
    "summary",
    "write_results",
]

#: Columns of a results file, one row per variant, mode and round.
FIELDS = (
    "framework",
    "table",
    "variant",
    "mode",
    "round",
    "seconds",
    "baseline",
    "device",
    "cpu",
    "gpu",
    "cores",
    "threads",
    "os",
    "python",
    "versions",
    "shape",
    "date",
    "commit",
)


def interleaved_rounds(
    variants: Mapping[str, Callable[[], object]],
    rounds: int,
    *,
    warmup: int = 3,
    seed: int = 0,
    before: Callable[[], object] | None = None,
) -> dict[str, list[float]]:
    """Wall-clock seconds of each variant, one call per variant per round.

    ``variants`` maps a name to a function that runs one step and returns once its
    result is computed (``block_until_ready``, ``.numpy()``, a CPU tensor). Each is
    called ``warmup`` times untimed first. In every round the order is shuffled
    (seeded), so no variant always runs first or right after the same neighbour.
    ``before``, if given, is called untimed before each timed call (e.g. to clear
    gradients).

    >>> t = interleaved_rounds({"a": lambda: None, "b": lambda: None}, rounds=3, warmup=0)
    >>> sorted(t), [len(v) for v in t.values()]
    (['a', 'b'], [3, 3])
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            if before is not None:
                before()
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratios(times: Sequence[float], baseline: Sequence[float]) -> np.ndarray:
    """Round-by-round ratios ``times[i] / baseline[i]`` (same rounds, same length)."""
    t, b = np.asarray(times, float), np.asarray(baseline, float)
    if t.shape != b.shape:
        raise ValueError(f"need the same rounds: {t.shape} against {b.shape}")
    return t / b


def bootstrap_median(
    values: Iterable[float], *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """The median of ``values`` and a percentile bootstrap interval for it.

    Resamples the rounds with replacement ``resamples`` times (seeded) and returns
    ``(median, low, high)`` with ``low`` and ``high`` the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles of the resampled medians.
    """
    v = np.asarray(list(values), float)
    if v.size == 0:
        raise ValueError("no values")
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(v, size=(resamples, v.size), replace=True), axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(medians, [tail, 1 - tail])
    return float(np.median(v)), float(low), float(high)


def bootstrap_ratio_of_medians(
    numerator: Iterable[float],
    denominator: Iterable[float],
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``median(numerator) / median(denominator)`` for two sets of rounds that were not
    paired (e.g. two tables of one run), with a percentile bootstrap interval that
    resamples each set on its own.

    >>> m, low, high = bootstrap_ratio_of_medians([100.0, 110.0, 90.0], [1.0, 1.1, 0.9])
    >>> round(m, 3), low <= m <= high
    (100.0, True)
    """
    a, b = np.asarray(list(numerator), float), np.asarray(list(denominator), float)
    if a.size == 0 or b.size == 0:
        raise ValueError("no values")
    rng = np.random.default_rng(seed)
    ma = np.median(rng.choice(a, size=(resamples, a.size), replace=True), axis=1)
    mb = np.median(rng.choice(b, size=(resamples, b.size), replace=True), axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(ma / mb, [tail, 1 - tail])
    return float(np.median(a) / np.median(b)), float(low), float(high)


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), else what platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        # The code that measures: the package and the benchmarks. results/ is left out, so
        # the files a run of `make bench` writes do not mark its own later rows as changed.
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "reference_impl",
                "benchmarks",
            ],
            cwd=here.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(
    versions: Mapping[str, str], *, device: str = "cpu", gpu: str = "", threads: int | None = None
) -> dict[str, str]:
    """Where and with what a measurement was taken, as the provenance columns of a row."""
    return {
        "device": device,
        "cpu": cpu_model(),
        "gpu": gpu or "none",
        "cores": str(os.cpu_count()),
        "threads": "" if threads is None else str(threads),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": " ".join(f"{k} {v}" for k, v in versions.items()),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
    }


def write_results(
    path: str | os.PathLike,
    framework: str,
    tables: Mapping[tuple[str, str], Mapping[str, Sequence[float]]],
    baselines: Mapping[tuple[str, str], str],
    prov: Mapping[str, str],
    shape: str,
) -> int:
    """Write every round of every table to ``path`` (CSV, :data:`FIELDS`); return the rows.

    ``tables`` maps ``(table, mode)`` to ``{variant: seconds per round}``; ``baselines``
    names the variant each table is divided by.
    """
    rows = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for (table, mode), times in tables.items():
            for variant, seconds in times.items():
                for i, s in enumerate(seconds):
                    row = dict(prov, framework=framework, table=table, variant=variant)
                    row.update(mode=mode, round=i, seconds=f"{s:.6e}", shape=shape)
                    row["baseline"] = baselines[(table, mode)]
                    writer.writerow(row)
                    rows += 1
    return rows


def read_results(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a results file written by :func:`write_results`."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summary(times: Mapping[str, Sequence[float]], baseline: str) -> list[str]:
    """Lines of text: each variant's median milliseconds and paired ratio with its interval.

    >>> print("\\n".join(summary({"bare": [0.01, 0.01], "x": [0.02, 0.02]}, "bare")))
    variant                       ms  paired ratio  95% interval
    bare                       10.00         1.000  1.000-1.000
    x                          20.00         2.000  2.000-2.000
    """
    lines = [f"{'variant':<24}{'ms':>8}{'paired ratio':>14}  95% interval"]
    for name, ts in times.items():
        ratio, low, high = bootstrap_median(paired_ratios(ts, times[baseline]))
        ms = 1e3 * float(np.median(ts))
        lines.append(f"{name:<24}{ms:>8.2f}{ratio:>14.3f}  {low:.3f}-{high:.3f}")
    return lines
