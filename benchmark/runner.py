"""Run one benchmark cell: data -> poison -> pretrain -> evaluate -> defend -> evaluate -> card.

Four artifacts are content-addressed (see `Plan`): the poisoned model, its evaluation, the defended
model and its evaluation; an attack that optimises its trigger adds its surrogate, the trigger and the
trigger's evaluation on the surrogate (`trigger_fit`). Each is loaded from the cache when present,
else computed (under a lock, so concurrent processes compute it once) and stored. The card lists each artifact's key and whether
this run reused it; its `costs` are what producing each stage cost, taken from the artifact when it
was reused, and `wall_seconds` is what this run took. Under torchrun every rank runs the cell,
training is data-parallel, and rank 0 alone writes files.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import cleanbench
from cleanbench import distributed, environment, runcard, stages
from cleanbench.artifacts import CellArtifacts
from cleanbench.attacks.base import Attack
from cleanbench.cache import DEFENDED_MODELS, POISONED_MODELS, content_key
from cleanbench.config import RunConfig, budget_label, build_options, validate
from cleanbench.defenses.base import PRETRAIN_PAIRS, Defense, acts_in_pretraining
from cleanbench.errors import CleanbenchError, RunError, UsageError
from cleanbench.evaluation import clean_accuracy
from cleanbench.fileio import StorageError, remove_stale_temporaries
from cleanbench.models import ModelBundle, check_model
from cleanbench.poisoning import poison_budget
from cleanbench.presets import setting_record
from cleanbench.registry import ATTACKS, DEFENSES
from cleanbench.trigger_fit import fit_attack
from cleanbench.tuning import apply_record

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


def run_cell(config: RunConfig, progress: bool = True, log: Log = _stderr, command: str | None = None) -> tuple[runcard.RunCard, Path]:
    """Run one cell and write its run card; returns the card and its path."""
    plan = Plan(config)
    c = plan.config
    key = plan.cell_key()
    path = plan.card_path()
    with distributed.session(plan.device) as device, environment.torch_threads(c.threads):
        plan.device = device
        main = distributed.is_main()
        progress, log = (progress, log) if main else (False, _silent)
        if main and path.parent.is_dir():
            remove_stale_temporaries(path.parent)
        card = runcard.RunCard(
            status="running", created=runcard.now(),
            command=command, reproduce=f"cleanbench run --config {path.as_posix()}",
            config=c.to_dict(), seed=c.seed, cell_key=key, setting=setting_record(c),
            versions=runcard.versions(), environment=environment.current(device), git_commit=runcard.git_commit(),
            device={**runcard.device_info(device), "processes": distributed.world_size()},
            attack={"name": c.attack, "description": plan.attack_cls.description, "paper": plan.attack_cls.paper},
            defense={"name": c.defense, "description": plan.defense_cls.description, "source": plan.defense_cls.source,
                     "stage": plan.defense_cls.stage, **plan.defense_cls(plan.defense_options).describe(),
                     **({"tuning": plan.tuning} if plan.tuning else {})},
        )
        try:
            _execute(plan, card, path, progress, log)
        except CleanbenchError as error:
            _fail(card, path, error)
            raise
        except Exception as error:
            failure = RunError(f"{card.stage or 'run'} raised {type(error).__name__}: {error}")
            _fail(card, path, failure)
            raise failure from error
    return card, path


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


def _execute(plan: Plan, card: runcard.RunCard, path: Path, progress: bool, log: Log) -> None:
    """The stages of one cell, each recorded in `card` as it finishes; writes the card when done."""
    c, costs, wall_start = plan.config, card.costs, time.perf_counter()
    card.stage = "data"
    cell = stages.load(c.data, c.seed, c.target)
    card.data = cell.data.info  # file-backed data keeps counting reads and skips in it until the card is written
    costs["data_seconds"] = cell.seconds
    log(f"data: {len(cell.data.pretrain)} pretraining pairs, {len(cell.data.clean)} clean pairs, "
        f"{len(cell.data.test)} test images ({cell.seconds:.1f} s)")

    cache = CellArtifacts(c, plan.artifact_keys(), card.environment, log, card.environment_notes.append)
    card.artifacts = cache.record
    card.stage = f"attack {c.attack!r}"
    attack = plan.attack_cls(plan.attack_options, c.data.image_size, c.seed)
    if plan.surrogate_kind:
        card.attack["trigger"] = fit_attack(attack, c, plan.surrogate_kind, cell, cache, plan.device, progress, log)
        costs["trigger_seconds"] = card.attack["trigger"]["seconds"]
    card.attack.update(attack.describe())
    poisoned = stages.poison(stages.PoisonInput(cell.data.pretrain, attack, cell.target_index, cell.target_name,
                                                cell.data.test.templates, c.seed, c.poison_rate, c.poison_count))
    costs["poison_seconds"], card.poison = poisoned.seconds, poisoned.card_section()
    log(f"poison: {poisoned.plan.count} of {poisoned.total} pairs -> target {cell.target_name!r} ({c.attack})")

    card.stage = "pretraining"
    bundle = stages.initial_model(c.model, c.seed, plan.device)
    stored, reused = cache.run(POISONED_MODELS, "poisoned_model", lambda: {"stats": stages.pretrain(stages.PretrainInput(
        bundle, poisoned.pairs, c.pretrain, c.seed, plan.device, progress)).to_dict(), "config": c.to_dict()}, bundle.model)
    card.pretrain = stored["stats"]
    costs["pretrain_seconds"] = card.pretrain["seconds"]
    log(_done("pretrain", reused, cache.keys["poisoned_model"], card.pretrain))

    card.stage = "evaluation"
    evaluation = stages.EvaluateInput(bundle, cell.data.test, attack, cell.target_index, c.seed, plan.device,
                                      progress=progress)
    before = cache.evaluation("poisoned_evaluation", lambda: _evaluate(cache, "poisoned_model", evaluation))
    costs["eval_seconds"], card.metrics = before["seconds"], {"poisoned": before}
    validation = cell.data.validation
    if validation is not None:
        card.metrics["validation"] = {"poisoned": clean_accuracy(bundle, validation, plan.device)}
    log(f"poisoned model: CA {before['ca_top1']['value']:.1%}  ASR {before['asr']['value']:.1%}")

    card.stage = f"defense {c.defense!r}"
    defended, costs["defense_seconds"] = _defend(plan, cache, bundle, cell, poisoned, attack, progress, log)
    card.defense.update(training=defended["training"], notes=defended["notes"])

    card.stage = "evaluation"
    if cache.keys["defended_evaluation"] == cache.keys["poisoned_evaluation"]:
        after, cache.record["defended_evaluation_reused"] = before, True
    else:
        after = cache.evaluation("defended_evaluation", lambda: _evaluate(cache, "defended_model", evaluation))
        costs["eval_seconds"] += after["seconds"]
    card.metrics["defended"] = after
    if validation is not None:
        card.metrics["validation"]["defended"] = (card.metrics["validation"]["poisoned"] if plan.defense_is_identity
                                                 else clean_accuracy(bundle, validation, plan.device))
    card.metrics["change"] = {name: after[name]["value"] - before[name]["value"] for name in ("ca_top1", "asr", "ra")}
    costs["total_seconds"] = sum(costs.values())
    card.wall_seconds, card.reused = time.perf_counter() - wall_start, cache.reused()
    card.status, card.stage, card.finished = "ok", None, runcard.now()
    if distributed.is_main():
        runcard.write_card(path, card)


def _evaluate(cache: CellArtifacts, model_name: str, inputs: stages.EvaluateInput) -> dict:
    """The evaluate stage with the model's class embeddings through the cache (their cost included)."""
    classes, seconds = cache.class_embeddings(model_name, inputs.bundle, inputs.test.classnames, inputs.test.templates,
                                              inputs.device, inputs.progress)
    result = stages.evaluate(dataclasses.replace(inputs, classes=classes))
    result["seconds"] += seconds
    return result


def _done(stage: str, reused: bool, key: str, stats: dict) -> str:
    """The log line of a training stage."""
    if reused:
        return f"{stage}: reused cached {'poisoned' if stage == 'pretrain' else 'defended'} model {key[:12]}"
    return f"{stage}: {stats['steps']} steps in {stats['seconds']:.1f} s ({stats['items_per_second']:.0f} img/s)"


def _defend(plan: Plan, cache: CellArtifacts, bundle: ModelBundle, cell: stages.CellData, poisoned: stages.Poisoned,
            attack: Attack, progress: bool, log: Log) -> tuple[dict, float]:
    """The defend stage through the cache: the defended model lands in `bundle.model`; returns the
    stage's stored record (training, notes, seconds) and its cost. A defense of stage `none` keeps the
    poisoned model, so its defended model is that model and is not stored again."""
    c = plan.config
    inputs = stages.DefendInput(plan.defense_cls(plan.defense_options), bundle, cell.data.clean, c.seed, plan.device,
                                c.defense, stages.guarded_data(poisoned, cell.data.test, attack, c.seed), progress,
                                pretrain=c.pretrain, initial=lambda: stages.initial_model(c.model, c.seed, plan.device))

    def defend() -> dict:
        result = stages.defend(inputs)
        bundle.model = result.model
        return {"training": result.card_training(), "notes": result.context.notes, "seconds": result.seconds,
                "config": c.to_dict()}

    if plan.defense_is_identity:
        record = defend()
        cache.record["defended_model_reused"] = cache.record["poisoned_model_reused"]
        return record, record["seconds"]
    record, reused = cache.run(DEFENDED_MODELS, "defended_model", defend, bundle.model, produced=lambda: bundle.model)
    if reused:
        log(f"defense: reused cached defended model {cache.keys['defended_model'][:12]}")
    return record, record["seconds"]


def _fail(card: runcard.RunCard, path: Path, error: Exception) -> None:
    """Record a failed cell: the card keeps everything computed so far, plus the error.

    When the card itself cannot be written (a full disk), that is raised, naming the path and the
    original error."""
    card.status = "failed"
    card.error = str(error)
    card.finished = runcard.now()
    if not distributed.is_main():
        return
    try:
        runcard.write_card(path, card)
    except StorageError as write_error:
        if isinstance(error, StorageError):
            raise error from None
        raise StorageError(write_error.path, write_error.__cause__, after=str(error)) from error
