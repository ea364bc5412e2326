"""Weight converters between PyTorch's ``state_dict`` and Keras, Flax linen and Flax NNX.

One engine, driven by :mod:`reference_impl.parity.layouts`, builds a cell's leaves
from torch's gate blocks (:func:`to_leaves`) and reads them back (:func:`from_leaves`),
one layer and direction at a time. Per framework there is only the packing of a
layer: one weight list per Keras layer (forward then backward), one ``{"cell": ...}``
tree (or ``{"forward_rnn": ..., "backward_rnn": ...}``) per Flax layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import reduce
from typing import Any

import numpy as np

from reference_impl import spec
from reference_impl.parity import layouts as L

Params = dict[str, np.ndarray]  # one direction in PyTorch's layout, keys L.TORCH_PARTS
Tree = Mapping[str, Any]
_KERAS_NAMES = ("kernel", "recurrent_kernel", "bias")

# --------------------------------------------------------------------------- PyTorch


def suffix(layer: int, reverse: bool) -> str:
    """The key suffix of one layer and direction, e.g. ``_l1_reverse``."""
    return f"_l{layer}" + ("_reverse" if reverse else "")


def directions(bidirectional: bool) -> tuple[bool, ...]:
    """The ``reverse`` flag of each direction."""
    return (False, True) if bidirectional else (False,)


def check_shape(arr: Any, expected: tuple[int, ...], key: str) -> np.ndarray:
    """``arr`` as an array if it has shape ``expected``, else a ``ValueError`` naming ``key``."""
    arr = np.asarray(arr)
    if arr.shape != expected:
        raise ValueError(f"{key} has shape {arr.shape}; expected {expected}")
    return arr


def torch_direction(state_dict: Tree, layer: int, reverse: bool) -> Params:
    """The four arrays of one layer and direction, keys without the suffix."""
    return {part: np.asarray(state_dict[part + suffix(layer, reverse)]) for part in L.TORCH_PARTS}


def _shapes(cell: str, layer_in: int, hidden: int) -> dict[str, tuple[int, ...]]:
    rows = L.NUM_GATES[cell] * hidden
    shapes = ((rows, layer_in), (rows, hidden), (rows,), (rows,))
    return dict(zip(L.TORCH_PARTS, shapes, strict=True))


def _stack_keys(keys: set[str], cell: str) -> tuple[int, bool]:
    proj = sorted(k for k in keys if k.startswith("weight_hr_l"))
    if proj:
        raise ValueError(
            f"{proj[0]}: an LSTM with proj_size > 0 has no Keras or Flax equivalent "
            "(their LSTM cells have no projection); use proj_size=0"
        )
    for key in ("weight_ih_l0", "weight_hh_l0"):
        if key not in keys:
            raise ValueError(f"missing key {key!r} in the {cell} state dict")
    numbers = [k[11:].removesuffix("_reverse") for k in keys if k.startswith("weight_ih_l")]
    num_layers = 1 + max(int(n) for n in numbers if n.isdigit())
    bidirectional = any(k.endswith("_reverse") for k in keys)
    expected = [
        part + suffix(layer, rev)
        for layer in range(num_layers)
        for rev in directions(bidirectional)
        for part in L.TORCH_PARTS
    ]
    for key in [k for k in expected if k not in keys] + sorted(keys - set(expected)):
        raise ValueError(
            f"{'missing' if key in expected else 'unexpected'} key {key!r} in the {cell} state dict"
        )
    return num_layers, bidirectional


def describe_torch(state_dict: Mapping[str, Any], cell: str) -> dict[str, Any]:
    """``input_size``, ``hidden_size``, ``num_layers`` and ``bidirectional`` of a PyTorch
    ``nn.GRU``/``nn.LSTM``/``nn.RNN`` state dict; a missing key, a wrong shape, a
    ``weight_hr`` (``proj_size > 0``) or an unknown key raises a ``ValueError`` naming it.

    >>> describe_torch(random_state_dict("lstm", 3, 4, num_layers=2), "lstm")
    {'input_size': 3, 'hidden_size': 4, 'num_layers': 2, 'bidirectional': False}
    >>> describe_torch({"weight_ih_l0": np.zeros((12, 3))}, "gru")
    Traceback (most recent call last):
    ...
    ValueError: missing key 'weight_hh_l0' in the gru state dict
    """
    cell = spec.check_cell(cell)
    num_layers, bidir = _stack_keys(set(state_dict), cell)
    w_ih, w_hh = np.asarray(state_dict["weight_ih_l0"]), np.asarray(state_dict["weight_hh_l0"])
    gates = L.NUM_GATES[cell]
    if w_hh.ndim != 2 or w_hh.shape[0] != gates * w_hh.shape[1]:
        raise ValueError(
            f"weight_hh_l0 has shape {w_hh.shape}; a {cell} needs ({gates} * hidden, hidden)"
        )
    if w_ih.ndim != 2:
        raise ValueError(f"weight_ih_l0 has shape {w_ih.shape}; expected 2 dimensions")
    input_size, hidden = int(w_ih.shape[1]), int(w_hh.shape[1])
    for layer in range(num_layers):
        layer_in = input_size if layer == 0 else hidden * len(directions(bidir))
        for rev in directions(bidir):
            for part, shape in _shapes(cell, layer_in, hidden).items():
                key = part + suffix(layer, rev)
                check_shape(state_dict[key], shape, key)
    sizes = (input_size, hidden, num_layers, bidir)
    return dict(
        zip(("input_size", "hidden_size", "num_layers", "bidirectional"), sizes, strict=True)
    )


def random_state_dict(
    cell: str,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    seed: int = 0,
    dtype: Any = np.float32,
) -> dict[str, np.ndarray]:
    """A PyTorch-layout state dict drawn as PyTorch draws it, ``U(-1/sqrt(H), 1/sqrt(H))``
    (``b_hn`` included), from ``numpy``'s generator with ``seed``.

    >>> sd = random_state_dict("gru", 3, 4, bidirectional=True)
    >>> sorted(sd)[:4], sd["weight_ih_l0_reverse"].shape
    (['bias_hh_l0', 'bias_hh_l0_reverse', 'bias_ih_l0', 'bias_ih_l0_reverse'], (12, 3))
    """
    cell = spec.check_cell(cell)
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        spec.check_positive_int(name, value)
    spec.check_positive_int("num_layers", num_layers)
    rng, bound = np.random.default_rng(seed), 1.0 / np.sqrt(hidden_size)
    out: dict[str, np.ndarray] = {}
    for layer in range(num_layers):
        layer_in = input_size if layer == 0 else hidden_size * len(directions(bidirectional))
        for rev in directions(bidirectional):
            for part, shape in _shapes(cell, layer_in, hidden_size).items():
                out[part + suffix(layer, rev)] = rng.uniform(-bound, bound, shape).astype(dtype)
    return out


# --------------------------------------------------------------------------- one direction


def _check_missing(p: Params, cell: str, layout: L.CellLayout, where: str) -> None:
    held, hidden = L.held_biases(layout), p["weight_hh"].shape[1]
    for part in L.SUM:
        for g, block in enumerate(np.split(p[part], L.NUM_GATES[cell])):
            if (part, g) not in held and np.any(block != 0):
                what, why = layout.missing[(part, g)]
                raise ValueError(
                    f"{part}{where}[{g * hidden}:{(g + 1) * hidden}] ({what}) is nonzero, and {why}"
                )


def to_leaves(p: Params, cell: str, layout: L.CellLayout, where: str = "") -> dict[tuple, Any]:
    """One direction in PyTorch's layout to the leaves of ``layout``, path -> array.

    A nonzero torch bias block that no leaf holds raises, naming ``part{where}[a:b]``.

    >>> p = {k: np.arange(3.0) for k in ("bias_ih", "bias_hh")}
    >>> p |= {"weight_ih": np.eye(3)[:, :2], "weight_hh": np.eye(3)[:, :1]}
    >>> to_leaves(p, "gru", L.KERAS["gru"])[("bias",)]  # blocks z, r, h: torch's 1, 0, 2
    array([[1., 0., 2.],
           [1., 0., 2.]])
    """
    _check_missing(p, cell, layout, where)
    blocks = {part: np.split(p[part], L.NUM_GATES[cell]) for part in L.TORCH_PARTS}

    def bias_row(r: tuple) -> np.ndarray:
        return np.concatenate([reduce(np.add, (blocks[q][g] for q in parts)) for g, parts in r])

    out = {}
    for path, leaf in layout.leaves.items():
        if isinstance(leaf, L.Kernel):
            arr = np.concatenate([blocks[leaf.source][g] for g in leaf.gates]).T
        else:
            rows = [bias_row(r) for r in leaf.rows]
            arr = rows[0] if len(rows) == 1 else np.stack(rows)
        out[path] = np.ascontiguousarray(arr)
    return out


def from_leaves(
    leaves: Mapping[tuple, Any], cell: str, layout: L.CellLayout, hidden: int
) -> Params:
    """Inverse of :func:`to_leaves` (for checked leaves): a summed bias comes back on
    ``bias_ih``, and torch bias blocks no leaf holds come back as zeros."""
    n = L.NUM_GATES[cell]
    dtype = np.asarray(leaves[L.first(layout, "weight_hh")[0]]).dtype
    blocks = {part: [np.zeros(hidden, dtype)] * n for part in L.TORCH_PARTS}
    for path, leaf in layout.leaves.items():
        arr = np.asarray(leaves[path])
        if isinstance(leaf, L.Kernel):
            for g, block in zip(leaf.gates, np.split(arr.T, len(leaf.gates)), strict=True):
                blocks[leaf.source][g] = block
            continue
        for r, values in zip(leaf.rows, arr.reshape(len(leaf.rows), -1), strict=True):
            for (g, parts), block in zip(r, np.split(values, len(r)), strict=True):
                blocks[parts[0]][g] = block
    return {part: np.concatenate(blocks[part]) for part in L.TORCH_PARTS}


def _get(tree: Any, path: tuple[str, ...], where: str) -> Any:
    for i, key in enumerate(path):
        if not isinstance(tree, Mapping) or key not in tree:
            raise ValueError(f"missing key {'/'.join((where, *path[: i + 1]))!r}")
        tree = tree[key]
    return tree


def _paths(tree: Tree, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            yield from _paths(value, (*prefix, key))
        else:
            yield (*prefix, key)


def read_leaves(tree: Any, layout: L.CellLayout, where: str) -> tuple[dict[tuple, Any], int]:
    """The leaves of ``layout`` from a cell's tree, checked: ``(leaves, hidden)``.

    A missing, unexpected or misshapen leaf raises a ``ValueError`` naming its path.
    """
    if not isinstance(tree, Mapping):
        raise ValueError(f"{where}: expected a dict of layers; got {type(tree).__name__}")
    leaves = {path: np.asarray(_get(tree, path, where)) for path in layout.leaves}
    for path in sorted(set(_paths(tree)) - set(layout.leaves)):
        raise ValueError(f"unexpected key {'/'.join((where, *path))!r}")
    sizes = {}
    for source in ("weight_ih", "weight_hh"):
        path, _ = L.first(layout, source)
        if leaves[path].ndim != 2:
            name = "/".join((where, *path))
            raise ValueError(f"{name} has shape {leaves[path].shape}; expected 2 dimensions")
        sizes[source] = leaves[path].shape[0]
    for path, leaf in layout.leaves.items():
        shape = L.leaf_shape(leaf, sizes["weight_ih"], sizes["weight_hh"])
        check_shape(leaves[path], shape, "/".join((where, *path)))
    return leaves, sizes["weight_hh"]


# --------------------------------------------------------------------------- whole stacks


def _from_torch(state_dict: Tree, cell: str, layout: L.CellLayout, pack: Callable) -> list:
    info = describe_torch(state_dict, cell)
    return [
        pack(
            [
                to_leaves(torch_direction(state_dict, layer, rev), cell, layout, suffix(layer, rev))
                for rev in directions(info["bidirectional"])
            ]
        )
        for layer in range(info["num_layers"])
    ]


def _to_torch(layers: Any, cell: str, unpack: Callable, layout_of: Callable, what: str) -> Params:
    cell = spec.check_cell(cell)
    if isinstance(layers, (Mapping, np.ndarray)) or not len(layers):
        raise ValueError(f"expected a non-empty list with one {what} per layer")
    out: dict[str, np.ndarray] = {}
    for layer, item in enumerate(layers):
        for rev, where, tree in unpack(item, layer, cell):
            layout = layout_of(tree)
            leaves, hidden = read_leaves(tree, layout, where)
            for part, arr in from_leaves(leaves, cell, layout, hidden).items():
                out[part + suffix(layer, rev)] = arr
    describe_torch(out, cell)  # the layers must fit together
    return out


def _keras_directions(weights: Any, layer: int, cell: str, bidirectional: bool | None):
    weights = [np.asarray(w) for w in weights]
    bidir = len(weights) in (4, 6) if bidirectional is None else bidirectional
    per = len(weights) // len(directions(bidir))
    if per * len(directions(bidir)) != len(weights):
        raise ValueError(f"layer {layer}: {len(weights)} arrays cannot be split in two")
    for d, rev in enumerate(directions(bidir)):
        where = f"layer {layer}" + ("/backward" if rev else "")
        chunk = weights[d * per : (d + 1) * per]
        if len(chunk) not in (2, 3):
            raise ValueError(
                f"{where}: expected [kernel, recurrent_kernel, bias] (or without bias for "
                f"use_bias=False); got {len(chunk)} arrays"
            )
        units = chunk[1].shape[0] if chunk[1].ndim else 0
        if cell == "gru" and len(chunk) == 3 and chunk[2].shape == (3 * units,):
            raise ValueError(
                f"{where}/bias has shape {chunk[2].shape}: a GRU built with reset_after=False, "
                "which applies the reset gate before the recurrent matmul; PyTorch and Flax "
                "have no such cell. Use reset_after=True (bias shape (2, 3 * units))"
            )
        yield rev, where, dict(zip(_KERAS_NAMES, chunk, strict=False))  # no bias: use_bias=False


def flax_directions(tree: Any, layer: int, cell: str = "") -> Iterator[tuple[bool, str, Any]]:
    """``(reverse, where, cell tree)`` of each direction of one Flax layer's params."""
    if isinstance(tree, Mapping) and "params" in tree and len(tree) == 1:
        tree = tree["params"]
    bidir = isinstance(tree, Mapping) and ("forward_rnn" in tree or "backward_rnn" in tree)
    names = ("forward_rnn", "backward_rnn") if bidir else ("",)
    for rev, name in zip(directions(bidir), names, strict=True):
        where = "/".join(filter(None, (f"layer {layer}", name)))
        sub = _get(tree, (name,), f"layer {layer}") if name else tree
        yield rev, where + "/cell", _get(sub, ("cell",), where)


def _flax_pack(per_direction: list[dict[tuple, Any]]) -> dict[str, Any]:
    trees = []
    for leaves in per_direction:
        cell: dict[str, dict[str, Any]] = {}
        for (layer, leaf), arr in leaves.items():
            cell.setdefault(layer, {})[leaf] = arr
        trees.append({"cell": cell})
    return {"forward_rnn": trees[0], "backward_rnn": trees[1]} if len(trees) == 2 else trees[0]


def torch_to_keras(
    state_dict: Mapping[str, Any], cell: str, *, reset_after: bool = True, use_bias: bool = True
) -> list[list[np.ndarray]]:
    """PyTorch ``state_dict`` to one ``set_weights`` list per Keras layer.

    ``[kernel, recurrent_kernel, bias]`` of a ``GRU``/``LSTM``/``SimpleRNN``, forward
    then backward for ``Bidirectional(..., merge_mode="concat")``, laid out as
    ``parity.layouts.KERAS`` says. ``reset_after=False`` raises
    (another cell), and so does ``use_bias=False`` unless every bias is zero.

    >>> sd = random_state_dict("gru", 3, 4, num_layers=2, bidirectional=True)
    >>> [[w.shape for w in layer] for layer in torch_to_keras(sd, "gru")][1]
    [(8, 12), (4, 12), (2, 12), (8, 12), (4, 12), (2, 12)]
    >>> torch_to_keras(sd, "gru", reset_after=False)
    Traceback (most recent call last):
    ...
    ValueError: reset_after=False: that Keras GRU applies the reset gate before ...
    """
    cell = spec.check_cell(cell)
    if not isinstance(reset_after, bool):
        raise ValueError(f"reset_after must be True or False; got {reset_after!r}")
    if cell == "gru" and not reset_after:
        raise ValueError(
            "reset_after=False: that Keras GRU applies the reset gate before the recurrent "
            "matmul (W_h (r * h)) with one bias row, a different function from PyTorch's "
            "and Flax's GRU; build the Keras GRU with reset_after=True (the default)"
        )
    layout = (L.KERAS if use_bias else L.KERAS_NO_BIAS)[cell]
    return _from_torch(state_dict, cell, layout, lambda ds: [a for d in ds for a in d.values()])


def keras_to_torch(
    layers: Sequence[Sequence[Any]], cell: str, *, bidirectional: bool | None = None
) -> dict[str, np.ndarray]:
    """Weights of a stack of Keras layers (``get_weights()`` of each) to a ``state_dict``.

    ``bidirectional`` is read from the number of arrays per layer (6 or 4: two
    directions) when not given. No bias gives zero biases; a ``reset_after=False`` GRU
    (bias ``(3 * units,)``) raises.

    >>> sd = random_state_dict("lstm", 3, 4)
    >>> back = keras_to_torch(torch_to_keras(sd, "lstm"), "lstm")
    >>> bool(np.allclose(back["bias_ih_l0"], sd["bias_ih_l0"] + sd["bias_hh_l0"]))
    True
    """
    cell = spec.check_cell(cell)

    def unpack(weights: Any, layer: int, cell: str) -> Iterator:
        return _keras_directions(weights, layer, cell, bidirectional)

    def layout_of(tree: Tree) -> L.CellLayout:
        return (L.KERAS if "bias" in tree else L.KERAS_NO_BIAS)[cell]

    return _to_torch(layers, cell, unpack, layout_of, "list of Keras weights")


def torch_to_linen(state_dict: Mapping[str, Any], cell: str) -> list[dict[str, Any]]:
    """PyTorch ``state_dict`` to Flax linen params, one tree per layer.

    Each tree is the ``params`` of ``nn.RNN(cell)`` (``{"cell": ...}``) or of
    ``nn.Bidirectional`` (``{"forward_rnn": {"cell": ...}, "backward_rnn": ...}``), for
    ``nn.GRUCell`` (exactly PyTorch's GRU), ``nn.LSTMCell``/``nn.OptimizedLSTMCell`` or
    ``nn.SimpleCell``, laid out as ``parity.layouts.LINEN`` says.

    >>> tree = torch_to_linen(random_state_dict("gru", 3, 4), "gru")[0]
    >>> sorted(tree["cell"]), tree["cell"]["hn"]["bias"].shape
    (['hn', 'hr', 'hz', 'in', 'ir', 'iz'], (4,))
    """
    cell = spec.check_cell(cell)
    return _from_torch(state_dict, cell, L.LINEN[cell], _flax_pack)


def linen_to_torch(layers: Sequence[Mapping[str, Any]], cell: str) -> dict[str, np.ndarray]:
    """Flax linen params, one tree per layer (see :func:`torch_to_linen`; may be wrapped in
    ``{"params": ...}``), to a ``state_dict``; summed biases come back on ``bias_ih``.

    >>> sd = random_state_dict("gru", 3, 4)
    >>> back = linen_to_torch(torch_to_linen(sd, "gru"), "gru")
    >>> all(np.allclose(back[k], v) for k, v in canonical_torch(sd, "gru").items())
    True
    """
    cell = spec.check_cell(cell)
    return _to_torch(layers, cell, flax_directions, lambda t: L.LINEN[cell], "linen param tree")


def torch_to_nnx(
    state_dict: Mapping[str, Any], cell: str, *, lstm_cell: str = "LSTMCell"
) -> list[dict[str, Any]]:
    """PyTorch ``state_dict`` to Flax NNX params, one pure-dict tree per layer.

    Each tree is ``nnx.to_pure_dict(nnx.state(layer, nnx.Param))`` of ``nnx.RNN(cell)``
    or ``nnx.Bidirectional`` (keys as for linen); load it with
    ``nnx.replace_by_pure_dict`` and ``nnx.update``. Cells: ``nnx.GRUCell`` (no ``b_hn``:
    a nonzero one raises), ``nnx.LSTMCell`` or ``lstm_cell="OptimizedLSTMCell"``,
    ``nnx.SimpleCell``, laid out as ``parity.layouts.NNX`` says.

    >>> sd = random_state_dict("gru", 3, 4)
    >>> torch_to_nnx(sd, "gru")
    Traceback (most recent call last):
    ...
    ValueError: bias_hh_l0[8:12] (b_hn, the bias inside r * (W_hn h + b_hn)) is nonzero, ...
    >>> sd["bias_hh_l0"][8:] = 0
    >>> sorted(torch_to_nnx(sd, "gru")[0]["cell"])
    ['dense_h', 'dense_i']
    """
    cell = spec.check_cell(cell)
    if lstm_cell not in L.NNX_LSTM_CELLS:
        raise ValueError(f"unsupported lstm_cell {lstm_cell!r}; expected one of {L.NNX_LSTM_CELLS}")
    layout = L.nnx_layout(cell, name=lstm_cell if cell == "lstm" else None)
    return _from_torch(state_dict, cell, layout, _flax_pack)


def nnx_to_torch(layers: Sequence[Mapping[str, Any]], cell: str) -> dict[str, np.ndarray]:
    """Flax NNX params, one pure-dict tree per layer (see :func:`torch_to_nnx`), to a state dict.

    The LSTM cell is read from the keys; a GRU comes back with ``b_hn = 0``.

    >>> sd = random_state_dict("rnn", 3, 4, num_layers=2)
    >>> back = nnx_to_torch(torch_to_nnx(sd, "rnn"), "rnn")
    >>> all(np.allclose(back[k], v) for k, v in canonical_torch(sd, "rnn").items())
    True
    """
    cell = spec.check_cell(cell)
    return _to_torch(
        layers, cell, flax_directions, lambda tree: L.nnx_layout(cell, tree), "nnx param tree"
    )


def canonical_torch(state_dict: Mapping[str, Any], cell: str) -> dict[str, np.ndarray]:
    """The same network with every bias that Keras and Flax sum moved onto ``bias_ih``.

    GRU: ``b_hr`` and ``b_hz`` (``b_hn`` sits inside ``r * (...)``); LSTM and simple
    RNN: all of ``bias_hh``. It is the round trip through linen, NNX, or a Keras LSTM
    or SimpleRNN (a Keras GRU keeps both bias rows).

    >>> sd = random_state_dict("lstm", 3, 4)
    >>> can = canonical_torch(sd, "lstm")
    >>> float(np.abs(can["bias_hh_l0"]).max()), bool(np.allclose(
    ...     can["bias_ih_l0"], sd["bias_ih_l0"] + sd["bias_hh_l0"]))
    (0.0, True)
    """
    back = linen_to_torch(torch_to_linen(state_dict, cell), cell)
    return {key: back[key] for key in state_dict}
