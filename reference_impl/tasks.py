"""Small, generated sequence tasks for the chapters (numpy only, no downloads).

Every task returns float32 arrays in the batch-first layout ``(batch, time, features)``
so any framework can take them, and is fully determined by its seed.
"""

from __future__ import annotations

import numpy as np

from reference_impl.spec import check_positive_int


def leaky_integrator(
    num_sequences: int,
    steps: int = 20,
    *,
    decay: float = 0.8,
    start: float = 2.0,
    start_spread: float = 0.0,
    input_scale: float = 0.5,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets of ``y_t = decay * y_{t-1} + x_t`` with ``y_{-1} = start``.

    The target depends on a value the network never sees: where the process was
    before the first input (``start``, plus ``N(0, start_spread^2)`` per sequence).
    Its influence fades like ``decay**t``: the early steps are exactly where the
    initial state matters, and with ``start=0`` the zero state is already right.

    >>> x, y = leaky_integrator(4, 6, seed=0)
    >>> x.shape, y.shape, x.dtype
    ((4, 6, 1), (4, 6, 1), dtype('float32'))
    >>> bool(np.allclose(y[:, 0], 0.8 * 2.0 + x[:, 0]))
    True
    """
    check_positive_int("num_sequences", num_sequences)
    check_positive_int("steps", steps)
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1) so the process stays bounded; got {decay!r}")
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, input_scale, size=(num_sequences, steps, 1))
    y = np.empty_like(x)
    prev = start + start_spread * rng.standard_normal((num_sequences, 1))
    for t in range(steps):
        prev = decay * prev + x[:, t]
        y[:, t] = prev
    return x.astype(np.float32), y.astype(np.float32)


def per_step_mse(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Mean squared error at each time step, averaged over batch and features.

    >>> per_step_mse(np.ones((2, 3, 1)), np.zeros((2, 3, 1)))
    array([1., 1., 1.])
    """
    prediction, target = np.asarray(prediction), np.asarray(target)
    if prediction.shape != target.shape:
        raise ValueError(f"shapes differ: prediction {prediction.shape}, target {target.shape}")
    if prediction.ndim != 3:
        raise ValueError(f"expected (batch, time, features) arrays; got {prediction.shape}")
    return ((prediction - target) ** 2).mean(axis=(0, 2)).astype(np.float64)
