"""The simple baseline: the model's image-caption cosine similarity of each pair.

With `direction: low` (the default) a pair whose image and caption the model finds dissimilar is
suspicious, the rule behind CLIPScore data filtering and SafeCLIP's risky set; `direction: high`
flags the pairs the model aligns most, which is what a learned backdoor does to its own pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from cleanbench.detectors.base import DetectionContext, Detector
from cleanbench.errors import UsageError


@dataclass
class CosineOptions:
    """direction: `low` (low similarity is suspicious) or `high` (high similarity is suspicious)."""

    direction: str = "low"


class CosineSimilarity(Detector):
    """Image-caption cosine similarity of each pair under the poisoned model."""

    name = "cosine"
    description = "Image-caption cosine similarity under the model (low = suspicious by default)"
    source = "baseline (CLIPScore-style filtering: Hessel et al., EMNLP 2021)"
    Options: ClassVar[type] = CosineOptions
    DIRECTIONS: ClassVar[tuple[str, ...]] = ("low", "high")

    def __init__(self, options: CosineOptions) -> None:
        super().__init__(options)
        if options.direction not in self.DIRECTIONS:
            raise UsageError(f"detector 'cosine': direction {options.direction!r} is not one of "
                             f"{', '.join(self.DIRECTIONS)}; e.g. --detector-opt direction=low")

    def score(self, context: DetectionContext) -> np.ndarray:
        embeddings = context.embeddings()
        similarity = torch.nn.functional.cosine_similarity(embeddings.images.double(), embeddings.texts.double(), dim=1)
        sign = -1.0 if self.options.direction == "low" else 1.0
        return context.per_pair(embeddings.rows, sign * similarity.numpy())
