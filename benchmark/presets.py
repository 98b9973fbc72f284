"""Named configurations (`cleanbench run --preset NAME`): the `standard` setting and the paper's.

- `standard-v2`: the benchmark's calibrated embedded setting (docs/setting.md), the default.
- `standard`: its first version, with shorter pretraining (lr 2e-3, 3 epochs) whose clean CA had not
  plateaued; its published cards stay comparable under its own name.

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
    defense="cleanclip",  # with the reference's options: `preset_values` adds them
    poison_rate=None,
    poison_count=1500,
    target="banana",
)

STANDARD_DEFENSE_TRAINING: dict[str, Any] = dict(epochs=10, batch_size=64, warmup_steps=10)
"""The standard setting's finetuning schedule for every contrastive defense (the reference's batch
64 and 10 epochs: 180 steps on the 1,200 clean pairs); the learning rate comes from the tuning record."""

STANDARD: dict[str, Any] = dict(
    setting="standard",
    threads=1,
    target="star",
    poison_rate=0.02,
    data=dict(source="embedded", preset="easy", image_size=32, n_pretrain=40_000, n_clean=1_200, n_test=2_000,
              n_validation=1_000),
    model=dict(name="cleanbench-tiny", pretrained=None, threat="scratch"),
    pretrain=dict(epochs=3, batch_size=128, lr=2e-3, warmup_steps=62, weight_decay=0.1, beta1=0.9, beta2=0.98,
                  eps=1e-6),
    defense_defaults={name: dict(STANDARD_DEFENSE_TRAINING) for name in ("finetune", "unimodal", "cleanclip")},
    tuning="standard",
)
"""The `standard` setting (docs/setting.md): 40,000 procedural pretraining pairs seen three times
(clean CA 91 % after two epochs, 94.5 % after three), a clean finetuning set of 3 % of them, and
the defenses at the learning rate that the tuning protocol picked on the clean-model control
(`settings/standard.tuning.json`)."""

STANDARD_V2: dict[str, Any] = dict(
    STANDARD,
    setting="standard-v2",
    pretrain=dict(STANDARD["pretrain"], epochs=4, lr=4e-3),
    tuning="standard-v2",
)
"""The `standard` setting with pretraining long enough that clean CA has plateaued (docs/setting.md):
lr 4e-3 for 4 epochs (clean CA 97.0 -> 98.5 -> 98.7 % at 3, 4, 5 epochs, seed 0), its own tuning record
(`settings/standard-v2.tuning.json`); everything else as in `standard`."""

DEFAULT_SETTING = "standard-v2"
"""The setting a plain `cleanbench run` uses (no --config, --data or --model), and `cleanbench bench` estimates."""

PRESETS: dict[str, dict[str, Any]] = {
    "standard": STANDARD,
    "standard-v2": STANDARD_V2,
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
    values = copy.deepcopy(PRESETS[name])
    if values.get("defense") == "cleanclip" and "defense_options" not in values:
        from cleanbench.defenses.cleanclip import REFERENCE_OPTIONS  # imports torch: only once the name is known

        values["defense_options"] = dict(REFERENCE_OPTIONS)
    return values


CELL_KEYS = frozenset({"attack", "attack_options", "defense", "defense_options", "poison_rate", "poison_count",
                       "seed", "device", "results_dir", "cache_dir", "use_cache", "setting"})
"""Config keys that vary inside a setting (a cell's own choices) or do not change numbers."""


def _flat(values: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(values, dict):
        return {prefix: values}
    out: dict[str, Any] = {}
    for key, value in values.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def setting_record(config: Any) -> dict[str, Any] | None:
    """For the run card: the named setting and the setting-level keys where `config` departs from it
    (empty when the run is in the setting as published); None for a config without a named setting."""
    if not config.setting or config.setting not in PRESETS:
        return {"name": config.setting, "deviations": None} if config.setting else None
    wanted = {k: v for k, v in _flat(PRESETS[config.setting]).items() if k.split(".")[0] not in CELL_KEYS}
    actual = _flat(config.to_dict())
    return {"name": config.setting, "deviations": sorted(k for k, v in wanted.items() if actual.get(k) != v)}
