"""The plan of one cell: the validated configuration, its plugins, the device, the content keys of
its artifacts (the poisoned model, its evaluation, the defended model and its evaluation; for an
attack that optimises its trigger, the surrogate, the trigger and the trigger's evaluation) and the
run card's path. `runner` executes a plan; sweeps, `cleanbench detect` and the tests read its keys.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import cleanbench
from cleanbench import runcard, stages
from cleanbench.attacks.base import Attack
from cleanbench.cache import content_key
from cleanbench.config import RunConfig, budget_label, build_options, validate
from cleanbench.defenses.base import PRETRAIN_PAIRS, Defense, acts_in_pretraining
from cleanbench.errors import UsageError
from cleanbench.models import check_model
from cleanbench.poisoning import poison_budget
from cleanbench.registry import ATTACKS, DEFENSES
from cleanbench.tuning import apply_record


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; an explicit CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} was asked for but CUDA is not available; use --device cpu")
    return device


_CLEAN_FIELDS = ("clean", "limit_clean", "n_clean")
"""Data settings that only the defense's clean pairs depend on (the embedded splits are independent
streams; a CSV's default clean subset is drawn from `train`, which the poisoned model's key holds)."""
_EVAL_FIELDS = ("eval", "eval_classes", "eval_split", "limit_test", "n_test")
"""Data settings that only the test set depends on."""
_SPEED_FIELDS = ("workers",)
"""Data settings that change speed, not results."""
_VALIDATION_FIELDS = ("n_validation",)
"""Data settings that only the validation split depends on (scored in every run, never cached)."""
_FILE_FIELDS = ("train", "clean", "eval", "eval_classes")


def _digest(value: str | None) -> str | None:
    """SHA-256 of a file's content, or of a folder's listing (relative names and sizes); None otherwise.

    Image files are identified through the CSV or folder listing that names them."""
    if not value:
        return None
    path = Path(value)
    try:
        stat = path.stat()
    except (OSError, ValueError):
        return None
    if not path.is_dir():
        return _file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(f"{os.path.relpath(full, path)}\0{os.path.getsize(full)}\n".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Plan:
    """A validated cell: the plugin classes and their options, resolved before any work starts."""

    def __init__(self, config: RunConfig) -> None:
        self.config = stages.resolve_file_data(validate(config))
        if config.attack != "none":
            poison_budget(config.data.n_pretrain, config.poison_rate, config.poison_count)
        self.attack_cls: type[Attack] = ATTACKS.get(config.attack)
        self.defense_cls: type[Defense] = DEFENSES.get(config.defense)
        if acts_in_pretraining(self.defense_cls) and PRETRAIN_PAIRS not in self.defense_cls.needs:
            raise UsageError(f"defense {config.defense!r} acts during pretraining but does not declare "
                             f"{PRETRAIN_PAIRS!r} in `needs`; it trains on the poisoned pairs, so add it")
        self.attack_options = build_options(self.attack_cls.Options, config.attack_options, f"attack {config.attack!r} options")
        defaults = config.defense_defaults.get(config.defense, {})
        build_options(self.defense_cls.Options, {**defaults, **config.defense_options}, f"defense {config.defense!r} options")
        self.device = resolve_device(config.device)
        self._data_parts: dict[str, dict[str, Any]] = {}
        self._keys: dict[str, str] = {}  # computed once: a grid's expansion asks for each key several times
        check_model(config.model.name, config.model.pretrained)
        self.tuning = apply_record(config)  # after the checks of the user's own options
        self.defense_options = build_options(
            self.defense_cls.Options, {**defaults, **config.defense_options}, f"defense {config.defense!r} options"
        )

    @property
    def budget_label(self) -> str:
        """The poison budget as it names the card: `clean` without an attack, else `n25` or `p0.02`."""
        c = self.config
        return "clean" if c.attack == "none" else budget_label(c.poison_rate, c.poison_count)

    def _data(self, part: str) -> dict[str, Any]:
        """The data settings one artifact depends on (`part`: pretrain, clean or eval), with a content
        digest of each file or folder they name, so that changed files get new keys."""
        if part not in self._data_parts:
            data = {f.name: getattr(self.config.data, f.name) for f in dataclasses.fields(self.config.data)}  # scalars
            fields = {"clean": _CLEAN_FIELDS, "eval": _EVAL_FIELDS}.get(part)
            if fields is None:
                fields = tuple(k for k in data if k not in _CLEAN_FIELDS + _EVAL_FIELDS + _SPEED_FIELDS
                               + _VALIDATION_FIELDS)
            self._data_parts[part] = {k: data[k] for k in fields} | {
                f"{k}_digest": _digest(data[k]) for k in fields if k in _FILE_FIELDS}
        return self._data_parts[part]

    @property
    def defense_is_identity(self) -> bool:
        """A defense of stage `none` returns the poisoned model: its defended model is that model."""
        return self.defense_cls.stage == "none"

    def poisoned_model_key(self) -> str:
        """Hash of exactly what determines the poisoned model."""
        if "poisoned" in self._keys:
            return self._keys["poisoned"]
        c = self.config
        model = {k: v for k, v in asdict(c.model).items() if k != "trust_checkpoint"}
        self._keys["poisoned"] = content_key({
            "artifact": "poisoned-model", "setting": c.setting,
            "cleanbench": cleanbench.__version__,
            "attack": c.attack, "attack_version": self.attack_cls.version_for(self.attack_options),
            "attack_options": asdict(self.attack_options),
            "poison_rate": c.poison_rate if c.attack != "none" else None,
            "poison_count": c.poison_count if c.attack != "none" else None,
            "target": c.target, "seed": c.seed, "threads": c.threads, "data": self._data("pretrain"), "pretrain": asdict(c.pretrain),
            "model": model, "model_digest": _digest(c.model.name.removeprefix("local-dir:")),
            "pretrained_digest": _digest(c.model.pretrained),
            **({"trigger": self.trigger_key()} if self.attack_cls.needs_surrogate else {}),
        })
        return self._keys["poisoned"]

    @property
    def surrogate_kind(self) -> str | None:
        """What an attack that optimises its trigger works on: the `--pretrained` weights the victim
        starts from (`pretrained`), else the setting's clean-control model (`clean-control`); None for
        other attacks."""
        if not self.attack_cls.needs_surrogate:
            return None
        return "pretrained" if self.config.model.pretrained else "clean-control"

    def surrogate_model_key(self) -> str:
        """The key of the surrogate: the poisoned-model key of this configuration with attack `none` (the
        clean control `cleanbench run --attack none` caches), or a hash of the pretrained weights."""
        if "surrogate" not in self._keys:
            if self.surrogate_kind == "clean-control":
                control = copy.deepcopy(self.config)
                control.attack, control.attack_options = "none", {}
                self._keys["surrogate"] = Plan(control).poisoned_model_key()
            else:
                model = {k: v for k, v in asdict(self.config.model).items() if k != "trust_checkpoint"}
                self._keys["surrogate"] = content_key({"artifact": "pretrained-surrogate", "model": model,
                                                       "pretrained_digest": _digest(self.config.model.pretrained)})
        return self._keys["surrogate"]

    def trigger_key(self) -> str:
        """Hash of what determines an optimised trigger: the surrogate, the attack and its options, the
        target, the seed, the pretraining data it reads and the thread count."""
        if "trigger" not in self._keys:
            c = self.config
            self._keys["trigger"] = content_key({
                "artifact": "attack-trigger", "cleanbench": cleanbench.__version__,
                "surrogate": self.surrogate_kind, "surrogate_model": self.surrogate_model_key(),
                "attack": c.attack, "attack_version": self.attack_cls.version_for(self.attack_options),
                "attack_options": asdict(self.attack_options), "target": c.target, "seed": c.seed,
                "threads": c.threads, "data": self._data("pretrain")})
        return self._keys["trigger"]

    def _defense_inputs(self) -> dict[str, Any]:
        parts = self.defense_cls(self.defense_options).key_parts()
        return {"poisoned": self.poisoned_model_key(), "defense": self.config.defense,
                "defense_version": self.defense_cls.version, "defense_options": asdict(self.defense_options),
                "clean_data": self._data("clean"), "threads": self.config.threads,
                **({"defense_parts": parts} if parts else {})}

    def defended_model_key(self) -> str:
        """Hash of exactly what determines the defended model (the poisoned model's key for `none`)."""
        if self.defense_is_identity:
            return self.poisoned_model_key()
        if "defended" not in self._keys:
            self._keys["defended"] = content_key({"artifact": "defended-model", "cleanbench": cleanbench.__version__,
                                                  **self._defense_inputs()})
        return self._keys["defended"]

    def evaluation_key(self, model_key: str) -> str:
        """Hash of what determines an evaluation: the model (whose key fixes attack, target, seed and
        data settings) and the test set."""
        return content_key({"artifact": "evaluation", "cleanbench": cleanbench.__version__,
                            "model": model_key, "eval_data": self._data("eval"), "threads": self.config.threads})

    def surrogate_evaluation_key(self) -> str:
        """Hash of what determines the optimised trigger's evaluation on its own surrogate (no poisoning):
        the trigger (whose key holds the surrogate's) and the test set."""
        return content_key({"artifact": "surrogate-evaluation", "cleanbench": cleanbench.__version__,
                            "trigger": self.trigger_key(), "eval_data": self._data("eval"), "threads": self.config.threads})

    def artifact_keys(self) -> dict[str, str]:
        """The keys of the cell's four artifacts, by name."""
        poisoned, defended = self.poisoned_model_key(), self.defended_model_key()
        fitted = ({"surrogate_model": self.surrogate_model_key(), "attack_trigger": self.trigger_key(),
                   "surrogate_evaluation": self.surrogate_evaluation_key()} if self.attack_cls.needs_surrogate else {})
        return {**fitted, "poisoned_model": poisoned, "poisoned_evaluation": self.evaluation_key(poisoned),
                "defended_model": defended, "defended_evaluation": self.evaluation_key(defended)}

    def cell_key(self) -> str:
        """Hash of everything that determines the cell's run card (it names the card file)."""
        if "cell" not in self._keys:
            self._keys["cell"] = content_key({**self._defense_inputs(), "eval_data": self._data("eval")})
        return self._keys["cell"]

    def card_path(self) -> Path:
        """Where this cell's run card goes."""
        c = self.config
        return runcard.card_path(c.results_dir, c.attack, c.defense, self.budget_label, c.seed, self.cell_key())
