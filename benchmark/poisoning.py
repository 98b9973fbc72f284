"""Poisoning: which training pairs get the trigger, and what their captions become.

The plan is a pure function of the pairs, the attack's policy, the budget and a seed; its indices
are recorded in the run card. Applying it pastes the trigger on the chosen images (stored as uint8,
rounded, as poisoned image files are) and rewrites or keeps their captions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cleanbench.attacks.base import Attack, row_trigger, trigger_uint8
from cleanbench.config import check_budget
from cleanbench.data.base import PairSet
from cleanbench.data.lazy import LazyColumn
from cleanbench.data.pairs import Captions
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


def apply_poison(pairs: PairSet, plan: PoisonPlan, attack: Attack, seed: int, batch_size: int = 1024) -> PairSet:
    """A copy of `pairs` with the plan's images triggered and captions replaced.

    File-backed pairs are not copied: their images get the trigger as batches read them, on the device.
    """
    if isinstance(pairs.images, LazyColumn):
        _check_lazy(plan, attack)
        return _poison_lazily(pairs, plan, attack, seed)
    images = pairs.images.clone()
    captions = list(pairs.captions)
    generator = torch_generator(derive_seed(seed, "poison-trigger"))
    index = torch.tensor(plan.indices, dtype=torch.long)
    sources = attack.prepare_poisoned(pairs, plan.indices, plan.target_name, seed)
    for start in range(0, len(index), batch_size):
        chunk = slice(start, start + batch_size)
        images[index[chunk]] = trigger_uint8(attack, sources[chunk], generator)
    noise, mode = torch.tensor(plan.noise_indices, dtype=torch.long), attack.noise_mode()
    generator = torch_generator(derive_seed(seed, "poison-noise"))
    for start in range(0, len(noise), batch_size):
        chunk = noise[start : start + batch_size]
        images[chunk] = trigger_uint8(mode, pairs.images[chunk], generator)
    for i, caption in zip(plan.indices, plan.captions):
        captions[i] = caption
    return PairSet(images, captions, pairs.labels.clone(), pairs.classnames)


def _check_lazy(plan: PoisonPlan, attack: Attack) -> None:
    """File data is triggered as it is read: no noise mode, no perturbation of the poisons first."""
    if plan.noise_indices:
        raise UsageError(f"attack {attack.name}'s noise mode works on in-memory data only; "
                         "for file data add --attack-opt noise_ratio=0")
    if getattr(attack.options, "perturbation", "none") != "none":
        raise UsageError(f"attack {attack.name}'s perturbation works on in-memory data only; "
                         "for file data add --attack-opt perturbation=none")


def _poison_lazily(pairs: PairSet, plan: PoisonPlan, attack: Attack, seed: int) -> PairSet:
    """File-backed pairs with the plan's captions, and its trigger applied to its rows as they are read
    (each row's parameters from its own generator of stream `poison-trigger`)."""
    captions = pairs.captions if isinstance(pairs.captions, Captions) else Captions(pairs.captions)
    replaced = captions.replacing(dict(zip(plan.indices, plan.captions)))
    images = pairs.images.poisoned(plan.indices, row_trigger(attack, seed, "poison-trigger"))
    return PairSet(images, replaced, pairs.labels.clone(), pairs.classnames)
