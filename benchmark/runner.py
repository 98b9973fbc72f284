"""Run one benchmark cell: data -> poison -> pretrain -> evaluate -> defend -> evaluate -> card.

Four artifacts are content-addressed (their keys: `plan.Plan`): the poisoned model, its evaluation, the defended
model and its evaluation; an attack that optimises its trigger adds its surrogate, the trigger and the
trigger's evaluation on the surrogate (`trigger_fit`). Each is loaded from the cache when present,
else computed (under a lock, so concurrent processes compute it once) and stored. The card lists each artifact's key and whether
this run reused it; its `costs` are what producing each stage cost, taken from the artifact when it
was reused, and `wall_seconds` is what this run took. Under torchrun every rank runs the cell,
training is data-parallel, and rank 0 alone writes files.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cleanbench
from cleanbench import distributed, environment, runcard, stages
from cleanbench.artifacts import CellArtifacts
from cleanbench.attacks.base import Attack
from cleanbench.cache import DEFENDED_MODELS, POISONED_MODELS
from cleanbench.config import RunConfig
from cleanbench.errors import CleanbenchError, RunError
from cleanbench.evaluation import clean_accuracy
from cleanbench.fileio import StorageError, remove_stale_temporaries
from cleanbench.models import ModelBundle
from cleanbench.plan import Plan
from cleanbench.presets import setting_record
from cleanbench.trigger_fit import fit_attack

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
