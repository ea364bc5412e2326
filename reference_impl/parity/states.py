"""States and learned state vectors between PyTorch's layout and Keras's and Flax's.

PyTorch holds ``h`` or ``(h, c)``, each ``(layers * directions, [batch,] features)``
with row ``layer * directions + direction``; Keras takes one list per layer, Flax one
carry per layer, as :data:`reference_impl.parity.layouts.STATES` says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from reference_impl import spec
from reference_impl.parity.layouts import STATES
from reference_impl.parity.layouts import components as names_of


def components(state: Any, cell: str) -> tuple[np.ndarray, ...]:
    """The components of a PyTorch-layout state: ``(h,)`` or ``(h, c)``, checked."""
    if cell == "lstm":
        if not (isinstance(state, (tuple, list)) and len(state) == 2):
            raise ValueError("an LSTM state must be a pair (h, c)")
        return tuple(np.asarray(s) for s in state)
    if isinstance(state, (tuple, list)):
        if len(state) != 1:
            raise ValueError(f"a {cell} state has one component; got {len(state)}")
        state = state[0]
    return (np.asarray(state),)


def _per_layer(state: Any, cell: str, bidirectional: bool) -> list[list[dict[str, Any]]]:
    """Per layer, per direction: ``{"h": ..., "c": ...}`` of a PyTorch-layout state."""
    cell = spec.check_cell(cell)
    comps = dict(zip(names_of(cell), components(state, cell), strict=True))
    rows, d = comps["h"].shape[0], 2 if bidirectional else 1
    if rows % d or any(c.shape[0] != rows for c in comps.values()):
        raise ValueError(
            f"state has {rows} rows; expected num_layers * {d} rows in every component"
        )
    return [
        [{name: c[layer * d + k] for name, c in comps.items()} for k in range(d)]
        for layer in range(rows // d)
    ]


def _to_torch(rows: Sequence[Mapping[str, Any]], cell: str, join: Any = np.stack) -> Any:
    out = tuple(join([np.asarray(r[name]) for r in rows]) for name in names_of(cell))
    return out if cell == "lstm" else out[0]


def torch_state_to_keras(
    state: Any, cell: str, *, bidirectional: bool = False
) -> list[list[np.ndarray]]:
    """A PyTorch state to one ``initial_state`` list per Keras layer.

    ``[h]`` or ``[h, c]``, forward then backward for a ``Bidirectional`` layer. Works for
    a batched state ``(rows, batch, features)`` and for learned vectors ``(rows, features)``.

    >>> h = np.arange(4.0).reshape(4, 1)  # 2 layers x 2 directions, 1 feature
    >>> torch_state_to_keras(h, "gru", bidirectional=True)
    [[array([0.]), array([1.])], [array([2.]), array([3.])]]
    """
    per_layer = _per_layer(state, cell, bidirectional)
    return [[s for parts in layer for s in STATES["keras"].pack(parts)] for layer in per_layer]


def keras_state_to_torch(
    states: Sequence[Sequence[Any]], cell: str, *, bidirectional: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`torch_state_to_keras`: per-layer Keras states to PyTorch's layout.

    >>> keras_state_to_torch([[np.zeros(2), np.ones(2)]], "lstm")[1]
    array([[1., 1.]])
    """
    cell = spec.check_cell(cell)
    n, d = spec.num_components(cell), 2 if bidirectional else 1
    rows = []
    for layer, st in enumerate(states):
        if len(st := list(st)) != n * d:
            raise ValueError(f"layer {layer}: {len(st)} state arrays; expected {n * d}")
        rows += [STATES["keras"].unpack(st[k * n : (k + 1) * n], cell) for k in range(d)]
    return _to_torch(rows, cell)


def torch_state_to_flax(state: Any, cell: str, *, bidirectional: bool = False) -> list[Any]:
    """A PyTorch state to one Flax carry per layer: ``h``, or ``(c, h)`` for an LSTM
    (Flax keeps ``c`` first); ``(forward, backward)`` for a bidirectional layer.

    >>> h, c = np.zeros((1, 2, 3)), np.ones((1, 2, 3))
    >>> carry = torch_state_to_flax((h, c), "lstm")[0]
    >>> float(carry[0].mean()), float(carry[1].mean())
    (1.0, 0.0)
    """
    carries = [
        tuple(STATES["linen"].pack(parts) for parts in layer)
        for layer in _per_layer(state, cell, bidirectional)
    ]
    return carries if bidirectional else [c[0] for c in carries]


def flax_state_to_torch(
    carries: Sequence[Any], cell: str, *, bidirectional: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`torch_state_to_flax`: per-layer Flax carries to PyTorch's layout.

    >>> flax_state_to_torch([(np.zeros(2), np.ones(2))], "lstm")[0]
    array([[1., 1.]])
    """
    cell = spec.check_cell(cell)
    per_layer = [layer if bidirectional else (layer,) for layer in carries]
    return _to_torch([STATES["linen"].unpack(c, cell) for cs in per_layer for c in cs], cell)


def learned_state_per_layer(
    learned: Any, cell: str, *, bidirectional: bool = False
) -> list[dict[str, np.ndarray]]:
    """A learned initial state in PyTorch's layout, split into one entry per layer.

    ``learned`` is ``h0`` or ``(h0, c0)``, each ``(num_layers * directions,
    features)``: what ``reference_impl.torch``'s ``initial_state.h0`` / ``.c0`` hold.
    Each entry is ``{"h": (directions, features)}`` (plus ``"c"``): what one layer's
    initial state holds in Keras (``h0``/``c0``) and in Flax (``"h"``/``"c"``).

    >>> h0 = np.arange(8.0).reshape(4, 2)  # 2 layers x 2 directions, 2 features
    >>> learned_state_per_layer(h0, "gru", bidirectional=True)[1]["h"]
    array([[4., 5.],
           [6., 7.]])
    """
    for name, c in zip(("h0", "c0"), components(learned, spec.check_cell(cell)), strict=False):
        if c.ndim != 2:
            raise ValueError(f"learned {name} has shape {c.shape}; expected (rows, features)")
    per_layer = _per_layer(learned, cell, bidirectional)
    return [{n: np.stack([r[n] for r in layer]) for n in layer[0]} for layer in per_layer]


def learned_state_from_layers(
    layers: Sequence[Mapping[str, Any]], cell: str
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`learned_state_per_layer`: PyTorch's ``h0`` (or ``(h0, c0)``).

    >>> learned_state_from_layers([{"h": np.zeros((2, 3))}, {"h": np.ones((2, 3))}], "gru")[:, 0]
    array([0., 0., 1., 1.])
    """
    cell = spec.check_cell(cell)
    for i, layer in enumerate(layers):
        for name in names_of(cell):
            if name not in layer:
                raise ValueError(f"missing key {name!r} in the learned state of layer {i}")
    return _to_torch(layers, cell, np.concatenate)
