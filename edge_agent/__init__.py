"""The edge agent: serves signed model packages over the Open Inference Protocol v2."""

__version__ = "0.1.0"
