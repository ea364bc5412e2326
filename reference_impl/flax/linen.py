"""Initial states for Flax linen: ``from reference_impl.flax import linen as ri``.

This module and :mod:`reference_impl.flax.nnx` execute the plan of
:func:`reference_impl.spec.make` with JAX arrays through one shared module;
:ref:`the API page's framework idioms <framework-idioms>` say what follows linen's idiom
(variables, rng streams, ``deterministic``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reference_impl._extras import missing_framework

try:
    import jax
    from flax import linen as nn
    from flax.core import FrozenDict
except ModuleNotFoundError as _error:  # say which extra installs it
    raise missing_framework(__name__, _error) from _error

from reference_impl import STRATEGIES, spec
from reference_impl.flax import _common as C
from reference_impl.flax._common import Array, Carry, Dtype

jnp = jax.numpy

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
INITIAL_STATE_RNG = C.INITIAL_STATE_RNG
"""Rng stream of the per-call draws of ``uniform``/``xavier`` with ``resample=True``."""
NOISE_RNG = C.NOISE_RNG
"""Rng stream of the ``noisy`` strategy and of :class:`NoisyCell`."""

_API = C.Api(nn, "linen", "nn", "ri")


def _reject_seed(seed: int | None, where: str) -> None:
    if seed is not None:
        raise ValueError(
            f"seed={seed!r}: {where} takes its randomness from Flax rng streams, not a seed. "
            f"Pass jax.random.key({seed}) to init (the 'params' stream) and "
            f"rngs={{'{INITIAL_STATE_RNG}': key, '{NOISE_RNG}': key}} to apply."
        )


def _constructor_options(strategy: Any, options: dict[str, Any], where: str) -> tuple:
    """``(module_args, strategy name, options)`` from a constructor's keywords; linen
    also rebuilds modules from their fields (``options=...``), so both forms merge."""
    module_args = {k: options.pop(k) for k in ("parent", "name") if k in options}
    given = dict(options.pop("options", None) or {})
    given.update(options)
    plan = C.make_plan(strategy, given)
    _reject_seed(plan.seed, where)
    return module_args, plan.name, plan.options()


def _rng_key(module: nn.Module, stream: str, what: str, hint: str = "") -> Array:
    """A key from ``stream``, or a ``ValueError`` naming the stream when it is missing."""
    if module.has_rng(stream) or (module.is_initializing() and module.has_rng("params")):
        return module.make_rng(stream)  # at init a missing stream falls back to "params"
    raise ValueError(
        f"{what} draws from the {stream!r} rng stream, which this call was not given: "
        f"pass rngs={{'{stream}': key}} to apply{hint}"
    )


def _deterministic(module: nn.Module, value: bool | None, what: str) -> bool:
    value = module.deterministic if value is None else value
    if value is None:
        if module.is_initializing():
            return True  # init draws no noise, so it needs no noise stream
        raise ValueError(
            f"{what} needs deterministic=True (evaluation: no noise) or deterministic=False "
            f"(training: noise from the {NOISE_RNG!r} rng stream), given to the constructor "
            "or to the call"
        )
    return spec.check_bool("deterministic", value)


def _noise_std(module: nn.Module, rule: spec.NoiseStd) -> Array:
    """Sigma; a learnable one is the parameter ``"std_raw"`` of ``module``."""
    if not rule.learnable:
        return C.std_from_raw(rule, rule.std)
    raw = module.param("std_raw", lambda k, s, d: jnp.full(s, rule.raw(), d), (), jnp.float32)
    return C.std_from_raw(rule, raw)


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
    shapes: tuple[tuple[int, ...], ...] = ()  # any other cell: its carry's shapes ...
    treedef: Any = None  # ... and structure


class InitialState(_InitialStateFields):
    """Produces the initial carry of one Flax linen recurrent layer with one strategy.

    ``state(batch_shape)`` returns the carry in the cell's layout, for
    ``nn.RNN(cell)(x, initial_carry=...)``: ``(*batch_shape, features)``, a tuple
    ``(c, h)`` for an LSTM cell, a pair ``(forward, backward)`` of those with
    ``bidirectional=True``. ``cell`` is a kind (``"gru"``, ``"lstm"``, ``"rnn"``, with
    ``features``) or a linen cell; ``deterministic`` (also a call argument, which wins)
    turns the noisy strategy's noise off. Variables ``"h"``/``"c"`` are
    ``(directions, features)``; a learnable sigma is ``"std_raw"`` in ``"params"``.

    For any other cell, ``carry=`` is its carry for one sequence (arrays or
    ``jax.ShapeDtypeStruct`` s, no batch axes), e.g. ``jax.eval_shape(cell.initialize_carry,
    key, step_shape)``: the state has that structure, with the batch axes in front;
    the variables are ``"state_0"``, ``"state_1"``, ... in the order of
    ``jax.tree.leaves``, each ``(directions, *its shape)``: one value per element of the
    carry (for a ``ConvLSTMCell``, per position and channel), broadcast over the batch.

    >>> import jax, jax.numpy as jnp
    >>> state = InitialState("xavier", cell="lstm", features=16, resample=False)
    >>> variables = state.init(jax.random.key(0), (8,))
    >>> c, h = state.apply(variables, (8,))
    >>> c.shape, h.shape, variables["buffers"]["h"].shape
    ((8, 16), (8, 16), (1, 16))
    >>> bool(jnp.abs(h).max() <= spec.xavier_bound(16)), bool((h == h[0]).all())
    (True, True)
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
        carry: Carry = None,
        **options: Any,
    ) -> None:
        shapes, treedef = options.pop("shapes", ()), options.pop("treedef", None)
        module_args, strategy, resolved = _constructor_options(
            strategy, options, "reference_impl.flax.linen.InitialState"
        )
        if shapes:  # rebuilt by linen from the fields of another cell's state
            info = C.CellInfo(C.OTHER, features, param_dtype, tuple(shapes), treedef)
        else:
            info = _API.resolve_cell(cell, features, param_dtype, carry)
        super().__init__(
            strategy=strategy,
            cell=info.kind,
            features=info.features,
            bidirectional=spec.check_bool("bidirectional", bidirectional),
            options=FrozenDict(resolved),
            param_dtype=info.param_dtype,
            deterministic=deterministic,
            shapes=info.shapes,
            treedef=info.treedef,
            **module_args,
        )

    @nn.compact
    def __call__(
        self, batch_shape: int | Sequence[int] = (), *, deterministic: bool | None = None
    ) -> Carry:
        """The initial carry for ``batch_shape`` (``()`` for one unbatched sequence)."""
        batch_shape = C.check_batch_shape(batch_shape)
        plan = C.make_plan(self.strategy, self.options)
        info = C.CellInfo(self.cell, self.features, self.param_dtype, self.shapes, self.treedef)
        directions = 2 if self.bidirectional else 1
        rows = {n: (directions, *info.shape(n)) for n in info.names}
        vectors = draw_key = noise = None
        if plan.source == "param":
            vectors = {
                n: self.param(n, C.vector_initializer(plan, shape[-1]), shape, self.param_dtype)
                for n, shape in rows.items()
            }
        elif plan.source == "stored":
            vectors = {n: self._buffer(plan, n, shape) for n, shape in rows.items()}
        elif plan.source == "draw":
            draw_key = _rng_key(self, INITIAL_STATE_RNG, f"strategy {self.strategy!r}")
        if plan.noise is not None:
            std = _noise_std(self, plan.noise)
            if plan.noise.draws and not _deterministic(self, deterministic, "strategy 'noisy'"):
                what = "strategy 'noisy' with deterministic=False"
                noise = (_rng_key(self, NOISE_RNG, what), std)
        return C.make_state(
            plan, info, directions, batch_shape, vectors=vectors, draw_key=draw_key, noise=noise
        )

    @nn.nowrap
    def _buffer(self, plan: spec.Strategy, name: str, shape: tuple[int, ...]) -> Array:
        if not self.is_initializing() and not self.has_variable(BUFFERS, name):
            raise ValueError(
                f"resample=False keeps its draw in the {BUFFERS!r} collection, which apply "
                f"was not given: pass every collection returned by init, e.g. "
                f"model.apply(variables, ...), not only {{'params': ...}}"
            )
        bound = plan.draw_bound(shape[-1])
        draw = lambda: C.uniform(self.make_rng("params"), shape, bound, self.param_dtype)  # noqa: E731
        return self.variable(BUFFERS, name, draw).value


class _Layers:
    """The wrapped layers, hidden from linen (which adopts every module in a field):
    InitialStateRNN builds its submodules from these templates at call time."""

    __slots__ = ("infos", "modules", "stack")

    def __init__(self, modules: tuple, infos: tuple[C.LayerInfo, ...], stack: bool) -> None:
        self.modules, self.infos, self.stack = modules, infos, stack

    def __repr__(self) -> str:
        return repr(list(self.modules)) if self.stack else repr(self.modules[0])


def _detach(module: nn.Module) -> nn.Module:
    # An unbound deep copy: a cell created inside another module's compact method is
    # already attached there, and must not be used from that scope.
    return module.clone(parent=None, _deep_clone=True)


def _rebuild(layer: nn.Module, change: Any) -> nn.Module:
    """``layer`` with ``change(rnn, direction)`` applied to each of its ``nn.RNN``."""
    if isinstance(layer, nn.Bidirectional):
        forward, backward = (change(r, d) for d, r in enumerate(_API.directions(layer)))
        return layer.clone(parent=None, forward_rnn=forward, backward_rnn=backward)
    return change(layer, 0)


def _normalize(rnn: object) -> _Layers:
    if isinstance(rnn, _Layers):
        return rnn
    layers, infos, stack = _API.layers(rnn, lambda cell: nn.RNN(cell, parent=None))
    return _Layers(tuple(_detach(layer) for layer in layers), infos, stack)


class _InitialStateRNNFields(nn.Module):
    # See _InitialStateFields for why the options are one field.
    rnn: Any = None
    strategy: str = "learnable"
    options: Mapping[str, Any] = FrozenDict()
    deterministic: bool | None = None


class InitialStateRNN(_InitialStateRNNFields):
    """Wraps Flax linen recurrent layers and gives them an initial-state strategy.

    ``rnn`` is a cell (any ``nn.RNNCellBase``, or a :class:`NoisyCell` of a built-in
    one), an ``nn.RNN``, an ``nn.Bidirectional`` of two, or a list of those (a stack);
    each layer is one ``nn.RNN`` scan. Another cell's carry (structure, shapes) is read
    from its ``initialize_carry`` for the input's feature shape, and the state is one
    value per carry element, broadcast over the batch axes (see :class:`InitialState`).
    A stream is carried by passing the returned carry back in as ``initial_carry``;
    ``None`` starts from the strategy's state. ``model.apply(variables, x)`` returns the
    last layer's outputs, ``(carry, outputs)`` with ``return_carry=True`` (default: the
    layer's own; a stack's carry has one carry per layer). ``initial_carry`` wins over
    the strategy;
    ``deterministic`` applies to the noisy strategy and to every NoisyCell inside.

    >>> import jax, jax.numpy as jnp, flax.linen as nn
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
        x = jnp.asarray(inputs)
        first = layers.infos[0]
        batch_shape = C.batch_shape_of(x, first.time_major, first.cell.feature_axes)
        deterministic = self.deterministic if deterministic is None else deterministic
        if deterministic is None and self.is_initializing():
            deterministic = True
        infos = list(layers.infos)
        if all(info.cell.known for info in infos):  # checked before any layer runs
            given = C.given_carries(initial_carry, infos, layers.stack, batch_shape)
        carries = []
        for i, layer in enumerate(layers.modules):
            # Another cell's carry is read from its initialize_carry, for this layer's input.
            feature_shape = x.shape[x.ndim - infos[i].cell.feature_axes :]
            info = infos[i] = _API.layer_carry(layer, infos[i], feature_shape)
            if initial_carry is not None and not all(f.cell.known for f in layers.infos):
                given = C.given_carries(initial_carry, infos, layers.stack, batch_shape, i)
                given = {i: given[0]}
            suffix = f"_{i}" if layers.stack else ""
            args = {"deterministic": deterministic, "options": self.options, **C.state_args(info)}
            state = InitialState(self.strategy, name="initial_state" + suffix, **args)
            # At init the state's variables are created even when a carry is given,
            # so a later call without one finds them.
            carry = state(batch_shape) if initial_carry is None or self.is_initializing() else None
            carry = carry if initial_carry is None else given[i]
            module, x_in = self._prepare(layer, info, x, deterministic)
            module = module.clone(parent=self, name="rnn" + suffix)
            carry, x = module(x_in, initial_carry=carry, seq_lengths=seq_lengths, return_carry=True)
            carries.append(carry)
        layers = _Layers(layers.modules, tuple(infos), layers.stack)
        return C.finish(carries, x, layers.infos, layers.stack, return_carry)

    @nn.nowrap
    def _prepare(
        self, layer: nn.Module, info: C.LayerInfo, x: Array, deterministic: bool | None
    ) -> tuple[nn.Module, Array]:
        """The layer for this call, and its inputs: every NoisyCell gets the call's
        ``deterministic`` and its stream split per step; in training, when every
        direction's cell is a NoisyCell that draws, the noise of all steps is drawn
        here, appended to the inputs, and each cell takes its block."""
        cells = [rnn.cell for rnn in _API.directions(layer)]
        noisy = info.noisy and all(isinstance(c, NoisyCell) for c in cells)
        if noisy:
            modes = {c.deterministic if deterministic is None else deterministic for c in cells}
            noisy = modes == {False} and all(c._rule().draws for c in cells)
        if noisy:
            what = "NoisyCell with deterministic=False"
            x = C.append_noise(x, _rng_key(self, cells[0].rng_collection, what), info)

        def change(rnn: nn.RNN, direction: int) -> nn.RNN:
            if not isinstance(cell := rnn.cell, NoisyCell):
                return rnn
            fields = {} if deterministic is None else {"deterministic": deterministic}
            if noisy:
                fields["noise_block"] = (direction, info.directions)
            split = {**rnn.split_rngs, cell.rng_collection: True}
            return rnn.clone(parent=None, cell=cell.clone(parent=None, **fields), split_rngs=split)

        return _rebuild(layer, change), x


class NoisyCell(nn.RNNCellBase):
    """Per-step state noise around a Flax linen cell, for use inside ``nn.RNN``.

    With ``deterministic=False`` every step adds ``N(0, noise_std^2)`` noise to each
    carry component before the wrapped cell (under ``"cell"``) reads it; with ``True``
    it is the wrapped cell. Inside :class:`InitialStateRNN` the noise of all steps is
    drawn before the scan from the ``"noise"`` stream; in a bare ``nn.RNN`` the cell
    draws every step, so the stream must be split per step (``split_rngs``, below).

    >>> import jax, jax.numpy as jnp, flax.linen as nn
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
    noise_block: tuple[int, int] | None = None  # set by InitialStateRNN: pre-drawn noise

    def __post_init__(self) -> None:
        _API.builtin_info(self.cell)  # a TypeError for an unsupported cell, at construction
        self._rule()
        _reject_seed(self.seed, "reference_impl.flax.linen.NoisyCell")
        super().__post_init__()

    @nn.nowrap
    def _rule(self) -> spec.NoiseStd:
        return spec.NoiseStd(self.noise_std, self.learnable_std, self.min_std)

    @nn.compact
    def __call__(self, carry: Carry, inputs: Array) -> tuple[Carry, Array]:
        """One step: ``cell(carry + noise, inputs)`` in training, ``cell(carry, inputs)``."""
        rule = self._rule()
        std = _noise_std(self, rule)
        if self.noise_block is not None:  # training, with the noise drawn before the scan
            info = _API.cell_info(self.cell)
            carry, inputs = C.split_noise(carry, inputs, self.noise_block, info, std)
        elif rule.draws and not _deterministic(self, None, "NoisyCell"):
            hint = (
                f", and inside nn.RNN split it per step: nn.RNN(cell, split_rngs="
                f"{{'params': False, '{self.rng_collection}': True}})"
            )
            what = "NoisyCell with deterministic=False"
            carry = C.add_noise(carry, _rng_key(self, self.rng_collection, what, hint), std)
        return self.cell(carry, inputs)

    @nn.nowrap
    def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]) -> Carry:
        """The wrapped cell's own (zero) carry."""
        return self.cell.initialize_carry(rng, input_shape)

    @property
    def num_feature_axes(self) -> int:
        return self.cell.num_feature_axes
