"""genai: train, sample, evaluate and export image generative models."""

__version__ = "0.1.0"
