"""Initial states for Keras 3 recurrent layers: ``from reference_impl import tensorflow as ri``.

The layers execute the plan of :func:`reference_impl.spec.make` with ``keras.ops`` and
``keras.random`` only, so they run on every Keras backend (TensorFlow and JAX are
tested); :ref:`the API page's framework idioms <framework-idioms>` say what follows Keras's idiom.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from reference_impl._extras import missing_framework

try:
    import keras
    from keras import ops
except ModuleNotFoundError as _error:  # say which extra installs it
    raise missing_framework(__name__, _error) from _error

from reference_impl import STRATEGIES, spec

try:
    # Keras's RNN prepares dropout masks before its loop only for cells carrying this
    # mixin, which Keras 3.15 does not export (no ``keras.layers.DropoutRNNCell``): the
    # module's one private import. NoisyCell carries it and forwards to its cell.
    from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell as _DropoutMixin
except ImportError:  # pragma: no cover - a Keras without the mixin

    class _DropoutMixin:  # type: ignore[no-redef]
        pass


__all__ = ["STRATEGIES", "InitialState", "InitialStateRNN", "NoisyCell"]

_PACKAGE = "reference_impl"
# Keywords of ``keras.layers.Layer``; every other keyword is a strategy option.
_LAYER_KWARGS = ("name", "dtype", "trainable", "autocast", "activity_regularizer")
# Draw in float32 and cast: one seed gives the same numbers under mixed precision.
_DRAW_DTYPE = "float32"


def _split_layer_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    layer = {k: v for k, v in kwargs.items() if k in _LAYER_KWARGS}
    return layer, {k: v for k, v in kwargs.items() if k not in _LAYER_KWARGS}


_KINDS = {
    "lstm": keras.layers.LSTMCell,
    "gru": keras.layers.GRUCell,
    "rnn": keras.layers.SimpleRNNCell,
}


def _cell_kind(cell: object) -> str | None:
    """``"gru"``, ``"lstm"`` or ``"rnn"`` for a built-in Keras cell, else ``None``."""
    return next((kind for kind, cls in _KINDS.items() if isinstance(cell, cls)), None)


def _component_seed(seed: int | None, index: int) -> int | None:
    # One independent, reproducible seed per stored vector, so h0 and c0 differ.
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0]) & 0x7FFFFFFF


def _initializer(init: float | Callable | None, seed: int | None, index: int) -> Any:
    """The Keras initializer for ``plan.vector_init``: zeros, ``U(-b, b)`` or the user's."""
    if init is None:
        return "zeros"
    if not callable(init):
        return keras.initializers.RandomUniform(-init, init, seed=_component_seed(seed, index))

    def checked(shape: tuple[int, ...], dtype: Any = None) -> Any:
        value = init(shape, dtype=dtype)
        spec.check_init_result([int(d) for d in ops.shape(value)], shape)
        return value

    return checked


def _std_weight(layer: keras.layers.Layer, rule: spec.NoiseStd) -> Any:
    """The scalar ``std_raw`` of a noise rule; float32 even under mixed precision."""
    initializer = keras.initializers.Constant(rule.raw())
    return layer.add_weight(
        shape=(), initializer=initializer, trainable=rule.learnable, autocast=False, name="std_raw"
    )


class _Sigma:
    """``noise_std`` and ``set_noise_std`` from ``_noise_rule()`` and the weight ``std_raw``."""

    @property
    def noise_std(self) -> Any:
        """The current noise standard deviation, a scalar tensor."""
        return ops.convert_to_tensor(self._noise_rule().from_raw(self.std_raw, ops.softplus))

    def set_noise_std(self, value: float) -> None:
        """Set sigma (for a schedule; a variable, so a compiled model does not retrace)."""
        raw = self._noise_rule().raw(value)  # checked first; only a noisy strategy has std_raw
        self.std_raw.assign(raw)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InitialState(_Sigma, keras.layers.Layer):
    """Produces the initial state of a Keras recurrent layer with one strategy.

    Called on the layer's input (batch first, maybe unknown until the model runs), it
    returns the ``initial_state=`` list, each ``(batch, units)`` in the compute dtype;
    ``bidirectional=True`` gives one state per direction. For any other cell,
    ``shapes=`` gives each state's shape without the batch axis (e.g. ``[(8, 8, 16)] * 2``
    for a ``ConvLSTM2D``): a stored or learnable vector then has that whole shape, one
    value per element broadcast over the batch, and the draws' bounds use its last axis
    (:func:`~reference_impl.spec.carry_features`).

    >>> inputs = keras.Input((20, 10))
    >>> h, c = InitialState("learnable", units=32, cell="lstm")(inputs)
    >>> y = keras.layers.LSTM(32)(inputs, initial_state=[h, c])
    >>> tuple(h.shape), tuple(y.shape)
    ((None, 32), (None, 32))
    """

    def __init__(
        self,
        strategy: str | spec.Strategy = "zero",
        *,
        units: int | None = None,
        cell: str | None = "gru",
        bidirectional: bool = False,
        shapes: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> None:
        layer_kwargs, options = _split_layer_kwargs(kwargs)
        super().__init__(**layer_kwargs)
        if isinstance(options.get("init"), dict):  # a serialized Keras initializer
            options["init"] = keras.saving.deserialize_keras_object(options["init"])
        self.plan = plan = spec.make(strategy, **options)  # validated first, as everywhere
        self.strategy, self.options = plan.name, plan.options()
        if shapes is None:  # a built-in cell: its kind and units
            if units is None:
                raise TypeError("InitialState needs units=<the layer's units> (or shapes=...)")
            self.cell = spec.check_cell(cell)
            self.units = spec.check_positive_int("units", units)
            self.shapes = tuple((f,) for f in spec.component_features(self.cell, self.units))
        else:  # any cell: the shape of each of its states
            self.cell, self.units, self.shapes = None, None, _check_shapes(shapes)
        self.features = tuple(spec.carry_features(shape) for shape in self.shapes)
        self.bidirectional = spec.check_bool("bidirectional", bidirectional)
        self.directions = 2 if self.bidirectional else 1
        self.supports_masking = True  # a mask on the input is about time steps: dropped
        self.seed_generator = None
        if plan.source == "draw" or plan.noise is not None:
            # Per-call draws; a layer attribute so that it works under jit and on JAX.
            self.seed_generator = keras.random.SeedGenerator(plan.seed)
        # All weights are made here (none depends on the input), so a schedule or a
        # weight transfer can happen before any call.
        names = self._vector_names()
        for i, (name, n, shape) in enumerate(zip(names, self.features, self.shapes, strict=True)):
            if plan.source in ("stored", "param"):
                init = _initializer(plan.vector_init(n), plan.seed, i)
                kind = {"shape": (self.directions, *shape), "trainable": plan.source == "param"}
                setattr(self, name, self.add_weight(initializer=init, name=name, **kind))
        if plan.noise is not None:
            self.std_raw = _std_weight(self, plan.noise)
        self.built = True

    def _vector_names(self) -> tuple[str, ...]:
        if self.cell is None:
            return tuple(f"state_{i}" for i in range(len(self.shapes)))
        return ("h0", "c0")[: len(self.features)]

    @property
    def state_names(self) -> list[str]:
        """Names of the returned states in order, e.g. ``["h_forward", "h_backward"]``."""
        names = [n.removesuffix("0") if self.cell else n for n in self._vector_names()]
        if not self.bidirectional:
            return names
        return [f"{n}_{d}" for d in ("forward", "backward") for n in names]

    def _noise_rule(self) -> spec.NoiseStd:
        return self.plan.noise_rule()

    def get_initial_state(self, batch_size: Any, training: bool = False) -> list[Any]:
        """The list of initial states for ``batch_size`` rows (an int or a scalar tensor)."""
        plan, dtype = self.plan, self.compute_dtype
        # Noise in training whatever sigma is now: a schedule may raise it from 0.
        std = ops.cast(self.noise_std, _DRAW_DTYPE) if training and plan.noise else None
        states = []
        for d in range(self.directions):
            for name, features, own in zip(
                self._vector_names(), self.features, self.shapes, strict=True
            ):
                shape = (batch_size, *own)
                if plan.source == "zeros":
                    state = ops.zeros(shape, dtype=dtype)
                elif plan.source == "draw":
                    b = plan.draw_bound(features)
                    u = keras.random.uniform(shape, -b, b, _DRAW_DTYPE, seed=self.seed_generator)
                    state = ops.cast(u, dtype)
                else:  # "stored" or "param": one vector per direction, broadcast
                    state = ops.broadcast_to(ops.cast(getattr(self, name)[d : d + 1], dtype), shape)
                if std is not None:
                    eps = keras.random.normal(shape, dtype=_DRAW_DTYPE, seed=self.seed_generator)
                    state = state + ops.cast(std * eps, dtype)
                states.append(state)
        return states

    def call(self, inputs: Any, training: bool | None = None) -> list[Any]:
        """The initial states for ``inputs``'s batch; noise only when ``training``."""
        shape = ops.shape(inputs)
        if len(shape) < 2:
            raise ValueError(
                f"InitialState needs an input with a batch dimension first, e.g. "
                f"(batch, time, features); got shape {tuple(shape)}"
            )
        return self.get_initial_state(shape[0], training=bool(training))

    def compute_output_shape(self, input_shape: tuple) -> list[tuple]:
        return [(input_shape[0], *s) for _ in range(self.directions) for s in self.shapes]

    def compute_mask(self, inputs: Any, mask: Any = None) -> list[None]:
        """No mask on the states: a mask on the input is about time steps."""
        return [None] * (self.directions * len(self.shapes))

    def options_config(self) -> dict[str, Any]:
        """The strategy's options, JSON-serializable (a callable ``init`` serialized)."""
        return _options_config(self.options)

    def get_config(self) -> dict[str, Any]:
        """Keras's config plus the strategy, the state's layout and every option."""
        config = super().get_config()
        config.update(strategy=self.strategy, units=self.units, cell=self.cell)
        if self.cell is None:
            config["shapes"] = [list(shape) for shape in self.shapes]
        config.update(bidirectional=self.bidirectional, **self.options_config())
        return config


def _options_config(options: dict[str, Any]) -> dict[str, Any]:
    opts = dict(options)
    if callable(opts.get("init")):
        opts["init"] = keras.saving.serialize_keras_object(opts["init"])
    return opts


def _check_shapes(shapes: object) -> tuple[tuple[int, ...], ...]:
    """``shapes`` as a tuple of shapes, each a non-empty tuple of positive ints."""
    ok = isinstance(shapes, (list, tuple)) and len(shapes) > 0
    ok = ok and all(isinstance(s, (list, tuple)) and len(s) > 0 for s in shapes)
    if not ok:
        raise TypeError(
            "shapes must be a non-empty list of state shapes without the batch axis, e.g. "
            f"[(32,), (32,)]; got {shapes!r}"
        )
    return tuple(tuple(spec.check_positive_int("a state size", n) for n in s) for s in shapes)


# --------------------------------------------------------------------------- wrapper

_SUPPORTED = (
    "a keras.layers.RNN (GRU, LSTM, SimpleRNN, ConvLSTM, RNN over any cell of the Keras "
    "cell protocol) or a Bidirectional of one"
)


def _directions(layer: object) -> list[Any]:
    """The recurrent layer of each direction: ``[layer]``, or forward and backward."""
    if isinstance(layer, keras.layers.Bidirectional):
        return [layer.forward_layer, layer.backward_layer]
    return [layer]


def _describe_rnn(layer: object) -> tuple[str, int] | None:
    """``(kind, units)`` of a layer over a built-in cell; ``None`` for any other cell."""
    if not isinstance(layer, keras.layers.RNN):
        single = hasattr(layer, "state_size") and hasattr(layer, "call")
        hint = " (a single cell: wrap it in keras.layers.RNN first)" if single else ""
        raise TypeError(f"InitialStateRNN wraps {_SUPPORTED}; got {type(layer).__name__}{hint}")
    cell = layer.cell.cell if isinstance(layer.cell, NoisyCell) else layer.cell
    kind = _cell_kind(cell)
    return None if kind is None else (kind, int(cell.units))


def _describe(layer: object) -> tuple[tuple[str, int] | None, bool]:
    """``((cell kind, units) or None for another cell, bidirectional)``, else raise."""
    found = [_describe_rnn(x) for x in _directions(layer)]
    if len(found) == 2 and found[0] != found[1]:
        raise ValueError(
            f"the forward and backward layers of {layer.name!r} differ (cell, units) "
            f"{found[0]} vs {found[1]}; InitialStateRNN needs the same in both"
        )
    return found[0], len(found) == 2


def _state_structure(layer: keras.layers.Layer) -> tuple[list[Any], list[tuple[int, ...]]]:
    """The structure of a built RNN's state (as its ``get_initial_state`` returns it) and
    the shape of each of its tensors without the batch axis."""
    structure = layer.get_initial_state(batch_size=1)
    shapes = [tuple(int(n) for n in leaf.shape[1:]) for leaf in keras.tree.flatten(structure)]
    return structure, shapes


def _append_noise(sequences: Any, cells: list[NoisyCell]) -> Any:
    """``sequences`` with every cell's scaled noise for all steps appended as features:
    one draw for all cells (so directions differ); each cell is told its columns."""
    batch, time = ops.shape(sequences)[0], ops.shape(sequences)[1]
    features, dtype = sequences.shape[-1], keras.backend.standardize_dtype(sequences.dtype)
    width = sum(cell.noise_size for cell in cells)
    eps = keras.random.normal((batch, time, width), dtype=_DRAW_DTYPE, seed=cells[0].seed_generator)
    parts, start = [sequences], 0
    for cell in cells:
        std = ops.cast(cell.noise_std, _DRAW_DTYPE)
        parts.append(ops.cast(std * eps[..., start : start + cell.noise_size], dtype))
        cell._noise_columns = (features, features + start)
        start += cell.noise_size
    return ops.concatenate(parts, axis=-1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InitialStateRNN(keras.layers.Wrapper):
    """Wraps a Keras recurrent layer and gives it an initial-state strategy.

    ``layer(x)`` returns what the wrapped layer returns, started from
    ``layer.initial_state`` (an :class:`InitialState`); ``layer(x, initial_state=...)``
    uses the states given. ``layer`` is a ``GRU``, ``LSTM``, ``SimpleRNN``, ``ConvLSTM``,
    an ``RNN`` over any cell of the Keras cell protocol (a ``state_size``: an int, a list,
    nested) or a :class:`NoisyCell`, or a ``Bidirectional`` of one. For a cell other than
    the built-in ones the state's structure comes from the built layer's
    ``get_initial_state``, and ``initial_state`` is made when the layer is built. The
    noise of a wrapped NoisyCell is drawn here, for all steps at once.

    A stateful layer (``stateful=True``: one fixed batch size) starts from the
    strategy's state on its first call and after every :meth:`reset_state`, and carries
    its final state into the next call otherwise, as the bare layer does from zeros.

    >>> model = keras.Sequential([
    ...     keras.Input((20, 10)),
    ...     InitialStateRNN(keras.layers.LSTM(32, return_sequences=True), "learnable"),
    ...     keras.layers.Dense(5),
    ... ])
    >>> tuple(model(np.zeros((16, 20, 10), "float32")).shape)
    (16, 20, 5)
    >>> sorted((w.name, tuple(w.shape)) for w in model.layers[0].initial_state.weights)
    [('c0', (1, 32)), ('h0', (1, 32))]
    """

    def __init__(
        self, layer: keras.layers.Layer, strategy: str | spec.Strategy = "learnable", **kwargs: Any
    ):
        layer_kwargs, options = _split_layer_kwargs(kwargs)
        if isinstance(options.get("init"), dict):  # a serialized Keras initializer
            options["init"] = keras.saving.deserialize_keras_object(options["init"])
        kind_units, self.bidirectional = _describe(layer)
        self.plan = spec.make(strategy, **options)  # validated now, whatever the cell
        layer_kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **layer_kwargs)
        # A built-in cell's state is known now; another cell's when the layer is built
        # (a ConvLSTM's spatial axes come from the input): see build.
        self.initial_state, self._structure = None, None
        if kind_units is not None:
            self._make_initial_state(units=kind_units[1], cell=kind_units[0])
        self.supports_masking = True
        self.stateful = bool(getattr(layer, "stateful", False))
        # A stateful layer carries its state in variables that Keras neither trains nor
        # saves; this flag says whether they hold a carried state (True) or the stream
        # starts at the next call (False: first call, after reset_state, after loading).
        # Untracked like those variables, so a loaded model starts a new stream.
        carrying = None
        if self.stateful:
            with keras.name_scope(self.name):
                carrying = keras.Variable(False, dtype="bool", trainable=False, name="carrying")
        object.__setattr__(self, "_carrying", carrying)

    def _make_initial_state(self, **sizes: Any) -> None:
        # Under this layer's name, so the weights read "<this layer>/initial_state/h0".
        with keras.name_scope(self.name):
            self.initial_state = InitialState(
                self.plan,
                name="initial_state",
                dtype=self.dtype_policy,
                bidirectional=self.bidirectional,
                **sizes,
            )

    @property
    def strategy(self) -> str:
        return self.plan.name

    @property
    def rnn(self) -> keras.layers.Layer:
        """The wrapped layer (also ``self.layer``), named as in the PyTorch module."""
        return self.layer

    @property
    def return_sequences(self) -> bool:
        return self.layer.return_sequences

    @property
    def return_state(self) -> bool:
        return self.layer.return_state

    def build(self, sequences_shape: tuple, initial_state_shape: Any = None) -> None:
        """Build the wrapped layer, for the input without noise columns; for a cell other
        than the built-in ones, read its state's structure and make the initial state."""
        if not self.layer.built:
            self.layer.build(sequences_shape)
        if self.initial_state is None:
            found = [_state_structure(x) for x in _directions(self.layer)]
            if len(found) == 2 and found[0][1] != found[1][1]:
                raise ValueError(
                    f"the forward and backward layers of {self.layer.name!r} carry states of "
                    f"different shapes, {found[0][1]} and {found[1][1]}; InitialStateRNN "
                    "needs the same in both"
                )
            self._structure = found[0][0]
            self._make_initial_state(shapes=found[0][1])
        self.built = True

    def _pack(self, flat: list[Any]) -> list[Any]:
        """The flat list of states in the structure the layer takes (forward, then
        backward); a built-in cell takes the flat list."""
        if self._structure is None:
            return flat
        n = len(flat) // (2 if self.bidirectional else 1)
        parts = [flat[i : i + n] for i in range(0, len(flat), n)]
        return [s for p in parts for s in keras.tree.pack_sequence_as(self._structure, p)]

    def _check_state(self, state: Any, sequences: Any) -> list[Any]:
        init, names = self.initial_state, self.initial_state.state_names
        shapes = [s for _ in range(init.directions) for s in init.shapes]
        slots = [spec.Slot(n, (sequences.shape[0], *s)) for n, s in zip(names, shapes, strict=True)]
        if init.cell is None:  # any cell: its own structure, checked leaf by leaf
            hint = "the structure the wrapped layer's get_initial_state returns"
            given = keras.tree.flatten(state)
            return self._pack(spec.check_given_state(given, slots, hint))
        parts = list(state) if isinstance(state, (list, tuple)) else [state]
        hint = f"a list of (batch, {init.units}) tensors"
        return spec.check_given_state(parts, slots, hint)

    def call(
        self, sequences: Any, initial_state: Any = None, mask: Any = None, training: Any = None
    ) -> Any:
        """Run the wrapped layer from the strategy's state, or from ``initial_state``."""
        if initial_state is None:
            # Called directly rather than through __call__: the sublayer shares this
            # layer's dtype policy, and the input's mask is not its business.
            batch = ops.shape(sequences)[0]
            initial_state = self.initial_state.get_initial_state(batch, training=bool(training))
            if self.stateful:
                initial_state = self._carried_or(initial_state, sequences)
            initial_state = self._pack(initial_state)
        else:
            initial_state = self._check_state(initial_state, sequences)
        kwargs: dict[str, Any] = {"initial_state": initial_state}
        if self.layer._call_has_mask_arg:
            kwargs["mask"] = mask
        if self.layer._call_has_training_arg:
            kwargs["training"] = training
        noisy = [x.cell for x in _directions(self.layer) if isinstance(x.cell, NoisyCell)]
        noisy = noisy if training else []
        try:
            if noisy:
                sequences = _append_noise(sequences, noisy)
            outputs = self.layer(sequences, **kwargs)
        finally:
            for cell in noisy:
                cell._noise_columns = None
        if self.stateful:  # the layer has stored its final state: the next call goes on
            self._carrying.assign(True)
        return outputs

    def _carried_or(self, start: list[Any], sequences: Any) -> list[Any]:
        """A stateful layer's carried state, or ``start`` when a stream begins."""
        carried = [v for x in _directions(self.layer) for v in keras.tree.flatten(x.states or [])]
        if len(carried) != len(start):  # not built yet: nothing carried
            return start
        expected, got = int(carried[0].shape[0]), sequences.shape[0]
        if got is not None and int(got) != expected:
            raise ValueError(
                f"the stateful layer {self.layer.name!r} carries a state for a batch of "
                f"{expected}; got a batch of {int(got)}. A stateful layer runs at one fixed "
                "batch size, the one it was built with (keras.Input(batch_size=...))"
            )
        return [
            ops.where(self._carrying, ops.cast(c, s.dtype), s)
            for c, s in zip(carried, start, strict=True)
        ]

    def reset_state(self) -> None:
        """Start a new stream: the next call starts from the strategy's state (a stateful
        layer only, as ``keras.layers.RNN.reset_state``)."""
        if not self.stateful:
            raise AttributeError(
                f"reset_state: the wrapped layer {self.layer.name!r} is not stateful; without "
                "stateful=True every call starts from the strategy's state"
            )
        self.layer.reset_state()
        self._carrying.assign(False)

    def reset_states(self) -> None:
        """Same as :meth:`reset_state` (Keras's compatibility alias)."""
        self.reset_state()

    def compute_output_shape(self, sequences_shape: tuple, initial_state_shape: Any = None) -> Any:
        return self.layer.compute_output_shape(sequences_shape)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return self.layer.compute_mask(inputs, mask)

    def get_config(self) -> dict[str, Any]:
        """The wrapped layer's config (Keras's ``Wrapper``), the strategy and its options."""
        config = super().get_config()
        config["strategy"] = self.plan.name
        config.update(_options_config(self.plan.options()))
        return config


# --------------------------------------------------------------------------- cell


def _forward_to_cell(method: str) -> Callable[..., Any]:
    def forward(self: NoisyCell, *args: Any) -> Any:
        cell = self.cell
        return getattr(cell, method)(*args) if isinstance(cell, _DropoutMixin) else None

    forward.__doc__ = f"The wrapped cell's ``{method}`` (a no-op for a cell without dropout)."
    return forward


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NoisyCell(_Sigma, keras.layers.Layer, _DropoutMixin):
    """Per-step state noise around ``GRUCell``, ``LSTMCell`` or ``SimpleRNNCell``.

    Use it as ``InitialStateRNN(keras.layers.RNN(NoisyCell(cell)), strategy="zero")``:
    in training every step adds ``N(0, noise_std^2)`` noise to each state component
    before the wrapped cell reads it; otherwise the step is the wrapped cell's. The
    cell's dropout still works.

    >>> cell = NoisyCell(keras.layers.GRUCell(32), noise_std=0.1)
    >>> rnn = InitialStateRNN(keras.layers.RNN(cell), strategy="zero")
    >>> x = np.ones((4, 20, 10), "float32")
    >>> tuple(rnn(x).shape)
    (4, 32)
    >>> bool(np.array_equal(rnn(x), rnn(x))), bool(np.array_equal(rnn(x), rnn(x, training=True)))
    (True, False)
    """

    def __init__(
        self,
        cell: keras.layers.Layer,
        noise_std: float = 0.1,
        learnable_std: bool = False,
        *,
        min_std: float = 0.0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        kind = _cell_kind(cell)
        if kind is None:
            raise TypeError(
                "NoisyCell wraps keras.layers.GRUCell, LSTMCell or SimpleRNNCell; "
                f"got {type(cell).__name__}"
            )
        rule = spec.NoiseStd(noise_std, learnable_std, min_std)  # validated, as everywhere
        seed = spec.check_seed(seed)
        kwargs.setdefault("dtype", cell.dtype_policy)
        super().__init__(**kwargs)
        self.cell, self.kind, self.noise_rule, self.seed = cell, kind, rule, seed
        self.initial_noise_std, self.min_std = rule.std, rule.min_std
        self.learnable_std = rule.learnable
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.std_raw = _std_weight(self, rule)
        # (input features, first noise column) while InitialStateRNN hands in noise.
        self._noise_columns: tuple[int, int] | None = None

    @property
    def state_size(self) -> Any:
        return self.cell.state_size

    @property
    def output_size(self) -> Any:
        return self.cell.output_size

    @property
    def noise_size(self) -> int:
        """The number of noise values per step and batch row (the sum of the state sizes)."""
        return int(np.sum(self.cell.state_size))

    def _noise_rule(self) -> spec.NoiseStd:
        return self.noise_rule

    def build(self, input_shape: tuple) -> None:
        if not self.cell.built:
            self.cell.build(input_shape)
        self.built = True

    def _step_noise(self, inputs: Any, parts: list[Any]) -> tuple[Any, list[Any]]:
        """The step input without noise columns, and each state component's noise."""
        if self._noise_columns is not None:  # drawn and scaled before the loop
            features, start = self._noise_columns
            ends = [int(e) for e in np.cumsum([0, *np.ravel(self.cell.state_size)])]
            noise = [inputs[..., start + a : start + b] for a, b in itertools.pairwise(ends)]
            return inputs[..., :features], noise
        if keras.backend.backend() == "jax":
            raise NotImplementedError(
                "NoisyCell cannot draw per-step noise in a bare keras.layers.RNN on the JAX "
                "backend: Keras runs the loop as lax.scan, where a SeedGenerator cannot "
                "advance between steps. Wrap the layer so the noise of all steps is drawn "
                "before the loop: InitialStateRNN(keras.layers.RNN(NoisyCell(...)), "
                'strategy="zero").'
            )
        std, seed = ops.cast(self.noise_std, _DRAW_DTYPE), self.seed_generator
        draws = [keras.random.normal(ops.shape(s), dtype=_DRAW_DTYPE, seed=seed) for s in parts]
        return inputs, [std * eps for eps in draws]

    def call(self, inputs: Any, states: Any, training: bool = False) -> Any:
        """One step: the wrapped cell on ``states`` plus noise in training, else unchanged."""
        nested = isinstance(states, (list, tuple))
        parts = list(states) if nested else [states]
        if training or self._noise_columns is not None:
            inputs, noise = self._step_noise(inputs, parts)
            parts = [s + ops.cast(n, s.dtype) for s, n in zip(parts, noise, strict=True)]
        return self.cell(inputs, parts if nested else parts[0], training=training)

    def get_initial_state(self, batch_size: Any = None) -> Any:
        return self.cell.get_initial_state(batch_size=batch_size)

    # Keras's RNN calls these four before and after its loop (see _DropoutMixin above).
    def get_dropout_mask(self, step_input: Any) -> Any:
        """The wrapped cell's input dropout mask, for the input without noise columns."""
        if self._noise_columns is not None:
            step_input = step_input[..., : self._noise_columns[0]]
        return _forward_to_cell("get_dropout_mask")(self, step_input)

    get_recurrent_dropout_mask = _forward_to_cell("get_recurrent_dropout_mask")
    reset_dropout_mask = _forward_to_cell("reset_dropout_mask")
    reset_recurrent_dropout_mask = _forward_to_cell("reset_recurrent_dropout_mask")

    def get_config(self) -> dict[str, Any]:
        """Keras's config plus the noise level's settings, the seed and the wrapped cell."""
        config = super().get_config()
        rule, cell = self.noise_rule, keras.saving.serialize_keras_object(self.cell)
        config.update(noise_std=rule.std, learnable_std=rule.learnable, min_std=rule.min_std)
        return {**config, "cell": cell, "seed": self.seed}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NoisyCell:
        """Rebuild a NoisyCell, and its wrapped cell, from what :meth:`get_config` returns."""
        config = dict(config)
        cell = keras.saving.deserialize_keras_object(config.pop("cell"))
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(cell, **config)
