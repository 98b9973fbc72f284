"""The detector contract: score every pretraining pair, given the model trained on them.

A detector declares its name, description, source and hyper-parameters (an `Options` dataclass),
and returns one score per pair from `score`; a higher score means "more likely poisoned". It sees
the poisoned pairs as the model saw them and the model itself, through `DetectionContext`, never
which pairs are poisoned: the benchmark compares the scores with the recorded poison indices.

Most detectors work on the model's embeddings of the pairs; `DetectionContext.embeddings()`
computes them once (in order, unnormalised: the projected outputs) and shares them between the
detectors of one command.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from cleanbench.data.base import PairSet
from cleanbench.data.batches import Batches

if TYPE_CHECKING:  # annotations only: listing detectors imports no open_clip
    from cleanbench.models import ModelBundle


@dataclass(frozen=True)
class PairEmbeddings:
    """The model's image and caption embeddings of the pairs, row i of each belonging to pair `rows[i]`.

    `rows` is every pair in order, except pairs whose image could not be read from file (a CSV
    with `on_bad_image: skip`). Embeddings are the towers' projected outputs, not normalised.
    """

    images: torch.Tensor
    texts: torch.Tensor
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class DetectionContext:
    """What a detector may use: the model, the pairs it was trained on, the device, a seed, and the
    pairs' embeddings (computed on first use, then shared; `embedding_seconds` is what that took)."""

    bundle: ModelBundle
    pairs: PairSet
    device: torch.device
    seed: int
    progress: bool = True
    batch_size: int = 512
    embedding_seconds: float = 0.0
    _embeddings: PairEmbeddings | None = field(default=None, init=False, repr=False)

    def embeddings(self) -> PairEmbeddings:
        """The image and caption embeddings of every pair (cached after the first call)."""
        if self._embeddings is None:
            start = time.perf_counter()
            self._embeddings = embed_pairs(self.bundle, self.pairs, self.device, self.batch_size, self.progress)
            self.embedding_seconds = time.perf_counter() - start
        return self._embeddings

    def per_pair(self, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Scores of `rows` spread over all pairs (float64), NaN for the pairs that have none."""
        scores = np.full(len(self.pairs), np.nan)
        scores[rows] = values
        return scores


@torch.no_grad()
def embed_pairs(bundle: ModelBundle, pairs: PairSet, device: torch.device, batch_size: int = 512,
                progress: bool = True) -> PairEmbeddings:
    """Embed every pair's image and caption with the model in eval mode, in order, on `device`."""
    model = bundle.model.eval()
    tokens = bundle.tokenizer(pairs.captions)
    images, texts, rows = [], [], []
    with tqdm(total=len(pairs), desc="embed pairs", unit="pair", disable=not progress, leave=False) as bar:
        for batch in Batches({"images": pairs.images.to(device), "tokens": tokens}, batch_size).in_order():
            images.append(model.encode_image(bundle.model_input(batch["images"].to(device))).float().cpu())
            texts.append(model.encode_text(batch["tokens"].to(device)).float().cpu())
            rows.append(batch["index"].cpu())
            bar.update(len(batch["index"]))
    return PairEmbeddings(torch.cat(images), torch.cat(texts), torch.cat(rows).numpy())


class Detector(ABC):
    """Base class of detectors; subclasses set the class attributes and implement `score`.

    `name`, `description` and `source` (paper or author) are shown by `cleanbench list detectors`;
    `Options` is a dataclass of hyper-parameters with defaults (`--detector-opt KEY=VALUE`);
    `version` is part of the detection card's key, so bump it when the scores change.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    source: ClassVar[str]
    Options: ClassVar[type]
    version: ClassVar[str] = "1"

    def __init__(self, options: Any) -> None:
        self.options = options

    @abstractmethod
    def score(self, context: DetectionContext) -> np.ndarray:
        """One score per pair of `context.pairs` (float64); higher = more suspicious.

        NaN marks a pair that could not be scored (its image was unreadable); every other score
        must be finite."""

    def describe(self) -> dict[str, Any]:
        """Options and version, for the detection card."""
        return {"options": asdict(self.options), "version": self.version}
