"""Compare a re-executed notebook output with its stored copy, up to CPU rounding.

The chapters are executed by whatever machine builds or tests the book. The same code,
seeds and package versions give float32 results that differ in their last bits from one
CPU to another (the BLAS and the frameworks' kernels take other paths with AVX-512 than
with AVX2), so nbval's exact comparison fails on any machine but the one that stored
the outputs. Two texts match here when they are equal once their numbers are set aside
and each pair of numbers agrees:

- an integer (no point, no exponent) exactly: counts stay exact;
- a number printed with decimals to one unit in its last printed digit, or to a
  relative 1e-5 (the full-precision floats that ``myst_nb.glue`` stores).

Figures stored by ``glue`` are images and skipped, as nbval skips images.
``notebooks/conftest.py`` applies this to nbval's comparison.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
RELATIVE = 1e-5
SKIP = ("application/papermill.record/image/png",)


def _last_digit(text: str) -> float:
    mantissa, _, exponent = text.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def _close(a: str, b: str) -> bool:
    if a == b:
        return True
    if not any(c in a + b for c in ".eE"):  # integers: exactly
        return False
    x, y = float(a), float(b)
    tolerance = max(_last_digit(a), _last_digit(b)) * (1 + 1e-9)
    return abs(x - y) <= max(tolerance, RELATIVE * max(abs(x), abs(y)))


def same_up_to_rounding(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are the same text with numbers that agree (see above)."""
    if a == b:
        return True
    if NUMBER.split(a) != NUMBER.split(b):
        return False
    pairs = zip(NUMBER.findall(a), NUMBER.findall(b), strict=True)
    return all(_close(x, y) for x, y in pairs)


def align(test: list, ref: list, sanitize: Callable[[str], str] = lambda s: s) -> list:
    """A copy of the stored outputs ``ref`` in which each text that matches the
    re-executed one up to rounding (after ``sanitize``) is replaced by it, so an exact
    comparison passes for it and fails, as before, for everything else."""
    ref = copy.deepcopy(ref)
    for new, old in zip(test, ref, strict=False):
        if new.get("output_type") != old.get("output_type"):
            continue
        _align_text(new, old, "text", sanitize)
        for key in set(new.get("data", {})) & set(old.get("data", {})):
            _align_text(new["data"], old["data"], key, sanitize)
    return ref


def _align_text(new: Any, old: Any, key: str, sanitize: Callable[[str], str]) -> None:
    a, b = new.get(key), old.get(key)
    if isinstance(a, str) and isinstance(b, str) and a != b:
        if same_up_to_rounding(sanitize(a), sanitize(b)):
            old[key] = a
