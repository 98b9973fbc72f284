"""Poisoning: which training pairs get the trigger, and what their captions become.

The plan is a pure function of the pairs, the attack's policy, the budget and a seed; its indices
are recorded in the run card. Applying it pastes the trigger on the chosen images (stored as uint8,
rounded, as poisoned image files are; the image column applies it, in memory at once, on files as
batches read them) and rewrites or keeps their captions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cleanbench.attacks.base import Attack, Seeded
from cleanbench.config import check_budget
from cleanbench.data.base import PairSet
from cleanbench.data.pairs import replace_captions
from cleanbench.errors import UsageError
from cleanbench.seeding import derive_seed, torch_generator


@dataclass
class PoisonPlan:
    """The poisoned indices (sorted) and the caption each of them gets."""

    indices: list[int]
    captions: list[str]
    target_index: int
    target_name: str
    candidates: int
    noise_indices: list[int] = dataclasses.field(default_factory=list)
    """Other pairs that get the attack's noise mode and keep their captions (WaNet); sorted."""

    @property
    def count(self) -> int:
        return len(self.indices)

    def indices_sha256(self) -> str:
        return hashlib.sha256(",".join(map(str, self.indices)).encode()).hexdigest()


def poison_budget(total: int, rate: float | None = None, count: int | None = None) -> int:
    """The number of pairs to poison, from a rate in (0, 1] or a count (`config.check_budget`); exactly
    one is given."""
    if rate is None and count is None:
        raise UsageError("give exactly one of --poison-rate and --poison-count")
    check_budget(rate, count, total)
    return int(count) if count is not None else max(1, round(rate * total))


def plan_poison(
    pairs: PairSet,
    attack: Attack,
    target_index: int,
    target_name: str,
    budget: int,
    templates: Sequence[str],
    seed: int,
) -> PoisonPlan:
    """Choose `budget` pairs among the attack's candidates, uniformly at random from `seed`."""
    candidates = attack.candidates(pairs, target_index, target_name)
    if attack.name == "none":
        budget = 0
    if budget > len(candidates):
        raise UsageError(
            f"attack {attack.name} can poison at most {len(candidates)} of {len(pairs)} pairs "
            f"(target {target_name!r}), but {budget} were asked; lower --poison-rate or --poison-count"
        )
    generator = torch_generator(derive_seed(seed, "poison-select"))
    chosen = candidates[torch.randperm(len(candidates), generator=generator)[:budget]]
    indices = sorted(int(i) for i in chosen)
    rng = random.Random(derive_seed(seed, "poison-captions"))
    captions = [attack.poison_caption(pairs.captions[i], target_name, templates, rng) for i in indices]
    return PoisonPlan(indices, captions, target_index, target_name, len(candidates),
                      _noise_indices(len(pairs), indices, attack.noise_count(budget), seed))


def _noise_indices(total: int, poisoned: list[int], count: int, seed: int) -> list[int]:
    """`count` pairs outside the poisoned ones, uniformly at random from `seed` (all of them at most)."""
    if count <= 0:
        return []
    rest = torch.ones(total, dtype=torch.bool)
    rest[torch.tensor(poisoned, dtype=torch.long)] = False
    others = torch.nonzero(rest).flatten()
    generator = torch_generator(derive_seed(seed, "poison-noise-select"))
    return sorted(int(i) for i in others[torch.randperm(len(others), generator=generator)[:count]])


def apply_poison(pairs: PairSet, plan: PoisonPlan, attack: Attack, seed: int) -> PairSet:
    """`pairs` with the plan's images triggered and captions replaced (a new column and captions).

    The image column applies the trigger (`ImageColumn.triggered`): stream `poison-trigger` for the
    poisons (after the attack's `prepare_poisoned`, if it changes them), `poison-noise` for the noise
    mode's pairs; each row's random parameters from the row's own generator.
    """
    images = pairs.images
    sources = attack.prepare_poisoned(pairs, plan.indices, plan.target_name, seed)
    if sources is not None:
        images = images.replaced(plan.indices, sources)
    images = images.triggered(plan.indices, Seeded(attack, seed, "poison-trigger"))
    mode = attack.noise_mode()
    if plan.noise_indices and mode is not None:
        images = images.triggered(plan.noise_indices, Seeded(mode, seed, "poison-noise"))
    captions = replace_captions(pairs.captions, dict(zip(plan.indices, plan.captions)))
    return PairSet(images, captions, pairs.labels.clone(), pairs.classnames)
