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


OTHER = "cell"
"""The kind of any cell of the protocol other than the built-in ones."""


@dataclasses.dataclass(frozen=True)
class CellInfo:
    """What an initial state needs to know about a cell.

    A built-in cell is its kind (``"gru"``, ``"lstm"``, ``"rnn"``) and ``features``.
    Any other cell (kind :data:`OTHER`) is its carry: the structure (``treedef``) and
    the shape of each array without the batch axes (``shapes``), read from its
    ``initialize_carry`` once the input's feature shape is known (until then
    ``shapes`` is empty); ``features`` is then the last axis of its first array."""

    kind: str
    features: int
    param_dtype: Dtype
    shapes: tuple[tuple[int, ...], ...] = ()
    treedef: Any = None
    feature_axes: int = 1  # the cell's num_feature_axes: the input's axes after time

    @property
    def other(self) -> bool:
        return self.kind == OTHER

    @property
    def known(self) -> bool:
        """Whether the carry's structure and shapes are known."""
        return not self.other or bool(self.shapes)

    @property
    def names(self) -> tuple[str, ...]:
        if self.other:
            return tuple(f"state_{i}" for i in range(len(self.shapes)))
        return ("h", "c") if self.kind == "lstm" else ("h",)

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of component ``name`` without the batch axes."""
        return self.shapes[self.names.index(name)] if self.other else (self.features,)

    def assemble(self, parts: Mapping[str, Array]) -> Carry:
        if self.other:
            return jax.tree.unflatten(self.treedef, [parts[n] for n in self.names])
        return (parts["c"], parts["h"]) if self.kind == "lstm" else parts["h"]

    def split(self, carry: Carry) -> dict[str, Array]:
        """The components of a carry by name: the inverse of :meth:`assemble`."""
        if self.other:
            return dict(zip(self.names, jax.tree.leaves(carry), strict=True))
        return {"c": carry[0], "h": carry[1]} if self.kind == "lstm" else {"h": carry}

    def example(self) -> Carry:
        """Another cell's carry for one sequence, as ``jax.ShapeDtypeStruct`` s."""
        parts = {n: jax.ShapeDtypeStruct(self.shape(n), self.param_dtype) for n in self.names}
        return self.assemble(parts)


def other_cell_info(carry: Carry, param_dtype: Dtype, feature_axes: int = 1) -> CellInfo:
    """The :class:`CellInfo` of a carry for one sequence (no batch axes): arrays or
    ``jax.ShapeDtypeStruct`` s in any structure."""
    leaves, treedef = jax.tree.flatten(carry)
    if not leaves or not all(hasattr(leaf, "shape") for leaf in leaves):
        raise TypeError(
            "carry must be the carry of one sequence, arrays (or jax.ShapeDtypeStruct) in "
            "any structure, e.g. jax.eval_shape(cell.initialize_carry, key, input_shape); "
            f"got {carry!r}"
        )
    shapes = tuple(tuple(int(n) for n in leaf.shape) for leaf in leaves)
    features = spec.carry_features(shapes[0])
    for shape in shapes:
        spec.carry_features(shape)  # every array has a features axis
    return CellInfo(OTHER, features, param_dtype, shapes, treedef, feature_axes)


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

    @property
    def protocol(self) -> str:
        return f"an {self.prefix}.RNNCellBase defining initialize_carry and num_feature_axes"

    def cell_info(self, cell: object) -> CellInfo:
        """A built-in cell's kind, features and dtype (a NoisyCell's are its wrapped
        cell's); for any other cell of the protocol, a CellInfo whose carry is read
        later (:meth:`carry_info`); else a ``TypeError`` naming what is missing."""
        try:
            return self.builtin_info(cell)
        except TypeError:
            if _is_noisy(cell):
                raise
        missing = self.missing(cell)
        if missing:
            raise TypeError(
                f"unsupported cell {type(cell).__name__}: a Flax {self.name} cell is "
                f"{self.protocol} (as {self.supported}); {type(cell).__name__} "
                + ", and ".join(missing)
            ) from None
        dtype = getattr(cell, "param_dtype", None) or jnp.float32
        return CellInfo(OTHER, 0, dtype, feature_axes=_feature_axes(cell))

    def missing(self, cell: object) -> list[str]:
        """What ``cell`` lacks of the cell protocol, in words (empty if nothing)."""
        base = self.lib.RNNCellBase
        if not isinstance(cell, base):
            return [f"is not an {self.prefix}.RNNCellBase"]
        own = [k for k in type(cell).__mro__ if issubclass(k, base) and k is not base]
        names = ("initialize_carry", "num_feature_axes", "__call__")
        return [f"does not define {n}" for n in names if not any(n in vars(k) for k in own)]

    def carry_info(self, cell: Any, info: CellInfo, feature_shape: Sequence[int]) -> CellInfo:
        """``info`` with another cell's carry read from its ``initialize_carry`` for
        inputs of ``feature_shape`` (one batch row, whose axis is then dropped)."""
        if info.known:
            return info
        shape = (1, *(int(n) for n in feature_shape))
        if self.name == "linen":  # a linen cell's initialize_carry takes a key first
            carry = jax.eval_shape(lambda: cell.initialize_carry(jax.random.key(0), shape))
        else:
            carry = cell.initialize_carry(shape)
        leaves, treedef = jax.tree.flatten(carry)
        if not leaves or any(leaf.ndim == 0 or leaf.shape[0] != 1 for leaf in leaves):
            got = describe_shapes(carry)
            raise ValueError(
                f"{type(cell).__name__}.initialize_carry for inputs of shape {shape} returned "
                f"{got}; expected arrays with the input's batch axes first, (1, ...)"
            )
        rows = jax.tree.unflatten(
            treedef, [jax.ShapeDtypeStruct(x.shape[1:], x.dtype) for x in leaves]
        )
        return other_cell_info(rows, info.param_dtype, info.feature_axes)

    def builtin_info(self, cell: object) -> CellInfo:
        """Kind, features and dtype of a built-in cell, else a ``TypeError``."""
        if _is_noisy(cell):
            return self.builtin_info(cell.cell)
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
                why = ", and ".join(self.missing(item))
                raise TypeError(
                    f"InitialStateRNN wraps a Flax {self.name} cell ({self.protocol}, as "
                    f"{self.supported}), an {self.prefix}.RNN or {self.prefix}.Bidirectional "
                    f"of one, or a list of those; got {type(item).__name__}, which {why}"
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
        if len({(f.kind, f.features, f.feature_axes) for f in found}) > 1:
            a, b = found
            raise ValueError(
                f"the two directions of {names} must have the same cell kind and features; got "
                f"{a.kind}/{a.features} and {b.kind}/{b.features}"
            )
        noisy = any(_is_noisy(rnn.cell) for rnn in rnns)
        return LayerInfo(found[0], len(rnns), layer.time_major, layer.return_carry, noisy)

    def layer_carry(self, layer: Any, info: LayerInfo, feature_shape: Sequence[int]) -> LayerInfo:
        """``info`` with its cell's carry known (:meth:`carry_info`); both directions of a
        Bidirectional must carry the same shapes."""
        if info.cell.known:
            return info
        found = [
            self.carry_info(rnn.cell, info.cell, feature_shape) for rnn in self.directions(layer)
        ]
        if len({(f.shapes, f.treedef) for f in found}) > 1:
            a, b = (describe_shapes(f.example()) for f in found)
            raise ValueError(
                f"the two directions of a Bidirectional carry {a} and {b}; "
                "InitialStateRNN needs the same in both"
            )
        return dataclasses.replace(info, cell=found[0])

    def resolve_cell(
        self, cell: Any, features: int | None, param_dtype: Dtype, carry: Carry = None
    ) -> CellInfo:
        """The :class:`CellInfo` from a cell kind name (with ``features``), a built-in
        cell, or the ``carry`` of one sequence of any cell."""
        if carry is not None:
            return other_cell_info(carry, param_dtype, _feature_axes(cell))
        if isinstance(cell, self.lib.Module) and not _is_builtin(self, cell):
            self.cell_info(cell)  # a TypeError for a cell outside the protocol
            raise ValueError(
                f"an InitialState of a {type(cell).__name__} needs carry=<its carry for one "
                "sequence>, e.g. jax.eval_shape(cell.initialize_carry, ...) for one input "
                "step without batch axes: the carry's shapes depend on the input"
            )
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


def _is_builtin(api: Api, cell: object) -> bool:
    try:
        api.builtin_info(cell)
    except TypeError:
        return False
    return True


def _feature_axes(cell: object) -> int:
    """A cell's ``num_feature_axes`` (1 for a kind name or a cell without one)."""
    try:
        return int(cell.num_feature_axes)
    except (AttributeError, NotImplementedError, TypeError):
        return 1


def describe_shapes(carry: Carry) -> str:
    """A carry's structure with the shape of each array, for messages."""
    return str(jax.tree.map(lambda x: tuple(x.shape), carry))


def state_args(info: LayerInfo) -> dict[str, Any]:
    """The keywords of the InitialState of one wrapped layer (its carry known)."""
    cell = info.cell
    args = {"cell": cell.kind, "features": cell.features, "param_dtype": cell.param_dtype}
    if cell.other:
        args = {"carry": cell.example(), "param_dtype": cell.param_dtype}
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
    # ``features``: the size that sets the bounds (spec.carry_features of the shape)
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
    names, dtype = cell.names, cell.param_dtype
    keys = dict(zip(("draw", "noise"), (draw_key, noise and noise[0]), strict=True))
    keys = {k: jax.random.split(v, len(names)) for k, v in keys.items() if v is not None}
    rows = {}
    for i, name in enumerate(names):
        own = cell.shape(name)
        shape = (directions, *batch_shape, *own)
        if vectors is not None:
            # One vector (or array of the component's shape) per row, broadcast over the
            # batch axes (never one per batch row).
            vec = jnp.asarray(vectors[name], dtype)
            vec = vec.reshape(directions, *(1,) * len(batch_shape), *own)
            state = jnp.broadcast_to(vec, shape)
        elif "draw" in keys:
            bound = plan.draw_bound(spec.carry_features(own))
            state = uniform(keys["draw"][i], shape, bound, dtype)
        else:
            state = jnp.zeros(shape, dtype)
        if "noise" in keys:
            state = state + jnp.asarray(noise[1], dtype) * normal(keys["noise"][i], shape, dtype)
        rows[name] = state
    carries = tuple(cell.assemble({n: rows[n][d] for n in names}) for d in range(directions))
    return carries[0] if directions == 1 else carries


# ------------------------------------------------------------------ given carries


def batch_shape_of(inputs: Array, time_major: bool, feature_axes: int = 1) -> tuple[int, ...]:
    """The batch axes of ``inputs``: all but time and the cell's ``feature_axes``."""
    if inputs.ndim < 1 + feature_axes:
        what = "features" if feature_axes == 1 else f"{feature_axes} feature axes"
        raise ValueError(
            f"inputs must be (*batch, time, {what}), or (time, *batch, {what}) with "
            f"time_major=True; got shape {tuple(inputs.shape)}"
        )
    end = inputs.ndim - feature_axes
    return tuple(inputs.shape[1:end] if time_major else inputs.shape[: end - 1])


def _layout_hint(layers: Sequence[LayerInfo], stack: bool) -> str:
    if any(layer.cell.other for layer in layers):
        known = [layer.cell for layer in layers if layer.cell.known]
        carry = "; ".join(describe_shapes(cell.example()) for cell in known)
        return f"the cell's own carry, {carry} after the batch axes"
    parts = []
    if any(layer.cell.kind == "lstm" for layer in layers):
        parts.append("an LSTM carry is a tuple (c, h)")
    if any(layer.directions == 2 for layer in layers):
        parts.append("a Bidirectional layer takes a pair (forward, backward)")
    if stack:
        parts.append("a stack takes a tuple with one carry per layer")
    return "; ".join([*parts, "each array is (*batch, features)"])


def given_carries(
    initial_carry: Carry | None,
    infos: Sequence[LayerInfo],
    stack: bool,
    batch: tuple[int, ...],
    index: int | None = None,
) -> tuple[Carry, ...] | None:
    """``initial_carry`` as one carry per layer, checked against the layers' layout;
    with ``index``, only layer ``index`` is checked (its carry known: another cell's
    carry in a stack is known once its input is) and its carry returned alone."""
    if initial_carry is None:
        return None
    if index is not None:
        if stack and (
            not isinstance(initial_carry, (tuple, list)) or len(initial_carry) != len(infos)
        ):
            raise TypeError(
                f"the initial carry of a stack of {len(infos)} layers is a tuple with one "
                f"carry per layer; got {spec.describe_state(initial_carry)}"
            )
        part = initial_carry[index] if stack else initial_carry
        label = f"[{index}]" if stack else ""
        return _given([part], [infos[index]], batch, [label], _layout_hint(infos, stack))
    labels = [f"[{i}]" if stack else "" for i in range(len(infos))]
    given = initial_carry if stack else [initial_carry]
    hint = _layout_hint(infos, stack)
    return _given(given, infos, batch, labels, hint, whole=initial_carry if stack else None)


def _given(
    given: Sequence[Carry],
    infos: Sequence[LayerInfo],
    batch: tuple[int, ...],
    labels: Sequence[str],
    hint: str,
    whole: Carry = None,
) -> tuple[Carry, ...]:
    expected = []
    for info, layer in zip(infos, labels, strict=True):
        directions = ("",) if info.directions == 1 else ("_forward", "_backward")
        cell = info.cell
        carries = tuple(
            cell.assemble(
                {n: spec.Slot(n + d + layer, (*batch, *cell.shape(n))) for n in cell.names}
            )
            for d in directions
        )
        expected.append(carries if info.directions == 2 else carries[0])
    if whole is not None:  # a whole stack: checked as one tuple
        leaves = spec.check_given_state(whole, tuple(expected), hint)
        return tuple(jax.tree.unflatten(jax.tree.structure(tuple(expected)), leaves))
    leaves = spec.check_given_state(given[0], expected[0], hint)
    return (jax.tree.unflatten(jax.tree.structure(expected[0]), leaves),)  # lists become tuples


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
