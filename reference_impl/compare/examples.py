"""Two small data sets whose answer is known, for trying :func:`reference_impl.compare.run`.

Both are the leaky integrator ``s_t = 0.8 s_(t-1) + x_t`` observed at every step
(``y_t = s_t``), with inputs ``x_t ~ N(0, 0.5^2)``; only the state before the first
input differs:

- :func:`constant_start`: every sequence starts from the same level (3.0, several
  stationary spreads away from 0). One vector is the optimal start, so a learnable
  start must beat zeros on the first steps.
- :func:`forgotten_start`: every sequence starts from its own random level, forgotten
  within a few dozen steps; counted on the last steps only (``steps="last:k"``,
  ``loss_steps="last:k"``), nothing about the start can matter.

>>> x, y = constant_start(8, 10)
>>> x.shape, y.shape, round(float(y[:, 0].mean() - x[:, 0].mean()), 6)
((8, 10, 1), (8, 10, 1), 2.4)
"""

from __future__ import annotations

import numpy as np

from reference_impl.tasks import leaky_integrator


def integrator(
    n: int, steps: int, start_mean: float, start_sd: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences of ``steps`` inputs and states, arrays ``(n, steps, 1)``: the book's
    leaky integrator (:func:`reference_impl.tasks.leaky_integrator`, decay 0.8) whose start
    is drawn from N(``start_mean``, ``start_sd`` squared)."""
    return leaky_integrator(n, steps, decay=0.8, start=start_mean, start_spread=start_sd, seed=seed)


def constant_start(
    n: int = 192, steps: int = 20, level: float = 3.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Sequences that all start from ``level``: a learnable start must win early on."""
    return integrator(n, steps, level, 0.0, seed)


def forgotten_start(
    n: int = 192, steps: int = 60, spread: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Sequences that start from N(0, ``spread`` squared): the start is forgotten late on."""
    return integrator(n, steps, 0.0, spread, seed)


__all__ = ["constant_start", "forgotten_start", "integrator"]
