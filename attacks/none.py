"""The clean control: no poisoning and an identity trigger.

With `--attack none` a defense runs on a clean model, so its utility cost is measured apart from
its effect on a backdoor. The reported ASR is then the base rate at which clean non-target test
images are classified as the target class.
"""

from __future__ import annotations

import torch

from cleanbench.attacks.base import Attack


class NoAttack(Attack):
    """No trigger and no poisoned pairs."""

    name = "none"
    description = "clean control: nothing is poisoned; ASR is the base rate of target predictions"
    paper = "-"

    def sample(self, count: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {}

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return images.clone()

    def apply_uint8(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """A copy: every uint8 value survives the float round trip."""
        return images.clone()

    def candidates(self, pairs, target_index: int, target_name: str) -> torch.Tensor:
        return torch.empty(0, dtype=torch.long)
