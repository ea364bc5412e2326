"""Initial states for Flax recurrent layers, in both Flax APIs.

``from reference_impl.flax import linen as ri`` for Flax linen and
``from reference_impl.flax import nnx as ri_nnx`` for Flax NNX. Both modules have the
same three names as every other framework module of the package: ``InitialState``,
``InitialStateRNN`` and ``NoisyCell``.

Importing this package imports no framework: JAX and Flax are imported only when
:mod:`reference_impl.flax.linen` or :mod:`reference_impl.flax.nnx` is.

>>> import reference_impl.flax
>>> reference_impl.flax.__all__
['linen', 'nnx']
"""

__all__ = ["linen", "nnx"]
