"""What linen and NNX share (neither imports the other): the spec's plan executed with
JAX arrays. Nothing here knows a linen or NNX class: cell types come in as arguments."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from reference_impl._extras import missing_framework

try:
    import jax
    import jax.numpy as jnp
except ModuleNotFoundError as _error:  # say which extra installs it
    raise missing_framework("reference_impl.flax", _error) from _error

from reference_impl import spec

INITIAL_STATE_RNG = "initial_state"
"""Rng stream of the per-call draws of ``uniform``/``xavier`` with ``resample=True``."""
NOISE_RNG = "noise"
"""Rng stream of the ``noisy`` strategy and of ``NoisyCell``."""

Array = jax.Array
Carry = Any
Dtype = Any
Initializer = Callable[[Array, tuple[int, ...], Dtype], Array]


@dataclasses.dataclass(frozen=True)
class CellInfo:
    """What an initial state needs to know about a cell."""

    kind: str  # "gru", "lstm" or "rnn"
    features: int
    param_dtype: Dtype

    @property
    def names(self) -> tuple[str, ...]:
        return ("h", "c") if self.kind == "lstm" else ("h",)

    def assemble(self, parts: Mapping[str, Array]) -> Carry:
        return (parts["c"], parts["h"]) if self.kind == "lstm" else parts["h"]

    def split(self, carry: Carry) -> dict[str, Array]:
        """The components of a carry by name: the inverse of :meth:`assemble`."""
        return {"c": carry[0], "h": carry[1]} if self.kind == "lstm" else {"h": carry}


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """What an initial state needs to know about one wrapped layer."""

    cell: CellInfo
    directions: int
    time_major: bool
    return_carry: bool
    noisy: bool = False  # the layer's cells are NoisyCells


@dataclasses.dataclass(frozen=True)
class Api:
    """One Flax API's cell and layer types, and how its errors name them."""

    lib: Any  # flax.linen or flax.nnx
    name: str  # "linen" or "NNX"
    prefix: str  # "nn" or "nnx": how the messages spell the API's classes
    ri: str  # how the messages spell this package's module: "ri" or "ri_nnx"

    @property
    def supported(self) -> str:
        cells = ("GRUCell", "LSTMCell", "OptimizedLSTMCell", "SimpleCell")
        return ", ".join(f"{self.prefix}.{c}" for c in cells) + f" or {self.ri}.NoisyCell"

    def cell_info(self, cell: object) -> CellInfo:
        """Kind, features and dtype of a cell; a NoisyCell's are its wrapped cell's."""
        if _is_noisy(cell):
            return self.cell_info(cell.cell)
        lib = self.lib
        kinds = {
            "lstm": (lib.LSTMCell, lib.OptimizedLSTMCell),
            "gru": lib.GRUCell,
            "rnn": lib.SimpleCell,
        }
        for kind, types in kinds.items():
            if isinstance(cell, types):
                features = getattr(cell, "hidden_features", None) or cell.features
                features = spec.check_positive_int("features", features)
                return CellInfo(kind, features, cell.param_dtype)
        raise TypeError(
            f"unsupported cell {type(cell).__name__}; expected a Flax {self.name} {self.supported}"
        )

    def directions(self, layer: Any) -> tuple[Any, ...]:
        """The ``RNN`` of each direction of a layer."""
        if isinstance(layer, self.lib.Bidirectional):
            return layer.forward_rnn, layer.backward_rnn
        return (layer,)

    def layers(self, rnn: Any, wrap: Callable) -> tuple[tuple, tuple[LayerInfo, ...], bool]:
        """``(layers, infos, stack)`` of what InitialStateRNN wraps: a cell (``wrap``
        makes it an ``RNN``), an ``RNN``, a ``Bidirectional``, or a list of those."""
        stack = isinstance(rnn, (list, tuple))
        layers, infos = [], []
        for item in rnn if stack else [rnn]:
            item = wrap(item) if isinstance(item, self.lib.RNNCellBase) else item
            if not isinstance(item, (self.lib.RNN, self.lib.Bidirectional)):
                raise TypeError(
                    f"InitialStateRNN wraps a Flax {self.name} cell ({self.supported}), an "
                    f"{self.prefix}.RNN or {self.prefix}.Bidirectional of one, or a list of "
                    f"those; got {type(item).__name__}"
                )
            layers.append(item)
            infos.append(self._layer_info(item))
        if not infos:
            raise ValueError("InitialStateRNN needs at least one layer; got an empty list")
        if len({info.time_major for info in infos}) > 1:
            raise ValueError("all layers of a stack must have the same time_major")
        return tuple(layers), tuple(infos), stack

    def _layer_info(self, layer: Any) -> LayerInfo:
        rnns = self.directions(layer)
        names = f"{self.lib.__name__.split('.')[1]}.Bidirectional"
        for rnn in rnns:
            if not isinstance(rnn, self.lib.RNN):
                got = type(rnn).__name__
                raise TypeError(f"InitialStateRNN wraps an {names} of two RNN layers; got {got}")
        found = [self.cell_info(rnn.cell) for rnn in rnns]
        if len({(f.kind, f.features) for f in found}) > 1:
            a, b = found
            raise ValueError(
                f"the two directions of {names} must have the same cell kind and features; got "
                f"{a.kind}/{a.features} and {b.kind}/{b.features}"
            )
        noisy = any(_is_noisy(rnn.cell) for rnn in rnns)
        return LayerInfo(found[0], len(rnns), layer.time_major, layer.return_carry, noisy)

    def resolve_cell(self, cell: Any, features: int | None, param_dtype: Dtype) -> CellInfo:
        """The :class:`CellInfo` from a cell kind name (with ``features``) or a cell."""
        if isinstance(cell, self.lib.Module):
            found = self.cell_info(cell)
            if features is not None and features != found.features:
                raise ValueError(
                    f"features={features!r} but the cell has {found.features} features"
                )
            return found
        if not isinstance(cell, str):
            try:
                self.cell_info(cell)
            except TypeError as error:
                raise TypeError(f"cell must be one of {spec.CELLS}, or else: {error}") from None
        if features is None:
            raise ValueError(f"cell={cell!r} needs features=<the hidden size>")
        features = spec.check_positive_int("features", features)
        return CellInfo(spec.check_cell(cell), features, param_dtype)


def _is_noisy(cell: object) -> bool:
    return hasattr(cell, "noise_std") and hasattr(cell, "cell")


def state_args(info: LayerInfo) -> dict[str, Any]:
    """The keywords of the InitialState of one wrapped layer."""
    cell = info.cell
    args = {"cell": cell.kind, "features": cell.features, "param_dtype": cell.param_dtype}
    return {**args, "bidirectional": info.directions == 2}


def make_plan(strategy: Any, options: Mapping[str, Any]) -> spec.Strategy:
    """The strategy's plan; an option given as ``None`` means its default."""
    return spec.make(strategy, **{k: v for k, v in dict(options).items() if v is not None})


def uniform(key: Array, shape: tuple[int, ...], bound: float, dtype: Dtype) -> Array:
    # In float32 and cast: one key gives the same numbers in every dtype, up to rounding.
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


def normal(key: Array, shape: tuple[int, ...], dtype: Dtype) -> Array:
    return jax.random.normal(key, shape, jnp.float32).astype(dtype)


def vector_initializer(plan: spec.Strategy, features: int) -> Initializer:
    """A Flax-style initializer ``(key, shape, dtype)`` for the stored or learnable
    vectors, from ``plan.vector_init``: zeros, ``U(-b, b)`` or the user's callable."""
    init = plan.vector_init(features)
    if init is None:
        return lambda key, shape, dtype: jnp.zeros(shape, dtype)
    if not callable(init):
        return lambda key, shape, dtype: uniform(key, shape, init, dtype)

    def from_callable(key: Array, shape: tuple[int, ...], dtype: Dtype) -> Array:
        value = jnp.asarray(init(key, shape, dtype))
        spec.check_init_result(value.shape, shape)
        return value.astype(dtype)

    return from_callable


def std_from_raw(rule: spec.NoiseStd, raw: Array | None) -> Array:
    """The noise std: the fixed value, or ``min_std + softplus(raw)`` (spec's rule)."""
    return jnp.asarray(rule.from_raw(raw, jax.nn.softplus), jnp.float32)


def add_noise(carry: Carry, key: Array, std: Array) -> Carry:
    """``carry`` plus ``N(0, std^2)`` noise on every component, in one draw (one step)."""
    leaves, treedef = jax.tree.flatten(carry)
    noise = normal(key, (len(leaves), *leaves[0].shape), leaves[0].dtype)
    scaled = [leaf + std.astype(leaf.dtype) * noise[i] for i, leaf in enumerate(leaves)]
    return jax.tree.unflatten(treedef, scaled)


# ------------------------------------------------------------- pre-drawn noise
# InitialStateRNN draws the noise of all steps before the scan and appends it to the
# inputs: one block of columns (h, then c) per direction. Each NoisyCell takes its
# block (``noise_block=(index, count)``) and passes the rest to the wrapped cell.


def noise_width(info: CellInfo) -> int:
    return len(info.names) * info.features


def append_noise(inputs: Array, key: Array, info: LayerInfo) -> Array:
    """``inputs`` with standard-normal columns for every step and direction."""
    shape = (*inputs.shape[:-1], info.directions * noise_width(info.cell))
    return jnp.concatenate([inputs, normal(key, shape, inputs.dtype)], axis=-1)


def split_noise(
    carry: Carry, inputs: Array, block: tuple[int, int], info: CellInfo, std: Array
) -> tuple[Carry, Array]:
    """The carry plus ``std`` times this cell's pre-drawn block, and the bare inputs."""
    (index, count), f = block, info.features
    end = inputs.shape[-1] - count * noise_width(info)  # the bare inputs end here
    start = end + index * noise_width(info)
    parts, noisy = info.split(carry), {}
    for i, name in enumerate(info.names):
        part = parts[name]
        noise = inputs[..., start + i * f : start + (i + 1) * f].astype(part.dtype)
        noisy[name] = part + std.astype(part.dtype) * noise
    return info.assemble(noisy), inputs[..., :end]


# --------------------------------------------------------------- the state itself


def check_batch_shape(batch_shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(batch_shape, (int, np.integer)) and not isinstance(batch_shape, bool):
        batch_shape = (batch_shape,)
    if not isinstance(batch_shape, (tuple, list)):
        raise TypeError(
            f"batch_shape must be an int or a tuple of ints; got {batch_shape!r} "
            f"of type {type(batch_shape).__name__}"
        )
    # A symbolic size (jax.export with a dynamic batch) is the size of a real input; a
    # size 0 is an empty batch, which nn.RNN and nnx.RNN run (to empty outputs).
    check = lambda b: spec.check_positive_int("batch_shape entry", b, allow_zero=True)  # noqa: E731
    return tuple(b if jax.export.is_symbolic_dim(b) else check(b) for b in batch_shape)


def make_state(
    plan: spec.Strategy,
    cell: CellInfo,
    directions: int,
    batch_shape: tuple[int, ...],
    *,
    vectors: Mapping[str, Array] | None,
    draw_key: Array | None,
    noise: tuple[Array, Array] | None,
) -> Carry:
    """One layer's carry (a ``(forward, backward)`` pair for two directions) from the
    ``(directions, features)`` ``vectors``, a per-call ``draw_key``, or zeros, plus
    ``noise=(key, std)`` if given."""
    names, dtype, features = cell.names, cell.param_dtype, cell.features
    shape = (directions, *batch_shape, features)
    keys = dict(zip(("draw", "noise"), (draw_key, noise and noise[0]), strict=True))
    keys = {k: jax.random.split(v, len(names)) for k, v in keys.items() if v is not None}
    rows = {}
    for i, name in enumerate(names):
        if vectors is not None:
            # One vector per row, broadcast over the batch (never one per batch row).
            vec = jnp.asarray(vectors[name], dtype)
            state = jnp.broadcast_to(vec.reshape(directions, *(1,) * len(batch_shape), -1), shape)
        elif "draw" in keys:
            state = uniform(keys["draw"][i], shape, plan.draw_bound(features), dtype)
        else:
            state = jnp.zeros(shape, dtype)
        if "noise" in keys:
            state = state + jnp.asarray(noise[1], dtype) * normal(keys["noise"][i], shape, dtype)
        rows[name] = state
    carries = tuple(cell.assemble({n: rows[n][d] for n in names}) for d in range(directions))
    return carries[0] if directions == 1 else carries


# ------------------------------------------------------------------ given carries


def batch_shape_of(inputs: Array, time_major: bool) -> tuple[int, ...]:
    if inputs.ndim < 2:
        raise ValueError(
            "inputs must be (*batch, time, features), or (time, *batch, features) with "
            f"time_major=True; got shape {tuple(inputs.shape)}"
        )
    return tuple(inputs.shape[1:-1] if time_major else inputs.shape[:-2])


def _layout_hint(layers: Sequence[LayerInfo], stack: bool) -> str:
    parts = []
    if any(layer.cell.kind == "lstm" for layer in layers):
        parts.append("an LSTM carry is a tuple (c, h)")
    if any(layer.directions == 2 for layer in layers):
        parts.append("a Bidirectional layer takes a pair (forward, backward)")
    if stack:
        parts.append("a stack takes a tuple with one carry per layer")
    return "; ".join([*parts, "each array is (*batch, features)"])


def given_carries(
    initial_carry: Carry | None, infos: Sequence[LayerInfo], stack: bool, batch: tuple[int, ...]
) -> tuple[Carry, ...] | None:
    """``initial_carry`` as one carry per layer, checked against the layers' layout."""
    if initial_carry is None:
        return None
    expected = []
    for i, info in enumerate(infos):
        layer, shape = f"[{i}]" if stack else "", (*batch, info.cell.features)
        directions = ("",) if info.directions == 1 else ("_forward", "_backward")
        carries = tuple(
            info.cell.assemble({n: spec.Slot(n + d + layer, shape) for n in info.cell.names})
            for d in directions
        )
        expected.append(carries if info.directions == 2 else carries[0])
    expected = tuple(expected) if stack else expected[0]
    leaves = spec.check_given_state(initial_carry, expected, _layout_hint(infos, stack))
    carry = jax.tree.unflatten(jax.tree.structure(expected), leaves)  # lists become tuples
    return tuple(carry) if stack else (carry,)


def finish(
    carries: list[Carry],
    x: Array,
    infos: Sequence[LayerInfo],
    stack: bool,
    return_carry: bool | None,
) -> Any:
    """The outputs, and the carry (a tuple for a stack) when asked; by default the
    wrapped layer's own ``return_carry``, ``False`` for a stack."""
    if return_carry is None:
        return_carry = not stack and infos[0].return_carry
    final = tuple(carries) if stack else carries[0]
    return (final, x) if return_carry else x
