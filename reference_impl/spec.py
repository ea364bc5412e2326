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

Each strategy is a small frozen value (:class:`Zero`, :class:`Uniform`,
:class:`Xavier`, :class:`Learnable`, :class:`Noisy`), built from ``strategy="name"``
plus keywords by :func:`make`, which also does all the validation. The value carries
the plan every framework executes: per state component its :attr:`~Strategy.source`
(zeros, a fresh draw, a stored draw or a trainable vector), the bound of its draws,
how a vector starts, and the noise rule with its std parametrization
(:class:`NoiseStd`). The framework modules turn that plan into their tensors and
decide nothing themselves; :func:`reference_state` is the same plan executed with
numpy, which the tests hold every framework to.

``uniform`` and ``xavier`` take ``resample``: ``True`` (default) draws a fresh state
for every call, independently for every batch row; ``False`` draws one vector per
layer, direction and component once, stores it (non-trainable, saved with the
model) and broadcasts it over the batch.

>>> import numpy as np
>>> plan = make("noisy", noise_std=0.2, base="learnable")
>>> plan.source, plan.noise.std
('param', 0.2)
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

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

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
#: one-word change. The strategy classes below are built from these.
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
    if isinstance(strategy, Strategy):
        return strategy.name
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


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` as a bool if it is ``True`` or ``False``, else raise."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def check_seed(seed: object) -> int | None:
    """Return ``seed`` as an int (or ``None``), else raise."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer or None; got {seed!r}")
    return int(seed)


def _check_nonneg_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number; got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return value


def resolve_options(strategy: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate a strategy's keyword options and fill in the defaults.

    The same as ``make(strategy, **options).options()``: every framework goes through
    :func:`make`, so unknown options and bad values are reported the same way
    everywhere.

    >>> resolve_options("noisy", {"noise_std": 0.2})["noise_std"]
    0.2
    >>> resolve_options("zero", {"bound": 1.0})
    Traceback (most recent call last):
    ...
    ValueError: unknown option(s) ['bound'] for strategy 'zero'; it accepts ['seed']
    """
    return make(strategy, **options).options()


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


def carry_features(shape: Sequence[int]) -> int:
    """The size that sets the bounds of a state component of any shape: its last axis.

    A built-in cell's state is a vector of ``features``. A cell of a framework's
    protocol may carry more axes, e.g. a convolutional LSTM's ``(height, width,
    channels)``: a vector of ``channels`` at each position, so ``uniform`` and
    ``xavier`` draw with that vector's bound, as for a vector state. Stored and
    learnable vectors take the component's whole shape (one value per element,
    broadcast over the batch axes only).

    >>> carry_features((16, 16, 8)), carry_features((32,))
    (8, 32)
    """
    shape = tuple(int(s) for s in shape)
    if not shape:
        raise ValueError("a state component needs a features axis; got shape ()")
    return check_positive_int("features", shape[-1])


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
    check_positive_int("batch_size", batch_size, allow_zero=True)  # an empty batch, as the layers
    rows = num_layers * (2 if bidirectional else 1)
    return tuple((rows, batch_size, f) for f in component_features(cell, hidden_size, proj_size))


# --------------------------------------------------------------------------- given state


@dataclasses.dataclass(frozen=True)
class Slot:
    """One component of an expected state: its name and shape (``None``: any size)."""

    name: str
    shape: tuple[int | None, ...]


def describe_state(tree: object) -> str:
    """A short text for a (nested) state: ``(c(4, 8), h(4, 8))`` for slots, arrays as
    ``array(4, 8)``."""
    if isinstance(tree, Slot):
        return tree.name + str(tuple(tree.shape))
    if isinstance(tree, (tuple, list)):
        inner = ", ".join(describe_state(t) for t in tree)
        if isinstance(tree, list):
            return f"[{inner}]"
        return f"({inner},)" if len(tree) == 1 else f"({inner})"
    if isinstance(tree, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe_state(v)}" for k, v in tree.items()) + "}"
    if hasattr(tree, "shape"):
        return f"array{tuple(tree.shape)}"
    return "None" if tree is None else type(tree).__name__


def _pairs(given: object, expected: object) -> list[tuple[Any, Slot]] | None:
    if isinstance(expected, Slot):
        return [(given, expected)] if hasattr(given, "shape") else None
    if not isinstance(given, (tuple, list)) or len(given) != len(expected):
        return None
    pairs = [_pairs(g, e) for g, e in zip(given, expected, strict=True)]
    return None if None in pairs else [pair for p in pairs for pair in p]


def check_init_result(shape: Sequence[int], expected: Sequence[int]) -> None:
    """The ``ValueError`` for a callable ``init`` that returned the wrong shape."""
    if tuple(shape) != tuple(expected):
        raise ValueError(f"init returned shape {tuple(shape)}; expected {tuple(expected)}")


def check_given_state(given: object, expected: object, hint: str) -> list[Any]:
    """Check a state passed in by the user against the expected :class:`Slot` s (nested in
    tuples or lists); return its arrays in order. Every framework raises these errors:
    ``TypeError`` when it is not structured as expected, ``ValueError`` for a shape.
    ``hint`` says the framework's layout.

    >>> check_given_state([np.zeros((2, 5))], [Slot("h", (2, 4))], "(batch, units)")
    Traceback (most recent call last):
    ValueError: initial state h has shape (2, 5); expected (2, 4) ((batch, units))
    """
    pairs = _pairs(given, expected)
    if pairs is None:
        raise TypeError(
            f"the initial state must be structured as {describe_state(expected)} ({hint}); "
            f"got {describe_state(given)}"
        )
    for array, slot in pairs:
        got = tuple(array.shape)
        fits = zip(got, slot.shape, strict=False)
        if len(got) != len(slot.shape) or any(None not in (a, b) and a != b for a, b in fits):
            raise ValueError(
                f"initial state {slot.name} has shape {got}; expected {slot.shape} ({hint})"
            )
    return [array for array, _ in pairs]


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


def noise_std_from_raw(
    rho: Any, min_std: float = 0.0, softplus_fn: Callable[[Any], Any] | None = None
) -> Any:
    """A learnable std from its raw parameter: ``min_std + softplus(rho)``, always > 0.

    The one place the formula is written; ``softplus_fn`` is the framework's softplus
    (numpy's by default). :meth:`NoiseStd.from_raw` calls it.
    """
    return min_std + (softplus_fn or softplus)(rho)


# --------------------------------------------------------------------------- strategies
# Each strategy is a small frozen value, validated once when it is made, that carries
# every framework-neutral decision: where each state component comes from
# (``source``), the bound or initializer of its draws, and the noise rule. A
# framework module executes that plan with its own tensors and decides nothing.

SOURCES = ("zeros", "draw", "stored", "param")
"""Where each state component comes from (per layer, direction and component):
``"zeros"``; ``"draw"``, a fresh ``U(-b, b)`` draw per call and batch row;
``"stored"``, one vector drawn once, kept (saved, not trained) and broadcast over the
batch; ``"param"``, one trainable vector broadcast over the batch."""


@dataclasses.dataclass(frozen=True)
class NoiseStd:
    """The noise standard deviation and its parametrization, defined once.

    A fixed sigma is stored as itself. A learnable sigma is stored as ``raw`` with
    ``sigma = min_std + softplus(raw)``: positive by construction, never below the
    floor. A framework passes its own ``softplus`` to :meth:`from_raw`.

    >>> rule = NoiseStd(0.5, learnable=True, min_std=0.1)
    >>> round(float(rule.from_raw(rule.raw())), 6)
    0.5
    >>> NoiseStd(0.2).raw(0.3)  # a fixed sigma is stored as itself
    0.3
    """

    std: float = 0.1
    learnable: bool = False
    min_std: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "std", _check_nonneg_float("noise_std", self.std))
        object.__setattr__(self, "min_std", _check_nonneg_float("min_std", self.min_std))
        object.__setattr__(self, "learnable", check_bool("learnable_std", self.learnable))
        check_noise_std(self.std, self.learnable, self.min_std)

    @property
    def draws(self) -> bool:
        """Whether training draws noise at all (a learnable sigma always does)."""
        return self.learnable or self.std > 0

    def raw(self, value: float | None = None) -> float:
        """The stored value for sigma ``value`` (default: the initial sigma), checked."""
        value = self.std if value is None else value
        check_noise_std(value, self.learnable, self.min_std)
        return inverse_softplus(value - self.min_std) if self.learnable else float(value)

    def from_raw(self, raw: Any, softplus_fn: Callable[[Any], Any] | None = None) -> Any:
        """Sigma from the stored value: ``min_std + softplus(raw)``, or ``raw`` if fixed.

        ``softplus_fn`` is the framework's softplus (numpy's by default).
        """
        if not self.learnable:
            return raw
        return noise_std_from_raw(raw, self.min_std, softplus_fn)


@dataclasses.dataclass(frozen=True)
class Strategy:
    """Base of the five strategy values. Build one with :func:`make`."""

    name: ClassVar[str] = ""
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "seed", check_seed(self.seed))

    @property
    def source(self) -> str:
        """One of :data:`SOURCES`."""
        return "zeros"

    def draw_bound(self, features: int) -> float:
        """``b`` of the ``U(-b, b)`` draws of the ``"draw"`` and ``"stored"`` sources."""
        raise ValueError(f"strategy {self.name!r} draws no uniform state")

    def vector_init(self, features: int) -> float | Callable | None:
        """How a stored or trainable vector starts: ``None`` for zeros, a float ``b``
        for a ``U(-b, b)`` draw, or the user's callable (in the framework's convention)."""
        return None

    @property
    def noise(self) -> NoiseStd | None:
        """The noise rule (``noisy`` only): ``state + sigma * N(0, 1)`` in training."""
        return None

    def noise_rule(self) -> NoiseStd:
        """:attr:`noise`, or the ``AttributeError`` every framework raises for
        ``noise_std`` on a strategy without noise."""
        if self.noise is None:
            raise AttributeError(f"strategy {self.name!r} has no noise_std")
        return self.noise

    def options(self) -> dict[str, Any]:
        """The keyword options, as ``strategy=self.name, **options`` takes them."""
        return {k: getattr(self, k) for k in OPTIONS[self.name]}


@dataclasses.dataclass(frozen=True)
class Zero(Strategy):
    """All zeros."""

    name: ClassVar[str] = "zero"


@dataclasses.dataclass(frozen=True)
class Uniform(Strategy):
    """``U(-b, b)`` with ``b = bound``, or ``1 / sqrt(features)`` when ``bound=None``."""

    name: ClassVar[str] = "uniform"
    bound: float | None = None
    resample: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "resample", check_bool("resample", self.resample))
        if self.bound is not None:
            b = _check_nonneg_float("bound", self.bound)
            if b == 0:
                raise ValueError("bound must be > 0 (use strategy='zero' for an all-zero state)")
            object.__setattr__(self, "bound", b)

    @property
    def source(self) -> str:
        return "draw" if self.resample else "stored"

    def draw_bound(self, features: int) -> float:
        return uniform_bound(features, self.bound)

    def vector_init(self, features: int) -> float | Callable | None:
        return self.draw_bound(features)


@dataclasses.dataclass(frozen=True)
class Xavier(Strategy):
    """Glorot uniform for a state vector: ``b = gain * sqrt(6 / (2 features))``."""

    name: ClassVar[str] = "xavier"
    gain: float = 1.0
    resample: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "resample", check_bool("resample", self.resample))
        object.__setattr__(self, "gain", _check_nonneg_float("gain", self.gain))

    @property
    def source(self) -> str:
        return "draw" if self.resample else "stored"

    def draw_bound(self, features: int) -> float:
        return xavier_bound(features, self.gain)

    def vector_init(self, features: int) -> float | Callable | None:
        return self.draw_bound(features)


@dataclasses.dataclass(frozen=True)
class Learnable(Strategy):
    """One trainable vector per layer, direction and component; ``init`` names its start."""

    name: ClassVar[str] = "learnable"
    init: str | Callable = "zeros"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.init) and self.init not in LEARNABLE_INITS:
            raise ValueError(
                f"unknown init {self.init!r} for the learnable strategy; expected one of "
                f"{LEARNABLE_INITS} or a callable"
            )

    @property
    def source(self) -> str:
        return "param"

    def vector_init(self, features: int) -> float | Callable | None:
        if callable(self.init):
            return self.init
        if self.init == "uniform":
            return uniform_bound(features)
        return xavier_bound(features) if self.init == "xavier" else None


@dataclasses.dataclass(frozen=True)
class Noisy(Strategy):
    """A base (``zero``, or a ``learnable`` vector starting at zeros) plus training noise."""

    name: ClassVar[str] = "noisy"
    noise_std: float = 0.1
    learnable_std: bool = False
    min_std: float = 0.0
    base: str = "zero"

    def __post_init__(self) -> None:
        super().__post_init__()
        rule = NoiseStd(self.noise_std, self.learnable_std, self.min_std)
        object.__setattr__(self, "noise_std", rule.std)
        object.__setattr__(self, "min_std", rule.min_std)
        object.__setattr__(self, "learnable_std", rule.learnable)
        if self.base not in NOISY_BASES:
            raise ValueError(
                f"unknown base {self.base!r} for the noisy strategy; expected one of {NOISY_BASES}"
            )

    @property
    def source(self) -> str:
        return "param" if self.base == "learnable" else "zeros"

    @property
    def noise(self) -> NoiseStd:
        return NoiseStd(self.noise_std, self.learnable_std, self.min_std)


_CLASSES: dict[str, type[Strategy]] = {c.name: c for c in (Zero, Uniform, Xavier, Learnable, Noisy)}


def make(strategy: str | Strategy, /, **options: Any) -> Strategy:
    """The strategy value for ``strategy="name"`` plus its keyword options.

    A :class:`Strategy` value is returned as it is (and takes no options). Unknown
    names and options, and bad values, raise here, with the same message in every
    framework.

    >>> make("noisy", noise_std=0.2, base="learnable")
    Noisy(seed=None, noise_std=0.2, learnable_std=False, min_std=0.0, base='learnable')
    >>> make("xavier").draw_bound(64) == xavier_bound(64)
    True
    """
    if isinstance(strategy, Strategy):
        if options:
            raise ValueError(
                f"strategy {strategy!r} is already a value; options {sorted(options)} belong in it"
            )
        return strategy
    cls = _CLASSES[check_strategy(strategy)]
    allowed = OPTIONS[cls.name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for strategy {cls.name!r}; it accepts {sorted(allowed)}"
        )
    return cls(**options)


# --------------------------------------------------------------------------- reference


def reference_state(
    strategy: str | Strategy,
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

    This is the plan of :func:`make` executed with numpy: the frameworks execute the
    same plan with their tensors. ``learned`` holds the stored or trainable vectors,
    one ``(layers * directions, features)`` array per component; without it they
    are what the strategy starts from. Randomness comes from ``rng``: the frameworks
    draw from their own generators, so random strategies are compared by their
    bounds and statistics, not value by value.
    """
    plan = make(strategy, **options)
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
        if plan.source == "zeros":
            state = np.zeros((rows, batch, features))
        elif plan.source == "draw":
            b = plan.draw_bound(features)
            state = rng.uniform(-b, b, size=(rows, batch, features))
        else:  # "stored" or "param": one vector per row, broadcast over the batch
            vec = _vector(plan, i, rows, features, rng, learned)
            state = np.broadcast_to(vec[:, None, :], (rows, batch, features)).copy()
        noise = plan.noise
        if noise is not None and training and noise.std > 0:
            state = state + rng.normal(0.0, noise.std, size=state.shape)
        out.append(state)
    return tuple(out)


def _vector(
    plan: Strategy,
    index: int,
    rows: int,
    features: int,
    rng: np.random.Generator,
    learned: Sequence[np.ndarray] | None,
) -> np.ndarray:
    if learned is not None:
        vec = np.asarray(learned[index], dtype=np.float64)
        if vec.shape != (rows, features):
            raise ValueError(
                f"learned component {index} has shape {vec.shape}; expected {(rows, features)}"
            )
        return vec
    init = plan.vector_init(features)
    if init is None or callable(init):
        return np.zeros((rows, features))
    return rng.uniform(-init, init, size=(rows, features))


def noisy_cell_step(
    step: Callable[[np.ndarray, Any], Any],
    x_t: np.ndarray,
    state: Any,
    noise_std: float,
    rng: np.random.Generator | None = None,
    training: bool = True,
    *,
    noise: Any = None,
) -> Any:
    """One step of ``NoisyCell``: noise on the carried state, then the wrapped cell.

    ``state`` is one array or a tuple of arrays (LSTM); in training every component
    gets independent ``N(0, noise_std^2)`` noise before the cell reads it, so the
    noise enters at every step (the initial state included). ``noise`` gives the
    standard normal draws of this step (same structure as ``state``), as the
    frameworks do when they draw the noise of all steps at once; without it they
    are drawn from ``rng``. Outside training the step is exactly the wrapped cell's.
    """
    if training and noise_std > 0:
        parts = state if isinstance(state, tuple) else (state,)
        if noise is None:
            noise = tuple(rng.normal(0.0, 1.0, size=np.shape(s)) for s in parts)
        eps = noise if isinstance(noise, tuple) else (noise,)
        if len(eps) != len(parts):
            raise ValueError(f"noise has {len(eps)} component(s); the state has {len(parts)}")
        noisy = tuple(s + noise_std * np.asarray(e) for s, e in zip(parts, eps, strict=True))
        state = noisy if isinstance(state, tuple) else noisy[0]
    return step(x_t, state)
