"""Plain finetuning: the CLIP (multimodal contrastive) loss alone on the clean pairs.

The paper's first ablation of CleanCLIP (lambda2 = 0: no in-modal term, no augmented views). Same
trainer and hyper-parameters as `cleanclip`; the reference uses the same settings as for CleanCLIP
(`REFERENCE_OPTIONS`, docs/reference.md §3.3 and §4).
"""

from __future__ import annotations

from dataclasses import dataclass

from cleanbench.defenses.contrastive import REFERENCE_TRAINING, ContrastiveFinetune, TrainingOptions


@dataclass
class FinetuneOptions(TrainingOptions):
    """Hyper-parameters of plain CLIP-loss finetuning (defaults: the embedded default's, as CleanCLIP's)."""


REFERENCE_OPTIONS = dict(REFERENCE_TRAINING)
"""The reference's settings: CleanCLIP's command without `--inmodal` (docs/reference.md §4)."""


class Finetune(ContrastiveFinetune):
    """Finetune on clean pairs with the multimodal CLIP loss only."""

    name = "finetune"
    description = "finetune on clean pairs with the multimodal CLIP loss only (CleanCLIP's lambda2 = 0 ablation)"
    source = "Bansal et al., CleanCLIP, ICCV 2023 (baseline)"
    Options = FinetuneOptions

    def objective_weights(self) -> tuple[float, float]:
        return 1.0, 0.0
