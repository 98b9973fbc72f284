"""Detectors: the `Detector` base class and the built-in detectors (see `cleanbench list detectors`)."""

from cleanbench.detectors.base import DetectionContext, Detector, PairEmbeddings

__all__ = ["DetectionContext", "Detector", "PairEmbeddings"]
