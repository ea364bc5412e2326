"""The data sets of the experiment suite (numpy; statsmodels for the two real series).

:func:`load_task` returns a :class:`TaskData` for one task, seed and budget. Every task
is offline: generated, or shipped inside the statsmodels wheel. The data depend only on
the task, the seed and the budget, never on the framework or the strategy, so trials
with the same seed are paired.

Tasks:

- ``variable_start``: a damped oscillator observed with a little noise, a random phase
  and amplitude per window; next-step forecasting. One observation does not fix its
  (position, velocity) state, the first few do.
- ``sunspots``, ``co2``: real series (yearly sunspot numbers 1700-2008; monthly CO2 at
  Mauna Loa 1958-2001, first differences), next-step forecasting from windows; split by
  time, normalized on the training part only.
- ``long_control``: a leaky integrator with a random start run for 200 steps or more;
  the start is forgotten after a few dozen steps, so late steps must not care.
- ``stream_chunks``: long streams (oscillator plus a slowly wandering level) cut into
  consecutive chunks for truncated backpropagation.
- ``fixed_start``: the old leaky integrator whose start is 3.0 for every sequence.

The map of regimes (:data:`reference_impl.experiments.MAP_TASKS`):

- ``start_m{mu}_s{s}``: the leaky integrator whose state before the first input is drawn
  per sequence from N(mu, s^2), both in units of its stationary spread (mu 3, s 0 is
  ``fixed_start`` up to that unit: 2.5 instead of 3.0).
- ``length_m{mu}_s{s}_T{T}``: the same with ``T`` steps per sequence.
- ``elnino_years``: monthly sea surface temperature (statsmodels ``elnino``), one
  sequence per year from January to December: every sequence starts at the same phase
  of the seasonal cycle (a shared start).
- ``co2_years``: weekly CO2 at Mauna Loa, first differences, one 52-week sequence per
  year from its first week of January (a shared start); ``co2_windows``: the same series
  and years cut into 52-week windows at random offsets (a variable start).
  Real series are split by time (train, then validation, then test years) and
  normalized on the training part.

>>> data = load_task("variable_start", seed=0, budget="quick")
>>> data.train_x.shape, data.kind, data.washout
((64, 20, 1), 'windows', 5)
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from reference_impl.experiments import TASK_KINDS
from reference_impl.experiments.common import budget_settings, check_budget, check_task

_SPLIT = (0.7, 0.15)  # train and validation fractions of a real series, by time


@dataclasses.dataclass(frozen=True)
class TaskData:
    """One task's data. Arrays are float32, ``(N, T, 1)`` for "windows" and
    ``(S, C, L, 1)`` for "chunks"; the target at step t follows the inputs 0..t."""

    name: str
    kind: str
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    washout: int
    state_note: str
    baselines: dict[str, np.ndarray]
    #: (mean, std) used to normalize, computed on the training part only.
    norm: tuple[float, float] = (0.0, 1.0)
    #: For real series: the half-open index range of the series each split uses.
    spans: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    #: 0: regression (MSE per step). C > 0: classification into C classes per step, the
    #: targets ``y`` holding class indices (float32 ``(N, T, 1)``), the loss cross-entropy.
    classes: int = 0
    #: The half-open range of steps the training loss and the validation error count
    #: (``None``: every step; the suite's tasks).
    loss_steps: tuple[int, int] | None = None

    @property
    def steps(self) -> int:
        """Steps per window (windows) or per chunk (chunks): the length of a curve."""
        return int(self.test_x.shape[-2])


def _rng(seed: int, task: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), sum(map(ord, task))])


def _windows(series: np.ndarray, steps: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``series[i:i+steps]`` and next-step targets ``series[i+1:i+steps+1]``."""
    starts = np.arange(0, series.size - steps, stride)
    x = np.stack([series[s : s + steps] for s in starts])
    y = np.stack([series[s + 1 : s + steps + 1] for s in starts])
    return x[..., None].astype(np.float32), y[..., None].astype(np.float32)


def _forecast_baselines(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Per-step test MSE of repeating the last value and of predicting the (training)
    mean, which is 0 after normalization."""
    axes = tuple(i for i in range(x.ndim) if i != x.ndim - 2)
    last = ((x.astype(np.float64) - y) ** 2).mean(axis=axes)
    mean = (y.astype(np.float64) ** 2).mean(axis=axes)
    return {"last value": last, "mean": mean}


# ---------------------------------------------------------------------- real series


@functools.cache
def _raw_series(name: str) -> np.ndarray:
    import statsmodels.api as sm  # the data sets ship inside the wheel

    if name == "sunspots":
        values = sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
        return values.astype(np.float64)
    # co2: weekly with gaps -> monthly means, gaps interpolated in time, then first
    # differences (the trend goes, the seasonality stays).
    weekly = sm.datasets.co2.load_pandas().data["co2"]
    monthly = weekly.resample("MS").mean().interpolate(method="time").bfill()
    return np.diff(monthly.to_numpy().astype(np.float64))


def _real_series(name: str, budget: str) -> TaskData:
    sizes = budget_settings(budget, name)
    raw = _raw_series(name)
    n = raw.size
    n_train = int(round(n * _SPLIT[0]))
    n_val = int(round(n * _SPLIT[1]))
    spans = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
    mu = float(raw[:n_train].mean())
    sd = float(raw[:n_train].std())
    z = (raw - mu) / sd
    parts = {
        k: _windows(z[a:b], sizes["steps"], sizes["stride"] if k == "train" else 1)
        for k, (a, b) in spans.items()
    }
    note = {
        "sunspots": "the solar cycle's phase and amplitude before the window are unknown",
        "co2": "the seasonal phase and the recent growth before the window are unknown",
    }[name]
    washout = 6 if name == "co2" else 5
    return _from_parts(name, parts, washout, note, (mu, sd), spans=spans)


def _from_parts(
    name: str,
    parts: dict[str, tuple[np.ndarray, np.ndarray]],
    washout: int,
    note: str,
    norm: tuple[float, float],
    **fields,
) -> TaskData:
    """A "windows" task from its (x, y) arrays per split, naive baselines on the test part."""
    return TaskData(
        name=name,
        kind="windows",
        train_x=parts["train"][0],
        train_y=parts["train"][1],
        val_x=parts["val"][0],
        val_y=parts["val"][1],
        test_x=parts["test"][0],
        test_y=parts["test"][1],
        washout=washout,
        state_note=note,
        baselines=_forecast_baselines(*parts["test"]),
        norm=norm,
        **fields,
    )


# ---------------------------------------------------------------------- generated

_OSC_R, _OSC_PERIOD, _OSC_PROC, _OSC_OBS = 0.97, 12.0, 0.05, 0.05


def _oscillator(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """``n`` damped-oscillator paths of ``length`` noisy observations each; each path
    starts from its own random amplitude (U(0.5, 1.5)) and phase."""
    w = 2 * np.pi / _OSC_PERIOD
    a1, a2 = 2 * _OSC_R * np.cos(w), -(_OSC_R**2)
    amp = rng.uniform(0.5, 1.5, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    prev2 = amp * np.cos(phase)
    prev1 = amp * _OSC_R * np.cos(phase + w)
    z = np.empty((n, length))
    for t in range(length):
        cur = a1 * prev1 + a2 * prev2 + _OSC_PROC * rng.standard_normal(n)
        z[:, t] = cur
        prev2, prev1 = prev1, cur
    return z + _OSC_OBS * rng.standard_normal(z.shape)


def _split_by_sequence(x: np.ndarray, y: np.ndarray, n_tr: int, n_va: int, **fields) -> TaskData:
    """The first n_tr sequences for training, the next n_va for validation, the rest for test."""
    tr, va, te = slice(0, n_tr), slice(n_tr, n_tr + n_va), slice(n_tr + n_va, None)
    return TaskData(
        train_x=x[tr], train_y=y[tr], val_x=x[va], val_y=y[va], test_x=x[te], test_y=y[te], **fields
    )


def _split_counts(sizes: dict) -> tuple[int, int, int]:
    return sizes["n_train"], sizes["n_val"], sizes["n_test"]


def _normalized_forecast(name: str, series: np.ndarray, counts, washout, note) -> TaskData:
    """Windows of independent paths (rows of ``series``) split into train/val/test,
    normalized with the training paths' mean and std."""
    n_tr, n_va, _ = counts
    mu = float(series[:n_tr].mean())
    sd = float(series[:n_tr].std())
    z = (series - mu) / sd
    x = z[:, :-1, None].astype(np.float32)
    y = z[:, 1:, None].astype(np.float32)
    return _split_by_sequence(
        x,
        y,
        n_tr,
        n_va,
        name=name,
        kind="windows",
        washout=washout,
        state_note=note,
        baselines=_forecast_baselines(x[n_tr + n_va :], y[n_tr + n_va :]),
        norm=(mu, sd),
    )


def _variable_start(seed: int, budget: str) -> TaskData:
    sizes = budget_settings(budget, "variable_start")
    counts = _split_counts(sizes)
    series = _oscillator(_rng(seed, "variable_start"), sum(counts), sizes["steps"] + 1)
    note = "each window starts from its own random phase and amplitude of the oscillator"
    return _normalized_forecast("variable_start", series, counts, 5, note)


_DECAY, _INPUT_SD = 0.8, 0.5
#: The integrator's stationary state spread: sd of y = decay * y + x, x ~ N(0, 0.5^2).
STATIONARY_SD = _INPUT_SD / float(np.sqrt(1 - _DECAY**2))


def _integrator(
    rng, n: int, steps: int, start_mean: float, start_sd: float, decay: float = _DECAY
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = rng.normal(0.0, _INPUT_SD, (n, steps))
    start = start_mean + start_sd * rng.standard_normal(n)
    y = np.empty_like(x)
    prev = start
    for t in range(steps):
        prev = decay * prev + x[:, t]
        y[:, t] = prev
    return x, y, start


def map_start(name: str) -> tuple[float, float]:
    """(mean, spread) of a map task's start, in units of the stationary spread.

    >>> map_start("length_m3_s0_T50")
    (3.0, 0.0)
    """
    parts = name.split("_")
    return float(parts[1][1:]), float(parts[2][1:])


def _integrator_task(name: str, seed: int, budget: str) -> TaskData:
    sizes = budget_settings(budget, name)
    n_tr, n_va, n_te = _split_counts(sizes)
    if name == "long_control":
        start_mean, start_sd = 0.0, 1.0
        note = "each sequence starts from its own random level, forgotten after ~20 steps"
        washout = 10
    elif name == "fixed_start":
        start_mean, start_sd = 3.0, 0.0
        note = "every sequence starts from the same level 3.0 (one vector is optimal)"
        washout = 5
    else:
        m, sp = map_start(name)
        start_mean, start_sd = m * STATIONARY_SD, sp * STATIONARY_SD
        note = f"each sequence starts from N({m:g}, {sp:g}^2) in units of the stationary spread"
        washout = min(5, sizes["steps"] - 1)
    n = n_tr + n_va + n_te
    x, y, _ = _integrator(_rng(seed, name), n, sizes["steps"], start_mean, start_sd)
    xm, xs = float(x[:n_tr].mean()), float(x[:n_tr].std())
    ym, ys = float(y[:n_tr].mean()), float(y[:n_tr].std())
    xn = ((x - xm) / xs)[..., None].astype(np.float32)
    yn = ((y - ym) / ys)[..., None].astype(np.float32)
    # Known dynamics from the mean start: the best prediction without knowing the start.
    known = np.empty_like(x[n_tr + n_va :])
    prev = np.full(n_te, start_mean)
    for t in range(sizes["steps"]):
        prev = _DECAY * prev + x[n_tr + n_va :, t]
        known[:, t] = prev
    known_n = (known - ym) / ys
    te_y = yn[n_tr + n_va :, :, 0].astype(np.float64)
    baselines = {
        "mean": (te_y**2).mean(axis=0),
        "known dynamics, mean start": ((known_n - te_y) ** 2).mean(axis=0),
    }
    return _split_by_sequence(
        xn,
        yn,
        n_tr,
        n_va,
        name=name,
        kind="windows",
        washout=washout,
        state_note=note,
        baselines=baselines,
        norm=(ym, ys),
    )


def _stream_chunks(seed: int, budget: str) -> TaskData:
    sizes = budget_settings(budget, "stream_chunks")
    n_tr, n_va, n_te = _split_counts(sizes)
    c, length = sizes["chunks"], sizes["chunk_len"]
    rng = _rng(seed, "stream_chunks")
    n = n_tr + n_va + n_te
    burn = 100  # start every stream inside its stationary regime
    osc = _oscillator(rng, n, burn + c * length + 1)
    level = np.empty_like(osc)
    prev = rng.normal(0.0, 1.0, n)
    for t in range(osc.shape[1]):  # a slowly wandering level (AR(1), phi = 0.98)
        prev = 0.98 * prev + 0.2 * rng.standard_normal(n)
        level[:, t] = prev
    series = (osc + level)[:, burn:]
    mu, sd = float(series[:n_tr].mean()), float(series[:n_tr].std())
    z = (series - mu) / sd
    x = z[:, :-1].reshape(n, c, length, 1).astype(np.float32)
    y = z[:, 1:].reshape(n, c, length, 1).astype(np.float32)
    return _split_by_sequence(
        x,
        y,
        n_tr,
        n_va,
        name="stream_chunks",
        kind="chunks",
        washout=5,
        state_note="at a chunk boundary the stream goes on: its state is the previous chunk's",
        baselines=_forecast_baselines(x[n_tr + n_va :], y[n_tr + n_va :]),
        norm=(mu, sd),
    )


# ---------------------------------------------------------------------- real, shared start


@functools.cache
def _elnino_years() -> tuple[np.ndarray, np.ndarray]:
    """(years, (years, 12) monthly temperatures January to December)."""
    import statsmodels.api as sm

    d = sm.datasets.elnino.load_pandas().data
    return d["YEAR"].to_numpy().astype(int), d.iloc[:, 1:].to_numpy(np.float64)


_CO2_WEEKS = 52  # values per sequence: 51 next-step forecasts


@functools.cache
def _co2_weekly() -> tuple[np.ndarray, np.ndarray]:
    """(year of each week, weekly first differences of CO2), gaps interpolated in time;
    the difference at week i is ``co2[i] - co2[i-1]``."""
    import statsmodels.api as sm

    weekly = sm.datasets.co2.load_pandas().data["co2"].interpolate(method="time").bfill()
    diff = np.diff(weekly.to_numpy(np.float64))
    return weekly.index.year.to_numpy()[1:], diff


def _year_split(years: np.ndarray) -> dict[str, np.ndarray]:
    """The distinct years split by time into train, validation and test (70/15/15)."""
    uniq = np.unique(years)
    n_tr = int(round(uniq.size * _SPLIT[0]))
    n_va = int(round(uniq.size * _SPLIT[1]))
    return {"train": uniq[:n_tr], "val": uniq[n_tr : n_tr + n_va], "test": uniq[n_tr + n_va :]}


def _sequences_task(name: str, seqs: dict[str, np.ndarray], note: str, washout: int) -> TaskData:
    """Next-step forecasting on whole sequences ``(N, T + 1)`` per split, normalized with
    the training part's mean and std."""
    mu, sd = float(seqs["train"].mean()), float(seqs["train"].std())
    parts = {}
    for k, v in seqs.items():
        z = (v - mu) / sd
        parts[k] = (z[:, :-1, None].astype(np.float32), z[:, 1:, None].astype(np.float32))
    return _from_parts(name, parts, washout, note, (mu, sd))


def _elnino_task() -> TaskData:
    years, temps = _elnino_years()
    split = _year_split(years)
    seqs = {k: temps[np.isin(years, v)] for k, v in split.items()}
    note = "every sequence is one year from January: the same phase of the seasonal cycle"
    return _sequences_task("elnino_years", seqs, note, washout=3)


def _co2_task(name: str) -> TaskData:
    year, diff = _co2_weekly()
    uniq, counts = np.unique(year, return_counts=True)
    split = _year_split(uniq[counts >= _CO2_WEEKS])  # whole years only (not 1958)
    seqs: dict[str, np.ndarray] = {}
    # Random offsets are drawn once (a fixed generator): the data are the same for every
    # seed, like the other real series, so test sequences can be resampled as blocks.
    rng = np.random.default_rng(20261205)
    for k, ys in split.items():
        if name == "co2_years":
            starts = [np.flatnonzero(year == y)[0] for y in ys]
        else:
            lo = np.flatnonzero(year == ys[0])[0]
            hi = np.flatnonzero(year == ys[-1])[-1] + 1 - _CO2_WEEKS  # the window stays inside
            starts = np.sort(rng.integers(lo, hi + 1, size=len(ys)))
        seqs[k] = np.stack([diff[s : s + _CO2_WEEKS] for s in starts])
    note = (
        "every sequence starts in the first week of January"
        if name == "co2_years"
        else "every window starts at a random week of the year"
    )
    return _sequences_task(name, seqs, note, washout=6)


def load_task(name: str, *, seed: int, budget: str) -> TaskData:
    """The data of task ``name`` for ``seed`` at ``budget`` (see the module docstring).

    >>> load_task("nope", seed=0, budget="quick")
    Traceback (most recent call last):
    ...
    ValueError: unknown task 'nope'; expected one of ['variable_start', 'sunspots', 'co2', \
'long_control', 'stream_chunks', 'fixed_start', '...']
    """
    check_task(name)
    check_budget(budget)
    if name in ("sunspots", "co2"):
        data = _real_series(name, budget)
    elif name == "variable_start":
        data = _variable_start(seed, budget)
    elif name in ("long_control", "fixed_start") or name.startswith(("start_", "length_")):
        data = _integrator_task(name, seed, budget)
    elif name == "elnino_years":
        data = _elnino_task()
    elif name in ("co2_years", "co2_windows"):
        data = _co2_task(name)
    else:
        data = _stream_chunks(seed, budget)
    assert data.kind == TASK_KINDS[name]
    return data
