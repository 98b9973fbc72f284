"""Named configurations that write down the paper's settings (`cleanbench run --preset NAME`).

A preset is the bottom layer of a run's configuration: a `--config` file and command-line options
override it. The data paths are the user's: `--data train.csv --eval-data imagenet-val/`
(docs/real-data.md says how to get CC3M and ImageNet validation into that layout).

- `paper-cc3m-rn50-scratch`: the paper's first setting (docs/reference.md §2, §3.3, §3.4): an RN50 CLIP
  (OpenAI's architecture, QuickGELU) trained from random weights on CC3M with 1500 pairs poisoned
  by the reference's BadNet patch (16 px, fresh noise at a random place) towards "banana", 64
  epochs, batch 128, lr 5e-4, 10,000 warm-up steps; then CleanCLIP with the reference's settings
  on 100K clean pairs (batch 64, lr 1e-5, 10 epochs, 50 warm-up steps, AutoAugment and EDA views).
- `paper-openai-rn50-finetune`: the second setting: OpenAI's pretrained RN50 finetuned on the first
  500K pairs with 1500 poisoned, 5 epochs, lr 1e-6, 50 warm-up steps (users needed 1e-5 for a
  strong backdoor: `--config` with `pretrain: {lr: 1.0e-5}`), then the same CleanCLIP.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

from cleanbench.config import FINETUNE_PRETRAINED_TRAINING
from cleanbench.defenses.cleanclip import REFERENCE_OPTIONS as CLEANCLIP_REFERENCE
from cleanbench.errors import UsageError

REFERENCE_BADNET: dict[str, Any] = dict(patch_size=16, location="random", noise="fresh", values="wrap")
"""The reference's BadNet trigger (docs/reference.md §1.2)."""

REFERENCE_SCRATCH_TRAINING: dict[str, Any] = dict(
    epochs=64, batch_size=128, lr=5e-4, warmup_steps=10_000, weight_decay=0.1, beta1=0.9, beta2=0.999, eps=1e-8
)
"""The reference's pretraining from scratch (docs/reference.md §3.4: parser defaults, 64 epochs)."""

_COMMON: dict[str, Any] = dict(
    attack="badnet",
    attack_options=REFERENCE_BADNET,
    defense="cleanclip",
    defense_options=dict(CLEANCLIP_REFERENCE),
    poison_rate=None,
    poison_count=1500,
    target="banana",
)

PRESETS: dict[str, dict[str, Any]] = {
    "paper-cc3m-rn50-scratch": dict(
        _COMMON,
        data=dict(source="csv", limit_clean=100_000),
        model=dict(name="RN50-quickgelu", pretrained=None, threat="scratch"),
        pretrain=REFERENCE_SCRATCH_TRAINING,
    ),
    "paper-openai-rn50-finetune": dict(
        _COMMON,
        data=dict(source="csv", limit_pretrain=500_000, limit_clean=100_000),
        model=dict(name="RN50-quickgelu", pretrained="openai", threat="finetune-pretrained"),
        pretrain=FINETUNE_PRETRAINED_TRAINING,
    ),
}


def preset_values(name: str) -> dict[str, Any]:
    """A copy of preset `name`'s configuration values; UsageError with the known names otherwise."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UsageError(f"unknown preset {name!r}; {hint}presets: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
