"""Unimodal self-supervised finetuning: the in-modal losses alone (CleanCLIP with lambda1 = 0).

Each image must find its own augmented view among the batch's views, and each caption its own EDA
view; nothing ties the two modalities together, so the paper finds that it removes the backdoor
but breaks the image-text alignment that zero-shot classification needs. Same trainer, views and
hyper-parameters as `cleanclip` (reference: `--inmodal --clip_weight 0 --inmodal_weight 1`).
"""

from __future__ import annotations

from dataclasses import dataclass

from cleanbench.defenses.contrastive import REFERENCE_TRAINING, ContrastiveFinetune, ViewOptions


@dataclass
class UnimodalOptions(ViewOptions):
    """Hyper-parameters of in-modal-only finetuning: training and views, as CleanCLIP's."""


REFERENCE_OPTIONS = dict(REFERENCE_TRAINING, image_view="autoaugment", synonyms="wordnet")
"""The reference's settings: CleanCLIP's with the CLIP-loss weight set to 0 (docs/reference.md §4)."""


class Unimodal(ContrastiveFinetune):
    """Finetune on clean pairs with the image-image and text-text in-modal losses only."""

    name = "unimodal"
    description = "finetune on clean pairs with the in-modal self-supervised losses only (CleanCLIP's lambda1 = 0 ablation)"
    source = "Bansal et al., CleanCLIP, ICCV 2023 (ablation)"
    Options = UnimodalOptions

    def objective_weights(self) -> tuple[float, float]:
        return 0.0, 1.0
