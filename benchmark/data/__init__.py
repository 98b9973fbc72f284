"""Data: containers, the embedded procedural dataset, and loaders for real data."""

from cleanbench.data.base import BenchmarkData, ClassificationSet, PairSet
from cleanbench.data.embedded import load_embedded

__all__ = ["BenchmarkData", "ClassificationSet", "PairSet", "load_embedded"]
