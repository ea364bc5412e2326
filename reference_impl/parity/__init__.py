"""One recurrent network in three frameworks: weight converters and a numpy reference.

PyTorch, Keras 3 and Flax (linen and NNX) compute the same GRU, LSTM and simple RNN
up to the order of the gates, where the biases sit and how a layer is stacked. This
package states those differences exactly (as data, in ``parity.layouts``), carries one
set of weights between the four layouts (``parity.converters``), and runs each
framework's cell equations in plain numpy (float64, ``parity.cells``), so every
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

Biases a framework sums come back on ``bias_ih`` with a zero ``bias_hh``: a round trip
returns :func:`canonical_torch` of the original (a Keras GRU, with both rows, returns it).

>>> import numpy as np
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

from reference_impl.parity import layouts as _layouts
from reference_impl.parity.cells import (
    keras_cell_step,
    linen_cell_step,
    max_abs_diff,
    nnx_cell_step,
    numpy_forward,
    torch_cell_step,
)
from reference_impl.parity.converters import (
    canonical_torch,
    describe_torch,
    keras_to_torch,
    linen_to_torch,
    nnx_to_torch,
    random_state_dict,
    torch_to_keras,
    torch_to_linen,
    torch_to_nnx,
)
from reference_impl.parity.layouts import GATES
from reference_impl.parity.states import (
    flax_state_to_torch,
    keras_state_to_torch,
    learned_state_from_layers,
    learned_state_per_layer,
    torch_state_to_flax,
    torch_state_to_keras,
)

# fmt: off
__all__ = [
    "FRAMEWORKS", "GATES", "TOLERANCE", "canonical_torch", "describe_torch",
    "flax_state_to_torch", "keras_cell_step", "keras_state_to_torch", "keras_to_torch",
    "learned_state_from_layers", "learned_state_per_layer", "linen_cell_step", "linen_to_torch",
    "max_abs_diff", "numpy_forward", "nnx_cell_step", "nnx_to_torch", "random_state_dict",
    "torch_cell_step", "torch_state_to_flax", "torch_state_to_keras", "torch_to_keras",
    "torch_to_linen", "torch_to_nnx",
]
# fmt: on

TOLERANCE = 1e-5
"""Absolute tolerance of every cross-framework comparison, in float32.

Each gate pre-activation is a float32 sum of products of size at most about 1: the
layer's inputs (``2 * hidden`` of them in a second bidirectional layer) plus ``hidden``
recurrent ones. The frameworks add them in different orders (fused or split matmuls,
different BLAS kernels), so each step differs by a few float32 roundings
(``2**-24 ~ 6e-8`` relative). ``sigmoid`` and ``tanh`` have slopes <= 1, so the gates
do not amplify a rounding error; over the short sequences of the tests and of the
chapter "One GRU, three frameworks" the differences stay under ``1e-6``, a tenth of
``1e-5``. A real difference (a swapped gate, a misplaced bias) is of order ``1e-1``
there.
"""

FRAMEWORKS = _layouts.FRAMEWORKS
"""The layouts that :func:`numpy_forward` runs (PyTorch, Keras 3, Flax linen and Flax NNX)."""
