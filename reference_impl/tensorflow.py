"""Initial states for Keras 3 recurrent layers, on the TensorFlow backend.

Use it as ``from reference_impl import tensorflow as ri``::

    >>> import numpy as np
    >>> import keras
    >>> from reference_impl import tensorflow as ri
    >>> gru = keras.layers.GRU(32, return_sequences=True)
    >>> layer = ri.InitialStateRNN(gru, strategy="learnable")
    >>> y = layer(np.zeros((16, 20, 10), "float32"))
    >>> tuple(y.shape)
    (16, 20, 32)
    >>> [(w.name, tuple(w.shape)) for w in layer.initial_state.trainable_weights]
    [('h0', (1, 32))]

The strategies are defined in :mod:`reference_impl.spec`; this module implements them
with ``keras.ops`` and ``keras.random`` only, so the layers also run on Keras's JAX
(tested) and PyTorch backends. It never imports ``tensorflow`` itself.

**Layout.** A Keras recurrent layer takes its initial state as a list of
``(batch, units)`` tensors: ``[h]`` for ``GRU``/``SimpleRNN``, ``[h, c]`` for ``LSTM``,
and for ``Bidirectional`` the forward states followed by the backward ones
(``[h_fw, c_fw, h_bw, c_bw]``). :class:`InitialState` returns exactly that list.

Stored vectors (the ``learnable`` strategy, ``noisy`` with ``base="learnable"``, and
``uniform``/``xavier`` with ``resample=False``) are the weights ``h0`` (and ``c0`` for
an LSTM) of the :class:`InitialState` layer (``InitialStateRNN.initial_state``), each
of shape ``(directions, units)``: row 0 is the forward direction, row 1 the backward
one. This is PyTorch's ``(num_layers * num_directions, hidden_size)`` layout for a
one-layer module, so ``torch_module.initial_state.h0`` and
``keras_layer.initial_state.h0`` hold the same numbers in the same order. ``h0``/``c0``
are trainable for the learnable strategies and non-trainable for stored draws. The
``noisy`` strategy adds a scalar ``std_raw``: sigma itself (non-trainable) or, with
``learnable_std=True``, the trainable ``rho`` of ``sigma = min_std + softplus(rho)``.

**Differences from** :mod:`reference_impl.torch` **that Keras forces:**

- One Keras layer is one recurrent layer: there is no ``num_layers`` (stack
  :class:`InitialStateRNN` layers) and no ``proj_size`` (Keras's LSTM has none).
- Training mode is Keras's ``training`` argument (``model.fit`` sets it), not
  ``module.train()``/``eval()``.
- A callable ``init`` follows the Keras initializer convention, ``init(shape, dtype)``
  returning the values (any ``keras.initializers`` object works), instead of torch's
  in-place function.
- ``seed=None`` draws from a ``keras.random.SeedGenerator`` with a random seed, which
  ``keras.utils.set_random_seed`` makes reproducible (torch uses its global
  generator).
- :class:`NoisyCell` is a Keras cell for ``keras.layers.RNN``; it has no ``unroll``.
- ``Bidirectional`` builds its two directions from one config, so a seeded
  ``NoisyCell`` inside it gives both directions the same noise stream; leave
  ``seed=None`` there (or pass a ``backward_layer`` with another seed).

**Fast paths (cuDNN).** :class:`InitialStateRNN` passes the state as
``initial_state=`` to the wrapped layer and never changes its options, so a
``GRU``/``LSTM`` keeps the cuDNN kernel on a GPU.
Keras leaves cuDNN (and runs a ``while_loop``) when the layer has a non-``tanh``
``activation``, a non-``sigmoid`` ``recurrent_activation``, ``recurrent_dropout > 0``,
``unroll=True``, ``use_bias=False``, ``reset_after=False`` (GRU), ``use_cudnn=False``,
or a mask that is not right-padded; ``keras.layers.RNN(cell)`` and
``RNN(NoisyCell(...))`` never use it. With cuDNN in use Keras also turns
``jit_compile`` off for the model (cuDNN ops are not XLA ops).

**Backends.** :class:`InitialState` and :class:`InitialStateRNN` draw outside the recurrent loop and
work on every backend. :class:`NoisyCell` draws inside the loop, once per step: on
TensorFlow the ``while_loop`` advances the ``SeedGenerator`` every iteration; on JAX
Keras runs the loop as ``lax.scan``, which traces the step once inside a stateless
scope, so a generator cannot advance from step to step (every step would get the
same noise, or a tracer would leak out of the scan). :class:`NoisyCell` therefore
raises ``NotImplementedError`` in training on the JAX backend (inference, which adds
no noise, works). Keras's PyTorch backend steps the loop in Python, so every layer
here, :class:`NoisyCell` included, works there as well; the test suite runs one model
on JAX and does not cover the PyTorch backend.
"""

from __future__ import annotations

from collections.abc import Callable
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
    # Keras's RNN prepares dropout masks before its loop (outside ``while_loop`` /
    # ``scan``) only for cells that carry this mixin; NoisyCell carries it and forwards
    # the calls, so a wrapped cell's dropout keeps working.
    from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell as _DropoutMixin
except ImportError:  # pragma: no cover - a Keras without the mixin

    class _DropoutMixin:  # type: ignore[no-redef]
        pass


__all__ = ["STRATEGIES", "InitialState", "InitialStateRNN", "NoisyCell"]

_PACKAGE = "reference_impl"
# Keyword arguments that belong to ``keras.layers.Layer``; every other keyword of
# InitialState/InitialStateRNN is a strategy option, validated by ``spec``.
_LAYER_KWARGS = ("name", "dtype", "trainable", "autocast", "activity_regularizer")
# Draw in float32 and cast, so one seed gives the same numbers under mixed
# precision as in float32, up to rounding.
_DRAW_DTYPE = "float32"


def _split_layer_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    layer_kwargs = {k: v for k, v in kwargs.items() if k in _LAYER_KWARGS}
    options = {k: v for k, v in kwargs.items() if k not in _LAYER_KWARGS}
    return layer_kwargs, options


def _cell_kind(cell: object) -> str | None:
    """``"gru"``, ``"lstm"`` or ``"rnn"`` for a built-in Keras cell, else ``None``."""
    if isinstance(cell, keras.layers.LSTMCell):
        return "lstm"
    if isinstance(cell, keras.layers.GRUCell):
        return "gru"
    if isinstance(cell, keras.layers.SimpleRNNCell):
        return "rnn"
    return None


def _component_seed(seed: int | None, index: int) -> int | None:
    # One independent, reproducible seed per stored vector (h0, c0), so that h0 and
    # c0 drawn from the same seed are not the same numbers.
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0]) & 0x7FFFFFFF


def _checked_initializer(init: Callable, name: str) -> Callable:
    def initializer(shape: tuple[int, ...], dtype: Any = None) -> Any:
        value = init(shape, dtype=dtype)
        got = tuple(int(d) for d in ops.shape(value))
        if got != tuple(shape):
            raise ValueError(f"init returned shape {got} for {name}; expected {tuple(shape)}")
        return value

    return initializer


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InitialState(keras.layers.Layer):
    """Produces the initial state of a Keras recurrent layer with one strategy.

    Called on the layer's input (``(batch, time, features)``, or anything whose first
    dimension is the batch), it returns the list that ``GRU``/``LSTM``/``SimpleRNN``/
    ``RNN`` take as ``initial_state=`` (``[h]``, or ``[h, c]`` for an LSTM; with
    ``bidirectional=True`` the forward states then the backward ones), each
    ``(batch, units)`` in the layer's compute dtype. The batch may be unknown until
    the model runs.

    Args:
        strategy: one of :data:`~reference_impl.STRATEGIES`.
        units: the recurrent layer's units.
        cell: ``"gru"``, ``"lstm"`` or ``"rnn"`` (``SimpleRNN``).
        bidirectional: one state per direction, for ``keras.layers.Bidirectional``.
        **options: the strategy's options (see :data:`reference_impl.spec.OPTIONS`):
            ``bound`` (uniform), ``gain`` (xavier), ``resample`` (uniform, xavier),
            ``init`` (learnable: ``"zeros"``, ``"uniform"``, ``"xavier"`` or a Keras
            initializer), ``noise_std``, ``learnable_std``, ``min_std``, ``base``
            (noisy), ``seed`` (random ones); and the usual layer keywords ``name``,
            ``dtype``, ``trainable``.

    >>> import numpy as np
    >>> import keras
    >>> inputs = keras.Input((20, 10))
    >>> h, c = InitialState("learnable", units=32, cell="lstm")(inputs)
    >>> y = keras.layers.LSTM(32)(inputs, initial_state=[h, c])
    >>> tuple(h.shape), tuple(y.shape)
    ((None, 32), (None, 32))
    >>> init = InitialState("xavier", units=64, seed=0)
    >>> (h,) = init(np.zeros((8, 5, 3), "float32"))
    >>> tuple(h.shape), bool(np.abs(h).max() <= spec.xavier_bound(64))
    ((8, 64), True)
    """

    def __init__(
        self,
        strategy: str,
        *,
        units: int,
        cell: str = "gru",
        bidirectional: bool = False,
        **kwargs: Any,
    ) -> None:
        layer_kwargs, options = _split_layer_kwargs(kwargs)
        super().__init__(**layer_kwargs)
        self.strategy = spec.check_strategy(strategy)
        self.cell = spec.check_cell(cell)
        self.units = spec.check_positive_int("units", units)
        self.bidirectional = _check_bool("bidirectional", bidirectional)
        self.directions = 2 if self.bidirectional else 1
        self.features = spec.component_features(self.cell, self.units)
        if isinstance(options.get("init"), dict):  # a serialized Keras initializer
            options["init"] = keras.saving.deserialize_keras_object(options["init"])
        self.options = spec.resolve_options(self.strategy, options)
        # A mask on the input says nothing about the state; accept it and drop it.
        self.supports_masking = True

        opts = self.options
        self.seed_generator = None
        if strategy == "noisy" or (strategy in ("uniform", "xavier") and opts["resample"]):
            # Per-call draws; a layer attribute so that it works under jit and on JAX.
            self.seed_generator = keras.random.SeedGenerator(opts["seed"])

        # All weights are created here: none depends on the input shape, and a
        # schedule (set_noise_std) or a weight transfer can then happen before any call.
        if self._has_learnable_base():
            init = opts["init"] if strategy == "learnable" else "zeros"
            for i, name in enumerate(self._vector_names()):
                self._add_vector(name, self._initializer(init, i, name), trainable=True)
        elif strategy in ("uniform", "xavier") and not opts["resample"]:
            # Sampled once, stored (saved with the model, not trained), broadcast.
            for i, name in enumerate(self._vector_names()):
                self._add_vector(name, self._initializer(strategy, i, name), trainable=False)
        if strategy == "noisy":
            if opts["learnable_std"]:
                raw = spec.inverse_softplus(opts["noise_std"] - opts["min_std"])
            else:
                raw = opts["noise_std"]
            self.std_raw = self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(raw),
                trainable=opts["learnable_std"],
                autocast=False,  # sigma stays float32 under mixed precision
                name="std_raw",
            )
        self.built = True

    # ------------------------------------------------------------------ helpers

    def _vector_names(self) -> tuple[str, ...]:
        return ("h0", "c0")[: len(self.features)]

    def _has_learnable_base(self) -> bool:
        return self.strategy == "learnable" or (
            self.strategy == "noisy" and self.options["base"] == "learnable"
        )

    def _bound(self, strategy: str, features: int) -> float:
        if strategy == "uniform":
            return spec.uniform_bound(features, self.options.get("bound"))
        return spec.xavier_bound(features, self.options.get("gain", 1.0))

    def _initializer(self, init: str | Callable, index: int, name: str) -> Any:
        if callable(init):
            return _checked_initializer(init, name)
        if init == "zeros":
            return "zeros"
        b = self._bound(init, self.features[index])
        seed = _component_seed(self.options["seed"], index)
        return keras.initializers.RandomUniform(-b, b, seed=seed)

    def _add_vector(self, name: str, initializer: Any, trainable: bool) -> None:
        index = self._vector_names().index(name)
        var = self.add_weight(
            shape=(self.directions, self.features[index]),
            initializer=initializer,
            trainable=trainable,
            name=name,
        )
        setattr(self, name, var)

    @property
    def state_names(self) -> list[str]:
        """Names of the returned states in order, e.g. ``["h_forward", "h_backward"]``."""
        names = ["h", "c"][: len(self.features)]
        if not self.bidirectional:
            return names
        return [f"{n}_{d}" for d in ("forward", "backward") for n in names]

    @property
    def noise_std(self) -> Any:
        """The current noise standard deviation (noisy strategy), a scalar tensor."""
        if self.strategy != "noisy":
            raise AttributeError(f"strategy {self.strategy!r} has no noise_std")
        if self.options["learnable_std"]:
            return self.options["min_std"] + ops.softplus(self.std_raw)
        return ops.convert_to_tensor(self.std_raw)

    def set_noise_std(self, value: float) -> None:
        """Set sigma (for a schedule); a learnable sigma is re-parametrized to ``value``.

        The value lives in a variable, so a compiled model sees the new sigma without
        retracing, e.g. from ``keras.callbacks.LambdaCallback(on_epoch_begin=...)``.

        >>> init = InitialState("noisy", units=4, noise_std=0.5)
        >>> init.set_noise_std(0.1)
        >>> round(float(init.noise_std), 6)
        0.1
        """
        if self.strategy != "noisy":
            raise AttributeError(f"strategy {self.strategy!r} has no noise_std")
        spec.check_noise_std(value, self.options["learnable_std"], self.options["min_std"])
        if self.options["learnable_std"]:
            self.std_raw.assign(spec.inverse_softplus(value - self.options["min_std"]))
        else:
            self.std_raw.assign(float(value))

    # ------------------------------------------------------------------ call

    def get_initial_state(self, batch_size: Any, training: bool = False) -> list[Any]:
        """The list of initial states for ``batch_size`` rows (an int or a scalar tensor).

        >>> init = InitialState("zero", units=3, cell="lstm", bidirectional=True)
        >>> [tuple(s.shape) for s in init.get_initial_state(2)]
        [(2, 3), (2, 3), (2, 3), (2, 3)]
        """
        dtype = self.compute_dtype
        opts, strategy = self.options, self.strategy
        std = self.noise_std if strategy == "noisy" and training else None
        states = []
        for d in range(self.directions):
            for name, features in zip(self._vector_names(), self.features, strict=True):
                shape = (batch_size, features)
                if strategy == "zero" or (strategy == "noisy" and opts["base"] == "zero"):
                    state = ops.zeros(shape, dtype=dtype)
                elif strategy in ("uniform", "xavier") and opts["resample"]:
                    b = self._bound(strategy, features)
                    u = keras.random.uniform(
                        shape, -b, b, dtype=_DRAW_DTYPE, seed=self.seed_generator
                    )
                    state = ops.cast(u, dtype)
                else:  # a learnable or stored vector, broadcast over the batch
                    vec = ops.cast(getattr(self, name)[d : d + 1], dtype)
                    state = ops.broadcast_to(vec, shape)
                if std is not None:
                    noise = keras.random.normal(shape, dtype=_DRAW_DTYPE, seed=self.seed_generator)
                    state = state + ops.cast(ops.cast(std, _DRAW_DTYPE) * noise, dtype)
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
        """One ``(batch, features)`` shape per returned state."""
        batch = input_shape[0]
        return [(batch, f) for _ in range(self.directions) for f in self.features]

    def compute_mask(self, inputs: Any, mask: Any = None) -> list[None]:
        """No mask on the states: a mask on the input is about time steps."""
        return [None] * (self.directions * len(self.features))

    def options_config(self) -> dict[str, Any]:
        """The strategy's options, JSON-serializable (a callable ``init`` serialized)."""
        opts = dict(self.options)
        if callable(opts.get("init")):
            opts["init"] = keras.saving.serialize_keras_object(opts["init"])
        return opts

    def get_config(self) -> dict[str, Any]:
        """The layer config: constructor arguments, JSON-serializable."""
        config = super().get_config()
        config.update(
            strategy=self.strategy,
            units=self.units,
            cell=self.cell,
            bidirectional=self.bidirectional,
            **self.options_config(),
        )
        return config


# --------------------------------------------------------------------------- wrapper

_SUPPORTED = (
    "keras.layers.GRU, LSTM, SimpleRNN, RNN(GRUCell | LSTMCell | SimpleRNNCell | NoisyCell) "
    "or Bidirectional(...) of one of them"
)


def _describe_rnn(layer: object) -> tuple[str, int]:
    if not isinstance(layer, keras.layers.RNN):
        hint = ""
        if _cell_kind(layer) is not None or isinstance(layer, NoisyCell):
            hint = " (a single cell: wrap it in keras.layers.RNN first)"
        raise TypeError(f"InitialStateRNN wraps {_SUPPORTED}; got {type(layer).__name__}{hint}")
    cell = layer.cell
    if isinstance(cell, NoisyCell):
        cell = cell.cell
    kind = _cell_kind(cell)
    if kind is None:
        hint = ""
        if isinstance(cell, keras.layers.StackedRNNCells):
            hint = " (stacked cells: give each layer its own InitialStateRNN)"
        raise TypeError(
            f"InitialStateRNN wraps {_SUPPORTED}; got {type(layer).__name__} with cell "
            f"{type(cell).__name__}{hint}"
        )
    if getattr(layer, "stateful", False):
        raise ValueError(
            f"InitialStateRNN cannot wrap the stateful layer {layer.name!r}: a stateful "
            "layer starts from its own carried state; use stateful=False"
        )
    return kind, int(cell.units)


def _describe(layer: object) -> tuple[str, int, bool]:
    """``(cell kind, units, bidirectional)`` of a supported layer, else raise."""
    if isinstance(layer, keras.layers.Bidirectional):
        forward = _describe_rnn(layer.forward_layer)
        backward = _describe_rnn(layer.backward_layer)
        if forward != backward:
            raise ValueError(
                f"the forward and backward layers of {layer.name!r} differ (cell, units) "
                f"{forward} vs {backward}; InitialStateRNN needs the same in both"
            )
        return (*forward, True)
    return (*_describe_rnn(layer), False)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InitialStateRNN(keras.layers.Wrapper):
    """Wraps a Keras recurrent layer and gives it an initial-state strategy.

    ``layer(x)`` returns what the wrapped layer returns (``return_sequences``,
    ``return_state``, ``go_backwards`` and masks behave as in the wrapped layer), with
    the state made by ``layer.initial_state`` (an :class:`InitialState`);
    ``layer(x, initial_state=states)`` uses ``states`` as given (checked for count and
    shape). The wrapped layer runs once over the whole sequence (cuDNN on GPU).

    Args:
        layer: a ``GRU``, ``LSTM``, ``SimpleRNN``, ``RNN`` of a built-in cell or of a
            :class:`NoisyCell`, or ``Bidirectional`` of one of these (one state per
            direction). Not stateful.
        strategy: one of :data:`~reference_impl.STRATEGIES`; ``"learnable"`` by default.
        **options: the strategy's options, as for :class:`InitialState`, and the layer
            keywords ``name``, ``dtype`` (by default the wrapped layer's), ``trainable``.

    >>> import numpy as np
    >>> import keras
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

    def __init__(self, layer: keras.layers.Layer, strategy: str = "learnable", **kwargs: Any):
        layer_kwargs, options = _split_layer_kwargs(kwargs)
        kind, units, bidirectional = _describe(layer)
        layer_kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **layer_kwargs)
        # Under this layer's name, so the weights read "<this layer>/initial_state/h0".
        with keras.name_scope(self.name):
            self.initial_state = InitialState(
                strategy,
                units=units,
                cell=kind,
                bidirectional=bidirectional,
                dtype=self.dtype_policy,
                name="initial_state",
                **options,
            )
        self.supports_masking = True

    @property
    def strategy(self) -> str:
        """The strategy of ``self.initial_state``."""
        return self.initial_state.strategy

    @property
    def rnn(self) -> keras.layers.Layer:
        """The wrapped layer (also ``self.layer``), named as in the PyTorch module."""
        return self.layer

    @property
    def return_sequences(self) -> bool:
        """The wrapped layer's ``return_sequences``."""
        return self.layer.return_sequences

    @property
    def return_state(self) -> bool:
        """The wrapped layer's ``return_state``."""
        return self.layer.return_state

    def build(self, sequences_shape: tuple, initial_state_shape: Any = None) -> None:
        """Build the wrapped layer (the initial state has no input-dependent weights)."""
        if not self.layer.built:
            self.layer.build(sequences_shape)
        self.built = True

    def _check_state(self, state: Any, sequences: Any) -> list[Any]:
        init = self.initial_state
        names = init.state_names
        parts = list(state) if isinstance(state, (list, tuple)) else [state]
        expected = ", ".join(f"{n}: (batch, {init.units})" for n in names)
        if len(parts) != len(names):
            raise ValueError(
                f"explicit initial_state has {len(parts)} tensor(s); expected "
                f"{len(names)} ({expected})"
            )
        batch = sequences.shape[0]
        for name, part in zip(names, parts, strict=True):
            if not hasattr(part, "shape"):
                raise TypeError(
                    f"explicit initial state {name} must be a tensor of shape (batch, "
                    f"{init.units}); got {type(part).__name__}"
                )
            shape = tuple(part.shape)
            bad_batch = batch is not None and shape and shape[0] is not None and shape[0] != batch
            if len(shape) != 2 or shape[1] != init.units or bad_batch:
                raise ValueError(
                    f"explicit initial state {name} has shape {shape}; expected "
                    f"({batch}, {init.units}) (batch, units)"
                )
        return parts

    def call(
        self,
        sequences: Any,
        initial_state: Any = None,
        mask: Any = None,
        training: bool | None = None,
    ) -> Any:
        """Run the wrapped layer from the strategy's state, or from ``initial_state``."""
        if initial_state is None:
            # Called directly rather than through __call__: the sublayer shares this
            # layer's dtype policy, and the input's mask is not its business.
            batch = ops.shape(sequences)[0]
            initial_state = self.initial_state.get_initial_state(batch, training=bool(training))
        else:
            initial_state = self._check_state(initial_state, sequences)
        kwargs: dict[str, Any] = {"initial_state": initial_state}
        if self.layer._call_has_mask_arg:
            kwargs["mask"] = mask
        if self.layer._call_has_training_arg:
            kwargs["training"] = training
        return self.layer(sequences, **kwargs)

    def compute_output_shape(self, sequences_shape: tuple, initial_state_shape: Any = None) -> Any:
        """The wrapped layer's output shape."""
        return self.layer.compute_output_shape(sequences_shape)

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        """The wrapped layer's output mask."""
        return self.layer.compute_mask(inputs, mask)

    def get_config(self) -> dict[str, Any]:
        """The layer config: constructor arguments, JSON-serializable."""
        config = super().get_config()
        config["strategy"] = self.initial_state.strategy
        config.update(self.initial_state.options_config())
        return config


# --------------------------------------------------------------------------- cell


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NoisyCell(keras.layers.Layer, _DropoutMixin):
    """Per-step state noise around ``GRUCell``, ``LSTMCell`` or ``SimpleRNNCell``.

    Use it inside ``keras.layers.RNN``. In training (``training=True``, as in
    ``model.fit``) every step adds ``N(0, noise_std^2)`` noise to each carried state
    component before the wrapped cell reads it (so the initial state gets noise too);
    otherwise the step is exactly the wrapped cell's. ``learnable_std=True`` makes
    sigma a weight, ``min_std + softplus(rho)``, positive by construction. Dropout of
    the wrapped cell keeps working. Training-mode noise needs the TensorFlow (or
    PyTorch) backend; see the module notes on JAX.

    >>> import numpy as np
    >>> import keras
    >>> rnn = keras.layers.RNN(NoisyCell(keras.layers.GRUCell(32), noise_std=0.1))
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
        learnable_std = _check_bool("learnable_std", learnable_std)
        spec.check_noise_std(noise_std, learnable_std, min_std)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an integer or None; got {seed!r}")
        kwargs.setdefault("dtype", cell.dtype_policy)
        super().__init__(**kwargs)
        self.cell = cell
        self.kind = kind
        self.initial_noise_std = float(noise_std)
        self.learnable_std = learnable_std
        self.min_std = float(min_std)
        self.seed = None if seed is None else int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        raw = spec.inverse_softplus(noise_std - min_std) if learnable_std else float(noise_std)
        self.std_raw = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(raw),
            trainable=learnable_std,
            autocast=False,
            name="std_raw",
        )

    @property
    def state_size(self) -> Any:
        """The wrapped cell's ``state_size``."""
        return self.cell.state_size

    @property
    def output_size(self) -> Any:
        """The wrapped cell's ``output_size``."""
        return self.cell.output_size

    @property
    def noise_std(self) -> Any:
        """The current noise standard deviation, a scalar tensor."""
        if self.learnable_std:
            return self.min_std + ops.softplus(self.std_raw)
        return ops.convert_to_tensor(self.std_raw)

    def set_noise_std(self, value: float) -> None:
        """Set sigma (for a schedule); a learnable sigma is re-parametrized to ``value``."""
        spec.check_noise_std(value, self.learnable_std, self.min_std)
        if self.learnable_std:
            self.std_raw.assign(spec.inverse_softplus(value - self.min_std))
        else:
            self.std_raw.assign(float(value))

    def build(self, input_shape: tuple) -> None:
        """Build the wrapped cell for one step's input shape."""
        if not self.cell.built:
            self.cell.build(input_shape)
        self.built = True

    def call(self, inputs: Any, states: Any, training: bool = False) -> Any:
        """One step: the wrapped cell on ``states`` plus noise in training, else unchanged."""
        nested = isinstance(states, (list, tuple))
        parts = list(states) if nested else [states]
        if training:
            if keras.backend.backend() == "jax":
                raise NotImplementedError(
                    "NoisyCell cannot draw per-step noise on the JAX backend: Keras runs "
                    "the loop as lax.scan, where a SeedGenerator cannot advance between "
                    "steps. Use the TensorFlow backend, or the 'noisy' initial-state "
                    "strategy (noise on the initial state only), which works on JAX."
                )
            std = ops.cast(self.noise_std, _DRAW_DTYPE)
            noisy = []
            for s in parts:
                noise = keras.random.normal(
                    ops.shape(s), dtype=_DRAW_DTYPE, seed=self.seed_generator
                )
                noisy.append(s + ops.cast(std * noise, s.dtype))
            parts = noisy
        return self.cell(inputs, parts if nested else parts[0], training=training)

    def get_initial_state(self, batch_size: Any = None) -> Any:
        """The wrapped cell's (zero) initial state."""
        return self.cell.get_initial_state(batch_size=batch_size)

    # Keras's RNN calls these before and after its loop (see _DropoutMixin above).
    def get_dropout_mask(self, step_input: Any) -> Any:
        """The wrapped cell's input dropout mask (prepared before the loop)."""
        if isinstance(self.cell, _DropoutMixin):
            return self.cell.get_dropout_mask(step_input)
        return None

    def get_recurrent_dropout_mask(self, step_input: Any) -> Any:
        """The wrapped cell's recurrent dropout mask (prepared before the loop)."""
        if isinstance(self.cell, _DropoutMixin):
            return self.cell.get_recurrent_dropout_mask(step_input)
        return None

    def reset_dropout_mask(self) -> None:
        """Forget the wrapped cell's input dropout mask (after the loop)."""
        if isinstance(self.cell, _DropoutMixin):
            self.cell.reset_dropout_mask()

    def reset_recurrent_dropout_mask(self) -> None:
        """Forget the wrapped cell's recurrent dropout mask (after the loop)."""
        if isinstance(self.cell, _DropoutMixin):
            self.cell.reset_recurrent_dropout_mask()

    def get_config(self) -> dict[str, Any]:
        """The layer config: constructor arguments, JSON-serializable."""
        config = super().get_config()
        config.update(
            cell=keras.saving.serialize_keras_object(self.cell),
            noise_std=self.initial_noise_std,
            learnable_std=self.learnable_std,
            min_std=self.min_std,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NoisyCell:
        """Rebuild a NoisyCell, and its wrapped cell, from :meth:`get_config`."""
        config = dict(config)
        cell = keras.saving.deserialize_keras_object(config.pop("cell"))
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(cell, **config)
