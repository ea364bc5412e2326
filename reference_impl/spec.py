"""The framework-neutral definition of each initial-state strategy, in numpy.

Every framework module (``reference_impl.torch``, ``reference_impl.tensorflow``,
``reference_impl.flax.linen``, ``reference_impl.flax.nnx``) implements exactly what
this file says, and every framework's tests check it against these functions. The
functions here are also the shared validators, so a bad option gets the same error
message in every framework.

Layout used here (PyTorch's, the most general one): one array per state component,
each of shape ``(num_layers * num_directions, batch, features)``. A GRU or simple RNN
has one component (``h``), an LSTM two (``h`` and ``c``; with ``proj_size > 0`` the
``h`` component has ``proj_size`` features). Other frameworks reorder this layout
but hold the same numbers.

The five strategies:

``zero``
    All zeros.
``uniform``
    ``U(-b, b)`` with ``b = 1 / sqrt(features)`` by default (the bound PyTorch uses
    for its RNN weights), or ``bound=b``.
``xavier``
    Glorot uniform for a state *vector* of size ``H``: ``fan_in = fan_out = H`` so
    ``b = gain * sqrt(6 / (2 H))``. The bound never depends on the batch size.
``learnable``
    One trainable vector per layer, direction and state component, broadcast over
    the batch. Starts at zeros, or at a draw of ``uniform``/``xavier`` (``init=``).
``noisy``
    A base state (``zero`` or ``learnable``) plus ``N(0, sigma^2)`` noise in training
    only; at evaluation exactly the base state. ``sigma`` is fixed or learnable;
    a learnable sigma is ``min_std + softplus(rho)`` so it is positive by
    construction and never falls below the floor ``min_std``.

``uniform`` and ``xavier`` take ``resample``: ``True`` (default) draws a fresh state
for every call, independently for every batch row; ``False`` draws one vector per
layer, direction and component once, stores it (non-trainable, saved with the
model) and broadcasts it over the batch.

>>> import numpy as np
>>> xavier_bound(64)  # sqrt(6 / 128)
0.21650635094610965
>>> shapes = state_shapes("lstm", hidden_size=32, batch_size=4, num_layers=2, proj_size=8)
>>> shapes
((2, 4, 8), (2, 4, 32))
>>> h, c = reference_state("zero", "lstm", hidden_size=32, batch_size=4, num_layers=2, proj_size=8)
>>> float(np.abs(h).max()), h.shape, c.shape
(0.0, (2, 4, 8), (2, 4, 32))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from reference_impl import STRATEGIES

CELLS = ("gru", "lstm", "rnn")
"""The cell kinds. A GRU and a simple (Elman) RNN carry ``h``, an LSTM ``(h, c)``."""

LEARNABLE_INITS = ("zeros", "uniform", "xavier")
"""Named initializers for the ``learnable`` strategy (a callable is accepted too)."""

NOISY_BASES = ("zero", "learnable")
"""Base states the ``noisy`` strategy adds its noise to."""

#: Options each strategy accepts, with their defaults. ``None`` means "derived from
#: the sizes" (``bound``) or "framework's global generator" (``seed``). Every
#: strategy takes ``seed`` (``zero`` ignores it), so switching strategies is a
#: one-word change.
OPTIONS: dict[str, dict[str, Any]] = {
    "zero": {"seed": None},
    "uniform": {"bound": None, "resample": True, "seed": None},
    "xavier": {"gain": 1.0, "resample": True, "seed": None},
    "learnable": {"init": "zeros", "seed": None},
    "noisy": {
        "noise_std": 0.1,
        "learnable_std": False,
        "min_std": 0.0,
        "base": "zero",
        "seed": None,
    },
}


# --------------------------------------------------------------------------- checks


def check_strategy(strategy: object) -> str:
    """Return ``strategy`` if it is one of :data:`reference_impl.STRATEGIES`, else raise.

    >>> check_strategy("xavier")
    'xavier'
    """
    if not isinstance(strategy, str):
        raise TypeError(
            f"strategy must be a string, one of {STRATEGIES}; got {strategy!r} "
            f"of type {type(strategy).__name__}"
        )
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    return strategy


def check_cell(cell: object) -> str:
    """Return the normalized cell kind (``"gru"``, ``"lstm"`` or ``"rnn"``), else raise."""
    if not isinstance(cell, str) or cell.lower() not in CELLS:
        raise ValueError(f"unsupported cell {cell!r}; expected one of {CELLS}")
    return cell.lower()


def check_positive_int(name: str, value: object, *, allow_zero: bool = False) -> int:
    """Return ``value`` as an int if it is a positive integer (or zero when allowed)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer; got {value!r}")
    low = 0 if allow_zero else 1
    if value < low:
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a {kind} integer; got {value!r}")
    return int(value)


def _check_nonneg_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number; got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return value


def resolve_options(strategy: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate a strategy's keyword options and fill in the defaults.

    Every framework calls this, so unknown options and bad values are reported the
    same way everywhere.

    >>> resolve_options("noisy", {"noise_std": 0.2})["noise_std"]
    0.2
    >>> resolve_options("zero", {"bound": 1.0})
    Traceback (most recent call last):
    ...
    ValueError: unknown option(s) ['bound'] for strategy 'zero'; it accepts ['seed']
    """
    check_strategy(strategy)
    allowed = OPTIONS[strategy]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        accepts = sorted(allowed) if allowed else "none"
        raise ValueError(
            f"unknown option(s) {unknown} for strategy {strategy!r}; it accepts {accepts}"
        )
    out = {**allowed, **options}
    if "seed" in out and out["seed"] is not None:
        if isinstance(out["seed"], bool) or not isinstance(out["seed"], (int, np.integer)):
            raise TypeError(f"seed must be an integer or None; got {out['seed']!r}")
        out["seed"] = int(out["seed"])
    if "resample" in out and not isinstance(out["resample"], (bool, np.bool_)):
        raise TypeError(f"resample must be True or False; got {out['resample']!r}")
    if strategy == "uniform" and out["bound"] is not None:
        out["bound"] = _check_nonneg_float("bound", out["bound"])
        if out["bound"] == 0:
            raise ValueError("bound must be > 0 (use strategy='zero' for an all-zero state)")
    if strategy == "xavier":
        out["gain"] = _check_nonneg_float("gain", out["gain"])
    if strategy == "learnable":
        init = out["init"]
        if not callable(init) and init not in LEARNABLE_INITS:
            raise ValueError(
                f"unknown init {init!r} for the learnable strategy; expected one of "
                f"{LEARNABLE_INITS} or a callable"
            )
    if strategy == "noisy":
        out["noise_std"] = _check_nonneg_float("noise_std", out["noise_std"])
        out["min_std"] = _check_nonneg_float("min_std", out["min_std"])
        if not isinstance(out["learnable_std"], (bool, np.bool_)):
            raise TypeError(f"learnable_std must be True or False; got {out['learnable_std']!r}")
        if out["base"] not in NOISY_BASES:
            raise ValueError(
                f"unknown base {out['base']!r} for the noisy strategy; expected one of "
                f"{NOISY_BASES}"
            )
        check_noise_std(out["noise_std"], out["learnable_std"], out["min_std"])
    return out


def check_noise_std(noise_std: float, learnable_std: bool, min_std: float = 0.0) -> None:
    """Raise unless ``noise_std`` is valid; a learnable std must start above its floor."""
    _check_nonneg_float("noise_std", noise_std)
    _check_nonneg_float("min_std", min_std)
    if learnable_std and noise_std <= min_std:
        raise ValueError(
            f"a learnable noise_std must start above min_std={min_std!r} (it is "
            f"min_std + softplus(rho)); got noise_std={noise_std!r}"
        )
    if not learnable_std and noise_std < min_std:
        raise ValueError(f"noise_std={noise_std!r} is below min_std={min_std!r}")


# --------------------------------------------------------------------------- sizes


def num_components(cell: str) -> int:
    """Number of state components: 2 for an LSTM (``h`` and ``c``), else 1."""
    return 2 if check_cell(cell) == "lstm" else 1


def component_features(cell: str, hidden_size: int, proj_size: int = 0) -> tuple[int, ...]:
    """Feature size of each state component, in order (``h`` first).

    >>> component_features("lstm", 32, proj_size=8)
    (8, 32)
    """
    cell = check_cell(cell)
    check_positive_int("hidden_size", hidden_size)
    check_positive_int("proj_size", proj_size, allow_zero=True)
    if proj_size and cell != "lstm":
        raise ValueError(f"proj_size={proj_size} is only supported for an LSTM, not {cell!r}")
    if proj_size >= hidden_size and proj_size:
        raise ValueError(f"proj_size={proj_size} must be smaller than hidden_size={hidden_size}")
    h = proj_size if proj_size else hidden_size
    return (h, hidden_size) if cell == "lstm" else (h,)


def state_shapes(
    cell: str,
    *,
    hidden_size: int,
    batch_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    proj_size: int = 0,
) -> tuple[tuple[int, int, int], ...]:
    """Shape of each state component in the ``(layers * directions, batch, features)`` layout."""
    check_positive_int("num_layers", num_layers)
    check_positive_int("batch_size", batch_size)
    rows = num_layers * (2 if bidirectional else 1)
    return tuple((rows, batch_size, f) for f in component_features(cell, hidden_size, proj_size))


# --------------------------------------------------------------------------- bounds


def uniform_bound(features: int, bound: float | None = None) -> float:
    """Bound ``b`` of the ``uniform`` strategy: ``bound`` if given, else ``1/sqrt(features)``."""
    check_positive_int("features", features)
    return float(bound) if bound is not None else 1.0 / math.sqrt(features)


def xavier_bound(features: int, gain: float = 1.0) -> float:
    """Bound ``b`` of the ``xavier`` strategy: ``gain * sqrt(6 / (features + features))``.

    The state is one vector of ``features`` values per batch row, so both fans are
    ``features``; the batch size does not enter.
    """
    check_positive_int("features", features)
    return float(gain) * math.sqrt(6.0 / (2.0 * features))


def naive_glorot_bound(shape: Sequence[int]) -> float:
    """The bound a careless Glorot initializer applied to the whole state tensor uses.

    ``torch.nn.init.xavier_uniform_`` on a ``(rows, batch, features)`` tensor takes
    ``fan_in = batch * features`` and ``fan_out = rows * features``; a 2-D
    ``(batch, features)`` carry given to ``xavier_uniform_`` or to JAX's
    ``glorot_uniform`` takes ``fan_in + fan_out = batch + features``. Either way the
    scale of the state changes with the batch size. This function exists so the
    tests and the book can show the mistake; no strategy uses it.

    >>> round(naive_glorot_bound((1, 16, 64)), 4), round(naive_glorot_bound((1, 256, 64)), 4)
    (0.0743, 0.0191)
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return math.sqrt(6.0 / (shape[0] + shape[1]))
    if len(shape) < 2:
        raise ValueError(f"a Glorot bound needs at least 2 dimensions; got shape {shape}")
    receptive = math.prod(shape[2:])
    return math.sqrt(6.0 / (shape[1] * receptive + shape[0] * receptive))


def uniform_std(bound: float) -> float:
    """Standard deviation of ``U(-bound, bound)``: ``bound / sqrt(3)``."""
    return bound / math.sqrt(3.0)


def softplus(x: np.ndarray | float) -> np.ndarray | float:
    """Numerically stable ``log(1 + exp(x))``."""
    x = np.asarray(x, dtype=np.float64)
    return np.logaddexp(0.0, x)


def inverse_softplus(y: float) -> float:
    """``rho`` with ``softplus(rho) == y`` (``y > 0``), so a learnable std starts at ``y``."""
    if y <= 0:
        raise ValueError(f"inverse_softplus needs y > 0; got {y!r}")
    return float(y + math.log(-math.expm1(-y)))


def noise_std_from_raw(rho: np.ndarray | float, min_std: float = 0.0) -> np.ndarray | float:
    """A learnable std from its raw parameter: ``min_std + softplus(rho)``, always > 0."""
    return min_std + softplus(rho)


# --------------------------------------------------------------------------- reference


def _draw_vectors(
    kind: str, features: int, rows: int, rng: np.random.Generator, options: dict[str, Any]
) -> np.ndarray:
    """One vector per row (layer x direction) drawn by a named initializer."""
    if kind == "zeros":
        return np.zeros((rows, features))
    if kind == "uniform":
        b = uniform_bound(features, options.get("bound"))
    elif kind == "xavier":
        b = xavier_bound(features, options.get("gain", 1.0))
    else:  # pragma: no cover - guarded by resolve_options
        raise ValueError(kind)
    return rng.uniform(-b, b, size=(rows, features))


def reference_state(
    strategy: str,
    cell: str,
    *,
    hidden_size: int,
    batch_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    proj_size: int = 0,
    training: bool = True,
    rng: np.random.Generator | None = None,
    learned: Sequence[np.ndarray] | None = None,
    **options: Any,
) -> tuple[np.ndarray, ...]:
    """The initial state a strategy produces, as numpy arrays (one per component).

    ``learned`` holds the learnable vectors, one ``(layers * directions, features)``
    array per component (the ``learnable`` strategy, or ``noisy`` with
    ``base="learnable"``); without it they are what the strategy starts from.
    Randomness comes from ``rng``: the frameworks draw from their own generators, so
    random strategies are compared by their bounds and statistics, not value by value.
    """
    options = resolve_options(strategy, options)
    rng = rng if rng is not None else np.random.default_rng(0)
    shapes = state_shapes(
        cell,
        hidden_size=hidden_size,
        batch_size=batch_size,
        num_layers=num_layers,
        bidirectional=bidirectional,
        proj_size=proj_size,
    )
    out = []
    for i, (rows, batch, features) in enumerate(shapes):
        if strategy == "zero":
            state = np.zeros((rows, batch, features))
        elif strategy in ("uniform", "xavier"):
            if options["resample"]:
                if strategy == "uniform":
                    b = uniform_bound(features, options["bound"])
                else:
                    b = xavier_bound(features, options["gain"])
                state = rng.uniform(-b, b, size=(rows, batch, features))
            else:
                vec = _draw_vectors(strategy, features, rows, rng, options)
                state = np.broadcast_to(vec[:, None, :], (rows, batch, features)).copy()
        elif strategy == "learnable" or (strategy == "noisy" and options["base"] == "learnable"):
            if learned is not None:
                vec = np.asarray(learned[i], dtype=np.float64)
                if vec.shape != (rows, features):
                    raise ValueError(
                        f"learned component {i} has shape {vec.shape}; expected {(rows, features)}"
                    )
            elif strategy == "learnable" and not callable(options["init"]):
                vec = _draw_vectors(options["init"], features, rows, rng, options)
            else:
                vec = np.zeros((rows, features))
            state = np.broadcast_to(vec[:, None, :], (rows, batch, features)).copy()
        else:  # noisy with a zero base
            state = np.zeros((rows, batch, features))
        if strategy == "noisy" and training and options["noise_std"] > 0:
            state = state + rng.normal(0.0, options["noise_std"], size=state.shape)
        out.append(state)
    return tuple(out)


def noisy_cell_step(
    step: Callable[[np.ndarray, Any], Any],
    x_t: np.ndarray,
    state: Any,
    noise_std: float,
    rng: np.random.Generator,
    training: bool,
) -> Any:
    """One step of ``NoisyCell``: noise on the carried state, then the wrapped cell.

    ``state`` is one array or a tuple of arrays (LSTM); in training every component
    gets independent ``N(0, noise_std^2)`` noise before the cell reads it, so the
    noise enters at every step (the initial state included). Outside training the
    step is exactly the wrapped cell's.
    """
    if training and noise_std > 0:
        if isinstance(state, tuple):
            state = tuple(s + rng.normal(0.0, noise_std, size=s.shape) for s in state)
        else:
            state = state + rng.normal(0.0, noise_std, size=state.shape)
    return step(x_t, state)
