"""One recurrent network in three frameworks: weight converters and a numpy reference.

PyTorch, Keras 3 and Flax (linen and NNX) compute the same GRU, LSTM and simple RNN
up to the order of the gates, where the biases sit and how a layer is stacked. This
module states those differences exactly, carries one set of weights between the four
layouts, and runs each framework's cell equations in plain numpy (float64), so every
framework can be checked against the same reference.

The hub is PyTorch's ``state_dict`` (``weight_ih_l{k}{_reverse}``, ``weight_hh_l{k}``,
``bias_ih_l{k}``, ``bias_hh_l{k}``; the gate blocks are rows of the weight matrices).
Every other layout converts to and from it, one layer and one direction at a time:

========== ============================== ======================================
framework  GRU gate blocks                 biases
========== ============================== ======================================
PyTorch    rows ``r, z, n``               ``b_ih`` and ``b_hh``, each ``(3H,)``
Keras      columns ``z, r, h``            ``(2, 3H)``: input row, recurrent row
linen      Dense ``ir iz in hr hz hn``    on ``ir iz in`` and ``hn`` only
NNX        columns ``r, z, n``            on ``dense_i`` only (no ``b_hn``)
========== ============================== ======================================

LSTM gates are ``i, f, g, o`` everywhere (Keras calls ``g`` ``c``); Keras, linen and
NNX keep one bias per gate (torch's ``b_ih + b_hh``). The simple RNN has one block.

What is *not* the same function, and what the converters do about it:

* Keras ``GRU(reset_after=False)`` computes ``tanh(W_h x + U_h (r * h) + b_h)``: the
  reset gate before the recurrent matmul, one bias row. No PyTorch or Flax GRU
  computes that, so the converters refuse it (``ValueError`` naming ``reset_after``).
  :func:`keras_cell_step` implements it so the difference can be measured.
* NNX ``GRUCell`` has no bias on its recurrent ``dense_h``, so it has no ``b_hn``
  (the bias inside ``r * (W_hn h + b_hn)``). A PyTorch or linen GRU with a nonzero
  ``b_hn`` cannot be written as an NNX ``GRUCell``: :func:`torch_to_nnx` refuses it
  and names the key. linen's ``GRUCell`` keeps ``b_hn`` on its ``hn`` Dense layer, so
  linen is exactly PyTorch's GRU.
* PyTorch ``LSTM(proj_size>0)`` (``weight_hr_l{k}``) has no Keras or Flax cell.
* The Flax carry of an LSTM is ``(c, h)``; PyTorch and Keras hold ``(h, c)``.

Biases that a framework sums (``b_ir + b_hr`` and the like) come back from it on
``bias_ih`` with a zero ``bias_hh``: the same function, so a round trip through
linen, NNX, or a Keras LSTM or SimpleRNN returns :func:`canonical_torch` of the
original state dict (a Keras GRU keeps both bias rows and returns it unchanged).

>>> sd = random_state_dict("gru", input_size=3, hidden_size=4, seed=0)
>>> keras_weights = torch_to_keras(sd, "gru")
>>> [w.shape for w in keras_weights[0]]
[(3, 12), (4, 12), (2, 12)]
>>> x = np.random.default_rng(1).normal(size=(2, 5, 3))
>>> y_torch, h_torch = numpy_forward("torch", sd, x, cell="gru")
>>> y_keras, h_keras = numpy_forward("keras", keras_weights, x, cell="gru")
>>> bool(max_abs_diff(y_torch, y_keras) < 1e-12), h_torch.shape
(True, (1, 2, 4))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "FRAMEWORKS",
    "GATES",
    "TOLERANCE",
    "canonical_torch",
    "describe_torch",
    "flax_state_to_torch",
    "keras_cell_step",
    "keras_state_to_torch",
    "keras_to_torch",
    "learned_state_from_layers",
    "learned_state_per_layer",
    "linen_cell_step",
    "linen_to_torch",
    "max_abs_diff",
    "numpy_forward",
    "nnx_cell_step",
    "nnx_to_torch",
    "random_state_dict",
    "torch_cell_step",
    "torch_state_to_flax",
    "torch_state_to_keras",
    "torch_to_keras",
    "torch_to_linen",
    "torch_to_nnx",
]

TOLERANCE = 1e-5
"""Absolute tolerance of every cross-framework comparison, in float32.

Each gate pre-activation is a float32 dot product of at most ``input + hidden`` terms
of size O(1); the frameworks sum them in different orders (fused or split matmuls,
different BLAS kernels), so they differ by a few units of float32 rounding
(``2**-24 ~ 6e-8`` relative) per step. ``sigmoid`` and ``tanh`` have slopes <= 1 and
the recurrences here contract, so the error does not grow over a short sequence:
measured differences are ~1e-7. ``1e-5`` leaves two orders of magnitude of margin,
while a real difference (a swapped gate, a misplaced bias) shows up at ~1e-2.
"""

FRAMEWORKS = ("torch", "keras", "linen", "nnx")
"""Layouts :func:`numpy_forward` runs: PyTorch, Keras 3, Flax linen, Flax NNX."""

GATES: dict[str, dict[str, tuple[str, ...]]] = {
    "torch": {"gru": ("r", "z", "n"), "lstm": ("i", "f", "g", "o"), "rnn": ("h",)},
    "keras": {"gru": ("z", "r", "h"), "lstm": ("i", "f", "c", "o"), "rnn": ("h",)},
    "linen": {"gru": ("r", "z", "n"), "lstm": ("i", "f", "g", "o"), "rnn": ("h",)},
    "nnx": {"gru": ("r", "z", "n"), "lstm": ("i", "f", "g", "o"), "rnn": ("h",)},
}
"""Gate order of each framework's fused weight blocks, per cell."""

_NUM_GATES = {"gru": 3, "lstm": 4, "rnn": 1}
_TORCH_PARTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_NONLINEARITIES = ("tanh", "relu")
_NNX_LSTM_CELLS = ("LSTMCell", "OptimizedLSTMCell")
# PyTorch GRU blocks (r, z, n) reordered to Keras (z, r, h).
_TORCH_TO_KERAS_GRU = (1, 0, 2)

Params = dict[str, np.ndarray]
"""One direction of one layer in PyTorch's layout, keys :data:`_TORCH_PARTS`."""


# --------------------------------------------------------------------------- checks


def _check_cell(cell: object) -> str:
    if not isinstance(cell, str) or cell.lower() not in _NUM_GATES:
        raise ValueError(f"unsupported cell {cell!r}; expected one of {tuple(_NUM_GATES)}")
    return cell.lower()


def _check_nonlinearity(nonlinearity: object) -> str:
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(
            f"unsupported nonlinearity {nonlinearity!r}; expected one of {_NONLINEARITIES}"
        )
    return str(nonlinearity)


def _array(value: Any, key: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except Exception as err:  # pragma: no cover - exotic inputs
        raise ValueError(f"{key}: cannot read {type(value).__name__} as an array") from err


def _check_shape(arr: np.ndarray, expected: tuple[int, ...], key: str) -> np.ndarray:
    if arr.shape != expected:
        raise ValueError(f"{key} has shape {arr.shape}; expected {expected}")
    return arr


def _check_key(state_dict: Mapping[str, Any], key: str, shape: tuple[int, ...]) -> None:
    _check_shape(_array(state_dict[key], key), shape, key)


def _blocks(arr: np.ndarray, n: int, axis: int = 0) -> list[np.ndarray]:
    return np.split(arr, n, axis=axis)


def _suffix(layer: int, reverse: bool) -> str:
    return f"_l{layer}" + ("_reverse" if reverse else "")


def describe_torch(state_dict: Mapping[str, Any], cell: str) -> dict[str, Any]:
    """Sizes of a PyTorch ``nn.GRU``/``nn.LSTM``/``nn.RNN`` state dict, checked.

    Returns ``input_size``, ``hidden_size``, ``num_layers`` and ``bidirectional``.
    Every expected key must be there with its expected shape, and no other key: a
    missing key, a wrong shape, a ``weight_hr`` (``proj_size > 0``) or any unknown
    key raises a ``ValueError`` that names it.

    >>> describe_torch(random_state_dict("lstm", 3, 4, num_layers=2), "lstm")
    {'input_size': 3, 'hidden_size': 4, 'num_layers': 2, 'bidirectional': False}
    >>> describe_torch({"weight_ih_l0": np.zeros((12, 3))}, "gru")
    Traceback (most recent call last):
    ...
    ValueError: missing key 'weight_hh_l0' in the gru state dict
    """
    cell = _check_cell(cell)
    keys = set(state_dict)
    proj = sorted(k for k in keys if k.startswith("weight_hr_l"))
    if proj:
        raise ValueError(
            f"{proj[0]}: an LSTM with proj_size > 0 has no Keras or Flax equivalent "
            "(their LSTM cells have no projection); use proj_size=0"
        )
    if "weight_ih_l0" not in keys:
        raise ValueError(f"missing key 'weight_ih_l0' in the {cell} state dict")
    num_layers = 1 + max(
        int(k[len("weight_ih_l") :].removesuffix("_reverse"))
        for k in keys
        if k.startswith("weight_ih_l")
        and k[len("weight_ih_l") :].removesuffix("_reverse").isdigit()
    )
    bidirectional = any(k.endswith("_reverse") for k in keys)
    expected = [
        part + _suffix(layer, rev)
        for layer in range(num_layers)
        for rev in ((False, True) if bidirectional else (False,))
        for part in _TORCH_PARTS
    ]
    for key in expected:
        if key not in keys:
            raise ValueError(f"missing key {key!r} in the {cell} state dict")
    for key in sorted(keys - set(expected)):
        raise ValueError(f"unexpected key {key!r} in the {cell} state dict")
    gates = _NUM_GATES[cell]
    w_hh = _array(state_dict["weight_hh_l0"], "weight_hh_l0")
    if w_hh.ndim != 2 or w_hh.shape[0] != gates * w_hh.shape[1]:
        raise ValueError(
            f"weight_hh_l0 has shape {w_hh.shape}; a {cell} needs ({gates} * hidden, hidden)"
        )
    hidden = w_hh.shape[1]
    w_ih = _array(state_dict["weight_ih_l0"], "weight_ih_l0")
    if w_ih.ndim != 2:
        raise ValueError(f"weight_ih_l0 has shape {w_ih.shape}; expected 2 dimensions")
    input_size = w_ih.shape[1]
    directions = 2 if bidirectional else 1
    for layer in range(num_layers):
        layer_in = input_size if layer == 0 else hidden * directions
        for rev in (False, True)[:directions]:
            s = _suffix(layer, rev)
            _check_key(state_dict, "weight_ih" + s, (gates * hidden, layer_in))
            _check_key(state_dict, "weight_hh" + s, (gates * hidden, hidden))
            _check_key(state_dict, "bias_ih" + s, (gates * hidden,))
            _check_key(state_dict, "bias_hh" + s, (gates * hidden,))
    return {
        "input_size": int(input_size),
        "hidden_size": int(hidden),
        "num_layers": num_layers,
        "bidirectional": bidirectional,
    }


def _torch_direction(state_dict: Mapping[str, Any], layer: int, reverse: bool) -> Params:
    s = _suffix(layer, reverse)
    return {part: np.asarray(state_dict[part + s]) for part in _TORCH_PARTS}


def _directions(bidirectional: bool) -> tuple[bool, ...]:
    return (False, True) if bidirectional else (False,)


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
    """A PyTorch-layout state dict drawn like PyTorch draws it: ``U(-1/sqrt(H), 1/sqrt(H))``.

    All weights and biases are random, ``b_hn`` included, from ``numpy``'s generator
    with ``seed``; no framework is needed.

    >>> sd = random_state_dict("gru", 3, 4, bidirectional=True)
    >>> sorted(sd)[:4], sd["weight_ih_l0_reverse"].shape
    (['bias_hh_l0', 'bias_hh_l0_reverse', 'bias_ih_l0', 'bias_ih_l0_reverse'], (12, 3))
    """
    cell = _check_cell(cell)
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(hidden_size)
    gates = _NUM_GATES[cell]
    out: dict[str, np.ndarray] = {}
    for layer in range(num_layers):
        layer_in = input_size if layer == 0 else hidden_size * (2 if bidirectional else 1)
        for rev in _directions(bidirectional):
            s = _suffix(layer, rev)
            shapes = {
                "weight_ih": (gates * hidden_size, layer_in),
                "weight_hh": (gates * hidden_size, hidden_size),
                "bias_ih": (gates * hidden_size,),
                "bias_hh": (gates * hidden_size,),
            }
            for part, shape in shapes.items():
                out[part + s] = rng.uniform(-bound, bound, size=shape).astype(dtype)
    return out


def canonical_torch(state_dict: Mapping[str, Any], cell: str) -> dict[str, np.ndarray]:
    """The same network with every bias that Keras and Flax sum moved onto ``bias_ih``.

    GRU: ``b_hr`` and ``b_hz`` are added to ``b_ir`` and ``b_iz`` (``b_hn`` stays,
    it sits inside ``r * (...)``); LSTM and simple RNN: all of ``bias_hh`` is added
    to ``bias_ih``. This is what a round trip through linen, NNX, or a Keras LSTM or
    SimpleRNN returns (a Keras GRU keeps both bias rows).

    >>> sd = random_state_dict("lstm", 3, 4)
    >>> can = canonical_torch(sd, "lstm")
    >>> float(np.abs(can["bias_hh_l0"]).max()), bool(np.allclose(
    ...     can["bias_ih_l0"], sd["bias_ih_l0"] + sd["bias_hh_l0"]))
    (0.0, True)
    """
    cell = _check_cell(cell)
    info = describe_torch(state_dict, cell)
    out = {k: np.array(v) for k, v in state_dict.items()}
    hidden = info["hidden_size"]
    for layer in range(info["num_layers"]):
        for rev in _directions(info["bidirectional"]):
            s = _suffix(layer, rev)
            summed = 2 * hidden if cell == "gru" else out["bias_hh" + s].shape[0]
            out["bias_ih" + s][:summed] += out["bias_hh" + s][:summed]
            out["bias_hh" + s][:summed] = 0
    return out


# --------------------------------------------------------------------------- one direction


def _torch_to_keras_cell(p: Params, cell: str, reset_after: bool, use_bias: bool, where: str):
    if cell == "gru" and not reset_after:
        raise ValueError(
            "reset_after=False: that Keras GRU applies the reset gate before the recurrent "
            "matmul (W_h (r * h)) with one bias row, a different function from PyTorch's "
            "and Flax's GRU; build the Keras GRU with reset_after=True (the default)"
        )
    w_ih, w_hh, b_ih, b_hh = (p[k] for k in _TORCH_PARTS)
    if cell == "gru":
        order = _TORCH_TO_KERAS_GRU
        kernel = np.concatenate([_blocks(w_ih, 3)[i] for i in order], axis=0).T
        recurrent = np.concatenate([_blocks(w_hh, 3)[i] for i in order], axis=0).T
        bias = np.stack(
            [
                np.concatenate([_blocks(b_ih, 3)[i] for i in order]),
                np.concatenate([_blocks(b_hh, 3)[i] for i in order]),
            ]
        )
    else:
        kernel, recurrent, bias = w_ih.T, w_hh.T, b_ih + b_hh
    if not use_bias:
        for name, b in (("bias_ih", b_ih), ("bias_hh", b_hh)):
            if np.any(b != 0):
                raise ValueError(
                    f"{name}{where} is nonzero but use_bias=False: a Keras layer without "
                    "bias cannot hold it; build the Keras layer with use_bias=True"
                )
        return [np.ascontiguousarray(kernel), np.ascontiguousarray(recurrent)]
    return [np.ascontiguousarray(a) for a in (kernel, recurrent, bias)]


def _keras_to_torch_cell(weights: Sequence[Any], cell: str, where: str) -> Params:
    weights = [np.asarray(w) for w in weights]
    if len(weights) not in (2, 3):
        raise ValueError(
            f"{where}: expected [kernel, recurrent_kernel, bias] (or without bias for "
            f"use_bias=False); got {len(weights)} arrays"
        )
    kernel, recurrent = weights[0], weights[1]
    gates = _NUM_GATES[cell]
    if recurrent.ndim != 2 or recurrent.shape[1] != gates * recurrent.shape[0]:
        raise ValueError(
            f"{where} recurrent_kernel has shape {recurrent.shape}; a Keras {cell} needs "
            f"(units, {gates} * units)"
        )
    units = recurrent.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != gates * units:
        raise ValueError(
            f"{where} kernel has shape {kernel.shape}; expected (input_dim, {gates * units})"
        )
    zeros = np.zeros(gates * units, dtype=kernel.dtype)
    if len(weights) == 2:  # use_bias=False: the same cell with zero biases
        bias = np.zeros((2, 3 * units) if cell == "gru" else (gates * units,), kernel.dtype)
    else:
        bias = weights[2]
    if cell == "gru":
        if bias.shape == (3 * units,):
            raise ValueError(
                f"{where} bias has shape {bias.shape}: a GRU built with reset_after=False, "
                "which applies the reset gate before the recurrent matmul; PyTorch and Flax "
                "have no such cell. Use reset_after=True (bias shape (2, 3 * units))"
            )
        _check_shape(bias, (2, 3 * units), f"{where} bias")
        back = (1, 0, 2)  # Keras (z, r, h) -> torch (r, z, n); the swap is its own inverse
        return {
            "weight_ih": np.concatenate([_blocks(kernel.T, 3)[i] for i in back]),
            "weight_hh": np.concatenate([_blocks(recurrent.T, 3)[i] for i in back]),
            "bias_ih": np.concatenate([_blocks(bias[0], 3)[i] for i in back]),
            "bias_hh": np.concatenate([_blocks(bias[1], 3)[i] for i in back]),
        }
    _check_shape(bias, (gates * units,), f"{where} bias")
    return {
        "weight_ih": np.ascontiguousarray(kernel.T),
        "weight_hh": np.ascontiguousarray(recurrent.T),
        "bias_ih": np.array(bias),
        "bias_hh": zeros,
    }


def _torch_to_linen_cell(p: Params, cell: str) -> dict[str, Any]:
    w_ih, w_hh, b_ih, b_hh = (p[k] for k in _TORCH_PARTS)
    if cell == "rnn":
        return {"i": {"kernel": w_ih.T, "bias": b_ih + b_hh}, "h": {"kernel": w_hh.T}}
    gates = GATES["torch"][cell]
    wi, wh = _blocks(w_ih, len(gates)), _blocks(w_hh, len(gates))
    bi, bh = _blocks(b_ih, len(gates)), _blocks(b_hh, len(gates))
    out: dict[str, Any] = {}
    for g, name in enumerate(gates):
        if cell == "gru":
            if name == "n":  # b_hn stays inside r * (W_hn h + b_hn): linen's `hn` has a bias
                out["in"] = {"kernel": wi[g].T, "bias": bi[g]}
                out["hn"] = {"kernel": wh[g].T, "bias": bh[g]}
            else:
                out["i" + name] = {"kernel": wi[g].T, "bias": bi[g] + bh[g]}
                out["h" + name] = {"kernel": wh[g].T}
        else:  # LSTM: input Dense without bias, recurrent Dense with the summed bias
            out["i" + name] = {"kernel": wi[g].T}
            out["h" + name] = {"kernel": wh[g].T, "bias": bi[g] + bh[g]}
    return {k: {n: np.ascontiguousarray(a) for n, a in v.items()} for k, v in out.items()}


def _get(
    tree: Mapping[str, Any],
    path: tuple[str, ...],
    where: str,
    shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    node: Any = tree
    for i, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            raise ValueError(f"missing key {'/'.join((where, *path[: i + 1]))!r}")
        node = node[key]
    arr = np.asarray(node)
    return arr if shape is None else _check_shape(arr, shape, "/".join((where, *path)))


def _expected_leaves(framework: str, cell: str, nnx_lstm: str = "LSTMCell") -> dict[str, tuple]:
    """Param names of one Flax cell: layer name -> its leaves."""
    if framework == "nnx" and not (cell == "lstm" and nnx_lstm == "LSTMCell"):
        i_bias = cell != "lstm"
        return {
            "dense_i": ("kernel", "bias") if i_bias else ("kernel",),
            "dense_h": ("kernel",) if i_bias else ("kernel", "bias"),
        }
    if cell == "rnn":
        return {"i": ("kernel", "bias"), "h": ("kernel",)}
    if cell == "gru":
        out = {"i" + g: ("kernel", "bias") for g in "rzn"}
        out.update({"hr": ("kernel",), "hz": ("kernel",), "hn": ("kernel", "bias")})
        return out
    out = {"i" + g: ("kernel",) for g in "ifgo"}
    out.update({"h" + g: ("kernel", "bias") for g in "ifgo"})
    if framework == "nnx":
        out["if_"] = out.pop("if")
    return out


def _check_tree(params: Mapping[str, Any], expected: dict[str, tuple], where: str) -> None:
    if not isinstance(params, Mapping):
        raise ValueError(f"{where}: expected a dict of layers; got {type(params).__name__}")
    for layer, leaves in expected.items():
        for leaf in leaves:
            _get(params, (layer, leaf), where)
        extra = sorted(set(params[layer]) - set(leaves))
        if extra:
            raise ValueError(f"unexpected key {where + '/' + layer + '/' + extra[0]!r}")
    extra = sorted(set(params) - set(expected))
    if extra:
        raise ValueError(f"unexpected key {where + '/' + extra[0]!r}")


def _kernel(params: Mapping[str, Any], layer: str, where: str, rows: int | None, cols: int):
    k = _get(params, (layer, "kernel"), where)
    if k.ndim != 2 or k.shape[1] != cols or (rows is not None and k.shape[0] != rows):
        want = f"({'in' if rows is None else rows}, {cols})"
        raise ValueError(f"{where}/{layer}/kernel has shape {k.shape}; expected {want}")
    return k


def _linen_to_torch_cell(params: Mapping[str, Any], cell: str, where: str) -> Params:
    _check_tree(params, _expected_leaves("linen", cell), where)
    first = "h" if cell == "rnn" else "h" + GATES["linen"][cell][0]
    hidden = np.asarray(params[first]["kernel"]).shape[-1]
    if cell == "rnn":
        w_ih = _kernel(params, "i", where, None, hidden).T
        w_hh = _kernel(params, "h", where, hidden, hidden).T
        b = _get(params, ("i", "bias"), where, (hidden,))
        return {"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": b, "bias_hh": np.zeros_like(b)}
    wi, wh, bi, bh = [], [], [], []
    in_size = None
    for name in GATES["linen"][cell]:
        k_i = _kernel(params, "i" + name, where, in_size, hidden)
        in_size = k_i.shape[0]
        wi.append(k_i.T)
        wh.append(_kernel(params, "h" + name, where, hidden, hidden).T)
        zero = np.zeros(hidden, dtype=k_i.dtype)
        if cell == "gru":  # biases on ir, iz, in and hn
            bi.append(_get(params, ("i" + name, "bias"), where, (hidden,)))
            bh.append(_get(params, ("hn", "bias"), where, (hidden,)) if name == "n" else zero)
        else:  # LSTM: the summed bias on hi, hf, hg, ho
            bi.append(_get(params, ("h" + name, "bias"), where, (hidden,)))
            bh.append(zero)
    return {
        "weight_ih": np.concatenate(wi),
        "weight_hh": np.concatenate(wh),
        "bias_ih": np.concatenate(bi),
        "bias_hh": np.concatenate(bh),
    }


def _torch_to_nnx_cell(p: Params, cell: str, lstm_cell: str, where: str) -> dict[str, Any]:
    w_ih, w_hh, b_ih, b_hh = (p[k] for k in _TORCH_PARTS)
    if cell == "rnn":
        out = {"dense_i": {"kernel": w_ih.T, "bias": b_ih + b_hh}, "dense_h": {"kernel": w_hh.T}}
    elif cell == "gru":
        hidden = w_hh.shape[1]
        b_hn = b_hh[2 * hidden :]
        if np.any(b_hn != 0):
            raise ValueError(
                f"bias_hh{where}[{2 * hidden}:{3 * hidden}] (b_hn, the bias inside "
                "r * (W_hn h + b_hn)) is nonzero, and flax.nnx.GRUCell has no recurrent "
                "bias: it computes tanh(W_in x + b_in + r * W_hn h). Train the PyTorch GRU "
                "with b_hn fixed at zero, or use flax.linen.GRUCell, whose `hn` layer has it"
            )
        bias = np.concatenate([b_ih[: 2 * hidden] + b_hh[: 2 * hidden], b_ih[2 * hidden :]])
        out = {"dense_i": {"kernel": w_ih.T, "bias": bias}, "dense_h": {"kernel": w_hh.T}}
    elif lstm_cell == "OptimizedLSTMCell":
        out = {"dense_i": {"kernel": w_ih.T}, "dense_h": {"kernel": w_hh.T, "bias": b_ih + b_hh}}
    else:  # nnx.LSTMCell: linen's layout, with `if_` for the forget gate's input layer
        out = _torch_to_linen_cell(p, cell)
        out["if_"] = out.pop("if")
    return {k: {n: np.ascontiguousarray(a) for n, a in v.items()} for k, v in out.items()}


def _nnx_to_torch_cell(params: Mapping[str, Any], cell: str, where: str) -> Params:
    if not isinstance(params, Mapping):
        raise ValueError(f"{where}: expected a dict of layers; got {type(params).__name__}")
    if cell == "lstm" and "dense_i" not in params:  # nnx.LSTMCell: linen's layout
        _check_tree(params, _expected_leaves("nnx", cell), where)
        renamed = dict(params)
        renamed["if"] = renamed.pop("if_")
        return _linen_to_torch_cell(renamed, cell, where)
    _check_tree(params, _expected_leaves("nnx", cell, "OptimizedLSTMCell"), where)
    gates = _NUM_GATES[cell]
    hidden = np.asarray(params["dense_h"]["kernel"]).shape[0]
    k_h = _kernel(params, "dense_h", where, hidden, gates * hidden)
    k_i = _kernel(params, "dense_i", where, None, gates * hidden)
    bias_on = "dense_h" if cell == "lstm" else "dense_i"  # OptimizedLSTMCell: on dense_h
    b = _get(params, (bias_on, "bias"), where, (gates * hidden,))
    zeros = np.zeros(gates * hidden, dtype=k_h.dtype)
    return {"weight_ih": k_i.T, "weight_hh": k_h.T, "bias_ih": np.array(b), "bias_hh": zeros}


# --------------------------------------------------------------------------- whole stacks


def torch_to_keras(
    state_dict: Mapping[str, Any],
    cell: str,
    *,
    reset_after: bool = True,
    use_bias: bool = True,
) -> list[list[np.ndarray]]:
    """PyTorch ``state_dict`` to the weights of a stack of Keras layers.

    Returns one list per layer, ready for ``layer.set_weights``: ``[kernel,
    recurrent_kernel, bias]`` for a ``GRU``/``LSTM``/``SimpleRNN``; for a bidirectional
    network the forward then the backward weights, which is what a
    ``Bidirectional(..., merge_mode="concat")`` layer takes. Kernels are ``W.T``; GRU
    blocks go from torch's ``r, z, n`` to Keras's ``z, r, h`` and its bias is
    ``[b_ih; b_hh]`` (``reset_after=True``); an LSTM or simple RNN bias is
    ``b_ih + b_hh``. ``reset_after=False`` raises (a different cell), and so does
    ``use_bias=False`` unless every bias is zero.

    >>> sd = random_state_dict("gru", 3, 4, num_layers=2, bidirectional=True)
    >>> [[w.shape for w in layer] for layer in torch_to_keras(sd, "gru")][1]
    [(8, 12), (4, 12), (2, 12), (8, 12), (4, 12), (2, 12)]
    >>> torch_to_keras(sd, "gru", reset_after=False)
    Traceback (most recent call last):
    ...
    ValueError: reset_after=False: that Keras GRU applies the reset gate before ...
    """
    cell = _check_cell(cell)
    if not isinstance(reset_after, bool):
        raise ValueError(f"reset_after must be True or False; got {reset_after!r}")
    info = describe_torch(state_dict, cell)
    layers = []
    for layer in range(info["num_layers"]):
        weights: list[np.ndarray] = []
        for rev in _directions(info["bidirectional"]):
            p = _torch_direction(state_dict, layer, rev)
            weights += _torch_to_keras_cell(p, cell, reset_after, use_bias, _suffix(layer, rev))
        layers.append(weights)
    return layers


def keras_to_torch(
    layers: Sequence[Sequence[Any]], cell: str, *, bidirectional: bool | None = None
) -> dict[str, np.ndarray]:
    """Weights of a stack of Keras layers (``get_weights()`` of each) to a PyTorch ``state_dict``.

    ``bidirectional`` is read from the number of arrays per layer when not given
    (6 or 4 for a ``Bidirectional`` layer, 3 or 2 otherwise). A Keras layer without
    bias becomes zero biases; a GRU with ``reset_after=False`` (bias shape
    ``(3 * units,)``) raises.

    >>> sd = random_state_dict("lstm", 3, 4)
    >>> back = keras_to_torch(torch_to_keras(sd, "lstm"), "lstm")
    >>> bool(np.allclose(back["bias_ih_l0"], sd["bias_ih_l0"] + sd["bias_hh_l0"]))
    True
    """
    cell = _check_cell(cell)
    if isinstance(layers, np.ndarray) or not len(layers):
        raise ValueError("expected a non-empty list with one list of weights per Keras layer")
    out: dict[str, np.ndarray] = {}
    for layer, weights in enumerate(layers):
        weights = list(weights)
        bidir = len(weights) in (4, 6) if bidirectional is None else bidirectional
        per_dir = len(weights) // 2 if bidir else len(weights)
        if per_dir * (2 if bidir else 1) != len(weights):
            raise ValueError(f"layer {layer}: {len(weights)} arrays cannot be split in two")
        for d, rev in enumerate(_directions(bidir)):
            chunk = weights[d * per_dir : (d + 1) * per_dir]
            where = f"layer {layer}" + (" backward" if rev else "")
            p = _keras_to_torch_cell(chunk, cell, where)
            for part, arr in p.items():
                out[part + _suffix(layer, rev)] = arr
    describe_torch(out, cell)  # the stack must fit together (input sizes of layers > 0)
    return out


def torch_to_linen(state_dict: Mapping[str, Any], cell: str) -> list[dict[str, Any]]:
    """PyTorch ``state_dict`` to Flax linen params, one tree per layer.

    Each tree is the ``params`` collection of ``nn.RNN(cell)`` (``{"cell": ...}``) or of
    ``nn.Bidirectional(nn.RNN(cell), nn.RNN(cell))`` (``{"forward_rnn": {"cell": ...},
    "backward_rnn": {"cell": ...}}``). Cells: ``nn.GRUCell`` (Dense layers ``ir iz in``
    with bias, ``hr hz`` without, ``hn`` with ``b_hn``: exactly PyTorch's GRU),
    ``nn.LSTMCell`` or ``nn.OptimizedLSTMCell`` (the same param tree: ``ii if ig io``
    kernels, ``hi hf hg ho`` kernels and the summed bias), ``nn.SimpleCell`` (``i`` with
    the summed bias, ``h``). Kernels are ``(in, out)``, the transpose of torch's.

    >>> tree = torch_to_linen(random_state_dict("gru", 3, 4), "gru")[0]
    >>> sorted(tree["cell"]), tree["cell"]["hn"]["bias"].shape
    (['hn', 'hr', 'hz', 'in', 'ir', 'iz'], (4,))
    """
    cell = _check_cell(cell)
    info = describe_torch(state_dict, cell)
    layers = []
    for layer in range(info["num_layers"]):
        trees = [
            {"cell": _torch_to_linen_cell(_torch_direction(state_dict, layer, rev), cell)}
            for rev in _directions(info["bidirectional"])
        ]
        layers.append(
            {"forward_rnn": trees[0], "backward_rnn": trees[1]} if len(trees) == 2 else trees[0]
        )
    return layers


def _flax_to_torch(
    layers: Sequence[Mapping[str, Any]], cell: str, convert: Any, api: str
) -> dict[str, np.ndarray]:
    cell = _check_cell(cell)
    if isinstance(layers, Mapping) or not len(layers):
        raise ValueError(f"expected a non-empty list with one {api} param tree per layer")
    out: dict[str, np.ndarray] = {}
    for layer, tree in enumerate(layers):
        if "params" in tree and len(tree) == 1:
            tree = tree["params"]
        if "forward_rnn" in tree or "backward_rnn" in tree:
            parts = [(False, "forward_rnn"), (True, "backward_rnn")]
        else:
            parts = [(False, None)]
        for rev, name in parts:
            where = f"layer {layer}" + (f"/{name}" if name else "")
            sub = tree if name is None else tree.get(name)
            if sub is None:
                raise ValueError(f"missing key {where!r}")
            if "cell" not in sub:
                raise ValueError(f"missing key {where + '/cell'!r}")
            for part, arr in convert(sub["cell"], cell, where + "/cell").items():
                out[part + _suffix(layer, rev)] = arr
    describe_torch(out, cell)
    return out


def linen_to_torch(layers: Sequence[Mapping[str, Any]], cell: str) -> dict[str, np.ndarray]:
    """Flax linen params, one tree per layer (see :func:`torch_to_linen`), to a ``state_dict``.

    A tree may be wrapped in ``{"params": ...}``. Summed biases come back on
    ``bias_ih``; linen's ``hn`` bias becomes ``b_hn``.

    >>> sd = random_state_dict("gru", 3, 4)
    >>> back = linen_to_torch(torch_to_linen(sd, "gru"), "gru")
    >>> all(np.allclose(back[k], v) for k, v in canonical_torch(sd, "gru").items())
    True
    """
    return _flax_to_torch(layers, cell, _linen_to_torch_cell, "linen")


def torch_to_nnx(
    state_dict: Mapping[str, Any], cell: str, *, lstm_cell: str = "LSTMCell"
) -> list[dict[str, Any]]:
    """PyTorch ``state_dict`` to Flax NNX params, one pure-dict tree per layer.

    Each tree is ``nnx.state(layer, nnx.Param).to_pure_dict()`` of ``nnx.RNN(cell)``
    (``{"cell": ...}``) or of ``nnx.Bidirectional`` (``{"forward_rnn": {"cell": ...},
    "backward_rnn": ...}``); load it with ``state = nnx.state(layer, nnx.Param)``,
    ``nnx.replace_by_pure_dict(state, tree)`` and ``nnx.update(layer, state)``.
    Cells: ``nnx.GRUCell`` (``dense_i`` ``(in, 3H)`` with bias, ``dense_h`` ``(H, 3H)``
    *without* bias, blocks ``r, z, n``), ``nnx.LSTMCell`` (linen's layout, the forget
    gate's input layer named ``if_``) or
    ``lstm_cell="OptimizedLSTMCell"`` (``dense_i`` ``(in, 4H)``, ``dense_h`` ``(H, 4H)``
    with the summed bias), ``nnx.SimpleCell`` (``dense_i`` with bias, ``dense_h``).

    NNX's ``GRUCell`` has no ``b_hn``: a nonzero ``b_hn`` raises a ``ValueError``.

    >>> sd = random_state_dict("gru", 3, 4)
    >>> torch_to_nnx(sd, "gru")
    Traceback (most recent call last):
    ...
    ValueError: bias_hh_l0[8:12] (b_hn, the bias inside r * (W_hn h + b_hn)) is nonzero, ...
    >>> sd["bias_hh_l0"][8:] = 0
    >>> sorted(torch_to_nnx(sd, "gru")[0]["cell"])
    ['dense_h', 'dense_i']
    """
    cell = _check_cell(cell)
    if lstm_cell not in _NNX_LSTM_CELLS:
        raise ValueError(f"unsupported lstm_cell {lstm_cell!r}; expected one of {_NNX_LSTM_CELLS}")
    info = describe_torch(state_dict, cell)
    layers = []
    for layer in range(info["num_layers"]):
        trees = [
            {
                "cell": _torch_to_nnx_cell(
                    _torch_direction(state_dict, layer, rev), cell, lstm_cell, _suffix(layer, rev)
                )
            }
            for rev in _directions(info["bidirectional"])
        ]
        layers.append(
            {"forward_rnn": trees[0], "backward_rnn": trees[1]} if len(trees) == 2 else trees[0]
        )
    return layers


def nnx_to_torch(layers: Sequence[Mapping[str, Any]], cell: str) -> dict[str, np.ndarray]:
    """Flax NNX params, one pure-dict tree per layer (see :func:`torch_to_nnx`), to a state dict.

    The LSTM layout (``LSTMCell`` or ``OptimizedLSTMCell``) is read from the keys. A
    GRU comes back with ``b_hn = 0``.

    >>> sd = random_state_dict("rnn", 3, 4, num_layers=2)
    >>> back = nnx_to_torch(torch_to_nnx(sd, "rnn"), "rnn")
    >>> all(np.allclose(back[k], v) for k, v in canonical_torch(sd, "rnn").items())
    True
    """
    return _flax_to_torch(layers, cell, _nnx_to_torch_cell, "nnx")


# --------------------------------------------------------------------------- states


def _components(state: Any, cell: str) -> tuple[np.ndarray, ...]:
    if cell == "lstm":
        if not (isinstance(state, (tuple, list)) and len(state) == 2):
            raise ValueError("an LSTM state must be a pair (h, c)")
        return tuple(np.asarray(s) for s in state)
    if isinstance(state, (tuple, list)):
        if len(state) != 1:
            raise ValueError(f"a {cell} state has one component; got {len(state)}")
        state = state[0]
    return (np.asarray(state),)


def _rows(comps: tuple[np.ndarray, ...], bidirectional: bool) -> int:
    rows = comps[0].shape[0]
    d = 2 if bidirectional else 1
    if rows % d or any(c.shape[0] != rows for c in comps):
        raise ValueError(
            f"state has {rows} rows; expected num_layers * {d} rows in every component"
        )
    return rows // d


def torch_state_to_keras(
    state: Any, cell: str, *, bidirectional: bool = False
) -> list[list[np.ndarray]]:
    """A PyTorch state (``h``, or ``(h, c)``; rows ``layer * directions + direction``) to Keras.

    Returns one ``initial_state`` list per Keras layer: ``[h]`` or ``[h, c]``, and for a
    ``Bidirectional`` layer the forward states then the backward ones. Works for a
    batched state ``(rows, batch, features)`` and for learned vectors ``(rows, features)``.

    >>> h = np.arange(4.0).reshape(4, 1)  # 2 layers x 2 directions, 1 feature
    >>> torch_state_to_keras(h, "gru", bidirectional=True)
    [[array([0.]), array([1.])], [array([2.]), array([3.])]]
    """
    cell = _check_cell(cell)
    comps = _components(state, cell)
    d = 2 if bidirectional else 1
    return [
        [c[layer * d + k] for k in range(d) for c in comps]
        for layer in range(_rows(comps, bidirectional))
    ]


def keras_state_to_torch(
    states: Sequence[Sequence[Any]], cell: str, *, bidirectional: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`torch_state_to_keras`: per-layer Keras states to PyTorch's layout.

    >>> keras_state_to_torch([[np.zeros(2), np.ones(2)]], "lstm")[1]
    array([[1., 1.]])
    """
    cell = _check_cell(cell)
    n = 2 if cell == "lstm" else 1
    d = 2 if bidirectional else 1
    rows: list[list[np.ndarray]] = [[] for _ in range(n)]
    for layer, st in enumerate(states):
        st = list(st)
        if len(st) != n * d:
            raise ValueError(f"layer {layer}: {len(st)} state arrays; expected {n * d}")
        for k in range(d):
            for i in range(n):
                rows[i].append(np.asarray(st[k * n + i]))
    out = tuple(np.stack(r) for r in rows)
    return out if cell == "lstm" else out[0]


def torch_state_to_flax(state: Any, cell: str, *, bidirectional: bool = False) -> list[Any]:
    """A PyTorch state to one Flax carry per layer.

    GRU and simple RNN: ``h``; LSTM: ``(c, h)`` (Flax keeps ``c`` first); a
    bidirectional layer: ``(forward_carry, backward_carry)``, as ``nn.Bidirectional``
    takes it.

    >>> h, c = np.zeros((1, 2, 3)), np.ones((1, 2, 3))
    >>> carry = torch_state_to_flax((h, c), "lstm")[0]
    >>> float(carry[0].mean()), float(carry[1].mean())
    (1.0, 0.0)
    """
    cell = _check_cell(cell)
    comps = _components(state, cell)
    d = 2 if bidirectional else 1

    def carry(row: int) -> Any:
        return (comps[1][row], comps[0][row]) if cell == "lstm" else comps[0][row]

    out = []
    for layer in range(_rows(comps, bidirectional)):
        carries = tuple(carry(layer * d + k) for k in range(d))
        out.append(carries if bidirectional else carries[0])
    return out


def flax_state_to_torch(
    carries: Sequence[Any], cell: str, *, bidirectional: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`torch_state_to_flax`: per-layer Flax carries to PyTorch's layout.

    >>> flax_state_to_torch([(np.zeros(2), np.ones(2))], "lstm")[0]
    array([[1., 1.]])
    """
    cell = _check_cell(cell)
    hs, cs = [], []
    for layer in carries:
        for carry in layer if bidirectional else (layer,):
            if cell == "lstm":
                c, h = carry
                hs.append(np.asarray(h))
                cs.append(np.asarray(c))
            else:
                hs.append(np.asarray(carry))
    return (np.stack(hs), np.stack(cs)) if cell == "lstm" else np.stack(hs)


def learned_state_per_layer(
    learned: Any, cell: str, *, bidirectional: bool = False
) -> list[dict[str, np.ndarray]]:
    """A learned initial state in PyTorch's layout, split into one entry per layer.

    ``learned`` is ``h0`` (GRU, RNN) or ``(h0, c0)`` (LSTM), each ``(num_layers *
    directions, features)`` with row ``layer * directions + direction``: what
    ``reference_impl.torch``'s ``model.initial_state.h0`` / ``.c0`` hold. Each entry
    is ``{"h": (directions, features)}`` (plus ``"c"``), the array one layer's
    initial-state module holds in Keras (``h0``/``c0`` of
    ``InitialStateRNN.initial_state``) and in Flax (``"h"``/``"c"``), where a stack
    has one wrapper or one initial state per layer.

    >>> h0 = np.arange(8.0).reshape(4, 2)  # 2 layers x 2 directions, 2 features
    >>> learned_state_per_layer(h0, "gru", bidirectional=True)[1]["h"]
    array([[4., 5.],
           [6., 7.]])
    """
    cell = _check_cell(cell)
    comps = _components(learned, cell)
    for name, c in zip(("h0", "c0"), comps, strict=False):
        if c.ndim != 2:
            raise ValueError(f"learned {name} has shape {c.shape}; expected (rows, features)")
    d = 2 if bidirectional else 1
    layers = _rows(comps, bidirectional)
    return [
        {name: c[layer * d : (layer + 1) * d].copy() for name, c in zip("hc", comps, strict=False)}
        for layer in range(layers)
    ]


def learned_state_from_layers(
    layers: Sequence[Mapping[str, Any]], cell: str
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`learned_state_per_layer`: PyTorch's ``h0`` (or ``(h0, c0)``).

    >>> learned_state_from_layers([{"h": np.zeros((2, 3))}, {"h": np.ones((2, 3))}], "gru")[:, 0]
    array([0., 0., 1., 1.])
    """
    cell = _check_cell(cell)
    names = ("h", "c") if cell == "lstm" else ("h",)
    out = []
    for name in names:
        parts = []
        for i, layer in enumerate(layers):
            if name not in layer:
                raise ValueError(f"missing key {name!r} in the learned state of layer {i}")
            parts.append(np.asarray(layer[name]))
        out.append(np.concatenate(parts))
    return (out[0], out[1]) if cell == "lstm" else out[0]


# --------------------------------------------------------------------------- numpy cells


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # exact identity, no overflow


def _act(name: str):
    return np.tanh if name == "tanh" else (lambda v: np.maximum(v, 0.0))


def torch_cell_step(
    cell: str, p: Mapping[str, np.ndarray], x: np.ndarray, state: Any, nonlinearity: str = "tanh"
) -> Any:
    """One step of PyTorch's cell, its own equations; returns the new state.

    ``p`` holds ``weight_ih, weight_hh, bias_ih, bias_hh`` of one direction;
    ``state`` is ``h`` (GRU, RNN) or ``(h, c)`` (LSTM), each ``(batch, hidden)``.

    * GRU: ``r = s(W_ir x + b_ir + W_hr h + b_hr)``, ``z = s(W_iz x + b_iz + W_hz h + b_hz)``,
      ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.
    * LSTM: ``i, f, g, o`` from ``W_ih x + b_ih + W_hh h + b_hh``;
      ``c' = f * c + i * tanh(g)``, ``h' = o * tanh(c')``.
    * RNN: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, ``act`` = ``tanh`` or ``relu``.

    >>> p = {k: v for k, v in random_state_dict("rnn", 2, 3).items()}
    >>> p = {k[: -len("_l0")]: v for k, v in p.items()}
    >>> torch_cell_step("rnn", p, np.zeros((1, 2)), np.zeros((1, 3))).shape
    (1, 3)
    """
    cell = _check_cell(cell)
    gi = x @ p["weight_ih"].T + p["bias_ih"]
    if cell == "lstm":
        h, c = state
        i, f, g, o = _blocks(gi + h @ p["weight_hh"].T + p["bias_hh"], 4, axis=-1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        return _sigmoid(o) * np.tanh(c), c
    h = state
    gh = h @ p["weight_hh"].T + p["bias_hh"]
    if cell == "rnn":
        return _act(_check_nonlinearity(nonlinearity))(gi + gh)
    i_r, i_z, i_n = _blocks(gi, 3, axis=-1)
    h_r, h_z, h_n = _blocks(gh, 3, axis=-1)
    r, z = _sigmoid(i_r + h_r), _sigmoid(i_z + h_z)
    n = np.tanh(i_n + r * h_n)
    return (1.0 - z) * n + z * h


def keras_cell_step(
    cell: str,
    weights: Sequence[np.ndarray],
    x: np.ndarray,
    states: Sequence[np.ndarray],
    *,
    reset_after: bool = True,
    activation: str = "tanh",
) -> list[np.ndarray]:
    """One step of a Keras cell, its own equations; returns the new states list.

    ``weights`` = ``[kernel, recurrent_kernel, bias]``; ``states`` = ``[h]`` or ``[h, c]``.

    * GRU (``z, r, h`` blocks): ``z = s(x K_z + b_z + h U_z + b'_z)``, likewise ``r``;
      ``reset_after=True``: ``hh = tanh(x K_h + b_h + r * (h U_h + b'_h))`` (bias rows
      ``b`` and ``b'``); ``reset_after=False``: ``hh = tanh(x K_h + b_h + (r * h) U_h)``
      with one bias row. ``h' = z * h + (1 - z) * hh``.
    * LSTM (``i, f, c, o``): ``z = x K + h U + b``; ``c' = f * c + i * tanh(z_c)``,
      ``h' = o * tanh(c')``.
    * SimpleRNN: ``h' = act(x K + b + h U)``.

    >>> w = torch_to_keras(random_state_dict("gru", 2, 3), "gru")[0]
    >>> keras_cell_step("gru", w, np.zeros((1, 2)), [np.zeros((1, 3))])[0].shape
    (1, 3)
    """
    cell = _check_cell(cell)
    kernel, recurrent = weights[0], weights[1]
    units = recurrent.shape[0]
    bias = weights[2] if len(weights) > 2 else None
    if cell == "gru":
        (h,) = states
        if bias is None:
            b_in = b_rec = np.zeros(3 * units)
        elif reset_after:
            b_in, b_rec = bias[0], bias[1]
        else:
            b_in, b_rec = bias, np.zeros(3 * units)
        x_z, x_r, x_h = _blocks(x @ kernel + b_in, 3, axis=-1)
        if reset_after:
            r_z, r_r, r_h = _blocks(h @ recurrent + b_rec, 3, axis=-1)
            z, r = _sigmoid(x_z + r_z), _sigmoid(x_r + r_r)
            hh = np.tanh(x_h + r * r_h)
        else:
            r_z, r_r = _blocks(h @ recurrent[:, : 2 * units], 2, axis=-1)
            z, r = _sigmoid(x_z + r_z), _sigmoid(x_r + r_r)
            hh = np.tanh(x_h + (r * h) @ recurrent[:, 2 * units :])
        return [z * h + (1.0 - z) * hh]
    pre = x @ kernel + states[0] @ recurrent + (0.0 if bias is None else bias)
    if cell == "rnn":
        return [_act(_check_nonlinearity(activation))(pre)]
    h, c = states
    i, f, g, o = _blocks(pre, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    return [_sigmoid(o) * np.tanh(c), c]


def _dense(params: Mapping[str, Any], name: str, x: np.ndarray) -> np.ndarray:
    y = x @ np.asarray(params[name]["kernel"])
    return y + np.asarray(params[name]["bias"]) if "bias" in params[name] else y


def linen_cell_step(
    cell: str, params: Mapping[str, Any], carry: Any, x: np.ndarray, activation: str = "tanh"
) -> tuple[Any, np.ndarray]:
    """One step of a Flax linen cell, its own equations; returns ``(carry, output)``.

    ``params`` is the cell's param tree (``GRUCell``, ``LSTMCell``/``OptimizedLSTMCell``,
    ``SimpleCell``); the LSTM carry is ``(c, h)``.

    * GRUCell: ``r = s(ir(x) + hr(h))``, ``z = s(iz(x) + hz(h))``,
      ``n = tanh(in(x) + r * hn(h))`` (``hn`` has a bias), ``h' = (1 - z) * n + z * h``.
    * LSTMCell: ``i = s(ii(x) + hi(h))`` (bias on ``hi``), likewise ``f, g, o``.
    * SimpleCell: ``h' = act(i(x) + h(h))`` (bias on ``i``).

    >>> tree = torch_to_linen(random_state_dict("lstm", 2, 3), "lstm")[0]["cell"]
    >>> (c, h), y = linen_cell_step("lstm", tree, (np.zeros((1, 3)),) * 2, np.zeros((1, 2)))
    >>> bool(np.allclose(h, y))
    True
    """
    cell = _check_cell(cell)
    if cell == "rnn":
        h = _act(_check_nonlinearity(activation))(
            _dense(params, "i", x) + _dense(params, "h", carry)
        )
        return h, h
    if cell == "gru":
        h = carry
        r = _sigmoid(_dense(params, "ir", x) + _dense(params, "hr", h))
        z = _sigmoid(_dense(params, "iz", x) + _dense(params, "hz", h))
        n = np.tanh(_dense(params, "in", x) + r * _dense(params, "hn", h))
        h = (1.0 - z) * n + z * h
        return h, h
    c, h = carry
    pre = {g: _dense(params, "i" + g, x) + _dense(params, "h" + g, h) for g in "ifgo"}
    c = _sigmoid(pre["f"]) * c + _sigmoid(pre["i"]) * np.tanh(pre["g"])
    h = _sigmoid(pre["o"]) * np.tanh(c)
    return (c, h), h


def nnx_cell_step(
    cell: str, params: Mapping[str, Any], carry: Any, x: np.ndarray, activation: str = "tanh"
) -> tuple[Any, np.ndarray]:
    """One step of a Flax NNX cell, its own equations; returns ``(carry, output)``.

    * GRUCell: ``[xr, xz, xn] = dense_i(x)`` (with bias), ``[hr, hz, hn] = dense_h(h)``
      (*no* bias), ``n = tanh(xn + r * hn)``, ``h' = (1 - z) * n + z * h``.
    * LSTMCell: as linen (``if_`` for the forget gate's input layer);
      OptimizedLSTMCell: ``[i, f, g, o] = dense_i(x) + dense_h(h)``.
    * SimpleCell: ``h' = act(dense_i(x) + dense_h(h))``.

    >>> tree = torch_to_nnx(random_state_dict("rnn", 2, 3), "rnn")[0]["cell"]
    >>> nnx_cell_step("rnn", tree, np.zeros((1, 3)), np.zeros((1, 2)))[1].shape
    (1, 3)
    """
    cell = _check_cell(cell)
    if cell == "lstm" and "dense_i" not in params:
        renamed = dict(params)
        renamed["if"] = renamed.pop("if_")
        return linen_cell_step(cell, renamed, carry, x)
    if cell == "lstm":
        c, h = carry
        i, f, g, o = _blocks(_dense(params, "dense_i", x) + _dense(params, "dense_h", h), 4, -1)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        return (c, h), h
    if cell == "rnn":
        pre = _dense(params, "dense_i", x) + _dense(params, "dense_h", carry)
        h = _act(_check_nonlinearity(activation))(pre)
        return h, h
    h = carry
    x_r, x_z, x_n = _blocks(_dense(params, "dense_i", x), 3, axis=-1)
    h_r, h_z, h_n = _blocks(_dense(params, "dense_h", h), 3, axis=-1)
    r, z = _sigmoid(x_r + h_r), _sigmoid(x_z + h_z)
    n = np.tanh(x_n + r * h_n)
    h = (1.0 - z) * n + z * h
    return h, h


# --------------------------------------------------------------------------- numpy forward


def _scan(step: Any, carry: Any, x: np.ndarray, reverse: bool) -> tuple[Any, np.ndarray]:
    times = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    outs = [None] * x.shape[1]
    for t in times:
        carry, outs[t] = step(carry, x[:, t])
    return carry, np.stack(outs, axis=1)


def numpy_forward(
    framework: str,
    params: Any,
    x: np.ndarray,
    state: Any = None,
    *,
    cell: str,
    nonlinearity: str = "tanh",
    reset_after: bool = True,
    dtype: Any = np.float64,
) -> tuple[np.ndarray, Any]:
    """Run a whole stack in numpy with one framework's own cell equations and layout.

    ``params`` is what that framework holds: a PyTorch ``state_dict`` (``"torch"``),
    the per-layer weight lists of :func:`torch_to_keras` (``"keras"``), the per-layer
    trees of :func:`torch_to_linen` / :func:`torch_to_nnx` (``"linen"``, ``"nnx"``).
    ``x`` is ``(batch, time, features)``; ``state`` is in PyTorch's layout (rows
    ``layer * directions + direction``; ``(h, c)`` for an LSTM), zeros when ``None``.
    Returns the last layer's outputs ``(batch, time, directions * hidden)`` and the
    final state in PyTorch's layout. Computed in ``dtype`` (float64: the reference the
    float32 frameworks are measured against). ``reset_after=False`` runs Keras's other
    GRU, for showing that it differs.

    >>> sd = random_state_dict("lstm", 3, 4, num_layers=2, bidirectional=True)
    >>> x = np.random.default_rng(0).normal(size=(2, 5, 3))
    >>> y, (h, c) = numpy_forward("torch", sd, x, cell="lstm")
    >>> y.shape, h.shape, c.shape
    ((2, 5, 8), (4, 2, 4), (4, 2, 4))
    >>> y_nnx, _ = numpy_forward("nnx", torch_to_nnx(sd, "lstm"), x, cell="lstm")
    >>> bool(max_abs_diff(y, y_nnx) < 1e-6)  # NNX's summed LSTM bias is rounded to float32
    True
    """
    cell = _check_cell(cell)
    nonlinearity = _check_nonlinearity(nonlinearity)
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; expected one of {FRAMEWORKS}")
    x = np.asarray(x, dtype=dtype)
    if x.ndim != 3:
        raise ValueError(f"x must be (batch, time, features); got shape {x.shape}")

    def cast(tree: Any) -> Any:
        if isinstance(tree, Mapping):
            return {k: cast(v) for k, v in tree.items()}
        if isinstance(tree, (list, tuple)):
            return type(tree)(cast(v) for v in tree)
        return np.asarray(tree, dtype=dtype)

    # Per layer, per direction: a step function over the framework's own params.
    if framework == "torch":
        info = describe_torch(params, cell)
        bidir, num_layers, hidden = info["bidirectional"], info["num_layers"], info["hidden_size"]
        dirs = [
            [cast(_torch_direction(params, k, rev)) for rev in _directions(bidir)]
            for k in range(num_layers)
        ]
    elif framework == "keras":
        layers = [list(w) for w in params]
        bidir = len(layers[0]) in (4, 6)
        per = len(layers[0]) // (2 if bidir else 1)
        dirs = [[cast(w[d * per : (d + 1) * per]) for d in range(len(w) // per)] for w in layers]
        num_layers, hidden = len(layers), np.asarray(layers[0][1]).shape[0]
    else:
        trees = [t["params"] if "params" in t and len(t) == 1 else t for t in params]
        bidir = "forward_rnn" in trees[0]
        dirs = [
            [cast(t[n]["cell"]) for n in ("forward_rnn", "backward_rnn")]
            if bidir
            else [cast(t["cell"])]
            for t in trees
        ]
        num_layers = len(trees)
        if framework == "linen":
            key = "h" if cell == "rnn" else "h" + GATES["linen"][cell][0]
        else:
            key = "dense_h" if "dense_h" in dirs[0][0] else "hi"
        hidden = np.asarray(dirs[0][0][key]["kernel"]).shape[0]

    d = 2 if bidir else 1
    batch = x.shape[0]
    if state is None:
        zeros = np.zeros((num_layers * d, batch, hidden), dtype=dtype)
        state = (zeros, zeros) if cell == "lstm" else zeros
    comps = tuple(np.asarray(s, dtype=dtype) for s in _components(state, cell))
    for c in comps:
        _check_shape(c, (num_layers * d, batch, hidden), "state")

    finals: list[list[np.ndarray]] = [[] for _ in comps]
    inputs = x
    for layer in range(num_layers):
        outs = []
        for k in range(d):
            row = layer * d + k
            p = dirs[layer][k]
            if framework == "torch":
                init = (comps[0][row], comps[1][row]) if cell == "lstm" else comps[0][row]

                def step(s, xt, p=p):
                    s = torch_cell_step(cell, p, xt, s, nonlinearity)
                    return s, (s[0] if cell == "lstm" else s)

                final, y = _scan(step, init, inputs, reverse=k == 1)
                got = final if cell == "lstm" else (final,)
            elif framework == "keras":
                init = [c[row] for c in comps]

                def step(s, xt, p=p):
                    s = keras_cell_step(
                        cell, p, xt, s, reset_after=reset_after, activation=nonlinearity
                    )
                    return s, s[0]

                final, y = _scan(step, init, inputs, reverse=k == 1)
                got = tuple(final)
            else:
                init = (comps[1][row], comps[0][row]) if cell == "lstm" else comps[0][row]
                fn = linen_cell_step if framework == "linen" else nnx_cell_step

                def step(s, xt, p=p, fn=fn):
                    return fn(cell, p, s, xt, nonlinearity)

                final, y = _scan(step, init, inputs, reverse=k == 1)
                got = (final[1], final[0]) if cell == "lstm" else (final,)
            outs.append(y)
            for i, g in enumerate(got):
                finals[i].append(g)
        inputs = np.concatenate(outs, axis=-1)
    result = tuple(np.stack(f) for f in finals)
    return inputs, (result if cell == "lstm" else result[0])


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between two arrays or two equal-length tuples of arrays.

    >>> max_abs_diff((np.zeros(2), np.ones(2)), (np.zeros(2), np.full(2, 1.5)))
    0.5
    """
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        if not (isinstance(a, (tuple, list)) and isinstance(b, (tuple, list))) or len(a) != len(b):
            raise ValueError("compare an array with an array, or tuples of equal length")
        return max((max_abs_diff(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0
