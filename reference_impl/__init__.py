"""Initial states for recurrent networks: zero, uniform, Xavier, learnable, noisy.

One package per framework, the same names in each::

    from reference_impl import torch as ri              # PyTorch
    from reference_impl import tensorflow as ri         # Keras 3 on TensorFlow
    from reference_impl.flax import linen as ri         # Flax linen
    from reference_impl.flax import nnx as ri           # Flax NNX

Importing ``reference_impl`` itself loads no framework; :mod:`reference_impl.spec`
holds the framework-neutral definition every module is tested against.

>>> import reference_impl
>>> reference_impl.STRATEGIES
('zero', 'uniform', 'xavier', 'learnable', 'noisy')
"""

__version__ = "0.1.0"
STRATEGIES = ("zero", "uniform", "xavier", "learnable", "noisy")
__all__ = ["STRATEGIES", "__version__"]
