"""genlab: a research framework for deep generative models."""

__version__ = "0.1.0"
