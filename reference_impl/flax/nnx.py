"""Initial states for Flax NNX recurrent layers.

Use it as ``from reference_impl.flax import nnx as ri_nnx``::

    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from reference_impl.flax import nnx as ri_nnx
    >>> cell = nnx.GRUCell(3, 8, rngs=nnx.Rngs(0))
    >>> model = ri_nnx.InitialStateRNN(cell, strategy="learnable")
    >>> model(jnp.ones((4, 5, 3))).shape  # (batch, time, features)
    (4, 5, 8)
    >>> model.initial_state.h.shape  # an nnx.Param, (directions, features)
    (1, 8)

The same names and options as :mod:`reference_impl.flax.linen`, the same state
layout, the NNX way:

Where the state lives
    An :class:`InitialState` holds attributes ``h`` (and ``c`` for an LSTM) of shape
    ``(directions, features)``, row 0 forward, row 1 backward: an ``nnx.Param`` when
    learnable, a :class:`Buffer` (a non-trainable ``nnx.Variable`` that
    ``nnx.Optimizer(..., wrt=nnx.Param)`` never updates) for ``resample=False``, and
    ``std_raw`` (an ``nnx.Param``) for a learnable noise std. :class:`InitialStateRNN`
    has ``rnn`` and ``initial_state`` for one layer, ``nnx.List`` of them (indexed by
    layer) for a stack. All of it is in ``nnx.state(model)``.
Randomness
    Draws made at construction (learnable ``init="uniform"/"xavier"``,
    ``resample=False``) use the ``params`` stream of the ``rngs`` given to the
    constructor. Per-call draws come from a stream forked at construction:
    ``initial_state`` for ``uniform``/``xavier`` with ``resample=True``, ``noise``
    for the ``noisy`` strategy and :class:`NoisyCell` (``nnx.Rngs(0)`` serves all of
    them through its default stream). A stream advances at every call, so each call
    draws afresh, under ``nnx.jit`` too. ``rngs=`` at call time overrides it.
``seed``
    ``seed=s`` is shorthand for ``rngs=nnx.Rngs(s)``: the module's own seeded
    generator, as in PyTorch, giving the same sequence of draws for the same seed.
    Giving both ``seed`` and ``rngs`` is an error.
Training and evaluation
    ``deterministic`` (default ``False``, training, as ``nnx.Dropout``) turns the
    noise off; ``model.eval()`` and ``model.train()`` set it on every module inside,
    and so does ``nnx.view(model, deterministic=...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from reference_impl._extras import missing_framework

try:
    import jax.numpy as jnp
    from flax import nnx
    from flax.core import FrozenDict
except ModuleNotFoundError as _error:  # say which extra installs it
    raise missing_framework(__name__, _error) from _error

from reference_impl import STRATEGIES, spec

# The JAX-level helpers are shared with the linen module, so that both Flax APIs
# draw, shape and check the state in exactly the same way.
from reference_impl.flax.linen import (
    INITIAL_STATE_RNG,
    NOISE_RNG,
    Array,
    Carry,
    Dtype,
    _add_noise,
    _batch_shape_of,
    _CellInfo,
    _check_batch_shape,
    _check_carry,
    _components,
    _expected_carry,
    _LayerInfo,
    _layout_hint,
    _make_state,
    _plan,
    _resolve_options,
    _std_from_raw,
    _uniform,
    _vector_initializer,
)
from reference_impl.flax.linen import _resolve_cell as _linen_resolve_cell

__all__ = [
    "INITIAL_STATE_RNG",
    "NOISE_RNG",
    "STRATEGIES",
    "Buffer",
    "InitialState",
    "InitialStateRNN",
    "NoisyCell",
]

RngsLike = nnx.Rngs | nnx.RngStream | None


class Buffer(nnx.Variable):
    """A stored, non-trainable state (PyTorch's buffer): the draw of ``resample=False``.

    Saved with ``nnx.state`` like any variable; not an ``nnx.Param``, so gradients and
    ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` leave it alone.

    >>> state = InitialState("uniform", features=4, resample=False, rngs=nnx.Rngs(0))
    >>> type(state.h).__name__, state.h.shape
    ('Buffer', (1, 4))
    """


_CELL_KINDS: tuple[tuple[tuple[type, ...], str], ...] = (
    ((nnx.LSTMCell, nnx.OptimizedLSTMCell), "lstm"),
    ((nnx.GRUCell,), "gru"),
    ((nnx.SimpleCell,), "rnn"),
)
_SUPPORTED = "nnx.GRUCell, nnx.LSTMCell, nnx.OptimizedLSTMCell, nnx.SimpleCell or ri_nnx.NoisyCell"


def _cell_info(cell: object) -> _CellInfo:
    if isinstance(cell, NoisyCell):
        return _cell_info(cell.cell)
    for types, kind in _CELL_KINDS:
        if isinstance(cell, types):
            features = spec.check_positive_int("features", cell.hidden_features)
            return _CellInfo(kind, features, cell.param_dtype)
    raise TypeError(f"unsupported cell {type(cell).__name__}; expected a Flax NNX {_SUPPORTED}")


def _seeded(rngs: RngsLike, seed: int | None) -> RngsLike:
    """``rngs``, or the module's own ``nnx.Rngs(seed)``."""
    if seed is None:
        return rngs
    if rngs is not None:
        raise ValueError(f"give seed={seed!r} or rngs, not both (seed=s means rngs=nnx.Rngs(s))")
    return nnx.Rngs(seed)


def _fork(rngs: RngsLike, stream: str) -> nnx.RngStream | None:
    """A stream of this module's own, forked from ``rngs[stream]``."""
    if rngs is None:
        return None
    if isinstance(rngs, nnx.Rngs):
        try:
            return rngs[stream].fork()
        except KeyError:
            raise ValueError(
                f"the rngs have no {stream!r} stream and no default stream: use "
                f"nnx.Rngs(seed) or nnx.Rngs({stream}=seed, ...)"
            ) from None
    if isinstance(rngs, nnx.RngStream):
        return rngs.fork()
    raise TypeError(f"rngs must be an nnx.Rngs, an nnx.RngStream or None; got {rngs!r}")


def _init_key(rngs: RngsLike, what: str) -> Array:
    if isinstance(rngs, nnx.Rngs):
        return rngs.params()
    if isinstance(rngs, nnx.RngStream):
        return rngs()
    raise ValueError(f"{what} draws at construction: pass rngs=nnx.Rngs(...) or seed=...")


def _call_key(
    override: nnx.Rngs | nnx.RngStream | Array | None,
    own: nnx.RngStream | None,
    stream: str,
    what: str,
) -> Array:
    """A key from the call's ``rngs``, else from the module's own stream."""
    if isinstance(override, nnx.Rngs):
        return override[stream]()
    if isinstance(override, nnx.RngStream):
        return override()
    if override is not None:
        return override  # a key
    if own is None:
        raise ValueError(
            f"{what} draws from the {stream!r} rng stream on every call, and this module "
            "has none: pass rngs=nnx.Rngs(...) (or seed=...) to the constructor, or rngs= "
            "to the call"
        )
    return own()


def _check_deterministic(value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"deterministic must be True or False; got {value!r}")
    return bool(value)


def _resolve_cell(
    cell: str | nnx.Module, features: int | None, param_dtype: Dtype
) -> tuple[str, int, Dtype]:
    return _linen_resolve_cell(
        cell,
        features,
        param_dtype,
        module_type=nnx.Module,
        cell_info=_cell_info,
        supported=f"Flax NNX {_SUPPORTED}",
    )


class InitialState(nnx.Module):
    """Produces the initial carry of one Flax NNX recurrent layer with one strategy.

    ``state(batch_shape)`` returns the carry in the cell's own layout, ready for
    ``nnx.RNN(cell)(x, initial_carry=...)``: an array ``(*batch_shape, features)``
    for ``nnx.GRUCell``/``nnx.SimpleCell``, a tuple ``(c, h)`` for an LSTM cell, and
    a pair ``(forward, backward)`` of those with ``bidirectional=True`` (what
    ``nnx.Bidirectional`` takes). ``batch_shape=()`` gives an unbatched carry.

    Args:
        strategy: one of :data:`~reference_impl.STRATEGIES`.
        cell: ``"gru"``, ``"lstm"`` or ``"rnn"``, or an NNX cell (its kind,
            ``hidden_features`` and ``param_dtype`` are used).
        features: the hidden size (taken from the cell when a cell is given).
        bidirectional: two rows, forward then backward.
        param_dtype: dtype of the variables and of the carry.
        deterministic: ``noisy`` only: ``False`` (default, training) adds noise,
            ``True`` returns the base state; ``model.eval()`` sets it.
        rngs: ``nnx.Rngs`` for the draws (see the module docstring).
        **options: the strategy's options (see :data:`reference_impl.spec.OPTIONS`):
            ``bound``, ``gain``, ``resample``, ``init`` (``"zeros"``, ``"uniform"``,
            ``"xavier"`` or an initializer ``(key, shape, dtype)`` called with
            ``(directions, features)``), ``noise_std``, ``learnable_std``,
            ``min_std``, ``base``, ``seed``.

    >>> state = InitialState("noisy", cell="lstm", features=4, noise_std=0.5, rngs=nnx.Rngs(0))
    >>> c, h = state((2,))
    >>> c.shape, bool((h != 0).all())
    ((2, 4), True)
    >>> state.eval()
    >>> float(jnp.abs(state((2,))[1]).max())
    0.0
    >>> rnn = nnx.RNN(nnx.LSTMCell(3, 4, rngs=nnx.Rngs(0)))
    >>> rnn(jnp.ones((2, 5, 3)), initial_carry=state((2,))).shape
    (2, 5, 4)
    """

    def __init__(
        self,
        strategy: str = "zero",
        *,
        cell: str | nnx.Module = "gru",
        features: int | None = None,
        bidirectional: bool = False,
        param_dtype: Dtype = jnp.float32,
        deterministic: bool = False,
        rngs: nnx.Rngs | nnx.RngStream | None = None,
        **options: Any,
    ) -> None:
        self.strategy = spec.check_strategy(strategy)
        resolved = _resolve_options(strategy, options)
        rngs = _seeded(rngs, resolved.get("seed"))
        kind, features, param_dtype = _resolve_cell(cell, features, param_dtype)
        if not isinstance(bidirectional, (bool, np.bool_)):
            raise TypeError(f"bidirectional must be True or False; got {bidirectional!r}")
        self.cell = kind
        self.features = features
        self.bidirectional = bool(bidirectional)
        self.param_dtype = param_dtype
        self.deterministic = _check_deterministic(deterministic)
        self.options = FrozenDict(resolved)

        rows = (2 if self.bidirectional else 1, features)
        plan = _plan(strategy, resolved)
        if plan.source == "param":
            initializer = _vector_initializer(plan, features)
            for name in _components(kind):
                init = plan.vector_init(features)
                key = _init_key(rngs, f"init={resolved['init']!r}") if init is not None else None
                setattr(self, name, nnx.Param(initializer(key, rows, param_dtype)))
        elif plan.source == "stored":
            bound = plan.draw_bound(features)
            for name in _components(kind):
                key = _init_key(rngs, f"strategy {strategy!r} with resample=False")
                setattr(self, name, Buffer(_uniform(key, rows, bound, param_dtype)))
        if plan.noise is not None and plan.noise.learnable:
            self.std_raw = nnx.Param(jnp.asarray(plan.noise.raw(), jnp.float32))
        stream = INITIAL_STATE_RNG if plan.source == "draw" else NOISE_RNG
        needs_stream = plan.source == "draw" or (plan.noise is not None and plan.noise.draws)
        self.rngs = _fork(rngs, stream) if needs_stream else nnx.data(None)

    @property
    def noise_std(self) -> Array:
        """The current noise standard deviation (noisy strategy), a scalar array."""
        if self.strategy != "noisy":
            raise AttributeError(f"strategy {self.strategy!r} has no noise_std")
        if self.options["learnable_std"]:
            return _std_from_raw(self.std_raw[...], self.options["min_std"])
        return jnp.asarray(self.options["noise_std"], jnp.float32)

    def __call__(
        self,
        batch_shape: int | Sequence[int] = (),
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | Array | None = None,
    ) -> Carry:
        """The initial carry for ``batch_shape`` (``()`` for one unbatched sequence)."""
        batch_shape = _check_batch_shape(batch_shape)
        strategy, options = self.strategy, self.options
        plan = _plan(strategy, options)
        vectors = None
        if plan.source in ("param", "stored"):
            vectors = {n: getattr(self, n)[...] for n in _components(self.cell)}
        draw_key = noise_key = std = None
        if plan.source == "draw":
            what = f"strategy {strategy!r} with resample=True"
            draw_key = _call_key(rngs, self.rngs, INITIAL_STATE_RNG, what)
        if plan.noise is not None:
            std = self.noise_std
            if deterministic is None:
                deterministic = self.deterministic
            if not _check_deterministic(deterministic) and plan.noise.draws:
                what = "strategy 'noisy' with deterministic=False"
                noise_key = _call_key(rngs, self.rngs, NOISE_RNG, what)
        return _make_state(
            plan,
            _CellInfo(self.cell, self.features, self.param_dtype),
            2 if self.bidirectional else 1,
            batch_shape,
            vectors=vectors,
            draw_key=draw_key,
            noise_key=noise_key,
            std=std,
        )

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view(model, deterministic=...)``."""
        if deterministic is not None:
            self.deterministic = _check_deterministic(deterministic)


class NoisyCell(nnx.RNNCellBase):
    """Per-step state noise around a Flax NNX cell, for use inside ``nnx.RNN``.

    In training (``deterministic=False``, the default; ``model.train()``) every step
    adds ``N(0, noise_std^2)`` noise to each component of the carry (both ``c`` and
    ``h`` of an LSTM) before the wrapped cell reads it; in evaluation
    (``model.eval()``) it is exactly the wrapped cell. ``learnable_std=True`` makes
    the std an ``nnx.Param`` ``std_raw``, ``min_std + softplus(std_raw)``. The noise
    comes from the module's own ``noise`` stream, which ``nnx.RNN`` carries through
    its scan, so every step draws a new key.

    >>> import jax.numpy as jnp
    >>> cell = NoisyCell(nnx.GRUCell(3, 8, rngs=nnx.Rngs(0)), noise_std=0.1, rngs=nnx.Rngs(1))
    >>> rnn = nnx.RNN(cell)
    >>> x = jnp.ones((2, 5, 3))
    >>> bool((rnn(x) != rnn(x)).any())  # a new draw every call
    True
    >>> rnn.eval()
    >>> bool((rnn(x) == rnn(x)).all())
    True
    """

    def __init__(
        self,
        cell: nnx.RNNCellBase,
        noise_std: float = 0.1,
        learnable_std: bool = False,
        *,
        min_std: float = 0.0,
        deterministic: bool = False,
        rng_collection: str = NOISE_RNG,
        seed: int | None = None,
        rngs: nnx.Rngs | nnx.RngStream | None = None,
    ) -> None:
        _cell_info(cell)  # a TypeError for an unsupported cell
        opts = spec.resolve_options(
            "noisy",
            {
                "noise_std": noise_std,
                "learnable_std": learnable_std,
                "min_std": min_std,
                "seed": seed,
            },
        )
        self.cell = cell
        self.learnable_std = bool(learnable_std)
        self.min_std = opts["min_std"]
        self.fixed_std = opts["noise_std"]
        self.deterministic = _check_deterministic(deterministic)
        self.rng_collection = rng_collection
        if self.learnable_std:
            rho = spec.NoiseStd(opts["noise_std"], True, opts["min_std"]).raw()
            self.std_raw = nnx.Param(jnp.asarray(rho, jnp.float32))
        self.rngs = _fork(_seeded(rngs, opts["seed"]), rng_collection)

    @property
    def noise_std(self) -> Array:
        """The current noise standard deviation, a scalar array."""
        if self.learnable_std:
            return _std_from_raw(self.std_raw[...], self.min_std)
        return jnp.asarray(self.fixed_std, jnp.float32)

    def __call__(self, carry: Carry, inputs: Array) -> tuple[Carry, Array]:
        """One step: ``cell(carry + noise, inputs)`` in training, ``cell(carry, inputs)``."""
        draws = self.learnable_std or self.fixed_std > 0
        if draws and not self.deterministic:
            key = _call_key(None, self.rngs, self.rng_collection, "NoisyCell in training")
            carry = _add_noise(carry, key, self.noise_std)
        return self.cell(carry, inputs)

    def initialize_carry(
        self,
        input_shape: tuple[int, ...],
        rngs: nnx.Rngs | nnx.RngStream | None = None,
        carry_init: Any = None,
    ) -> Carry:
        """The wrapped cell's own (zero) carry."""
        return self.cell.initialize_carry(input_shape, rngs, carry_init)

    @property
    def num_feature_axes(self) -> int:
        return self.cell.num_feature_axes

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view(model, deterministic=...)``."""
        if deterministic is not None:
            self.deterministic = _check_deterministic(deterministic)


def _normalize_layer(item: object) -> tuple[nnx.Module, _LayerInfo]:
    if isinstance(item, nnx.RNNCellBase):
        return nnx.RNN(item), _LayerInfo(_cell_info(item), 1, False, False)
    if isinstance(item, nnx.RNN):
        return item, _LayerInfo(_cell_info(item.cell), 1, item.time_major, item.return_carry)
    if isinstance(item, nnx.Bidirectional):
        for direction in (item.forward_rnn, item.backward_rnn):
            if not isinstance(direction, nnx.RNN):
                raise TypeError(
                    "InitialStateRNN wraps an nnx.Bidirectional of two nnx.RNN layers; got "
                    f"{type(direction).__name__}"
                )
        forward, backward = _cell_info(item.forward_rnn.cell), _cell_info(item.backward_rnn.cell)
        if (forward.kind, forward.features) != (backward.kind, backward.features):
            raise ValueError(
                "the two directions of nnx.Bidirectional must have the same cell kind and "
                f"features; got {forward.kind}/{forward.features} and "
                f"{backward.kind}/{backward.features}"
            )
        return item, _LayerInfo(forward, 2, item.time_major, item.return_carry)
    raise TypeError(
        f"InitialStateRNN wraps a Flax NNX cell ({_SUPPORTED}), an nnx.RNN or "
        f"nnx.Bidirectional of one, or a list of those; got {type(item).__name__}"
    )


class InitialStateRNN(nnx.Module):
    """Wraps Flax NNX recurrent layers and gives them an initial-state strategy.

    ``rnn`` is an NNX cell (``nnx.GRUCell``, ``nnx.LSTMCell``,
    ``nnx.OptimizedLSTMCell``, ``nnx.SimpleCell`` or a :class:`NoisyCell` of one; it
    is run by ``nnx.RNN``), an ``nnx.RNN``, an ``nnx.Bidirectional`` of two
    ``nnx.RNN``, or a list of those run one after the other (a stack). Each layer is
    one ``nnx.RNN`` scan, never a Python loop over steps.

    ``model(x)`` returns the outputs of the last layer for every step,
    ``(carry, outputs)`` with ``return_carry=True`` (default: the wrapped layer's own
    ``return_carry``; ``False`` for a stack, whose carry is a tuple with one carry
    per layer). An explicit ``initial_carry`` wins over the strategy.

    Attributes: ``rnn`` and ``initial_state`` (an :class:`InitialState`), or for a
    stack ``nnx.List`` of them indexed by layer.

    Args:
        rnn: the layer, or a list of layers.
        strategy: one of :data:`~reference_impl.STRATEGIES` (default ``"learnable"``).
        deterministic: if given, set on every module inside (else each keeps its
            own; ``model.train()``/``model.eval()`` set them all).
        rngs: ``nnx.Rngs`` for the strategy's draws.
        **options: the strategy's options, as for :class:`InitialState`.

    >>> import jax.numpy as jnp, optax
    >>> cell = nnx.LSTMCell(3, 8, rngs=nnx.Rngs(0))
    >>> model = InitialStateRNN(cell, strategy="learnable")
    >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    >>> def loss(model, x):
    ...     return (model(x) ** 2).mean()
    >>> grads = nnx.grad(loss)(model, jnp.ones((4, 5, 3)))
    >>> _ = optimizer.update(model, grads)
    >>> bool((model.initial_state.h[...] != 0).any())  # one step moved the state
    True
    """

    def __init__(
        self,
        rnn: Any,
        strategy: str = "learnable",
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | None = None,
        **options: Any,
    ) -> None:
        strategy = spec.check_strategy(strategy)
        resolved = _resolve_options(strategy, options)
        # One generator for every layer, so layers do not share draws.
        rngs = _seeded(rngs, resolved.pop("seed", None))
        stack = isinstance(rnn, (list, tuple))
        items = list(rnn) if stack else [rnn]
        if not items:
            raise ValueError("InitialStateRNN needs at least one layer; got an empty list")
        layers, infos = zip(*(_normalize_layer(item) for item in items), strict=True)
        if len({info.time_major for info in infos}) > 1:
            raise ValueError("all layers of a stack must have the same time_major")
        states = [
            InitialState(
                strategy,
                cell=info.cell.kind,
                features=info.cell.features,
                bidirectional=info.directions == 2,
                param_dtype=info.cell.param_dtype,
                rngs=rngs,
                **resolved,
            )
            for info in infos
        ]
        self.strategy = strategy
        self.stack = stack
        self.infos = tuple(infos)
        self.rnn = nnx.List(layers) if stack else layers[0]
        self.initial_state = nnx.List(states) if stack else states[0]
        if deterministic is not None:
            self.set_attributes(
                deterministic=_check_deterministic(deterministic), raise_if_not_found=False
            )

    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Carry | None = None,
        seq_lengths: Array | None = None,
        return_carry: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | None = None,
    ) -> Array | tuple[Carry, Array]:
        """Run the layers from the strategy's state (or ``initial_carry``)."""
        layers = list(self.rnn) if self.stack else [self.rnn]
        states = list(self.initial_state) if self.stack else [self.initial_state]
        inputs = jnp.asarray(inputs)
        batch_shape = _batch_shape_of(inputs, self.infos[0].time_major)
        given = None
        if initial_carry is not None:
            expected = [_expected_carry(info, batch_shape) for info in self.infos]
            hint = _layout_hint(self.infos, self.stack)
            _check_carry(initial_carry, tuple(expected) if self.stack else expected[0], hint)
            given = tuple(initial_carry) if self.stack else (initial_carry,)
        x, carries = inputs, []
        for i, (layer, state) in enumerate(zip(layers, states, strict=True)):
            carry = given[i] if given is not None else state(batch_shape, rngs=rngs)
            carry, x = layer(x, initial_carry=carry, seq_lengths=seq_lengths, return_carry=True)
            carries.append(carry)
        if return_carry is None:
            return_carry = not self.stack and self.infos[0].return_carry
        final = tuple(carries) if self.stack else carries[0]
        return (final, x) if return_carry else x
