"""Initial states for Flax NNX: ``from reference_impl.flax import nnx as ri_nnx``.

The same names, options and state layout as :mod:`reference_impl.flax.linen`, executed
by the same shared module; :ref:`the API page's framework idioms <framework-idioms>` say what
follows NNX's idiom (``nnx.Param`` and :class:`Buffer`, ``rngs`` and ``seed``,
``train()``/``eval()``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from reference_impl._extras import missing_framework

try:
    import jax.numpy as jnp
    from flax import nnx
    from flax.core import FrozenDict
except ModuleNotFoundError as _error:  # say which extra installs it
    raise missing_framework(__name__, _error) from _error

from reference_impl import STRATEGIES, spec
from reference_impl.flax import _common as C
from reference_impl.flax._common import INITIAL_STATE_RNG, NOISE_RNG, Array, Carry, Dtype

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
    """The stored draw of ``resample=False``: saved by ``nnx.state``, but not an
    ``nnx.Param``, so ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` leaves it alone.

    >>> state = InitialState("uniform", features=4, resample=False, rngs=nnx.Rngs(0))
    >>> type(state.h).__name__, state.h.shape
    ('Buffer', (1, 4))
    """


_API = C.Api(nnx, "NNX", "nnx", "ri_nnx")


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


def _call_key(override: Any, own: nnx.RngStream | None, stream: str, what: str) -> Array:
    """A key from the call's ``rngs`` (an ``nnx.Rngs``, a stream or a key), else from
    the module's own stream."""
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


class _Sigma:
    """``noise_std`` and ``set_noise_std`` from ``_rule()`` and a learnable ``std_raw``."""

    @property
    def noise_std(self) -> Array:
        """The current noise standard deviation, a scalar array."""
        rule = self._rule()
        return C.std_from_raw(rule, self.std_raw[...] if rule.learnable else rule.std)

    def set_noise_std(self, value: float) -> None:
        """Set sigma: ``std_raw`` if learnable, else a new static value (``nnx.jit``
        retraces once)."""
        rule = self._rule()
        raw = rule.raw(value)
        if rule.learnable:
            self.std_raw[...] = jnp.asarray(raw, jnp.float32)
        else:
            self._set_fixed_std(raw)

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view(model, deterministic=...)``."""
        if deterministic is not None:
            self.deterministic = spec.check_bool("deterministic", deterministic)


class InitialState(_Sigma, nnx.Module):
    """Produces the initial carry of one Flax NNX recurrent layer with one strategy.

    ``state(batch_shape)`` returns the carry in the cell's layout, as linen's
    :class:`~reference_impl.flax.linen.InitialState` does, for ``nnx.RNN(cell)(x,
    initial_carry=...)``. ``cell`` is a kind (with ``features``) or an NNX cell;
    ``rngs`` (or ``seed``) serves the draws; ``deterministic=True`` (``model.eval()``)
    turns the noisy strategy's noise off. For any other cell, ``carry=`` is its carry
    for one sequence, as in linen's; the variables are ``state_0``, ``state_1``, ...

    >>> state = InitialState("noisy", cell="lstm", features=4, noise_std=0.5, rngs=nnx.Rngs(0))
    >>> c, h = state((2,))
    >>> c.shape, bool((h != 0).all())
    ((2, 4), True)
    >>> state.eval()
    >>> float(jnp.abs(state((2,))[1]).max())
    0.0
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
        carry: Carry = None,
        **options: Any,
    ) -> None:
        plan = C.make_plan(strategy, options)
        rngs = _seeded(rngs, plan.seed)
        info = _API.resolve_cell(cell, features, param_dtype, carry)
        self.strategy = plan.name
        self.cell, self.features, self.param_dtype = info.kind, info.features, info.param_dtype
        self.shapes, self.treedef = info.shapes, info.treedef
        self.bidirectional = spec.check_bool("bidirectional", bidirectional)
        self.deterministic = spec.check_bool("deterministic", deterministic)
        self.options = FrozenDict(plan.options())
        directions = 2 if self.bidirectional else 1
        if plan.source in ("param", "stored"):
            kind = nnx.Param if plan.source == "param" else Buffer
            for name in info.names:
                shape = (directions, *info.shape(name))
                draws_once = plan.vector_init(shape[-1]) is not None
                init = C.vector_initializer(plan, shape[-1])
                key = _init_key(rngs, _what_draws(plan)) if draws_once else None
                setattr(self, name, kind(init(key, shape, info.param_dtype)))
        if plan.noise is not None and plan.noise.learnable:
            self.std_raw = nnx.Param(jnp.asarray(plan.noise.raw(), jnp.float32))
        draws = plan.source == "draw" or (plan.noise is not None and plan.noise.draws)
        stream = INITIAL_STATE_RNG if plan.source == "draw" else NOISE_RNG
        self.rngs = _fork(rngs, stream) if draws else nnx.data(None)

    def _plan(self) -> spec.Strategy:
        return C.make_plan(self.strategy, self.options)

    def _rule(self) -> spec.NoiseStd:
        return self._plan().noise_rule()

    def _set_fixed_std(self, value: float) -> None:
        self.options = FrozenDict({**self.options, "noise_std": value})

    def __call__(
        self,
        batch_shape: int | Sequence[int] = (),
        *,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | Array | None = None,
    ) -> Carry:
        """The initial carry for ``batch_shape`` (``()`` for one unbatched sequence)."""
        batch_shape = C.check_batch_shape(batch_shape)
        plan = self._plan()
        info = C.CellInfo(self.cell, self.features, self.param_dtype, self.shapes, self.treedef)
        vectors = draw_key = noise = None
        if plan.source in ("param", "stored"):
            vectors = {n: getattr(self, n)[...] for n in info.names}
        elif plan.source == "draw":
            what = f"strategy {self.strategy!r} with resample=True"
            draw_key = _call_key(rngs, self.rngs, INITIAL_STATE_RNG, what)
        deterministic = self.deterministic if deterministic is None else deterministic
        if plan.noise and plan.noise.draws and not spec.check_bool("deterministic", deterministic):
            what = "strategy 'noisy' with deterministic=False"
            noise = (_call_key(rngs, self.rngs, NOISE_RNG, what), self.noise_std)
        directions = 2 if self.bidirectional else 1
        return C.make_state(
            plan, info, directions, batch_shape, vectors=vectors, draw_key=draw_key, noise=noise
        )


def _feature_shape(
    layer: nnx.Module, info: C.LayerInfo, given: int | Sequence[int] | None
) -> tuple[int, ...]:
    """The feature shape of one input step, to read another cell's carry: ``given``,
    else the cell's ``in_features``; a cell with one feature axis needs neither (its
    carry does not depend on the input's size)."""
    if info.cell.known:
        return ()
    if given is not None:
        return (given,) if isinstance(given, int) else tuple(given)
    found = getattr(_API.directions(layer)[0].cell, "in_features", None)
    if isinstance(found, int):
        return (found,)
    if info.cell.feature_axes == 1:
        return (1,)
    raise ValueError(
        f"the carry of {type(_API.directions(layer)[0].cell).__name__} depends on the input's "
        f"{info.cell.feature_axes} feature axes, and the cell has no in_features: pass "
        "input_features=<the shape of one input step without batch axes>, e.g. (16, 16, 3)"
    )


def _what_draws(plan: spec.Strategy) -> str:
    if plan.source == "param":
        return f"init={plan.options()['init']!r}"
    return f"strategy {plan.name!r} with resample=False"


def _noisy_cells(layer: nnx.Module, info: C.LayerInfo) -> list[NoisyCell]:
    """The layer's NoisyCells, one per direction, if all draw noise in this call."""
    cells = [rnn.cell for rnn in _API.directions(layer)]
    if info.noisy and all(isinstance(c, NoisyCell) for c in cells):
        if all(not c.deterministic and c._rule().draws for c in cells):
            return cells
    return []


class InitialStateRNN(nnx.Module):
    """Wraps Flax NNX recurrent layers and gives them an initial-state strategy.

    The layers and return values are those of linen's
    :class:`~reference_impl.flax.linen.InitialStateRNN`, run by ``nnx.RNN``, any
    ``nnx.RNNCellBase`` included. ``deterministic``, if given, is set on every module
    inside; ``rngs`` serves the strategy's draws. Another cell's carry is read at
    construction from its ``initialize_carry``, for inputs of ``input_features`` (the
    shape of one input step without batch axes), else of the cell's ``in_features``;
    a carry with more feature axes than one (a convolutional cell's) needs
    ``input_features``.

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
        input_features: int | Sequence[int] | None = None,
        **options: Any,
    ) -> None:
        plan = C.make_plan(strategy, options)
        resolved = plan.options()
        # One generator for every layer, so layers do not share draws.
        rngs = _seeded(rngs, resolved.pop("seed", None))
        layers, infos, stack = _API.layers(rnn, nnx.RNN)
        infos = tuple(
            _API.layer_carry(layer, info, _feature_shape(layer, info, input_features))
            for layer, info in zip(layers, infos, strict=True)
        )
        states = [InitialState(plan.name, rngs=rngs, **C.state_args(i), **resolved) for i in infos]
        self.strategy, self.stack, self.infos = plan.name, stack, infos
        self.rnn = nnx.List(layers) if stack else layers[0]
        self.initial_state = nnx.List(states) if stack else states[0]
        if deterministic is not None:
            deterministic = spec.check_bool("deterministic", deterministic)
            self.set_attributes(deterministic=deterministic, raise_if_not_found=False)

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
        x = jnp.asarray(inputs)
        first = self.infos[0]
        batch_shape = C.batch_shape_of(x, first.time_major, first.cell.feature_axes)
        given = C.given_carries(initial_carry, self.infos, self.stack, batch_shape)
        carries = []
        for i, (layer, state, info) in enumerate(zip(layers, states, self.infos, strict=True)):
            carry = given[i] if given is not None else state(batch_shape, rngs=rngs)
            carry, x = self._run(layer, info, x, carry, seq_lengths, rngs)
            carries.append(carry)
        return C.finish(carries, x, self.infos, self.stack, return_carry)

    @staticmethod
    def _run(
        layer: nnx.Module, info: C.LayerInfo, x: Array, carry: Carry, seq_lengths: Any, rngs: Any
    ) -> tuple[Carry, Array]:
        """One layer. In training, the noise of its NoisyCells for all steps is drawn
        here, in one call, appended to the inputs, and each cell takes its block."""
        cells = _noisy_cells(layer, info)
        if cells:
            what = "NoisyCell in training"
            key = _call_key(rngs, cells[0].rngs, cells[0].rng_collection, what)
            x = C.append_noise(x, key, info)
        try:
            for direction, cell in enumerate(cells):
                cell.noise_block = (direction, len(cells))
            return layer(x, initial_carry=carry, seq_lengths=seq_lengths, return_carry=True)
        finally:
            for cell in cells:
                cell.noise_block = None


class NoisyCell(_Sigma, nnx.RNNCellBase):
    """Per-step state noise around a Flax NNX cell, for use inside ``nnx.RNN``.

    In training (the default; ``model.train()``) every step adds ``N(0,
    noise_std^2)`` noise to each carry component before the wrapped cell reads it; in
    ``model.eval()`` it is the wrapped cell. Inside :class:`InitialStateRNN` the noise
    of all steps is drawn before the scan; in a bare ``nnx.RNN``, at every step.

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
        _API.builtin_info(cell)  # a TypeError for an unsupported cell
        rule = spec.NoiseStd(noise_std, learnable_std, min_std)
        self.cell = cell
        self.learnable_std, self.min_std, self.fixed_std = rule.learnable, rule.min_std, rule.std
        self.deterministic = spec.check_bool("deterministic", deterministic)
        self.rng_collection = rng_collection
        self.noise_block = None  # set by InitialStateRNN for a call with pre-drawn noise
        if rule.learnable:
            self.std_raw = nnx.Param(jnp.asarray(rule.raw(), jnp.float32))
        self.rngs = _fork(_seeded(rngs, spec.check_seed(seed)), rng_collection)

    def _rule(self) -> spec.NoiseStd:
        return spec.NoiseStd(self.fixed_std, self.learnable_std, self.min_std)

    def _set_fixed_std(self, value: float) -> None:
        self.fixed_std = value

    def __call__(self, carry: Carry, inputs: Array) -> tuple[Carry, Array]:
        """One step: ``cell(carry + noise, inputs)`` in training, ``cell(carry, inputs)``."""
        if self.noise_block is not None:  # training, with the noise drawn before the scan
            info = _API.cell_info(self.cell)
            carry, inputs = C.split_noise(carry, inputs, self.noise_block, info, self.noise_std)
        elif self._rule().draws and not self.deterministic:
            key = _call_key(None, self.rngs, self.rng_collection, "NoisyCell in training")
            carry = C.add_noise(carry, key, self.noise_std)
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


class _ConstructorSignature:
    """``inspect.signature(cls)`` of an NNX module class: its ``__init__``'s parameters.

    NNX's metaclass defines ``__call__(*args, **kwargs)``, which ``inspect`` (and so
    ``help()``, editors and the API page) would report as the constructor's signature. On
    an instance this attribute does not exist, so ``inspect.signature(module)`` is still
    the signature of calling the module.
    """

    def __get__(self, instance: Any, owner: type) -> inspect.Signature:
        if instance is not None:
            raise AttributeError("__signature__")
        sig = inspect.signature(owner.__init__)
        return sig.replace(
            parameters=list(sig.parameters.values())[1:],  # without self
            return_annotation=inspect.Signature.empty,
        )


for _cls in (InitialState, InitialStateRNN, NoisyCell):
    _cls.__signature__ = _ConstructorSignature()
del _cls
