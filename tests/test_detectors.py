"""Detectors on embeddings whose neighbourhoods can be worked out by hand."""

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from cleanbench.detectors.base import PairEmbeddings
from cleanbench.detectors.cosine import CosineOptions, CosineSimilarity
from cleanbench.detectors.neighbourhood import (
    DAO, SLOF, DAOOptions, KDistance, NeighbourhoodOptions, neighbourhoods, reference_batches,
)
from cleanbench.errors import UsageError
from cleanbench.registry import DETECTORS

# On a line: images A=0, B=1, C=3; captions D=4, E=8, F=16. With k = 2 (self left out):
#   A: d1=1 (B), d2=3 (C)     B: d1=1 (A), d2=2 (C)     C: d1=1 (D), d2=2 (B)
#   D: d1=1 (C), d2=3 (B)     E: d1=4 (D), d2=5 (C)     F: d1=8 (E), d2=12 (D)
IMAGES = torch.tensor([[0.0], [1.0], [3.0]])
TEXTS = torch.tensor([[4.0], [8.0], [16.0]])
LID = {name: 2 / math.log(d2 / d1) for name, (d1, d2) in
       {"A": (1, 3), "B": (1, 2), "C": (1, 2), "D": (1, 3), "E": (4, 5), "F": (8, 12)}.items()}


@dataclass
class FakeContext:
    """The part of DetectionContext the detectors use, around fixed embeddings."""

    images: torch.Tensor
    texts: torch.Tensor
    seed: int = 0
    device: torch.device = torch.device("cpu")

    def embeddings(self) -> PairEmbeddings:
        return PairEmbeddings(self.images, self.texts, np.arange(len(self.images)))

    def per_pair(self, rows, values):
        scores = np.full(len(self.images), np.nan)
        scores[rows] = values
        return scores

    @property
    def pairs(self):
        return self.images


def _score(detector_cls, options, images=IMAGES, texts=TEXTS):
    return detector_cls(options).score(FakeContext(images, texts))


def test_neighbourhoods_by_hand():
    hood = neighbourhoods(IMAGES, TEXTS, k=2)
    assert hood.queries == 3
    assert hood.k_distance.tolist() == [3, 2, 2, 3, 5, 12]
    assert hood.indices[:3].tolist() == [[1, 2], [0, 2], [3, 1]]


def test_k_distance_slof_and_dao_by_hand():
    options = dict(k=2, batch_size=3)
    assert _score(KDistance, NeighbourhoodOptions(**options)).tolist() == [3, 2, 2]
    # SLOF(A) = mean(3/d2(B), 3/d2(C)) = mean(3/2, 3/2); SLOF(B) = mean(2/3, 2/2); SLOF(C) = mean(2/3, 2/2)
    assert _score(SLOF, NeighbourhoodOptions(**options)) == pytest.approx([1.5, (2 / 3 + 1) / 2, (2 / 3 + 1) / 2])
    # DAO(A) = mean(1.5 ** LID(B), 1.5 ** LID(C)); DAO(B) = mean((2/3) ** LID(A), 1 ** LID(C));
    # DAO(C) = mean((2/3) ** LID(D), 1 ** LID(B)); returned as log DAO
    expected = [1.5 ** LID["B"], ((2 / 3) ** LID["A"] + 1) / 2, ((2 / 3) ** LID["D"] + 1) / 2]
    assert _score(DAO, DAOOptions(**options)) == pytest.approx(np.log(expected))
    # the released code's form: mean of LID(o) * log(d_k(x) / d_k(o))
    log_mean = [LID["B"] * math.log(1.5), (LID["A"] * math.log(2 / 3) + 0) / 2, (LID["D"] * math.log(2 / 3)) / 2]
    assert _score(DAO, DAOOptions(form="log-mean", **options)) == pytest.approx(log_mean)


def test_an_isolated_image_scores_highest():
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.normal(size=(200, 8)))
    texts = images + torch.from_numpy(rng.normal(scale=0.1, size=(200, 8)))
    images[17] += 20.0  # far from every caption and image
    for cls, options in ((KDistance, NeighbourhoodOptions()), (SLOF, NeighbourhoodOptions()), (DAO, DAOOptions())):
        assert int(np.argmax(_score(cls, options, images, texts))) == 17


def test_repeated_captions_give_finite_scores():
    images = torch.arange(40.0).reshape(20, 2)
    texts = torch.zeros(20, 2)  # twenty identical captions: zero distances
    for cls, options in ((SLOF, NeighbourhoodOptions(k=4)), (DAO, DAOOptions(k=4))):
        assert np.isfinite(_score(cls, options, images, texts)).all()


def test_reference_batches_partition_the_pairs_by_seed():
    batches = reference_batches(10, 4, seed=3)
    assert [len(b) for b in batches] == [4, 3, 3]  # ceil(10/4) batches of near-equal size
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    assert all((a == b).all() for a, b in zip(batches, reference_batches(10, 4, seed=3)))
    assert not all((a == b).all() for a, b in zip(batches, reference_batches(10, 4, seed=4)))


def test_batches_are_scored_within_themselves():
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.normal(size=(64, 4)))
    texts = torch.from_numpy(rng.normal(size=(64, 4)))
    one = _score(KDistance, NeighbourhoodOptions(k=4, batch_size=64), images, texts)
    split = _score(KDistance, NeighbourhoodOptions(k=4, batch_size=32), images, texts)
    assert np.isfinite(split).all() and not np.allclose(one, split)  # fewer references, other distances
    assert (split >= one - 1e-12).all()  # a subset of the references is never closer


def test_too_few_references_and_bad_options_are_clear():
    with pytest.raises(UsageError, match="need at least 17 references"):
        _score(KDistance, NeighbourhoodOptions(k=16, batch_size=4))
    with pytest.raises(UsageError, match="must be positive"):
        KDistance(NeighbourhoodOptions(k=0))
    with pytest.raises(UsageError, match="form 'exp' is not one of power, log-mean"):
        DAO(DAOOptions(form="exp"))
    with pytest.raises(UsageError, match="direction 'up'"):
        CosineSimilarity(CosineOptions(direction="up"))


def test_cosine_baseline_by_hand():
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert _score(CosineSimilarity, CosineOptions(), images, texts) == pytest.approx([-1.0, 0.0, -1.0])
    assert _score(CosineSimilarity, CosineOptions(direction="high"), images, texts) == pytest.approx([1.0, 0.0, 1.0])


def test_builtins_are_registered():
    assert {"k-distance", "slof", "dao", "cosine"} <= set(DETECTORS.names())
    assert DETECTORS.get("slof") is SLOF
