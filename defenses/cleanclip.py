"""CleanCLIP (Bansal et al., ICCV 2023): finetune on clean pairs with the CLIP loss plus in-modal
self-supervised losses, L = lambda1 * L_CLIP + lambda2 * L_SS (docs/reference.md §3.1).

Image views are recomputed every step, text views (one EDA operation per caption) once, as in the
reference. Reference hyper-parameters (docs/reference.md §3.3, for CC3M / RN50): batch 64, lr 1e-5,
10 epochs, 50 warm-up steps, AdamW (0.9, 0.999, eps 1e-8), weight decay 0.1, 100K clean pairs,
AutoAugment views, lambda1 = lambda2 = 1. The defaults here are the values measured to work on
the embedded default (2,000 clean pairs, tiny CLIP); `REFERENCE_OPTIONS` holds the reference's.
"""

from __future__ import annotations

from dataclasses import dataclass

from cleanbench.defenses.contrastive import REFERENCE_TRAINING, ContrastiveFinetune, ViewOptions


@dataclass
class CleanCLIPOptions(ViewOptions):
    """CleanCLIP's hyper-parameters: training, views, and the weights lambda1 (clip) and lambda2 (in-modal)."""

    clip_weight: float = 1.0
    inmodal_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.clip_weight < 0 or self.inmodal_weight < 0 or self.clip_weight + self.inmodal_weight == 0:
            raise ValueError("clip_weight and inmodal_weight must be >= 0 and not both 0")


REFERENCE_OPTIONS = dict(REFERENCE_TRAINING, image_view="autoaugment", synonyms="wordnet", clip_weight=1.0, inmodal_weight=1.0)
"""The reference implementation's CleanCLIP settings (docs/reference.md §3.3)."""


class CleanCLIP(ContrastiveFinetune):
    """CLIP loss on originals plus image/text in-modal losses on augmented views."""

    name = "cleanclip"
    description = "finetune on clean pairs with CLIP loss + in-modal self-supervised loss (lambda1 = lambda2 = 1)"
    source = "Bansal et al., CleanCLIP, ICCV 2023"
    Options = CleanCLIPOptions
    version = "2"  # 2: EDA text views as docs/reference.md §3.2 (stop words kept, WordNet from Debian's database)

    def objective_weights(self) -> tuple[float, float]:
        return self.options.clip_weight, self.options.inmodal_weight
