"""Run one benchmark cell: data -> poison -> pretrain -> evaluate -> defend -> evaluate -> card.

Four artifacts are content-addressed (see `Plan`): the poisoned model, its evaluation, the defended
model and its evaluation. Each is loaded from the cache when present, else computed (under a lock,
so concurrent processes compute it once) and stored. The card lists each artifact's key and whether
this run reused it; its `costs` are what producing each stage cost, taken from the artifact when it
was reused, and `wall_seconds` is what this run took. Under torchrun every rank runs the cell,
training is data-parallel, and rank 0 alone writes files.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import sys
import time
from collections.abc import Callable
import dataclasses
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import cleanbench
from cleanbench import distributed, environment, runcard
from cleanbench.artifacts import CellArtifacts
from cleanbench.attacks.base import Attack
from cleanbench.cache import DEFENDED_MODELS, POISONED_MODELS, content_key
from cleanbench.config import RunConfig, budget_label, build_options, validate
from cleanbench.data.base import PairSet, class_index
from cleanbench.data.loading import load_data
from cleanbench.data.shapes import SHAPES
from cleanbench.defenses.base import Defense, DefenseContext, restricted_data
from cleanbench.errors import CleanbenchError, RunError, UsageError
from cleanbench.evaluation import clean_accuracy, evaluate
from cleanbench.fileio import StorageError, remove_stale_temporaries
from cleanbench.losses import clip_loss
from cleanbench.models import ModelBundle, build_model, check_model
from cleanbench.poisoning import apply_poison, plan_poison, poison_budget
from cleanbench.registry import ATTACKS, DEFENSES
from cleanbench.seeding import derive_seed, seed_everything
from cleanbench.trainer import Batch, InMemoryBatches, train
from cleanbench.presets import setting_record
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
        self.config = validate(config)
        if config.attack != "none":
            poison_budget(config.data.n_pretrain, config.poison_rate, config.poison_count)
        self.attack_cls: type[Attack] = ATTACKS.get(config.attack)
        self.defense_cls: type[Defense] = DEFENSES.get(config.defense)
        self.attack_options = build_options(self.attack_cls.Options, config.attack_options, f"attack {config.attack!r} options")
        defaults = config.defense_defaults.get(config.defense, {})
        build_options(self.defense_cls.Options, {**defaults, **config.defense_options}, f"defense {config.defense!r} options")
        self.device = resolve_device(config.device)
        self._data_parts: dict[str, dict[str, Any]] = {}
        self._keys: dict[str, str] = {}  # computed once: a grid's expansion asks for each key several times
        check_model(config.model.name, config.model.pretrained)
        if config.data.source == "embedded":
            try:
                target_index = class_index(SHAPES, config.target)
            except ValueError as error:
                raise UsageError(f"target {config.target!r}: {error}; use --target NAME") from error
            config.target = SHAPES[target_index]
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
            "attack": c.attack, "attack_version": self.attack_cls.version,
            "attack_options": asdict(self.attack_options),
            "poison_rate": c.poison_rate if c.attack != "none" else None,
            "poison_count": c.poison_count if c.attack != "none" else None,
            "target": c.target, "seed": c.seed, "threads": c.threads, "data": self._data("pretrain"), "pretrain": asdict(c.pretrain),
            "model": model, "model_digest": _digest(c.model.name.removeprefix("local-dir:")),
            "pretrained_digest": _digest(c.model.pretrained),
        })
        return self._keys["poisoned"]

    def _defense_inputs(self) -> dict[str, Any]:
        return {"poisoned": self.poisoned_model_key(), "defense": self.config.defense,
                "defense_version": self.defense_cls.version, "defense_options": asdict(self.defense_options),
                "clean_data": self._data("clean"), "threads": self.config.threads}

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

    def artifact_keys(self) -> dict[str, str]:
        """The keys of the cell's four artifacts, by name."""
        poisoned, defended = self.poisoned_model_key(), self.defended_model_key()
        return {"poisoned_model": poisoned, "poisoned_evaluation": self.evaluation_key(poisoned),
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


def pretrain_objective(bundle: ModelBundle) -> Callable[[torch.nn.Module, Batch], dict[str, torch.Tensor]]:
    """The pretraining objective: the CLIP loss between the batch's images and tokenised captions."""

    def objective(model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        images = model.encode_image(bundle.model_input(batch["images"]), normalize=True)
        texts = model.encode_text(batch["tokens"], normalize=True)
        return {"loss": clip_loss(images, texts, model.logit_scale.exp())}

    return objective


def pretrain_batches(bundle: ModelBundle, pairs: PairSet, device: torch.device, batch_size: int) -> InMemoryBatches:
    """The pretraining batches: the (poisoned) pairs' images and tokenised captions on `device`."""
    tokens = bundle.tokenizer(pairs.captions)
    return InMemoryBatches({"images": pairs.images.to(device), "tokens": tokens.to(device)}, batch_size)


def run_cell(config: RunConfig, progress: bool = True, log: Log = _stderr, command: str | None = None) -> tuple[dict, Path]:
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
        card: dict[str, Any] = {
            "schema_version": runcard.SCHEMA_VERSION, "status": "running", "created": runcard.now(),
            "command": command, "reproduce": f"cleanbench run --config {path.as_posix()}",
            "config": c.to_dict(), "seed": c.seed, "cell_key": key, "setting": setting_record(c),
            "versions": runcard.versions(), "environment": environment.current(device), "git_commit": runcard.git_commit(),
            "device": {**runcard.device_info(device), "processes": distributed.world_size()},
            "attack": {"name": c.attack, "description": plan.attack_cls.description, "paper": plan.attack_cls.paper},
            "defense": {"name": c.defense, "description": plan.defense_cls.description, "source": plan.defense_cls.source,
                        "stage": plan.defense_cls.stage, **plan.defense_cls(plan.defense_options).describe(),
                        **({"tuning": plan.tuning} if plan.tuning else {})},
            "costs": {},
        }
        try:
            _execute(plan, card, path, progress, log)
        except CleanbenchError as error:
            _fail(card, path, error)
            raise
        except Exception as error:
            failure = RunError(f"{card.get('stage', 'run')} raised {type(error).__name__}: {error}")
            _fail(card, path, failure)
            raise failure from error
    return card, path


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


def _execute(plan: Plan, card: dict[str, Any], path: Path, progress: bool, log: Log) -> None:
    """The stages of one cell; fills `card` as it goes and writes it when done."""
    c = plan.config
    costs = card["costs"]
    wall_start = time.perf_counter()

    card["stage"] = "data"
    start = time.perf_counter()
    data = load_data(c.data, c.seed)
    card["data"] = data.info  # file-backed data keeps counting reads and skips in it until the card is written
    target_index = class_index(data.test.classnames, c.target)
    target_name = data.test.classnames[target_index]
    costs["data_seconds"] = time.perf_counter() - start
    log(f"data: {len(data.pretrain)} pretraining pairs, {len(data.clean)} clean pairs, {len(data.test)} test images "
        f"({costs['data_seconds']:.1f} s)")

    card["stage"] = f"attack {c.attack!r}"
    attack = plan.attack_cls(plan.attack_options, c.data.image_size, c.seed)
    card["attack"].update(attack.describe())
    budget = poison_budget(len(data.pretrain), c.poison_rate, c.poison_count) if c.attack != "none" else 0
    start = time.perf_counter()
    poison = plan_poison(data.pretrain, attack, target_index, target_name, budget, data.test.templates, c.seed)
    poisoned_pairs = apply_poison(data.pretrain, poison, attack, c.seed)
    costs["poison_seconds"] = time.perf_counter() - start
    card["poison"] = {
        "target": target_name, "target_index": target_index, "count": poison.count,
        "rate": poison.count / len(data.pretrain), "candidates": poison.candidates,
        "indices": poison.indices, "indices_sha256": poison.indices_sha256(), "noise_count": len(poison.noise_indices),
        "example_captions": poison.captions[:5],
    }
    log(f"poison: {poison.count} of {len(data.pretrain)} pairs -> target {target_name!r} ({c.attack})")

    card["stage"] = "pretraining"
    artifacts = CellArtifacts(plan.config, plan.artifact_keys(), card, log)
    seed_everything(derive_seed(c.seed, "init"))
    bundle = build_model(c.model.name, c.model.pretrained, str(plan.device), c.model.trust_checkpoint)
    with artifacts.computing(POISONED_MODELS, "poisoned_model"):
        meta = artifacts.load_model(POISONED_MODELS, "poisoned_model", bundle.model)
        if meta is not None:
            card["pretrain"] = meta["stats"]
            log(f"pretrain: reused cached poisoned model {artifacts.keys['poisoned_model'][:12]}")
        else:
            batches = pretrain_batches(bundle, poisoned_pairs, plan.device, c.pretrain.batch_size)
            stats = train(bundle.model, batches, pretrain_objective(bundle), c.pretrain,
                          seed=derive_seed(c.seed, "pretrain"), stage="pretrain", device=plan.device, progress=progress)
            card["pretrain"] = stats.to_dict()
            artifacts.save_model(POISONED_MODELS, "poisoned_model", bundle.model,
                                 {"stats": stats.to_dict(), "config": c.to_dict()})
            log(f"pretrain: {stats.steps} steps in {stats.seconds:.1f} s ({stats.items_per_second:.0f} img/s)")
    costs["pretrain_seconds"] = card["pretrain"]["seconds"]

    card["stage"] = "evaluation"
    def evaluation(model_name: str) -> dict:
        """The model's evaluation: its class embeddings through the cache, then the test images scored."""
        classes, seconds = artifacts.class_embeddings(model_name, bundle, data.test.classnames, data.test.templates,
                                                      plan.device, progress)
        result = evaluate(bundle, data.test, attack, target_index, c.seed, plan.device, classes=classes, progress=progress)
        result["seconds"] += seconds
        return result

    before = artifacts.evaluation("poisoned_evaluation", lambda: evaluation("poisoned_model"))
    costs["eval_seconds"] = before["seconds"]
    card["metrics"] = {"poisoned": before}
    if data.validation is not None:
        card["metrics"]["validation"] = {"poisoned": clean_accuracy(bundle, data.validation, plan.device)}
    log(f"poisoned model: CA {before['ca_top1']['value']:.1%}  ASR {before['asr']['value']:.1%}")

    card["stage"] = f"defense {c.defense!r}"
    with artifacts.computing(DEFENDED_MODELS, "defended_model"):
        meta = None if plan.defense_is_identity else artifacts.load_model(DEFENDED_MODELS, "defended_model", bundle.model)
        if meta is not None:
            card["defense"].update(training=meta["training"], notes=meta["notes"])
            costs["defense_seconds"] = meta["seconds"]
            log(f"defense: reused cached defended model {artifacts.keys['defended_model'][:12]}")
        else:
            defense = plan.defense_cls(plan.defense_options)
            context = DefenseContext(
                data.clean, plan.device, derive_seed(c.seed, "defense"), progress, needs=frozenset(defense.needs),
                defense_name=c.defense,
                restricted=restricted_data(poisoned_pairs, poison.indices, data.test, attack, target_index, c.seed),
            )
            start = time.perf_counter()
            bundle.model = defense.apply(copy.copy(bundle), context)
            costs["defense_seconds"] = time.perf_counter() - start
            card["defense"]["training"] = [s.to_dict() for s in context.stats]
            card["defense"]["notes"] = context.notes
            if plan.defense_is_identity:
                artifacts.record["defended_model_reused"] = artifacts.record["poisoned_model_reused"]
            else:
                artifacts.save_model(DEFENDED_MODELS, "defended_model", bundle.model, {
                    "training": card["defense"]["training"], "notes": context.notes,
                    "seconds": costs["defense_seconds"], "config": c.to_dict()})

    card["stage"] = "evaluation"
    if artifacts.keys["defended_evaluation"] == artifacts.keys["poisoned_evaluation"]:
        after = before
        artifacts.record["defended_evaluation_reused"] = True
    else:
        after = artifacts.evaluation("defended_evaluation", lambda: evaluation("defended_model"))
        costs["eval_seconds"] += after["seconds"]
    card["metrics"]["defended"] = after
    if data.validation is not None:
        card["metrics"]["validation"]["defended"] = (
            card["metrics"]["validation"]["poisoned"] if plan.defense_is_identity
            else clean_accuracy(bundle, data.validation, plan.device))
    card["metrics"]["change"] = {
        "ca_top1": after["ca_top1"]["value"] - before["ca_top1"]["value"],
        "asr": after["asr"]["value"] - before["asr"]["value"],
        "ra": after["ra"]["value"] - before["ra"]["value"],
    }
    costs["total_seconds"] = sum(costs.values())
    card["wall_seconds"] = time.perf_counter() - wall_start
    card["reused"] = artifacts.reused()
    card["status"] = "ok"
    card.pop("stage", None)
    card["finished"] = runcard.now()
    if distributed.is_main():
        runcard.write_card(path, card)


def _fail(card: dict, path: Path, error: Exception) -> None:
    """Record a failed cell: the card keeps everything computed so far, plus the error.

    When the card itself cannot be written (a full disk), that is raised, naming the path and the
    original error."""
    card["status"] = "failed"
    card["error"] = str(error)
    card["finished"] = runcard.now()
    if not distributed.is_main():
        return
    try:
        runcard.write_card(path, card)
    except StorageError as write_error:
        if isinstance(error, StorageError):
            raise error from None
        raise StorageError(write_error.path, write_error.__cause__, after=str(error)) from error
