"""Detect, remove, retrain: any registered detector as a pretraining-stage defense.

The detector scores every poisoned pretraining pair with the model plain CLIP pretraining made of
them (the cell's poisoned model, as `cleanbench detect` scores it); the `drop_fraction` of pairs
with the highest scores is removed, and a freshly initialised model is pretrained on the rest with
the run's own pretraining configuration and the CLIP loss (Huang et al., ICLR 2025, use their
detectors this way: keep the lowest-scored pairs and retrain from scratch).

It lives above the registry (it looks the detector up by name), so it is a defense module of the
benchmark package rather than of `cleanbench.defenses`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cleanbench.data.base import PairSet
from cleanbench.defenses.base import PRETRAINING, Defense, DefenseContext
from cleanbench.detectors.base import DetectionContext, Detector
from cleanbench.losses import clip_objective
from cleanbench.registry import DETECTORS
from cleanbench.seeding import derive_seed
from cleanbench.trainer import pair_batches

if TYPE_CHECKING:
    from cleanbench.models import ModelBundle


@dataclass
class DetectRetrainOptions:
    """`detector`: a registered detector (run with its default options); `drop_fraction`: the share
    of the pairs, highest scores first, removed before retraining."""

    detector: str = "k-distance"
    drop_fraction: float = 0.05

    def __post_init__(self) -> None:
        if not 0 <= self.drop_fraction < 1:
            raise ValueError(f"drop_fraction must be in [0, 1), not {self.drop_fraction}")
        DETECTORS.check_name(self.detector)


def ranked_removal(scores: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(kept rows ascending, removed rows highest score first): the round(fraction x n) highest-scored
    rows are removed; among equal scores the lower row goes first, and unscored rows (NaN) go last."""
    count = round(fraction * len(scores))
    ranked = np.lexsort((np.arange(len(scores)), -np.nan_to_num(scores, nan=-np.inf)))
    removed = ranked[:count]
    keep = np.ones(len(scores), dtype=bool)
    keep[removed] = False
    return np.flatnonzero(keep), removed


def _subset(pairs: PairSet, rows: np.ndarray) -> PairSet:
    """The pairs of `rows`, in order (file-backed images are not read here)."""
    return pairs.select(torch.from_numpy(rows))


class DetectRetrain(Defense):
    """Score the poisoned pairs with a detector on the poisoned model, drop the top scores, retrain."""

    name = "detect-retrain"
    description = "score the pairs with a detector on the poisoned model, remove the top-scored, pretrain on the rest"
    source = "Huang et al., ICLR 2025 (detect, remove, retrain); any registered detector"
    stage = PRETRAINING
    needs = frozenset({"clean_pairs", "pretrain_pairs", "poisoned_model"})
    Options = DetectRetrainOptions
    version = "1"

    def detector(self) -> Detector:
        cls = DETECTORS.get(self.options.detector)
        return cls(cls.Options())

    def key_parts(self) -> dict[str, Any]:
        detector = self.detector()
        return {"detector_version": detector.version, "detector_options": asdict(detector.options)}

    def apply(self, bundle: ModelBundle, context: DefenseContext) -> nn.Module:
        pairs, detector = context.pretrain_pairs(), self.detector()
        audit = DetectionContext(context.poisoned_model(), pairs, context.device,
                                 derive_seed(context.seed, self.name, "detect"), context.progress)
        scores = np.asarray(detector.score(audit), dtype=np.float64)
        kept, removed = ranked_removal(scores, self.options.drop_fraction)
        batches = pair_batches(bundle, _subset(pairs, kept), context.device, context.pretrain_config.batch_size)
        # the poisoned model's stage name, hence its batch-order seed: removing nothing gives that very model
        context.pretrain(bundle.model, batches, clip_objective(bundle), "pretrain")
        context.notes |= {"detector": self.options.detector, "detector_options": asdict(detector.options),
                          "scored_pairs": int(np.isfinite(scores).sum()), "removed_pairs": len(removed),
                          "kept_pairs": len(kept), "removed_indices": removed.tolist(),
                          "embedding_seconds": audit.embedding_seconds}
        return bundle.model
