"""Local-outlier detectors on the model's embeddings: k-distance, SLOF and DAO (Huang et al., ICLR 2025).

Each pair is scored by its image embedding (the projected output, not normalised) against a
reference set: the image *and* caption embeddings of a random batch of pairs that holds it, by
Euclidean distance, the query itself left out. Batches are drawn from the run's seed. With d_j(x)
the distance from x to its j-th nearest reference and N_k(x) its k nearest references:

- k-distance:  d_k(x)
- SLOF:        (1/k) * sum_{o in N_k(x)} d_k(x) / d_k(o)
- DAO:         (1/k) * sum_{o in N_k(x)} (d_k(x) / d_k(o)) ** LID(o),
               LID(o) = -k / sum_{i<=k} log(d_i(o) / d_k(o))   (maximum-likelihood estimate)

d_k(o) and LID(o) of a reference o are taken within the same batch. DAO is returned as log DAO
(computed with logsumexp; the ranking, and every metric, is that of DAO itself), because the powers
overflow float64 for outlying points. `form: log-mean` gives the variant of the authors' released
code, mean_o LID(o) * log(d_k(x) / d_k(o)).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from cleanbench.detectors.base import DetectionContext, Detector
from cleanbench.errors import UsageError
from cleanbench.seeding import derive_seed

DISTANCE_FLOOR = 1e-6
"""Distances are floored at this fraction of the batch's mean pairwise distance, so that identical
embeddings (repeated captions) give finite ratios and LIDs instead of 0/0."""

HUANG = "Huang et al., Detecting Backdoor Samples in Contrastive Language Image Pretraining, ICLR 2025"


@dataclass
class NeighbourhoodOptions:
    """k: neighbours; batch_size: pairs per reference batch (the references are their images and
    captions, twice as many); the paper's values are k = 16 and 2,048 pairs."""

    k: int = 16
    batch_size: int = 2048


@dataclass(frozen=True)
class Neighbourhoods:
    """The k nearest references of every reference of one batch; the first `queries` are its images."""

    distances: torch.Tensor  # (M, k) float64, ascending: d_1 .. d_k
    indices: torch.Tensor  # (M, k) long, into the batch's references
    queries: int
    dimension: int  # of the embeddings

    @property
    def k_distance(self) -> torch.Tensor:
        """d_k of every reference."""
        return self.distances[:, -1]


def reference_batches(count: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """A seeded random partition of range(count) into ceil(count / batch_size) batches of near-equal size."""
    order = np.random.default_rng(derive_seed(seed, "detection-batches")).permutation(count)
    return np.array_split(order, max(1, math.ceil(count / batch_size)))


def neighbourhoods(images: torch.Tensor, texts: torch.Tensor, k: int) -> Neighbourhoods:
    """Exact k nearest neighbours among the batch's images and captions (float64 Euclidean)."""
    references = torch.cat([images, texts]).double()
    if len(references) - 1 < k:
        raise UsageError(f"k = {k} neighbours need at least {k + 1} references, but a batch has {len(references)}; "
                         "lower k or raise batch_size (--detector-opt k=... / batch_size=...)")
    distances = torch.cdist(references, references)
    count = len(references)
    floor = max(DISTANCE_FLOOR * float(distances.sum()) / (count * (count - 1)), torch.finfo(torch.float64).tiny)
    distances.fill_diagonal_(math.inf)
    nearest, indices = distances.topk(k, dim=1, largest=False, sorted=True)
    return Neighbourhoods(nearest.clamp_min(floor), indices, len(images), references.shape[1])


def local_intrinsic_dimension(hood: Neighbourhoods) -> torch.Tensor:
    """Maximum-likelihood LID of every reference from its k nearest distances. k equal distances (a
    repeated embedding) make the estimate infinite; it is then taken as the embedding dimension."""
    k = hood.distances.shape[1]
    log_ratios = torch.log(hood.distances / hood.k_distance[:, None]).sum(dim=1)
    return torch.where(log_ratios < 0, k / -log_ratios, torch.full_like(log_ratios, float(hood.dimension)))


class NeighbourhoodDetector(Detector):
    """Scores each batch's images from their neighbourhoods; subclasses give the batch score."""

    source: ClassVar[str] = HUANG
    Options: ClassVar[type] = NeighbourhoodOptions

    def __init__(self, options: NeighbourhoodOptions) -> None:
        super().__init__(options)
        if options.k < 1 or options.batch_size < 1:
            raise UsageError(f"detector {self.name!r}: k and batch_size must be positive, got k={options.k}, "
                             f"batch_size={options.batch_size}; e.g. --detector-opt k=16")

    def score(self, context: DetectionContext) -> np.ndarray:
        options = self.options
        embeddings = context.embeddings()
        values = np.empty(len(embeddings))
        for batch in reference_batches(len(embeddings), options.batch_size, context.seed):
            rows = torch.from_numpy(batch)
            hood = neighbourhoods(embeddings.images[rows].to(context.device), embeddings.texts[rows].to(context.device),
                                  options.k)
            values[batch] = self.batch_scores(hood).cpu().numpy()
        return context.per_pair(embeddings.rows, values)

    @abstractmethod
    def batch_scores(self, hood: Neighbourhoods) -> torch.Tensor:
        """The score of each of the batch's `hood.queries` images."""


class KDistance(NeighbourhoodDetector):
    """Distance to the k-th nearest image or caption embedding."""

    name = "k-distance"
    description = "k-distance: distance to the k-th nearest image/caption embedding in a random batch"

    def batch_scores(self, hood: Neighbourhoods) -> torch.Tensor:
        return hood.k_distance[: hood.queries]


class SLOF(NeighbourhoodDetector):
    """Simplified local outlier factor: the k-distance relative to the neighbours' k-distances."""

    name = "slof"
    description = "SLOF: k-distance over the mean k-distance of the k nearest embeddings"

    def batch_scores(self, hood: Neighbourhoods) -> torch.Tensor:
        k_distance = hood.k_distance
        neighbours = k_distance[hood.indices[: hood.queries]]
        return (k_distance[: hood.queries, None] / neighbours).mean(dim=1)


@dataclass
class DAOOptions(NeighbourhoodOptions):
    """form: `power` (the paper's DAO, as log DAO) or `log-mean` (the authors' released code)."""

    form: str = "power"


class DAO(NeighbourhoodDetector):
    """Dimensionality-aware outlier factor (Anderberg et al., 2024): SLOF's ratios raised to the
    neighbours' local intrinsic dimensionality."""

    name = "dao"
    description = "DAO: k-distance ratios raised to the neighbours' local intrinsic dimension (log DAO)"
    Options = DAOOptions
    FORMS: ClassVar[tuple[str, ...]] = ("power", "log-mean")

    def __init__(self, options: DAOOptions) -> None:
        super().__init__(options)
        if options.form not in self.FORMS:
            raise UsageError(f"detector 'dao': form {options.form!r} is not one of {', '.join(self.FORMS)}; "
                             "e.g. --detector-opt form=power")

    def batch_scores(self, hood: Neighbourhoods) -> torch.Tensor:
        k_distance = hood.k_distance
        neighbours = hood.indices[: hood.queries]
        exponents = local_intrinsic_dimension(hood)[neighbours] * torch.log(
            k_distance[: hood.queries, None] / k_distance[neighbours])
        if self.options.form == "log-mean":
            return exponents.mean(dim=1)
        return torch.logsumexp(exponents, dim=1) - math.log(exponents.shape[1])
