"""Each framework's recurrent cells written out in numpy, and whole stacks run with them.

Every ``*_cell_step`` is one framework's own equations over that framework's own
parameters, so that two frameworks agree here only if their layouts really hold the
same network. :func:`numpy_forward` runs a stack (layers, directions) in float64.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from reference_impl import spec
from reference_impl.parity import layouts as L
from reference_impl.parity.converters import (
    check_shape,
    describe_torch,
    directions,
    flax_directions,
    random_state_dict,  # noqa: F401  (doctests)
    torch_direction,
    torch_to_keras,  # noqa: F401  (doctests)
    torch_to_linen,  # noqa: F401  (doctests)
    torch_to_nnx,  # noqa: F401  (doctests)
)
from reference_impl.parity.states import components


def _check_nonlinearity(nonlinearity: object) -> str:
    if nonlinearity not in L.NONLINEARITIES:
        raise ValueError(
            f"unsupported nonlinearity {nonlinearity!r}; expected one of {L.NONLINEARITIES}"
        )
    return str(nonlinearity)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # exact identity, no overflow


def _act(name: str):
    return np.tanh if _check_nonlinearity(name) == "tanh" else (lambda v: np.maximum(v, 0.0))


def _lstm_update(i, f, g, o, c):
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    return _sigmoid(o) * np.tanh(c), c


def _gru_update(x_r, x_z, x_n, h_r, h_z, h_n, h):
    r, z = _sigmoid(x_r + h_r), _sigmoid(x_z + h_z)
    return (1.0 - z) * np.tanh(x_n + r * h_n) + z * h


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
    cell = spec.check_cell(cell)
    gi = x @ p["weight_ih"].T + p["bias_ih"]
    if cell == "lstm":
        h, c = state
        return _lstm_update(*np.split(gi + h @ p["weight_hh"].T + p["bias_hh"], 4, axis=-1), c)
    gh = state @ p["weight_hh"].T + p["bias_hh"]
    if cell == "rnn":
        return _act(nonlinearity)(gi + gh)
    return _gru_update(*np.split(gi, 3, axis=-1), *np.split(gh, 3, axis=-1), state)


def _keras_gru(x, h, kernel, recurrent, bias, reset_after: bool) -> np.ndarray:
    units = recurrent.shape[0]
    if bias is None:
        b_in = b_rec = np.zeros(3 * units)
    elif reset_after:
        b_in, b_rec = bias[0], bias[1]
    else:
        b_in, b_rec = bias, np.zeros(3 * units)
    x_z, x_r, x_h = np.split(x @ kernel + b_in, 3, axis=-1)
    if reset_after:
        r_z, r_r, r_h = np.split(h @ recurrent + b_rec, 3, axis=-1)
        return _gru_update(x_r, x_z, x_h, r_r, r_z, r_h, h)
    r_z, r_r = np.split(h @ recurrent[:, : 2 * units], 2, axis=-1)
    z, r = _sigmoid(x_z + r_z), _sigmoid(x_r + r_r)
    return z * h + (1.0 - z) * np.tanh(x_h + (r * h) @ recurrent[:, 2 * units :])


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
    cell = spec.check_cell(cell)
    kernel, recurrent = weights[0], weights[1]
    bias = weights[2] if len(weights) > 2 else None
    if cell == "gru":
        return [_keras_gru(x, states[0], kernel, recurrent, bias, reset_after)]
    pre = x @ kernel + states[0] @ recurrent + (0.0 if bias is None else bias)
    if cell == "rnn":
        return [_act(activation)(pre)]
    return list(_lstm_update(*np.split(pre, 4, axis=-1), states[1]))


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
    cell = spec.check_cell(cell)
    if cell == "rnn":
        h = _act(activation)(_dense(params, "i", x) + _dense(params, "h", carry))
        return h, h
    if cell == "gru":
        dense = [_dense(params, side + g, v) for side, v in (("i", x), ("h", carry)) for g in "rzn"]
        h = _gru_update(*dense, carry)
        return h, h
    c, h = carry
    pre = {g: _dense(params, "i" + g, x) + _dense(params, "h" + g, h) for g in "ifgo"}
    h, c = _lstm_update(pre["i"], pre["f"], pre["g"], pre["o"], c)
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
    cell = spec.check_cell(cell)
    if cell == "lstm" and "dense_i" not in params:
        renamed = dict(params)
        renamed["if"] = renamed.pop("if_")
        return linen_cell_step(cell, renamed, carry, x)
    if cell == "lstm":
        c, h = carry
        pre = _dense(params, "dense_i", x) + _dense(params, "dense_h", h)
        h, c = _lstm_update(*np.split(pre, 4, axis=-1), c)
        return (c, h), h
    if cell == "rnn":
        h = _act(activation)(_dense(params, "dense_i", x) + _dense(params, "dense_h", carry))
        return h, h
    x_i, x_h = _dense(params, "dense_i", x), _dense(params, "dense_h", carry)
    h = _gru_update(*np.split(x_i, 3, axis=-1), *np.split(x_h, 3, axis=-1), carry)
    return h, h


# --------------------------------------------------------------------------- whole stacks

_STEPS = {  # (cell, params, state, x_t, options) -> the new state, in each framework's layout
    "torch": lambda cell, p, s, x, o: torch_cell_step(cell, p, x, s, o["nonlinearity"]),
    "keras": lambda cell, p, s, x, o: keras_cell_step(
        cell, p, x, s, reset_after=o["reset_after"], activation=o["nonlinearity"]
    ),
    "linen": lambda cell, p, s, x, o: linen_cell_step(cell, p, s, x, o["nonlinearity"])[0],
    "nnx": lambda cell, p, s, x, o: nnx_cell_step(cell, p, s, x, o["nonlinearity"])[0],
}


def _torch_stack(params: Any, cell: str) -> tuple[list[list[Any]], int]:
    info = describe_torch(params, cell)
    dirs = [
        [torch_direction(params, layer, rev) for rev in directions(info["bidirectional"])]
        for layer in range(info["num_layers"])
    ]
    return dirs, info["hidden_size"]


def _keras_stack(params: Any, cell: str) -> tuple[list[list[Any]], int]:
    layers = [list(w) for w in params]
    per = len(layers[0]) // (2 if len(layers[0]) in (4, 6) else 1)
    dirs = [[w[d * per : (d + 1) * per] for d in range(len(w) // per)] for w in layers]
    return dirs, np.asarray(layers[0][1]).shape[0]


def _flax_stack(params: Any, cell: str, layout_of: Any) -> tuple[list[list[Any]], int]:
    dirs = [[tree for _, _, tree in flax_directions(t, k)] for k, t in enumerate(params)]
    layer, leaf = L.first(layout_of(dirs[0][0]), "weight_hh")[0]
    return dirs, np.asarray(dirs[0][0][layer][leaf]).shape[0]


_STACKS = {
    "torch": _torch_stack,
    "keras": _keras_stack,
    "linen": lambda params, cell: _flax_stack(params, cell, lambda tree: L.LINEN[cell]),
    "nnx": lambda params, cell: _flax_stack(params, cell, lambda t: L.nnx_layout(cell, t)),
}


def _cast(tree: Any, dtype: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _cast(v, dtype) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_cast(v, dtype) for v in tree)
    return np.asarray(tree, dtype=dtype)


def _initial(state: Any, cell: str, shapes: tuple, dtype: Any) -> dict[str, Any]:
    """The initial state by component name, zeros when ``None``; shapes from the spec."""
    names = L.components(cell)
    if state is None:
        return {n: np.zeros(shape, dtype=dtype) for n, shape in zip(names, shapes, strict=True)}
    given = zip(names, components(state, cell), shapes, strict=True)
    return {name: check_shape(np.asarray(c, dtype), shape, "state") for name, c, shape in given}


def _run_direction(framework, cell, p, init, x, reverse, options) -> tuple[dict, np.ndarray]:
    layout, step = L.STATES[framework], _STEPS[framework]
    state, outs = layout.pack(init), [None] * x.shape[1]
    for t in reversed(range(x.shape[1])) if reverse else range(x.shape[1]):
        state = step(cell, p, state, x[:, t], options)
        outs[t] = layout.unpack(state, cell)["h"]
    return layout.unpack(state, cell), np.stack(outs, axis=1)


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
    cell = spec.check_cell(cell)
    options = {"nonlinearity": _check_nonlinearity(nonlinearity), "reset_after": reset_after}
    if framework not in L.FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; expected one of {L.FRAMEWORKS}")
    x = np.asarray(x, dtype=dtype)
    if x.ndim != 3:
        raise ValueError(f"x must be (batch, time, features); got shape {x.shape}")
    dirs, hidden = _STACKS[framework](params, cell)
    d = len(dirs[0])
    sizes = {"hidden_size": hidden, "batch_size": x.shape[0], "num_layers": len(dirs)}
    comps = _initial(state, cell, spec.state_shapes(cell, **sizes, bidirectional=d == 2), dtype)
    finals: dict[str, list[np.ndarray]] = {name: [] for name in comps}
    inputs = x
    for layer, per_direction in enumerate(dirs):
        outs = []
        for k, p in enumerate(per_direction):
            init = {name: c[layer * d + k] for name, c in comps.items()}
            final, y = _run_direction(
                framework, cell, _cast(p, dtype), init, inputs, k == 1, options
            )
            outs.append(y)
            for name in finals:
                finals[name].append(final[name])
        inputs = np.concatenate(outs, axis=-1)
    result = tuple(np.stack(finals[name]) for name in L.components(cell))
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
