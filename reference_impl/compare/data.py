"""The reader's data for a comparison: arrays, a DataFrame of long series, or a CSV file.

Every input form ends as a :class:`Dataset`: float32 arrays ``(N, T, F)`` of inputs and
``(N, T, O)`` of per-step targets (class indices ``(N, T, 1)`` for classification) in
three parts (train, validation, test), checked, normalized with the training part's
statistics, and identified by a fingerprint (a hash of the arrays), so a results file
written for other data is refused.

numpy and pandas only: no machine-learning framework is imported.

>>> import numpy as np
>>> x = np.random.default_rng(0).normal(size=(40, 12, 1))
>>> data = from_arrays(x, np.cumsum(x, axis=1))
>>> data.train_x.shape, data.val_x.shape, data.test_x.shape
((28, 12, 1), (6, 12, 1), (6, 12, 1))
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Training, validation fractions of the sequences (or of each series, by time) when the
#: validation or test part is not given; the test part is the rest.
SPLIT: tuple[float, float] = (0.7, 0.15)
#: The fewest sequences a part may hold.
MIN_SEQUENCES: dict[str, int] = {"train": 4, "val": 2, "test": 2}
TASKS: tuple[str, ...] = ("regression", "classification")
PARTS: tuple[str, ...] = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Inputs and per-step targets in three parts, ready for every trainer.

    ``classes`` is 0 for regression, else the number of classes (targets hold class
    indices). ``norm`` holds the training part's means and standard deviations used to
    normalize (``x_mean``, ``x_std``; ``y_mean``, ``y_std`` for regression).
    """

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: int = 0
    norm: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    source: str = "arrays"

    @property
    def steps(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def sizes(self) -> dict[str, int]:
        """Sequences per part."""
        return {p: int(getattr(self, f"{p}_x").shape[0]) for p in PARTS}

    @property
    def fingerprint(self) -> str:
        """A hash of the arrays and the task (16 hex digits)."""
        h = hashlib.sha256(f"classes={self.classes}".encode())
        for part in PARTS:
            for a in (getattr(self, f"{part}_x"), getattr(self, f"{part}_y")):
                h.update(str(a.shape).encode())
                h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        """One line: parts, steps, features, task.

        >>> import numpy as np
        >>> z = np.zeros((8, 5, 2), np.float32)
        >>> Dataset(z, z[..., :1], z[:2], z[:2, :, :1], z[:2], z[:2, :, :1]).describe()
        '8/2/2 sequences (train/val/test) of 5 steps, 2 input feature(s), 1 target(s)'
        """
        what = f"{self.classes} classes" if self.classes else f"{self.train_y.shape[-1]} target(s)"
        s = self.sizes
        return (
            f"{s['train']}/{s['val']}/{s['test']} sequences (train/val/test) of {self.steps} "
            f"steps, {self.train_x.shape[-1]} input feature(s), {what}"
        )

    def task_data(self, loss_steps: tuple[int, int] | None = None):
        """The :class:`reference_impl.experiments.tasks.TaskData` the trainers take."""
        from reference_impl.experiments.tasks import TaskData

        return TaskData(
            name=f"custom:{self.fingerprint}",
            kind="windows",
            train_x=self.train_x,
            train_y=self.train_y,
            val_x=self.val_x,
            val_y=self.val_y,
            test_x=self.test_x,
            test_y=self.test_y,
            washout=0,
            state_note="the reader's data",
            baselines={},
            classes=self.classes,
            loss_steps=loss_steps,
        )


# ---------------------------------------------------------------------- checks


def _array(name: str, a: Any) -> np.ndarray:
    if hasattr(a, "to_numpy") and not isinstance(a, np.ndarray):
        a = a.to_numpy()
    try:
        arr = np.asarray(a)
    except Exception as err:  # ragged lists and the like
        raise TypeError(f"{name} must be an array (sequences, steps, features): {err}") from err
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise TypeError(f"{name} must hold numbers; got dtype {arr.dtype}")
    return arr


def _check_rank(name: str, a: np.ndarray, what: str) -> None:
    if a.ndim != 3:
        hint = f" For one {what} per step use {name}[..., None]." if a.ndim == 2 else ""
        raise ValueError(
            f"{name} must be a 3-D array (sequences, steps, {what}s); got shape {a.shape}.{hint}"
        )


def _check_finite(name: str, a: np.ndarray) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        seq, step = np.argwhere(bad)[0][:2]
        raise ValueError(
            f"{name} holds {int(bad.sum())} NaN or infinite value(s) (the first at sequence "
            f"{seq}, step {step}); drop those sequences or fill the gaps (e.g. "
            f"DataFrame.interpolate) before comparing"
        )


def _check_pair(part: str, x: np.ndarray, y: np.ndarray, classification: bool) -> np.ndarray:
    xn, yn = f"x_{part}", f"y_{part}"
    _check_rank(xn, x, "feature")
    if classification and y.ndim == 2:
        y = y[..., None]
    _check_rank(yn, y, "target")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{xn} holds {x.shape[0]} sequences but {yn} holds {y.shape[0]}; they must match"
        )
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{xn} has {x.shape[1]} steps per sequence but {yn} has {y.shape[1]}; the target "
            f"at step t belongs to the input at step t, so they must match"
        )
    _check_finite(xn, x)
    _check_finite(yn, y)
    return y


def check_sizes(sizes: dict[str, int]) -> None:
    """Raise ValueError when a part holds fewer sequences than :data:`MIN_SEQUENCES`."""
    for part, n in sizes.items():
        if n < MIN_SEQUENCES[part]:
            raise ValueError(
                f"the {part} part holds {n} sequence(s); a comparison needs at least "
                f"{MIN_SEQUENCES[part]} ({', '.join(f'{k} {v}' for k, v in MIN_SEQUENCES.items())}"
                "): pass more data, or for long series a shorter length or a smaller stride"
            )


def _split_counts(n: int, split: tuple[float, float]) -> tuple[int, int]:
    n_train = int(round(n * split[0]))
    n_val = int(round(n * split[1]))
    return n_train, n_val


def _check_split(split: Sequence[float]) -> tuple[float, float]:
    s = tuple(float(v) for v in split)
    if len(s) != 2 or min(s) <= 0 or sum(s) >= 1:
        raise ValueError(
            f"split must be (train fraction, validation fraction), both > 0, summing to < 1 "
            f"(the test part is the rest); got {split!r}"
        )
    return s  # type: ignore[return-value]


def _check_task(task: str) -> bool:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")
    return task == "classification"


def _labels(parts: dict[str, np.ndarray]) -> int:
    """The number of classes of integer targets (checked), from every part."""
    for name, y in parts.items():
        if y.shape[-1] != 1:
            raise ValueError(
                f"classification targets {name} must hold one class index per step "
                f"(sequences, steps) or (sequences, steps, 1); got shape {y.shape}"
            )
        if np.any(y != np.round(y)) or np.any(y < 0):
            raise ValueError(
                f"classification targets {name} must be class indices 0, 1, 2, ...; "
                f"got values such as {y[(y != np.round(y)) | (y < 0)][0]!r}"
            )
    classes = int(max(y.max() for y in parts.values())) + 1
    if classes < 2:
        raise ValueError("classification needs at least 2 classes in the targets; got 1")
    return classes


def _stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = a.reshape(-1, a.shape[-1]).mean(axis=0)
    std = a.reshape(-1, a.shape[-1]).std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def _finish(
    parts: dict[str, tuple[np.ndarray, np.ndarray]],
    classification: bool,
    normalize: bool,
    source: str,
) -> Dataset:
    check_sizes({p: xy[0].shape[0] for p, xy in parts.items()})
    features = {p: xy[0].shape[-1] for p, xy in parts.items()}
    targets = {p: xy[1].shape[-1] for p, xy in parts.items()}
    steps = {p: xy[0].shape[1] for p, xy in parts.items()}
    for name, got in (("input features", features), ("targets", targets), ("steps", steps)):
        if len(set(got.values())) > 1:
            raise ValueError(
                f"the parts differ in their number of {name}: "
                + ", ".join(f"{p} {v}" for p, v in got.items())
            )
    classes = _labels({f"y_{p}": xy[1] for p, xy in parts.items()}) if classification else 0
    norm: dict[str, list[float]] = {}
    if normalize:
        xm, xs = _stats(parts["train"][0])
        norm = {"x_mean": xm.tolist(), "x_std": xs.tolist()}
        if not classification:
            ym, ys = _stats(parts["train"][1])
            norm.update(y_mean=ym.tolist(), y_std=ys.tolist())
    out = {}
    for p, (x, y) in parts.items():
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        if normalize:
            x = (x - norm["x_mean"]) / norm["x_std"]
            if not classification:
                y = (y - norm["y_mean"]) / norm["y_std"]
        out[f"{p}_x"] = np.ascontiguousarray(x, np.float32)
        out[f"{p}_y"] = np.ascontiguousarray(y, np.float32)
    return Dataset(**out, classes=classes, norm=norm, source=source)


# ---------------------------------------------------------------------- input forms


def from_arrays(
    x_train: Any,
    y_train: Any,
    x_val: Any = None,
    y_val: Any = None,
    x_test: Any = None,
    y_test: Any = None,
    *,
    task: str = "regression",
    normalize: bool = True,
    split: Sequence[float] = SPLIT,
) -> Dataset:
    """A :class:`Dataset` from arrays ``(N, T, F)`` and ``(N, T, O)`` (classification:
    class indices ``(N, T)`` or ``(N, T, 1)``).

    A part not given is cut from the end of the training sequences, in their order
    (sequences cut from one series in time order are so split by time): with neither,
    ``split`` gives the training and validation fractions and the test part is the rest.
    """
    classification = _check_task(task)
    split = _check_split(split)
    given = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for part, (x, y) in given.items():
        if (x is None) != (y is None):
            have, lack = ("x", "y") if y is None else ("y", "x")
            raise ValueError(
                f"{have}_{part} is given but {lack}_{part} is not; pass both or neither"
            )
        if x is None:
            continue
        xa, ya = _array(f"x_{part}", x), _array(f"y_{part}", y)
        parts[part] = (xa, _check_pair(part, xa, ya, classification))
    if "train" not in parts:
        raise ValueError("x_train and y_train are required")
    x, y = parts["train"]
    n = x.shape[0]
    if "val" not in parts and "test" not in parts:
        n_train, n_val = _split_counts(n, split)
        parts = {
            "train": (x[:n_train], y[:n_train]),
            "val": (x[n_train : n_train + n_val], y[n_train : n_train + n_val]),
            "test": (x[n_train + n_val :], y[n_train + n_val :]),
        }
    elif "val" not in parts or "test" not in parts:
        missing = "val" if "val" not in parts else "test"
        frac = split[1] if missing == "val" else 1 - sum(split)
        n_cut = int(round(n * frac / (split[0] + frac)))
        parts["train"], parts[missing] = (
            (x[: n - n_cut], y[: n - n_cut]),
            (x[n - n_cut :], y[n - n_cut :]),
        )
    parts = {p: parts[p] for p in PARTS}
    return _finish(parts, classification, normalize, "arrays")


def _windows(
    x: np.ndarray, y: np.ndarray, length: int, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    starts = np.arange(0, x.shape[0] - length + 1, stride)
    if starts.size == 0:
        return np.empty((0, length, x.shape[1])), np.empty((0, length, y.shape[1]))
    return np.stack([x[s : s + length] for s in starts]), np.stack(
        [y[s : s + length] for s in starts]
    )


def from_frame(
    frame: Any,
    target: str | Sequence[str],
    *,
    length: int,
    stride: int = 1,
    inputs: Sequence[str] | None = None,
    horizon: int | None = None,
    series: str | None = None,
    time: str | None = None,
    task: str = "regression",
    normalize: bool = True,
    split: Sequence[float] = SPLIT,
) -> Dataset:
    """A :class:`Dataset` from a pandas DataFrame of one or several long series.

    Each series (all rows, or the rows of each value of the column ``series``, in the
    order of ``time`` when given) is split by time into training, validation and test
    spans (``split``), then each span is cut into windows of ``length`` steps every
    ``stride`` steps. Inputs are the columns ``inputs`` (default: the target itself);
    the target at step t is ``target`` at step t + ``horizon`` (default 1 when the
    target is among the inputs, a next-step forecast, else 0).
    """
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame; got {type(frame).__name__}")
    classification = _check_task(task)
    split = _check_split(split)
    targets = [target] if isinstance(target, str) else list(target)
    inputs = list(targets if inputs is None else inputs)
    for col in (*targets, *inputs, *(c for c in (series, time) if c is not None)):
        if col not in frame.columns:
            raise ValueError(
                f"column {col!r} is not in the data; its columns are {list(frame.columns)}"
            )
    if horizon is None:
        horizon = 1 if set(targets) & set(inputs) else 0
    if not isinstance(length, (int, np.integer)) or length < 2:
        raise ValueError(f"length must be an integer >= 2 (steps per window); got {length!r}")
    if not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be an integer >= 1; got {stride!r}")
    if not isinstance(horizon, (int, np.integer)) or horizon < 0:
        raise ValueError(f"horizon must be an integer >= 0; got {horizon!r}")
    df = frame
    if classification:
        codes = {t: pd.Categorical(df[t]) for t in targets}
        df = df.assign(**{t: c.codes.astype(np.float64) for t, c in codes.items()})
        if any((df[t] < 0).any() for t in targets):  # a missing label
            _check_finite(f"target {targets}", np.full((1, 1), np.nan))
    groups = [df] if series is None else [g for _, g in df.groupby(series, sort=True)]
    parts: dict[str, list] = {p: [[], []] for p in PARTS}
    for g in groups:
        if time is not None:
            g = g.sort_values(time)
        x_all = g[inputs].to_numpy(np.float64)
        y_all = g[targets].to_numpy(np.float64)
        _check_finite(f"the input column(s) {inputs}", x_all[:, None])
        _check_finite(f"the target column(s) {targets}", y_all[:, None])
        n = x_all.shape[0] - horizon
        x_all, y_all = x_all[:n], y_all[horizon:]
        n_train, n_val = _split_counts(n, split)
        bounds = {
            "train": (0, n_train),
            "val": (n_train, n_train + n_val),
            "test": (n_train + n_val, n),
        }
        for p, (a, b) in bounds.items():
            wx, wy = _windows(x_all[a:b], y_all[a:b], int(length), int(stride))
            parts[p][0].append(wx)
            parts[p][1].append(wy)
    stacked = {p: (np.concatenate(v[0]), np.concatenate(v[1])) for p, v in parts.items()}
    what = f"{len(groups)} series" if series is not None else "one series"
    return _finish(
        stacked, classification, normalize, f"{what}, windows of {length} every {stride}"
    )


def from_csv(path: str | os.PathLike, target: str | Sequence[str], **options: Any) -> Dataset:
    """A :class:`Dataset` from a CSV file of one or several long series (see
    :func:`from_frame` for the options)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no CSV file at {path}")
    return from_frame(pd.read_csv(path), target, **options)


def load(data: Any, *arrays: Any, **options: Any) -> Dataset:
    """A :class:`Dataset` from any input form: a Dataset (as it is), a DataFrame or a CSV
    path (with ``target=`` and ``length=``), or arrays ``x_train, y_train[, x_val, y_val[,
    x_test, y_test]]``."""
    import pandas as pd

    if isinstance(data, Dataset):
        if arrays or options:
            raise TypeError("a Dataset takes no further arrays or data options")
        return data
    frame_keys = ("target", "length", "stride", "inputs", "horizon", "series", "time")
    if isinstance(data, (pd.DataFrame, str, os.PathLike)):
        if any(a is not None for a in arrays):
            raise TypeError("a DataFrame or CSV file comes alone; the parts are cut by time")
        if options.get("target") is None or options.get("length") is None:
            raise ValueError(
                "a DataFrame or CSV file needs target= (the column to predict) and length= "
                "(steps per window)"
            )
        opts = {k: v for k, v in options.items() if v is not None}
        target = opts.pop("target")
        if isinstance(data, pd.DataFrame):
            return from_frame(data, target, **opts)
        return from_csv(data, target, **opts)
    given = [k for k in frame_keys if options.get(k) is not None]
    if given:
        raise TypeError(f"{given} apply to a DataFrame or CSV file, not to arrays")
    opts = {k: v for k, v in options.items() if k not in frame_keys}
    return from_arrays(data, *arrays, **opts)  # parts not given are None


__all__ = [
    "Dataset",
    "MIN_SEQUENCES",
    "SPLIT",
    "check_sizes",
    "from_arrays",
    "from_csv",
    "from_frame",
    "load",
]
