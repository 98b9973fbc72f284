"""A trigger shown on a test image, as a run's evaluation made it (used by the leaderboard's gallery).

Public API: `trigger_preview`. The evaluation triggers the non-target test images through the test
column with `Seeded(attack, run seed, EVAL_TRIGGER_STREAM)` (`ImageColumn.row_trigger`); the preview
does the same for the first of them, so the picture is the evaluation's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from cleanbench.attacks.base import Attack, FittedTrigger, Seeded

EVAL_TRIGGER_STREAM = "eval-trigger"
"""The name of the seed stream of evaluation triggers."""


def attack_from_card(attack_cls: type[Attack], options: Mapping[str, Any], image_size: int, seed: int,
                     trigger: Mapping[str, Any] | None = None) -> Attack:
    """An attack rebuilt from a run card: its class, the resolved options the card records, the
    setting's image size and the run seed; for an attack whose trigger is optimised on a surrogate,
    also the card's `attack.trigger` record, whose `tensors` (as nested lists) and record `restore`
    takes back. TypeError when the options do not fit the class; ValueError when a surrogate
    attack's card holds no trigger tensors."""
    attack = attack_cls(attack_cls.Options(**dict(options)), image_size, seed)
    if attack_cls.needs_surrogate:
        if not trigger or not isinstance(trigger.get("tensors"), Mapping):
            raise ValueError(f"attack {attack_cls.name}'s trigger is optimised on a surrogate and this run card "
                             "does not hold it (attack.trigger.tensors)")
        tensors = {name: torch.tensor(values, dtype=torch.float32) for name, values in trigger["tensors"].items()}
        attack.restore(FittedTrigger(tensors, dict(trigger)))
    return attack


def trigger_preview(attack: Attack, data: Mapping[str, Any], target: str, count: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` non-target test images and the same images triggered, both uint8 (N, 3, H, W).

    `data` is the `data` block of a run's config (source, preset, image_size, n_test); only the
    embedded data can be drawn again from it (ValueError otherwise, or for an unknown `target`).
    """
    from cleanbench.data.base import class_index
    from cleanbench.data.embedded import TEST_SEED, make_pairs
    from cleanbench.data.shapes import SHAPES

    if data.get("source", "embedded") != "embedded":
        raise ValueError(f"the images of data source {data.get('source')!r} are not in the run cards")
    test = make_pairs(int(data.get("n_test", 2000)), TEST_SEED, int(data.get("image_size", attack.image_size)),
                      str(data.get("preset", "easy")))
    kept = torch.nonzero(test.labels != class_index(SHAPES, target)).flatten().tolist()
    trigger = test.images.row_trigger(Seeded(attack, attack.seed, EVAL_TRIGGER_STREAM))
    first = torch.tensor(kept[:count], dtype=torch.long)
    clean = test.images[first]
    return clean, trigger(clean, first)
