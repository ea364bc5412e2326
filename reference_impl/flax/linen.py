"""Initial states for Flax linen recurrent layers.

Use it as ``from reference_impl.flax import linen as ri``::

    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from reference_impl.flax import linen as ri
    >>> model = ri.InitialStateRNN(nn.GRUCell(features=8), strategy="learnable")
    >>> x = jnp.ones((4, 5, 3))  # (batch, time, features)
    >>> variables = model.init(jax.random.key(0), x)
    >>> model.apply(variables, x).shape
    (4, 5, 8)
    >>> variables["params"]["initial_state"]["h"].shape  # (directions, features)
    (1, 8)

The strategies are defined in :mod:`reference_impl.spec`; this module implements
them with JAX arrays. The Flax specifics:

Where the state lives
    An :class:`InitialState` holds one vector per direction and state component, in
    an array of shape ``(directions, features)`` named ``"h"`` (and ``"c"`` for an
    LSTM): PyTorch's ``(num_layers * num_directions, features)`` layout for one
    layer, row 0 forward, row 1 backward. Learnable vectors are in ``"params"``;
    ``resample=False`` draws are in the non-trainable :data:`BUFFERS` collection
    (``"buffers"``, PyTorch's word), so that an optimizer never sees them: a
    stop-gradient parameter would still be moved by weight decay. Pass *all* the
    variables returned by ``init`` to ``apply``, not only ``"params"``.
    :class:`InitialStateRNN` names its submodules ``rnn`` and ``initial_state`` for
    one layer and ``rnn_{i}`` / ``initial_state_{i}`` for layer ``i`` of a stack.
Randomness
    JAX has no hidden generator state, so every draw takes its key from a Flax rng
    stream: :data:`INITIAL_STATE_RNG` (``"initial_state"``) for ``uniform`` and
    ``xavier`` with ``resample=True`` (a fresh draw per call and per batch row);
    :data:`NOISE_RNG` (``"noise"``) for the ``noisy`` strategy and for
    :class:`NoisyCell`; ``"params"`` for what is drawn once at ``init``. At ``init``
    a missing stream falls back to ``"params"`` (Flax's rule); at ``apply`` a
    missing stream is a ``ValueError`` that names it. Under ``jax.vmap`` the same
    key gives every mapped row the same draw: map over keys as well.
``seed``
    Rejected with a ``ValueError``: a seed cannot give a fresh draw per call without
    hidden state. The key passed to ``init`` (``"params"``) and the keys passed to
    ``apply`` (``rngs={"initial_state": ..., "noise": ...}``) make every draw
    reproducible.
Training and evaluation
    Noise is on with ``deterministic=False`` and off with ``deterministic=True``
    (constructor field or call argument, as for ``nn.Dropout``). Modules that draw
    noise need it at ``apply``; at ``init`` it defaults to ``True``.
LSTM carries
    Flax LSTM cells carry ``(c, h)``, the memory first, where PyTorch takes
    ``(h0, c0)``; the parameters are named, so ``"h"`` and ``"c"`` mean the same in
    both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from reference_impl._extras import missing_framework

try:
    import jax
    import jax.numpy as jnp
    from flax import linen as nn
    from flax.core import FrozenDict
except ModuleNotFoundError as _error:  # say which extra installs it
    raise missing_framework(__name__, _error) from _error

from reference_impl import STRATEGIES, spec

__all__ = [
    "BUFFERS",
    "INITIAL_STATE_RNG",
    "NOISE_RNG",
    "STRATEGIES",
    "InitialState",
    "InitialStateRNN",
    "NoisyCell",
]

BUFFERS = "buffers"
"""Collection holding the non-trainable draws of ``resample=False``."""
INITIAL_STATE_RNG = "initial_state"
"""Rng stream of the per-call draws of ``uniform``/``xavier`` with ``resample=True``."""
NOISE_RNG = "noise"
"""Rng stream of the ``noisy`` strategy and of :class:`NoisyCell`."""

Array = jax.Array
Carry = Any
Dtype = Any
Initializer = Callable[[Array, tuple[int, ...], Dtype], Array]

# --------------------------------------------------------------------------- shared
# Helpers used by both Flax APIs (``reference_impl.flax.nnx`` imports them): they
# depend on JAX and the spec only, never on a linen or NNX class.


@dataclasses.dataclass(frozen=True)
class _CellInfo:
    """What an initial state needs to know about a cell."""

    kind: str  # "gru", "lstm" or "rnn"
    features: int
    param_dtype: Dtype


@dataclasses.dataclass(frozen=True)
class _LayerInfo:
    """What an initial state needs to know about one wrapped layer."""

    cell: _CellInfo
    directions: int
    time_major: bool
    return_carry: bool


def _resolve_options(strategy: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's validation and defaults; an option given as ``None`` means its default."""
    strategy = spec.check_strategy(strategy)
    given = {k: v for k, v in dict(options).items() if v is not None}
    return spec.resolve_options(strategy, given)


def _reject_seed(seed: int | None, where: str) -> None:
    if seed is not None:
        raise ValueError(
            f"seed={seed!r}: {where} takes its randomness from Flax rng streams, not a seed. "
            f"Pass jax.random.key({seed}) to init (the 'params' stream) and "
            f"rngs={{'{INITIAL_STATE_RNG}': key, '{NOISE_RNG}': key}} to apply."
        )


def _constructor_options(
    strategy: str, options: dict[str, Any], where: str
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Split a linen constructor's keywords into Module arguments and strategy options.

    Linen rebuilds modules from their fields (``options=...``) as well as from the
    user's keywords, so both forms are merged; the options are then validated by the
    spec and a ``seed`` is refused. Returns ``(module_args, strategy, options)``.
    """
    module_args = {k: options.pop(k) for k in ("parent", "name") if k in options}
    given = dict(options.pop("options", None) or {})
    given.update(options)
    strategy = spec.check_strategy(strategy)
    resolved = _resolve_options(strategy, given)
    _reject_seed(resolved.get("seed"), where)
    return module_args, strategy, resolved


def _components(kind: str) -> tuple[str, ...]:
    return ("h", "c") if kind == "lstm" else ("h",)


def _assemble(kind: str, parts: Mapping[str, Array]) -> Carry:
    # Flax LSTM cells carry (c, h): the memory first.
    return (parts["c"], parts["h"]) if kind == "lstm" else parts["h"]


def _plan(strategy: str, options: Mapping[str, Any]) -> spec.Strategy:
    """The strategy's plan (see :func:`reference_impl.spec.make`), which both APIs execute."""
    return spec.make(strategy, **options)


def _uniform(key: Array, shape: tuple[int, ...], bound: float, dtype: Dtype) -> Array:
    # Drawn in float32 and cast, so one key gives the same numbers in every dtype,
    # up to rounding.
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


def _normal(key: Array, shape: tuple[int, ...], dtype: Dtype) -> Array:
    return jax.random.normal(key, shape, jnp.float32).astype(dtype)


def _vector_initializer(plan: spec.Strategy, features: int) -> Initializer:
    """A Flax-style initializer ``(key, shape, dtype)`` for the stored or learnable
    vectors, from ``plan.vector_init``: zeros, ``U(-b, b)`` or the user's callable."""
    init = plan.vector_init(features)
    if callable(init):

        def from_callable(key: Array, shape: tuple[int, ...], dtype: Dtype) -> Array:
            value = jnp.asarray(init(key, shape, dtype))
            if value.shape != tuple(shape):
                raise ValueError(
                    f"init returned shape {value.shape}; expected {tuple(shape)} "
                    "(directions, features)"
                )
            return value.astype(dtype)

        return from_callable
    if init is None:
        return lambda key, shape, dtype: jnp.zeros(shape, dtype)
    return lambda key, shape, dtype: _uniform(key, shape, init, dtype)


def _std_from_raw(raw: Array, min_std: float) -> Array:
    """A learnable std, ``min_std + softplus(raw)`` (spec's rule, with JAX's softplus)."""
    return spec.noise_std_from_raw(raw, min_std, jax.nn.softplus)


def _add_noise(carry: Carry, key: Array, std: Array) -> Carry:
    """``carry`` plus independent ``N(0, std^2)`` noise on every component.

    Inside a scan every random op costs per step, so all components are drawn in
    one call (Flax carries hold components of one shape) rather than one key split
    and one draw per component.
    """
    leaves, treedef = jax.tree.flatten(carry)
    first = leaves[0]
    if all(leaf.shape == first.shape and leaf.dtype == first.dtype for leaf in leaves):
        noise = _normal(key, (len(leaves), *first.shape), first.dtype)
        parts = [noise[i] for i in range(len(leaves))]
    else:
        keys = jax.random.split(key, len(leaves))
        parts = [_normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves, strict=True)]
    scaled = [leaf + std.astype(leaf.dtype) * n for leaf, n in zip(leaves, parts, strict=True)]
    return jax.tree.unflatten(treedef, scaled)


def _check_batch_shape(batch_shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(batch_shape, (int, np.integer)) and not isinstance(batch_shape, bool):
        batch_shape = (batch_shape,)
    if not isinstance(batch_shape, (tuple, list)):
        raise TypeError(
            f"batch_shape must be an int or a tuple of ints; got {batch_shape!r} "
            f"of type {type(batch_shape).__name__}"
        )
    return tuple(_check_batch_dim(b) for b in batch_shape)


def _check_batch_dim(size: Any) -> Any:
    """A positive int, or a symbolic dimension (``jax.export`` with a dynamic batch).

    A symbolic size is the size of a real input, taken as it is so the exported
    function keeps its batch dynamic; anything else is checked.
    """
    if jax.export.is_symbolic_dim(size):
        return size
    return spec.check_positive_int("batch_shape entry", size)


def _make_state(
    plan: spec.Strategy,
    cell: _CellInfo,
    directions: int,
    batch_shape: tuple[int, ...],
    *,
    vectors: Mapping[str, Array] | None,
    draw_key: Array | None,
    noise_key: Array | None,
    std: Array | None,
) -> Carry:
    """The carry of one layer, given its variables and keys.

    ``vectors`` holds the ``(directions, features)`` arrays (learnable or stored);
    ``draw_key`` is set for a per-call draw, ``noise_key`` when noise is added.
    Returns one cell carry, or a ``(forward, backward)`` pair when ``directions == 2``.
    """
    names = _components(cell.kind)
    dtype, features = cell.param_dtype, cell.features
    shape = (directions, *batch_shape, features)
    draw_keys = jax.random.split(draw_key, len(names)) if draw_key is not None else None
    noise_keys = jax.random.split(noise_key, len(names)) if noise_key is not None else None
    rows = {}
    for i, name in enumerate(names):
        if vectors is not None:
            # One vector per row, broadcast over the batch (never one per batch row).
            vec = jnp.asarray(vectors[name], dtype).reshape(
                directions, *(1,) * len(batch_shape), features
            )
            state = jnp.broadcast_to(vec, shape)
        elif draw_keys is not None:
            state = _uniform(draw_keys[i], shape, plan.draw_bound(features), dtype)
        else:
            state = jnp.zeros(shape, dtype)
        if noise_keys is not None:
            state = state + jnp.asarray(std, dtype) * _normal(noise_keys[i], shape, dtype)
        rows[name] = state
    carries = tuple(_assemble(cell.kind, {n: rows[n][d] for n in names}) for d in range(directions))
    return carries[0] if directions == 1 else carries


def _expected_carry(layer: _LayerInfo, batch_shape: tuple[int, ...]) -> Carry:
    leaf = jax.ShapeDtypeStruct((*batch_shape, layer.cell.features), layer.cell.param_dtype)
    one = _assemble(layer.cell.kind, {"h": leaf, "c": leaf})
    return one if layer.directions == 1 else (one, one)


def _describe(tree: Any) -> str:
    """A short text for a carry: ``(array(4, 8), array(4, 8))``."""
    if isinstance(tree, tuple):
        inner = ", ".join(_describe(t) for t in tree)
        return f"({inner},)" if len(tree) == 1 else f"({inner})"
    if isinstance(tree, list):
        return "[" + ", ".join(_describe(t) for t in tree) + "]"
    if isinstance(tree, Mapping):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in tree.items()) + "}"
    if tree is None:
        return "None"
    if hasattr(tree, "shape"):
        return f"array{tuple(tree.shape)}"
    return type(tree).__name__


def _layout_hint(layers: Sequence[_LayerInfo], stack: bool) -> str:
    parts = []
    if any(layer.cell.kind == "lstm" for layer in layers):
        parts.append("an LSTM carry is a tuple (c, h)")
    if any(layer.directions == 2 for layer in layers):
        parts.append("a Bidirectional layer takes a pair (forward, backward)")
    if stack:
        parts.append("a stack takes a tuple with one carry per layer")
    parts.append("each array is (*batch, features)")
    return "; ".join(parts)


def _check_carry(given: Carry, expected: Carry, hint: str) -> None:
    """Raise unless ``given`` has the structure and shapes of ``expected``."""
    if jax.tree.structure(given) != jax.tree.structure(expected) or not all(
        hasattr(g, "shape") for g in jax.tree.leaves(given)
    ):
        raise TypeError(
            f"initial_carry must be structured as {_describe(expected)} ({hint}); "
            f"got {_describe(given)}"
        )
    for g, e in zip(jax.tree.leaves(given), jax.tree.leaves(expected), strict=True):
        if tuple(g.shape) != tuple(e.shape):
            raise ValueError(
                f"initial_carry has shapes {_describe(given)}; expected {_describe(expected)} "
                f"({hint})"
            )


def _batch_shape_of(inputs: Array, time_major: bool) -> tuple[int, ...]:
    if inputs.ndim < 2:
        raise ValueError(
            "inputs must be (*batch, time, features), or (time, *batch, features) with "
            f"time_major=True; got shape {tuple(inputs.shape)}"
        )
    return tuple(inputs.shape[1:-1] if time_major else inputs.shape[:-2])


# --------------------------------------------------------------------------- linen

_CELL_KINDS: tuple[tuple[tuple[type, ...], str], ...] = (
    ((nn.LSTMCell, nn.OptimizedLSTMCell), "lstm"),
    ((nn.GRUCell,), "gru"),
    ((nn.SimpleCell,), "rnn"),
)
_SUPPORTED = "nn.GRUCell, nn.LSTMCell, nn.OptimizedLSTMCell, nn.SimpleCell or ri.NoisyCell"


def _cell_info(cell: object) -> _CellInfo:
    if isinstance(cell, NoisyCell):
        return _cell_info(cell.cell)
    for types, kind in _CELL_KINDS:
        if isinstance(cell, types):
            features = spec.check_positive_int("features", cell.features)
            return _CellInfo(kind, features, cell.param_dtype)
    raise TypeError(f"unsupported cell {type(cell).__name__}; expected a Flax linen {_SUPPORTED}")


def _rng_key(module: nn.Module, stream: str, what: str, hint: str = "") -> Array:
    """A key from ``stream``, or a ``ValueError`` naming the stream when it is missing."""
    if module.has_rng(stream) or (module.is_initializing() and module.has_rng("params")):
        return module.make_rng(stream)  # at init a missing stream falls back to "params"
    raise ValueError(
        f"{what} draws from the {stream!r} rng stream, which this call was not given: "
        f"pass rngs={{'{stream}': key}} to apply{hint}"
    )


def _deterministic(module: nn.Module, value: bool | None, what: str) -> bool:
    if value is None:
        value = module.deterministic
    if value is None:
        if module.is_initializing():
            return True  # init draws no noise, so it needs no noise stream
        raise ValueError(
            f"{what} needs deterministic=True (evaluation: no noise) or deterministic=False "
            f"(training: noise from the {NOISE_RNG!r} rng stream), given to the constructor "
            "or to the call"
        )
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"deterministic must be True or False; got {value!r}")
    return bool(value)


def _noise_std(module: nn.Module, noise_std: float, learnable_std: bool, min_std: float) -> Array:
    if learnable_std:
        rho = spec.NoiseStd(noise_std, learnable_std, min_std).raw()
        raw = module.param(
            "std_raw", lambda key, shape, dtype: jnp.full(shape, rho, dtype), (), jnp.float32
        )
        return _std_from_raw(raw, min_std)
    return jnp.asarray(noise_std, jnp.float32)


def _resolve_cell(
    cell: Any,
    features: int | None,
    param_dtype: Dtype,
    *,
    module_type: type = nn.Module,
    cell_info: Callable[[object], _CellInfo] | None = None,
    supported: str = f"Flax linen {_SUPPORTED}",
) -> tuple[str, int, Dtype]:
    """Kind, features and dtype from a cell kind name or a cell (linen's, or NNX's)."""
    if isinstance(cell, module_type):
        info = (cell_info or _cell_info)(cell)
        if features is not None and features != info.features:
            raise ValueError(f"features={features!r} but the cell has {info.features} features")
        return info.kind, info.features, info.param_dtype
    if not isinstance(cell, str):
        raise TypeError(
            f"cell must be one of {spec.CELLS} or a {supported}; got {type(cell).__name__}"
        )
    kind = spec.check_cell(cell)
    if features is None:
        raise ValueError(f"cell={cell!r} needs features=<the hidden size>")
    return kind, spec.check_positive_int("features", features), param_dtype


class _InitialStateFields(nn.Module):
    # Linen modules are dataclasses, and ``init`` (an option of the learnable
    # strategy) is the name of ``Module.init``; so the options live in one field and
    # InitialState's constructor takes them as keywords, as in every framework.
    strategy: str = "zero"
    cell: str = "gru"
    features: int | None = None
    bidirectional: bool = False
    options: Mapping[str, Any] = FrozenDict()
    param_dtype: Dtype = jnp.float32
    deterministic: bool | None = None


class InitialState(_InitialStateFields):
    """Produces the initial carry of one Flax linen recurrent layer with one strategy.

    ``state(batch_shape)`` returns the carry in the cell's own layout, ready for
    ``nn.RNN(cell)(x, initial_carry=...)``: an array ``(*batch_shape, features)``
    for ``nn.GRUCell``/``nn.SimpleCell``, a tuple ``(c, h)`` for ``nn.LSTMCell``/
    ``nn.OptimizedLSTMCell``, and a pair ``(forward, backward)`` of those with
    ``bidirectional=True`` (what ``nn.Bidirectional`` takes). ``batch_shape=()``
    gives an unbatched carry.

    Args:
        strategy: one of :data:`~reference_impl.STRATEGIES`.
        cell: ``"gru"``, ``"lstm"`` or ``"rnn"``, or a linen cell (its kind,
            ``features`` and ``param_dtype`` are used).
        features: the hidden size (taken from the cell when a cell is given).
        bidirectional: two rows, forward then backward.
        param_dtype: dtype of the variables and of the carry.
        deterministic: ``noisy`` only; ``False`` adds noise, ``True`` returns the base
            state. Also a call argument, which wins.
        **options: the strategy's options (see :data:`reference_impl.spec.OPTIONS`):
            ``bound`` (uniform), ``gain`` (xavier), ``resample`` (uniform, xavier),
            ``init`` (learnable: ``"zeros"``, ``"uniform"``, ``"xavier"`` or a Flax
            initializer ``(key, shape, dtype)`` called with ``(directions,
            features)``), ``noise_std``, ``learnable_std``, ``min_std``, ``base``
            (noisy). ``seed`` is rejected: see the module docstring.

    Variables: ``"h"`` (and ``"c"``) of shape ``(directions, features)``, in
    ``"params"`` (learnable, noisy with ``base="learnable"``) or in ``"buffers"``
    (``resample=False``); ``"std_raw"`` in ``"params"`` for a learnable noise std.

    >>> import jax, jax.numpy as jnp
    >>> state = InitialState("xavier", cell="lstm", features=16, resample=False)
    >>> variables = state.init(jax.random.key(0), (8,))
    >>> c, h = state.apply(variables, (8,))
    >>> c.shape, h.shape, variables["buffers"]["h"].shape
    ((8, 16), (8, 16), (1, 16))
    >>> bool(jnp.abs(h).max() <= spec.xavier_bound(16)), bool((h == h[0]).all())
    (True, True)

    Inside a model, its carry goes to ``nn.RNN``:

    >>> import flax.linen as nn
    >>> class Encoder(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         carry = InitialState("learnable", cell="gru", features=8)(x.shape[:-2])
    ...         return nn.RNN(nn.GRUCell(8))(x, initial_carry=carry)
    >>> Encoder().init_with_output(jax.random.key(0), jnp.ones((2, 5, 3)))[0].shape
    (2, 5, 8)
    """

    def __init__(
        self,
        strategy: str = "zero",
        *,
        cell: str | nn.Module = "gru",
        features: int | None = None,
        bidirectional: bool = False,
        param_dtype: Dtype = jnp.float32,
        deterministic: bool | None = None,
        **options: Any,
    ) -> None:
        module_args, strategy, resolved = _constructor_options(
            strategy, options, "reference_impl.flax.linen.InitialState"
        )
        kind, features, param_dtype = _resolve_cell(cell, features, param_dtype)
        if not isinstance(bidirectional, (bool, np.bool_)):
            raise TypeError(f"bidirectional must be True or False; got {bidirectional!r}")
        super().__init__(
            strategy=strategy,
            cell=kind,
            features=features,
            bidirectional=bool(bidirectional),
            options=FrozenDict(resolved),
            param_dtype=param_dtype,
            deterministic=deterministic,
            **module_args,
        )

    @nn.nowrap
    def _info(self) -> _CellInfo:
        return _CellInfo(self.cell, self.features, self.param_dtype)

    @nn.compact
    def __call__(
        self, batch_shape: int | Sequence[int] = (), *, deterministic: bool | None = None
    ) -> Carry:
        """The initial carry for ``batch_shape`` (``()`` for one unbatched sequence)."""
        batch_shape = _check_batch_shape(batch_shape)
        strategy, options = self.strategy, self.options
        plan = _plan(strategy, options)
        directions = 2 if self.bidirectional else 1
        rows = (directions, self.features)

        vectors = None
        if plan.source == "param":
            initializer = _vector_initializer(plan, self.features)
            vectors = {
                n: self.param(n, initializer, rows, self.param_dtype)
                for n in _components(self.cell)
            }
        elif plan.source == "stored":
            vectors = {n: self._buffer(n, rows) for n in _components(self.cell)}

        draw_key = noise_key = std = None
        if plan.source == "draw":
            draw_key = _rng_key(self, INITIAL_STATE_RNG, f"strategy {strategy!r}")
        if plan.noise is not None:
            std = _noise_std(
                self, options["noise_std"], options["learnable_std"], options["min_std"]
            )
            noisy_now = not _deterministic(self, deterministic, "strategy 'noisy'")
            if noisy_now and plan.noise.draws:
                noise_key = _rng_key(self, NOISE_RNG, "strategy 'noisy' with deterministic=False")
        return _make_state(
            plan,
            self._info(),
            directions,
            batch_shape,
            vectors=vectors,
            draw_key=draw_key,
            noise_key=noise_key,
            std=std,
        )

    @nn.nowrap
    def _buffer(self, name: str, shape: tuple[int, int]) -> Array:
        if not self.is_initializing() and not self.has_variable(BUFFERS, name):
            raise ValueError(
                f"resample=False keeps its draw in the {BUFFERS!r} collection, which apply "
                f"was not given: pass every collection returned by init, e.g. "
                f"model.apply(variables, ...), not only {{'params': ...}}"
            )
        bound = _plan(self.strategy, self.options).draw_bound(self.features)
        var = self.variable(
            BUFFERS,
            name,
            lambda: _uniform(self.make_rng("params"), shape, bound, self.param_dtype),
        )
        return var.value


class NoisyCell(nn.RNNCellBase):
    """Per-step state noise around a Flax linen cell, for use inside ``nn.RNN``.

    With ``deterministic=False`` every step adds ``N(0, noise_std^2)`` noise to each
    component of the carry (both ``c`` and ``h`` of an LSTM) before the wrapped cell
    reads it; with ``deterministic=True`` it is exactly the wrapped cell.
    ``learnable_std=True`` makes the std a parameter ``"std_raw"``,
    ``min_std + softplus(std_raw)``, positive by construction. The wrapped cell's
    parameters are under ``"cell"``.

    The noise comes from the ``rng_collection`` stream (``"noise"``), which
    ``nn.RNN`` must split per step: ``nn.RNN(NoisyCell(...), split_rngs={"params":
    False, "noise": True})`` (without the split every step would reuse one key, so
    the cell raises). :class:`InitialStateRNN` adds the split itself.

    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> cell = NoisyCell(nn.GRUCell(features=8), noise_std=0.1, deterministic=False)
    >>> rnn = nn.RNN(cell, split_rngs={"params": False, "noise": True})
    >>> x = jnp.ones((2, 5, 3))
    >>> variables = rnn.init(jax.random.key(0), x)
    >>> y1 = rnn.apply(variables, x, rngs={"noise": jax.random.key(1)})
    >>> y2 = rnn.apply(variables, x, rngs={"noise": jax.random.key(2)})
    >>> y1.shape, bool((y1 != y2).any())
    ((2, 5, 8), True)
    """

    cell: nn.RNNCellBase
    noise_std: float = 0.1
    learnable_std: bool = False
    min_std: float = 0.0
    deterministic: bool | None = None
    rng_collection: str = NOISE_RNG
    seed: int | None = None

    def __post_init__(self) -> None:
        _cell_info(self.cell)  # a TypeError for an unsupported cell, at construction
        spec.resolve_options(
            "noisy",
            {
                "noise_std": self.noise_std,
                "learnable_std": self.learnable_std,
                "min_std": self.min_std,
            },
        )
        _reject_seed(self.seed, "reference_impl.flax.linen.NoisyCell")
        super().__post_init__()

    @nn.compact
    def __call__(self, carry: Carry, inputs: Array) -> tuple[Carry, Array]:
        """One step: ``cell(carry + noise, inputs)`` in training, ``cell(carry, inputs)``."""
        std = _noise_std(self, self.noise_std, self.learnable_std, self.min_std)
        draws = self.learnable_std or self.noise_std > 0
        if draws and not _deterministic(self, None, "NoisyCell"):
            key = _rng_key(
                self,
                self.rng_collection,
                "NoisyCell with deterministic=False",
                hint=(
                    f", and inside nn.RNN split it per step: nn.RNN(cell, split_rngs="
                    f"{{'params': False, '{self.rng_collection}': True}})"
                ),
            )
            carry = _add_noise(carry, key, std)
        return self.cell(carry, inputs)

    @nn.nowrap
    def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]) -> Carry:
        """The wrapped cell's own (zero) carry."""
        return self.cell.initialize_carry(rng, input_shape)

    @property
    def num_feature_axes(self) -> int:
        return self.cell.num_feature_axes


class _Layers:
    """The wrapped layers, kept out of linen's adoption of module fields.

    Linen adopts (and names) every module found in a field. InitialStateRNN instead
    builds its submodules at call time from these unbound templates, so it can
    choose their names and give a NoisyCell the call's ``deterministic``.
    """

    __slots__ = ("infos", "modules", "stack")

    def __init__(
        self, modules: tuple[nn.Module, ...], infos: tuple[_LayerInfo, ...], stack: bool
    ) -> None:
        self.modules, self.infos, self.stack = modules, infos, stack

    def __repr__(self) -> str:
        return repr(list(self.modules)) if self.stack else repr(self.modules[0])


def _detach(module: nn.Module) -> nn.Module:
    # An unbound deep copy: a cell created inside another module's compact method is
    # already attached there, and must not be used from that scope.
    return module.clone(parent=None, _deep_clone=True)


def _split_noise(rnn: nn.RNN) -> nn.RNN:
    """``rnn`` with its NoisyCell's stream split per step (one key per step)."""
    cell = rnn.cell
    if isinstance(cell, NoisyCell) and not dict(rnn.split_rngs).get(cell.rng_collection):
        return rnn.clone(parent=None, split_rngs={**rnn.split_rngs, cell.rng_collection: True})
    return rnn


def _with_deterministic(layer: nn.Module, deterministic: bool | None) -> nn.Module:
    if deterministic is None:
        return layer
    if isinstance(layer, nn.RNN) and isinstance(layer.cell, NoisyCell):
        cell = layer.cell.clone(parent=None, deterministic=deterministic)
        return layer.clone(parent=None, cell=cell)
    if isinstance(layer, nn.Bidirectional):
        return layer.clone(
            parent=None,
            forward_rnn=_with_deterministic(layer.forward_rnn, deterministic),
            backward_rnn=_with_deterministic(layer.backward_rnn, deterministic),
        )
    return layer


def _normalize_layer(item: object) -> tuple[nn.Module, _LayerInfo]:
    if isinstance(item, nn.RNNCellBase):
        info = _cell_info(item)
        rnn = _split_noise(nn.RNN(_detach(item), parent=None))
        return rnn, _LayerInfo(info, 1, False, False)
    if isinstance(item, nn.RNN):
        info = _cell_info(item.cell)
        return _split_noise(_detach(item)), _LayerInfo(info, 1, item.time_major, item.return_carry)
    if isinstance(item, nn.Bidirectional):
        for direction in (item.forward_rnn, item.backward_rnn):
            if not isinstance(direction, nn.RNN):
                raise TypeError(
                    "InitialStateRNN wraps an nn.Bidirectional of two nn.RNN layers; got "
                    f"{type(direction).__name__}"
                )
        forward, backward = _cell_info(item.forward_rnn.cell), _cell_info(item.backward_rnn.cell)
        if (forward.kind, forward.features) != (backward.kind, backward.features):
            raise ValueError(
                "the two directions of nn.Bidirectional must have the same cell kind and "
                f"features; got {forward.kind}/{forward.features} and "
                f"{backward.kind}/{backward.features}"
            )
        layer = _detach(item)
        layer = layer.clone(
            parent=None,
            forward_rnn=_split_noise(layer.forward_rnn),
            backward_rnn=_split_noise(layer.backward_rnn),
        )
        return layer, _LayerInfo(forward, 2, item.time_major, item.return_carry)
    raise TypeError(
        f"InitialStateRNN wraps a Flax linen cell ({_SUPPORTED}), an nn.RNN or "
        f"nn.Bidirectional of one, or a list of those; got {type(item).__name__}"
    )


def _normalize(rnn: object) -> _Layers:
    if isinstance(rnn, _Layers):
        return rnn
    stack = isinstance(rnn, (list, tuple))
    items = list(rnn) if stack else [rnn]
    if not items:
        raise ValueError("InitialStateRNN needs at least one layer; got an empty list")
    modules, infos = zip(*(_normalize_layer(item) for item in items), strict=True)
    if len({info.time_major for info in infos}) > 1:
        raise ValueError("all layers of a stack must have the same time_major")
    return _Layers(tuple(modules), tuple(infos), stack)


class _InitialStateRNNFields(nn.Module):
    # See _InitialStateFields for why the options are one field.
    rnn: Any = None
    strategy: str = "learnable"
    options: Mapping[str, Any] = FrozenDict()
    deterministic: bool | None = None


class InitialStateRNN(_InitialStateRNNFields):
    """Wraps Flax linen recurrent layers and gives them an initial-state strategy.

    ``rnn`` is a cell (``nn.GRUCell``, ``nn.LSTMCell``, ``nn.OptimizedLSTMCell``,
    ``nn.SimpleCell``, or a :class:`NoisyCell` of one; it is run by ``nn.RNN``), an
    ``nn.RNN``, an ``nn.Bidirectional`` of two ``nn.RNN``, or a list of those run one
    after the other (a stack). Each layer runs as one ``nn.RNN`` scan, never a Python
    loop over steps.

    ``model.apply(variables, x)`` returns the outputs of the last layer for every
    step, ``(carry, outputs)`` with ``return_carry=True`` (default: the wrapped
    layer's own ``return_carry``; ``False`` for a stack, whose carry is a tuple with
    one carry per layer). ``x`` is ``(*batch, time, features)`` (unbatched
    ``(time, features)`` too), or time-major if the layers are. An explicit
    ``initial_carry`` (same structure as the carry) wins over the strategy.

    Submodules: ``rnn`` and ``initial_state`` (an :class:`InitialState`) for one
    layer; ``rnn_{i}`` and ``initial_state_{i}`` for layer ``i`` of a stack.

    Args:
        rnn: the layer, or a list of layers.
        strategy: one of :data:`~reference_impl.STRATEGIES` (default ``"learnable"``).
        deterministic: noise off (``True``) or on (``False``) for the ``noisy``
            strategy and for every :class:`NoisyCell` inside; also a call argument.
        **options: the strategy's options, as for :class:`InitialState`.

    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> model = InitialStateRNN(nn.LSTMCell(features=8), strategy="learnable")
    >>> x = jnp.ones((4, 5, 3))
    >>> variables = model.init(jax.random.key(0), x)
    >>> sorted(variables["params"]["initial_state"])  # each (directions, features)
    ['c', 'h']
    >>> def loss(params):
    ...     return model.apply({"params": params}, x).sum()
    >>> grads = jax.grad(loss)(variables["params"])
    >>> bool(jnp.abs(grads["initial_state"]["h"]).sum() > 0)
    True
    """

    def __init__(
        self,
        rnn: Any,
        strategy: str = "learnable",
        *,
        deterministic: bool | None = None,
        **options: Any,
    ) -> None:
        module_args, strategy, resolved = _constructor_options(
            strategy, options, "reference_impl.flax.linen.InitialStateRNN"
        )
        super().__init__(
            rnn=_normalize(rnn),
            strategy=strategy,
            options=FrozenDict(resolved),
            deterministic=deterministic,
            **module_args,
        )

    @nn.compact
    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Carry | None = None,
        seq_lengths: Array | None = None,
        return_carry: bool | None = None,
        deterministic: bool | None = None,
    ) -> Array | tuple[Carry, Array]:
        """Run the layers from the strategy's state (or ``initial_carry``)."""
        layers: _Layers = self.rnn
        inputs = jnp.asarray(inputs)
        batch_shape = _batch_shape_of(inputs, layers.infos[0].time_major)
        if deterministic is None:
            deterministic = self.deterministic
        if deterministic is None and self.is_initializing():
            deterministic = True
        given = None
        if initial_carry is not None:
            expected = [_expected_carry(info, batch_shape) for info in layers.infos]
            hint = _layout_hint(layers.infos, layers.stack)
            _check_carry(initial_carry, tuple(expected) if layers.stack else expected[0], hint)
            given = tuple(initial_carry) if layers.stack else (initial_carry,)

        x, carries = inputs, []
        for i, (layer, info) in enumerate(zip(layers.modules, layers.infos, strict=True)):
            suffix = f"_{i}" if layers.stack else ""
            state = InitialState(
                self.strategy,
                cell=info.cell.kind,
                features=info.cell.features,
                bidirectional=info.directions == 2,
                param_dtype=info.cell.param_dtype,
                deterministic=deterministic,
                options=self.options,
                name="initial_state" + suffix,
            )
            # At init the state's variables are created even when a carry is given,
            # so a later call without one finds them.
            carry = state(batch_shape) if given is None or self.is_initializing() else None
            if given is not None:
                carry = given[i]
            module = _with_deterministic(layer, deterministic).clone(
                parent=self, name="rnn" + suffix
            )
            carry, x = module(x, initial_carry=carry, seq_lengths=seq_lengths, return_carry=True)
            carries.append(carry)
        if return_carry is None:
            return_carry = not layers.stack and layers.infos[0].return_carry
        final = tuple(carries) if layers.stack else carries[0]
        return (final, x) if return_carry else x
