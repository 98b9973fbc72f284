"""Run one benchmark cell: data -> poison -> pretrain (cached) -> evaluate -> defend -> evaluate -> card."""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from cleanbench import runcard
from cleanbench.attacks.base import Attack
from cleanbench.cache import ArtifactCache, content_key
from cleanbench.config import RunConfig, build_options, validate
from cleanbench.data.base import class_index
from cleanbench.data.loading import load_data
from cleanbench.data.shapes import SHAPES
from cleanbench.defenses.base import Defense, DefenseContext, restricted_data
from cleanbench.errors import CleanbenchError, RunError, UsageError
from cleanbench.evaluation import evaluate
from cleanbench.losses import clip_loss
from cleanbench.models import ModelBundle, build_model, check_model
from cleanbench.poisoning import apply_poison, plan_poison, poison_budget
from cleanbench.registry import ATTACKS, DEFENSES
from cleanbench.seeding import derive_seed, seed_everything
from cleanbench.trainer import Batch, InMemoryBatches, train

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


class Plan:
    """A validated cell: the plugin classes and their options, resolved before any work starts."""

    def __init__(self, config: RunConfig) -> None:
        self.config = validate(config)
        self.attack_cls: type[Attack] = ATTACKS.get(config.attack)
        self.defense_cls: type[Defense] = DEFENSES.get(config.defense)
        self.attack_options = build_options(self.attack_cls.Options, config.attack_options, f"attack {config.attack!r} options")
        self.defense_options = build_options(
            self.defense_cls.Options, config.defense_options, f"defense {config.defense!r} options"
        )
        self.device = resolve_device(config.device)
        check_model(config.model.name, config.model.pretrained)
        if config.data.source == "embedded":
            try:
                target_index = class_index(SHAPES, config.target)
            except ValueError as error:
                raise UsageError(f"target {config.target!r}: {error}; use --target NAME") from error
            config.target = SHAPES[target_index]
        if config.attack != "none":
            poison_budget(config.data.n_pretrain, config.poison_rate, config.poison_count)

    @property
    def budget_label(self) -> str:
        if self.config.attack == "none":
            return "clean"
        c = self.config
        return f"n{c.poison_count}" if c.poison_count is not None else f"p{c.poison_rate:g}"

    def poisoned_model_key(self) -> str:
        """Hash of exactly what determines the poisoned model."""
        c = self.config
        return content_key({
            "artifact": "poisoned-model",
            "cleanbench": runcard.versions()["cleanbench"],
            "attack": c.attack, "attack_version": self.attack_cls.version,
            "attack_options": asdict(self.attack_options),
            "poison_rate": c.poison_rate if c.attack != "none" else None,
            "poison_count": c.poison_count if c.attack != "none" else None,
            "target": c.target, "seed": c.seed,
            "data": asdict(c.data), "model": asdict(c.model), "pretrain": asdict(c.pretrain),
        })

    def cell_key(self) -> str:
        return content_key({"poisoned": self.poisoned_model_key(), "defense": self.config.defense,
                            "defense_version": self.defense_cls.version,
                            "defense_options": asdict(self.defense_options)})


def _pretrain_objective(bundle: ModelBundle) -> Callable[[torch.nn.Module, Batch], dict[str, torch.Tensor]]:
    def objective(model: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        images = model.encode_image(bundle.model_input(batch["images"]), normalize=True)
        texts = model.encode_text(batch["tokens"], normalize=True)
        return {"loss": clip_loss(images, texts, model.logit_scale.exp())}

    return objective


def run_cell(config: RunConfig, progress: bool = True, log: Log = _stderr, command: str | None = None) -> tuple[dict, Path]:
    """Run one cell and write its run card; returns the card and its path."""
    plan = Plan(config)
    c = plan.config
    key = plan.cell_key()
    path = runcard.card_path(c.results_dir, c.attack, c.defense, plan.budget_label, c.seed, key)
    costs: dict[str, float] = {}
    card: dict[str, Any] = {
        "schema_version": runcard.SCHEMA_VERSION, "status": "running", "created": runcard.now(),
        "command": command, "reproduce": f"cleanbench run --config {path.as_posix()}",
        "config": c.to_dict(), "seed": c.seed, "cell_key": key,
        "versions": runcard.versions(), "git_commit": runcard.git_commit(), "device": runcard.device_info(plan.device),
        "attack": {"name": c.attack, "description": plan.attack_cls.description, "paper": plan.attack_cls.paper},
        "defense": {"name": c.defense, "description": plan.defense_cls.description, "source": plan.defense_cls.source,
                    "stage": plan.defense_cls.stage, **plan.defense_cls(plan.defense_options).describe()},
        "costs": costs,
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


def _execute(plan: Plan, card: dict[str, Any], path: Path, progress: bool, log: Log) -> None:
    """The stages of one cell; fills `card` as it goes and writes it when done."""
    c = plan.config
    costs = card["costs"]
    total_start = time.perf_counter()

    start = time.perf_counter()
    data = load_data(c.data, c.seed)
    card["data"] = data.info  # file-backed data keeps counting reads and skips in it until the card is written
    target_index = class_index(data.test.classnames, c.target)
    target_name = data.test.classnames[target_index]
    costs["data_seconds"] = time.perf_counter() - start
    log(f"data: {len(data.pretrain)} pretraining pairs, {len(data.clean)} clean pairs, {len(data.test)} test images "
        f"({costs['data_seconds']:.1f} s)")

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
        "indices": poison.indices, "indices_sha256": poison.indices_sha256(),
        "example_captions": poison.captions[:5],
    }
    log(f"poison: {poison.count} of {len(data.pretrain)} pairs -> target {target_name!r} ({c.attack})")

    card["stage"] = "pretraining"
    seed_everything(derive_seed(c.seed, "init"))
    bundle = build_model(c.model.name, c.model.pretrained, str(plan.device), c.model.trust_checkpoint)
    cache = ArtifactCache(c.cache_dir)
    poisoned_key = plan.poisoned_model_key()
    meta = cache.load("poisoned-models", poisoned_key, bundle.model) if c.use_cache else None
    if meta is not None:
        card["pretrain"] = meta["stats"]
        costs["pretrain_seconds"] = 0.0
        log(f"pretrain: reused cached poisoned model {poisoned_key[:12]}")
    else:
        tokens = bundle.tokenizer(poisoned_pairs.captions)
        batches = InMemoryBatches({"images": poisoned_pairs.images.to(plan.device), "tokens": tokens.to(plan.device)},
                                  c.pretrain.batch_size)
        stats = train(bundle.model, batches, _pretrain_objective(bundle), c.pretrain, seed=derive_seed(c.seed, "pretrain"),
                      stage="pretrain", device=plan.device, progress=progress)
        card["pretrain"] = stats.to_dict()
        costs["pretrain_seconds"] = stats.seconds
        if c.use_cache:
            cache.save("poisoned-models", poisoned_key, bundle.model, {"stats": stats.to_dict(), "config": c.to_dict()})
        log(f"pretrain: {stats.steps} steps in {stats.seconds:.1f} s ({stats.items_per_second:.0f} img/s)")
    card["artifacts"] = {"poisoned_model": poisoned_key, "poisoned_model_reused": meta is not None}

    card["stage"] = "evaluation"
    before = evaluate(bundle, data.test, attack, target_index, c.seed, plan.device)
    costs["eval_seconds"] = before["seconds"]
    card["metrics"] = {"poisoned": before}
    log(f"poisoned model: CA {before['ca_top1']['value']:.1%}  ASR {before['asr']['value']:.1%}")

    defense = plan.defense_cls(plan.defense_options)
    context = DefenseContext(
        data.clean, plan.device, derive_seed(c.seed, "defense"), progress, needs=frozenset(defense.needs),
        defense_name=c.defense,
        restricted=restricted_data(poisoned_pairs, poison.indices, data.test, attack, target_index, c.seed),
    )
    start = time.perf_counter()
    card["stage"] = f"defense {c.defense!r}"
    bundle.model = defense.apply(copy.copy(bundle), context)
    costs["defense_seconds"] = time.perf_counter() - start
    card["defense"]["training"] = [s.to_dict() for s in context.stats]
    card["defense"]["notes"] = context.notes
    after = evaluate(bundle, data.test, attack, target_index, c.seed, plan.device)
    costs["eval_seconds"] += after["seconds"]
    card["metrics"]["defended"] = after
    card["metrics"]["change"] = {
        "ca_top1": after["ca_top1"]["value"] - before["ca_top1"]["value"],
        "asr": after["asr"]["value"] - before["asr"]["value"],
        "ra": after["ra"]["value"] - before["ra"]["value"],
    }
    costs["total_seconds"] = time.perf_counter() - total_start
    card["status"] = "ok"
    card.pop("stage", None)
    card["finished"] = runcard.now()
    runcard.write_card(path, card)


def _fail(card: dict, path: Path, error: Exception) -> None:
    """Record a failed cell: the card keeps everything computed so far, plus the error."""
    card["status"] = "failed"
    card["error"] = str(error)
    card["finished"] = runcard.now()
    runcard.write_card(path, card)
