"""Where each framework keeps the weights and the state of one recurrent cell, as data.

PyTorch's layout is the reference: per layer and direction ``weight_ih`` (gate blocks
as rows, ``(G * H, in)``), ``weight_hh`` (``(G * H, H)``), ``bias_ih`` and ``bias_hh``
(``(G * H,)``), gate blocks in the order of ``GATES["torch"]``. Another framework's
cell is a tree of leaves, each described in those terms: a :class:`Kernel` (gate
blocks of ``weight_ih`` or ``weight_hh``, concatenated in the framework's order and
transposed) or a :class:`Bias` (gate blocks of ``bias_ih``, ``bias_hh`` or their sum;
several rows are stacked). A torch bias block no leaf holds must be zero, and
:attr:`CellLayout.missing` says why. The converters read nothing else.

>>> KERAS["gru"].leaves[("kernel",)]  # Keras's z, r, h are torch's blocks 1, 0, 2
Kernel(source='weight_ih', gates=(1, 0, 2))
>>> leaf_shape(KERAS["gru"].leaves[("bias",)], input_size=3, hidden=4)
(2, 12)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from reference_impl import spec

FRAMEWORKS = ("torch", "keras", "linen", "nnx")

GATES: dict[str, dict[str, tuple[str, ...]]] = {
    "torch": {"gru": ("r", "z", "n"), "lstm": ("i", "f", "g", "o"), "rnn": ("h",)},
    "keras": {"gru": ("z", "r", "h"), "lstm": ("i", "f", "c", "o"), "rnn": ("h",)},
    "linen": {"gru": ("r", "z", "n"), "lstm": ("i", "f", "g", "o"), "rnn": ("h",)},
    "nnx": {"gru": ("r", "z", "n"), "lstm": ("i", "f", "g", "o"), "rnn": ("h",)},
}
"""Gate order of each framework's fused weight blocks, per cell."""

NUM_GATES = {cell: len(gates) for cell, gates in GATES["torch"].items()}
TORCH_PARTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
NONLINEARITIES = ("tanh", "relu")
NNX_LSTM_CELLS = ("LSTMCell", "OptimizedLSTMCell")
IH, HH, SUM = ("bias_ih",), ("bias_hh",), ("bias_ih", "bias_hh")  # what a bias block holds


@dataclasses.dataclass(frozen=True)
class Kernel:
    """Gate blocks ``gates`` of ``source`` (``weight_ih``/``weight_hh``), transposed."""

    source: str
    gates: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Bias:
    """Rows of bias blocks ``(gate, parts)``, each the sum of the torch biases ``parts``."""

    rows: tuple[tuple[tuple[int, tuple[str, ...]], ...], ...]


@dataclasses.dataclass(frozen=True)
class CellLayout:
    """One framework's cell: leaf path -> :class:`Kernel` or :class:`Bias`; ``missing``
    maps a torch bias block ``(part, gate)`` no leaf holds to ``(what, why)``."""

    leaves: Mapping[tuple[str, ...], Kernel | Bias]
    missing: Mapping[tuple[str, int], tuple[str, str]] = dataclasses.field(default_factory=dict)


def row(parts: tuple[str, ...], *gates: int) -> tuple[tuple[int, tuple[str, ...]], ...]:
    """One bias row: the blocks ``gates``, each holding ``parts``."""
    return tuple((g, parts) for g in gates)


def _fused(names: tuple[str, str], gates: tuple[int, ...], bias: dict) -> CellLayout:
    """A cell with one input and one recurrent kernel holding every gate."""
    leaves = {
        (names[0], "kernel"): Kernel("weight_ih", gates),
        (names[1], "kernel"): Kernel("weight_hh", gates),
    }
    return CellLayout({**leaves, **{path: Bias(rows) for path, rows in bias.items()}})


def _keras(gates: tuple[int, ...], *rows: tuple) -> CellLayout:
    layout = _fused(("kernel", "recurrent_kernel"), gates, {("bias",): rows})
    return CellLayout({(name[0],): leaf for name, leaf in layout.leaves.items()})


def _per_gate(cell: str, input_bias: tuple, hidden_bias: tuple, rename=None) -> CellLayout:
    """A Flax cell with one Dense layer per gate and side (``ir``, ``hr``, ...)."""
    leaves: dict[tuple[str, ...], Kernel | Bias] = {}
    for g, gate in enumerate(GATES["linen"][cell]):
        for side, source, bias in (("i", "weight_ih", input_bias), ("h", "weight_hh", hidden_bias)):
            name = (rename or {}).get(side + gate, side + gate)
            leaves[(name, "kernel")] = Kernel(source, (g,))
            if bias[g]:
                leaves[(name, "bias")] = Bias((row(bias[g], g),))
    return CellLayout(leaves)


KERAS = {
    "gru": _keras((1, 0, 2), row(IH, 1, 0, 2), row(HH, 1, 0, 2)),  # reset_after=True
    "lstm": _keras((0, 1, 2, 3), row(SUM, 0, 1, 2, 3)),
    "rnn": _keras((0,), row(SUM, 0)),
}
"""Keras 3 ``GRU(reset_after=True)``, ``LSTM``, ``SimpleRNN``: ``kernel``,
``recurrent_kernel``, ``bias``; GRU blocks ``z, r, h`` and two bias rows."""

_NO_BIAS = ("a bias", "use_bias=False: build the Keras layer with use_bias=True")
KERAS_NO_BIAS = {
    cell: CellLayout(
        {path: leaf for path, leaf in layout.leaves.items() if path != ("bias",)},
        {(part, g): _NO_BIAS for part in SUM for g in range(NUM_GATES[cell])},
    )
    for cell, layout in KERAS.items()
}
"""Keras layers built with ``use_bias=False``: every torch bias must be zero."""

LINEN = {
    # ir iz in with bias (b_in alone: b_hn stays inside r * (...)), hn with b_hn.
    "gru": _per_gate("gru", (SUM, SUM, IH), (None, None, HH)),
    "lstm": _per_gate("lstm", (None,) * 4, (SUM,) * 4),  # also OptimizedLSTMCell
    "rnn": _fused(("i", "h"), (0,), {("i", "bias"): (row(SUM, 0),)}),
}
"""Flax linen ``GRUCell``, ``LSTMCell``/``OptimizedLSTMCell``, ``SimpleCell``."""

_NO_B_HN = (
    "b_hn, the bias inside r * (W_hn h + b_hn)",
    "flax.nnx.GRUCell has no recurrent bias: it computes tanh(W_in x + b_in + r * W_hn h). "
    "Train the PyTorch GRU with b_hn fixed at zero, or use flax.linen.GRUCell, whose `hn` "
    "layer has it",
)
_DENSE = ("dense_i", "dense_h")

NNX = {
    "GRUCell": dataclasses.replace(
        _fused(_DENSE, (0, 1, 2), {("dense_i", "bias"): (row(SUM, 0, 1) + row(IH, 2),)}),
        missing={("bias_hh", 2): _NO_B_HN},
    ),
    "LSTMCell": _per_gate("lstm", (None,) * 4, (SUM,) * 4, rename={"if": "if_"}),
    "OptimizedLSTMCell": _fused(
        _DENSE, (0, 1, 2, 3), {("dense_h", "bias"): (row(SUM, 0, 1, 2, 3),)}
    ),
    "SimpleCell": _fused(_DENSE, (0,), {("dense_i", "bias"): (row(SUM, 0),)}),
}
"""Flax NNX cells by class name: ``GRUCell`` has no ``b_hn``; ``LSTMCell`` is linen's
tree with ``if_``; ``OptimizedLSTMCell`` fuses the gates, with the summed bias on
``dense_h``."""

NNX_CELLS = {"gru": ("GRUCell",), "lstm": NNX_LSTM_CELLS, "rnn": ("SimpleCell",)}


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """One direction's state in a framework: the LSTM component order, and whether a
    single component still comes in a list (Keras's ``[h]``)."""

    order: tuple[str, ...] = ("h", "c")
    listed: bool = False

    def pack(self, parts: Mapping[str, Any]) -> Any:
        """``{"h": h}`` or ``{"h": h, "c": c}`` to this framework's state."""
        values = [parts[name] for name in self.order if name in parts]
        return values if self.listed else tuple(values) if len(values) > 1 else values[0]

    def unpack(self, state: Any, cell: str) -> dict[str, Any]:
        """Inverse of :meth:`pack` for ``cell``."""
        names = [n for n in self.order if n in components(cell)]
        values = list(state) if self.listed or len(names) > 1 else [state]
        if len(values) != len(names):
            raise ValueError(f"a {cell} state has {len(names)} component(s); got {len(values)}")
        return dict(zip(names, values, strict=True))


STATES = {
    "torch": StateLayout(),
    "keras": StateLayout(listed=True),
    "linen": StateLayout(("c", "h")),
    "nnx": StateLayout(("c", "h")),
}
"""PyTorch ``h`` or ``(h, c)``, Keras ``[h]`` or ``[h, c]``, Flax ``h`` or ``(c, h)``.

>>> STATES["linen"].pack({"h": 1, "c": 2}), STATES["keras"].pack({"h": 1})
((2, 1), [1])
"""


def components(cell: str) -> tuple[str, ...]:
    """Names of the state components of ``cell``: ``("h",)`` or ``("h", "c")``."""
    return ("h", "c")[: spec.num_components(cell)]


def nnx_layout(cell: str, tree: Any = None, name: str | None = None) -> CellLayout:
    """The NNX layout of ``cell``: the one named, else the one whose layer names the
    param ``tree`` uses, else the first."""
    candidates = {n: NNX[n] for n in NNX_CELLS[cell]}
    if name is not None:
        return candidates[name]
    keys = set(tree) if isinstance(tree, Mapping) else set()
    return next(
        (c for c in candidates.values() if keys & {p[0] for p in c.leaves}), NNX[NNX_CELLS[cell][0]]
    )


def leaf_shape(leaf: Kernel | Bias, input_size: int, hidden: int) -> tuple[int, ...]:
    """The shape of ``leaf`` for a cell with ``input_size`` inputs and ``hidden`` units."""
    if isinstance(leaf, Kernel):
        rows = input_size if leaf.source == "weight_ih" else hidden
        return (rows, len(leaf.gates) * hidden)
    width = len(leaf.rows[0]) * hidden
    return (width,) if len(leaf.rows) == 1 else (len(leaf.rows), width)


def held_biases(layout: CellLayout) -> set[tuple[str, int]]:
    """The torch bias blocks ``(part, gate)`` some leaf of ``layout`` holds."""
    biases = [leaf for leaf in layout.leaves.values() if isinstance(leaf, Bias)]
    return {(part, g) for b in biases for r in b.rows for g, parts in r for part in parts}


def first(layout: CellLayout, source: str) -> tuple[tuple[str, ...], Kernel]:
    """The first kernel of ``layout`` taken from ``source``, with its path."""
    kernels = [(p, k) for p, k in layout.leaves.items() if isinstance(k, Kernel)]
    return next((p, k) for p, k in kernels if k.source == source)
