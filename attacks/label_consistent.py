"""Label-consistent (clean-label) BadNets: the patch goes only on pairs that already show the target.

The reference (docs/reference.md §1.4: rows whose caption contains the target string are
shuffled, the first P get the BadNet patch, their captions are kept) has no perturbation; Turner
et al. first make the poisons' natural features hard to use with an adversarial perturbation
(`cleanbench.attacks.perturbation`). Default: `perturbation="adversarial"` (L-inf PGD, `epsilon`
16/255, `pgd_steps` 10, against a surrogate the attacker trains on its own pairs);
`perturbation="none"` is the reference's form. The reference matches a case-sensitive substring
("bananas" matches, "Banana" does not); cleanbench matches the target name as a whole word, case-insensitively
("Star" matches, "stars" and "starfish" do not), so a target never picks up unrelated words.
The trigger and its options are BadNet's (`badnet`), with the pattern drawn from this attack's seed;
test images get the patch only.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cleanbench.attacks.badnet import BadNet, BadNetOptions
from cleanbench.attacks.base import _names
from cleanbench.attacks.perturbation import push_away_from_target, train_surrogate
from cleanbench.data.base import PairSet
from cleanbench.seeding import derive_seed

PERTURBATIONS = ("adversarial", "none")


@dataclass
class LabelConsistentOptions(BadNetOptions):
    """BadNet's patch options, and the perturbation of the poisons before the patch."""

    perturbation: str = "adversarial"
    epsilon: float = 16.0
    pgd_steps: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.perturbation not in PERTURBATIONS:
            raise ValueError(f"perturbation must be 'adversarial' or 'none', not {self.perturbation!r}")
        if not 0 <= self.epsilon <= 255 or self.pgd_steps < 0:
            raise ValueError("epsilon must be in 0..255 (pixel values) and pgd_steps >= 0")


class LabelConsistent(BadNet):
    """BadNet's patch on pairs whose caption names the target; captions are kept."""

    name = "label-consistent"
    description = ("BadNets patch on pairs whose caption names the target (whole word), captions kept; "
                   "adversarially perturbed first (default) or not (reference)")
    paper = "Turner et al., Label-Consistent Backdoor Attacks, 2019; CleanCLIP reference (patch only)"
    Options = LabelConsistentOptions
    version = "2"  # 2: Turner et al.'s adversarial perturbation is the default
    random_version = "3"  # 3: each row's random parameters come from the row's own generator, in memory as on files

    def candidates(self, pairs: PairSet, target_index: int, target_name: str) -> torch.Tensor:
        """Pairs whose caption names the target as a whole word (case-insensitive); labels are not used."""
        return torch.tensor([i for i, c in enumerate(pairs.captions) if _names(c, target_name)], dtype=torch.long)

    def poison_caption(self, caption: str, target_name: str, templates: Sequence[str], rng: random.Random) -> str:
        """The original caption, unchanged (clean-label)."""
        return caption

    def prepare_poisoned(self, pairs: PairSet, indices: list[int], target_name: str, seed: int) -> torch.Tensor | None:
        """The poisons' uint8 images pushed away from the target by PGD on a surrogate (None: unchanged)."""
        if self.options.perturbation == "none" or not indices:
            return None
        images = pairs.images[torch.tensor(indices, dtype=torch.long)]
        is_target = torch.tensor([_names(c, target_name) for c in pairs.captions], dtype=torch.bool)
        model = train_surrogate(pairs.images, is_target, derive_seed(seed, "attack", self.name, "surrogate"))
        return push_away_from_target(model, images, self.options.epsilon, self.options.pgd_steps)
