"""SafeCLIP (Yang, Gao, Mirzasoleiman, "Better Safe than Sorry", ICML 2024) as a pretraining-stage
defense: unimodal warm-up, one cross-modal warm-up epoch at a low learning rate, then per epoch a
safe/risky split of the poisoned pairs by a two-Gaussian mixture on their image-caption similarity,
the CLIP loss on the safe pairs and the in-modal losses on the risky ones, the safe set growing.

`safeclip_training` holds the phases and objectives, `safe_split` the mixture and the split rules.
The run's pretraining configuration (batch, lr, warm-up, weight decay) is used for the unimodal and
mixed phases; the options set the phase lengths and the split. docs/safeclip.md says how the
defaults scale from the paper's and what was measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from cleanbench.augment import EDA, image_view
from cleanbench.defenses.base import PRETRAINING, Defense, DefenseContext
from cleanbench.defenses.safeclip_training import Schedule, pretrain_safeclip
from cleanbench.seeding import derive_seed
from cleanbench.synonyms import check_source_name, synonym_source

if TYPE_CHECKING:
    from cleanbench.models import ModelBundle


@dataclass
class SafeCLIPOptions:
    """SafeCLIP's hyper-parameters. `mixed_epochs` None: the run's pretraining epochs less the unimodal
    warm-up's (at least one), so the warm-up takes its place in the pretraining budget."""

    unimodal_epochs: int = 1
    align_epochs: int = 1
    align_lr: float = 5e-4
    mixed_epochs: int | None = None
    threshold: float = 0.9
    growth: float = 0.1
    cap: float = 0.85
    image_view: str = "crop-jitter"
    synonyms: str = "embedded"

    def __post_init__(self) -> None:
        if self.unimodal_epochs < 0 or self.align_epochs < 0:
            raise ValueError("unimodal_epochs and align_epochs must be >= 0")
        if self.mixed_epochs is not None and self.mixed_epochs < 1:
            raise ValueError(f"mixed_epochs must be >= 1 (or None: the run's pretraining epochs), not {self.mixed_epochs}")
        if self.align_lr <= 0:
            raise ValueError(f"align_lr must be > 0, not {self.align_lr}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), not {self.threshold}")
        if not 0 <= self.growth <= 1 or not 0 < self.cap <= 1:
            raise ValueError(f"growth must be in [0, 1] and cap in (0, 1], not {self.growth} and {self.cap}")
        image_view(self.image_view)  # raises on an unknown view
        check_source_name(self.synonyms)


class SafeCLIP(Defense):
    """Pretraining with a unimodal warm-up and a per-epoch GMM split: CLIP loss on safe pairs only."""

    name = "safeclip"
    description = ("pretraining with unimodal warm-up, then CLIP loss on the pairs a two-Gaussian split of "
                   "image-caption similarity calls safe and in-modal losses on the rest")
    source = "Yang, Gao, Mirzasoleiman, Better Safe than Sorry (SafeCLIP), ICML 2024"
    stage = PRETRAINING
    needs = frozenset({"clean_pairs", "pretrain_pairs"})
    Options = SafeCLIPOptions
    version = "1"

    def schedule(self, pretrain_epochs: int) -> Schedule:
        """The phases and split rule for a run whose plain pretraining has `pretrain_epochs` epochs."""
        o = self.options
        mixed = o.mixed_epochs if o.mixed_epochs is not None else max(1, pretrain_epochs - o.unimodal_epochs)
        return Schedule(o.unimodal_epochs, o.align_epochs, o.align_lr, mixed, o.threshold, o.growth, o.cap)

    def apply(self, bundle: ModelBundle, context: DefenseContext) -> nn.Module:
        options, config = self.options, context.pretrain_config
        pairs = context.pretrain_pairs()
        eda = EDA(seed=derive_seed(context.seed, self.name, "eda"), synonyms=synonym_source(options.synonyms))
        schedule = self.schedule(config.epochs)

        def trainer(batches, objective, stage, phase_config, items_per_pair):
            return context.pretrain(bundle.model, batches, objective, stage, config=phase_config,
                                    items_per_pair=items_per_pair)

        run = pretrain_safeclip(bundle, pairs, config, schedule, image_view(options.image_view), eda, context.seed,
                                context.device, trainer)
        context.notes |= {"text_view_operations": eda.operations, "synonyms_from": eda.source.origin,
                          "image_view": options.image_view, "mixed_epochs": schedule.mixed_epochs,
                          "splits": run.splits}
        return bundle.model
