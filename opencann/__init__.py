"""opencann: an open Compute Architecture for Neural Networks."""
__version__ = "0.1.0"
