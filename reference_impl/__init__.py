"""Initial states for recurrent networks."""
__version__ = "0.1.0"
STRATEGIES = ("zero", "uniform", "xavier", "learnable", "noisy")
