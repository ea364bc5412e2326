"""Clear errors when a framework module is imported without its framework.

``from reference_impl import tensorflow`` on a machine without Keras should say which
extra to install, not only ``No module named 'keras'``.
"""

from __future__ import annotations

# module of this package -> (what it needs, the extras that install it)
_NEEDS = {
    "reference_impl.torch": ("PyTorch", ('"initial-states[torch]"',)),
    "reference_impl.tensorflow": (
        "Keras 3",
        (
            '"initial-states[tensorflow]" (Keras on TensorFlow)',
            '"initial-states[keras]" (Keras alone, for its JAX or PyTorch backend)',
        ),
    ),
    "reference_impl.flax.linen": ("JAX and Flax", ('"initial-states[flax]"',)),
    "reference_impl.flax.nnx": ("JAX and Flax", ('"initial-states[flax]"',)),
}


def missing_framework(module: str, error: ModuleNotFoundError) -> ModuleNotFoundError:
    """The error to raise from ``module`` when importing its framework failed.

    >>> err = missing_framework("reference_impl.torch", ModuleNotFoundError(name="torch"))
    >>> print(err)  # doctest: +NORMALIZE_WHITESPACE
    reference_impl.torch needs PyTorch: module 'torch' is not installed.
    Install it with: pip install "initial-states[torch]"
    >>> err.name
    'torch'
    """
    what, extras = _NEEDS[module]
    how = " or ".join(f"pip install {extra}" for extra in extras)
    message = (
        f"{module} needs {what}: module {error.name!r} is not installed. Install it with: {how}"
    )
    return ModuleNotFoundError(message, name=error.name)
