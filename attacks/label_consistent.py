"""Label-consistent (clean-label) BadNets: the patch goes only on pairs that already show the target.

Reference (docs/reference.md §1.4, issue #2): rows whose caption contains the target string are shuffled
and the first P get the BadNet patch; their captions are kept; there is no adversarial perturbation
(unlike Turner et al.). The reference matches a case-sensitive substring ("bananas" matches,
"Banana" does not); cleanbench matches the target name as a whole word, case-insensitively
("Star" matches, "stars" and "starfish" do not), so a target never picks up unrelated words.
The trigger and its options are BadNet's (`badnet`), with the pattern drawn from this attack's seed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from cleanbench.attacks.badnet import BadNet
from cleanbench.attacks.base import _names
from cleanbench.data.base import PairSet


class LabelConsistent(BadNet):
    """BadNet's patch on pairs whose caption names the target; captions are kept."""

    name = "label-consistent"
    description = "BadNets patch on pairs whose caption names the target (whole word); captions kept"
    paper = "Turner et al., Label-Consistent Backdoor Attacks, 2019; CleanCLIP reference (patch only)"

    def candidates(self, pairs: PairSet, target_index: int, target_name: str) -> torch.Tensor:
        """Pairs whose caption names the target as a whole word (case-insensitive); labels are not used."""
        return torch.tensor([i for i, c in enumerate(pairs.captions) if _names(c, target_name)], dtype=torch.long)

    def poison_caption(self, caption: str, target_name: str, templates: Sequence[str], rng: random.Random) -> str:
        """The original caption, unchanged (clean-label)."""
        return caption
