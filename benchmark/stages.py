"""The stages of a cell as functions with typed inputs and results: data, trigger fit (attacks that
optimise their trigger on a surrogate), poison, pretrain, evaluate, defend.

Every path that runs a cell or part of one calls these: the runner (`cleanbench run` and sweeps),
`cleanbench bench`, `cleanbench check-plugin` and the GPU check, so they cannot drift from what a
run does. A stage knows nothing of caches or run cards: `artifacts.CellArtifacts.run` wraps a stage
with the artifact cache, and the runner writes results into the `RunCard`.

A defense that acts during pretraining (`Defense.stage == "pretraining"`: it filters the poisoned
pairs or changes the training objective while the model trains) runs in `defend` too, but on a
freshly initialised model (`DefendInput.initial`) with the run's pretraining configuration
(`DefendInput.pretrain`); the poisoned model is then only the reference (and, when declared, an
input: `context.poisoned_model()`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cleanbench.attacks.base import Attack, FittedTrigger, Surrogate
from cleanbench.config import DataConfig, ModelConfig, RunConfig
from cleanbench.data.base import BenchmarkData, ClassificationSet, PairSet, class_index
from cleanbench.data.loading import check_file_data, load_data
from cleanbench.defenses.base import POISONED_MODEL, Defense, DefenseContext, acts_in_pretraining, restricted_data
from cleanbench.errors import RunError
from cleanbench.evaluation import evaluate as zero_shot
from cleanbench.losses import clip_objective
from cleanbench.models import ModelBundle, build_model, input_size
from cleanbench.poisoning import PoisonPlan, apply_poison, plan_poison, poison_budget
from cleanbench.seeding import derive_seed, seed_everything, torch_generator
from cleanbench.trainer import Batches, Objective, TrainConfig, TrainStats, pair_batches, train


def resolve_file_data(config: RunConfig) -> RunConfig:
    """`config` with what file data implies filled in: the model's input resolution as the image
    size, the split sizes counted from the files, and the target checked against the evaluation
    classes (UsageError naming the setting). Embedded data: only the target is checked (among the
    shapes)."""
    if config.data.source != "embedded":
        config.data.image_size = input_size(config.model.name)
    config.target = check_file_data(config.data, config.target)
    return config


@dataclass
class CellData:
    """The data stage's result: the three splits, the resolved target class, and what loading cost."""

    data: BenchmarkData
    target_index: int
    target_name: str
    seconds: float


def load(config: DataConfig, seed: int, target: str | int) -> CellData:
    """The data stage: the pretraining pairs, clean pairs and test set of `seed`, and the target class."""
    start = time.perf_counter()
    data = load_data(config, seed)
    target_index = class_index(data.test.classnames, target)
    return CellData(data, target_index, data.test.classnames[target_index], time.perf_counter() - start)


def surrogate(bundle: ModelBundle, device: torch.device) -> Surrogate:
    """`bundle`'s model, frozen in eval mode, as the `Surrogate` an attack optimises its trigger on."""
    model = bundle.model.to(device).eval().requires_grad_(False)

    def encode_images(images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != bundle.image_size or images.shape[-2] != bundle.image_size:
            images = nn.functional.interpolate(images, size=(bundle.image_size, bundle.image_size), mode="bicubic",
                                               antialias=True).clamp(0, 1)
        return model.encode_image(bundle.normalize(images), normalize=True)

    def encode_texts(captions) -> torch.Tensor:
        return model.encode_text(bundle.tokenizer(list(captions)).to(device), normalize=True)

    return Surrogate(encode_images, encode_texts, float(model.logit_scale.exp()), device)


@dataclass
class FitInput:
    """What the trigger-fit stage reads: the attack, the frozen surrogate, the clean pretraining pairs,
    the target and the seed."""

    attack: Attack
    surrogate: Surrogate
    pairs: PairSet
    target_index: int
    target_name: str
    seed: int


def fit_trigger(inputs: FitInput) -> FittedTrigger:
    """The trigger-fit stage: `attack.fit` on the surrogate from the seed stream `trigger-fit`; the
    returned record gains `seconds`. The attack keeps the fitted trigger for the poison stage."""
    f = inputs
    start = time.perf_counter()
    generator = torch_generator(derive_seed(f.seed, "trigger-fit", f.attack.name))
    fitted = f.attack.fit(f.surrogate, f.pairs, f.target_index, f.target_name, generator)
    fitted.record["seconds"] = time.perf_counter() - start
    return fitted


@dataclass
class PoisonInput:
    """What the poison stage reads: the clean pairs, the attack, the target and the budget."""

    pairs: PairSet
    attack: Attack
    target_index: int
    target_name: str
    templates: tuple[str, ...] | list[str]
    seed: int
    poison_rate: float | None = None
    poison_count: int | None = None


@dataclass
class Poisoned:
    """The poison stage's result: the pairs the model trains on, the plan, and what poisoning cost."""

    pairs: PairSet
    plan: PoisonPlan
    total: int
    seconds: float

    def card_section(self) -> dict[str, Any]:
        """The run card's `poison` section."""
        plan = self.plan
        return {"target": plan.target_name, "target_index": plan.target_index, "count": plan.count,
                "rate": plan.count / self.total, "candidates": plan.candidates, "indices": plan.indices,
                "indices_sha256": plan.indices_sha256(), "noise_count": len(plan.noise_indices),
                "example_captions": plan.captions[:5]}


def poison(inputs: PoisonInput) -> Poisoned:
    """The poison stage: choose the budget's pairs among the attack's candidates and trigger them."""
    p = inputs
    if p.attack.needs_surrogate and not p.attack.fitted:
        raise RunError(f"attack {p.attack.name} optimises its trigger on a surrogate: run the trigger-fit stage "
                       "(`fit_trigger`) or restore its fitted trigger before poisoning")
    budget = 0 if p.attack.name == "none" else poison_budget(len(p.pairs), p.poison_rate, p.poison_count)
    start = time.perf_counter()
    plan = plan_poison(p.pairs, p.attack, p.target_index, p.target_name, budget, p.templates, p.seed)
    pairs = apply_poison(p.pairs, plan, p.attack, p.seed)
    return Poisoned(pairs, plan, len(p.pairs), time.perf_counter() - start)


def initial_model(config: ModelConfig, seed: int, device: torch.device) -> ModelBundle:
    """The model as pretraining starts from it: built with the run's `init` seed, so the poisoned
    model and a pretraining-stage defense's model start from the same weights."""
    seed_everything(derive_seed(seed, "init"))
    return build_model(config.name, config.pretrained, str(device), config.trust_checkpoint)


@dataclass
class PretrainInput:
    """What the pretrain stage reads. `objective` defaults to the CLIP loss (`losses.clip_objective`)."""

    bundle: ModelBundle
    pairs: PairSet
    config: TrainConfig
    seed: int
    device: torch.device
    progress: bool = False
    objective: Objective | None = None


def pretrain_batches(bundle: ModelBundle, pairs: PairSet, device: torch.device, batch_size: int) -> Batches:
    """The pretraining batches: the pairs' images and tokenised captions on `device`."""
    return pair_batches(bundle, pairs, device, batch_size)


def pretrain(inputs: PretrainInput) -> TrainStats:
    """The pretrain stage: train `bundle.model` in place on the (poisoned) pairs."""
    p = inputs
    batches = pretrain_batches(p.bundle, p.pairs, p.device, p.config.batch_size)
    objective = p.objective or clip_objective(p.bundle)
    return train(p.bundle.model, batches, objective, p.config, seed=derive_seed(p.seed, "pretrain"), stage="pretrain",
                 device=p.device, progress=p.progress)


@dataclass
class EvaluateInput:
    """What the evaluate stage reads: the model, the test set, the attack's trigger and the target."""

    bundle: ModelBundle
    test: ClassificationSet
    attack: Attack
    target_index: int
    seed: int
    device: torch.device
    classes: torch.Tensor | None = None
    """The class embeddings, when the caller has them (the runner caches them); else computed."""
    progress: bool = False


def evaluate(inputs: EvaluateInput) -> dict[str, Any]:
    """The evaluate stage: CA top-1/top-5 on clean test images, ASR and RA on triggered ones."""
    e = inputs
    return zero_shot(e.bundle, e.test, e.attack, e.target_index, e.seed, e.device, classes=e.classes,
                     progress=e.progress)


@dataclass
class DefendInput:
    """What the defend stage reads: the defense, the poisoned model, the clean pairs, and the guarded
    run data (`restricted`, see `defenses.base.restricted_data`) that the defense may declare.

    A pretraining-stage defense also needs `pretrain` (the run's pretraining configuration) and
    `initial` (makes the model freshly initialised, as the poisoned model started)."""

    defense: Defense
    bundle: ModelBundle
    clean: PairSet
    seed: int
    device: torch.device
    name: str
    restricted: Mapping[str, Callable[[], Any]] = field(default_factory=dict)
    progress: bool = False
    pretrain: TrainConfig | None = None
    initial: Callable[[], ModelBundle] | None = None


@dataclass
class Defended:
    """The defend stage's result: the defended model, its training statistics and notes, the guarded
    data it read, and what defending cost."""

    model: nn.Module
    context: DefenseContext
    seconds: float

    def card_training(self) -> list[dict[str, Any]]:
        """The run card's `defense.training` list."""
        return [s.to_dict() for s in self.context.stats]


def guarded_data(poisoned: Poisoned, test: ClassificationSet, attack: Attack, seed: int) -> dict[str, Callable[[], Any]]:
    """The guarded run data of a cell, for `DefendInput.restricted`."""
    return restricted_data(poisoned.pairs, poisoned.plan.indices, test, attack, poisoned.plan.target_index, seed)


def defense_context(inputs: DefendInput) -> DefenseContext:
    """The context a defense sees in the defend stage. A pretraining-stage defense's also holds the
    pretraining configuration, the pretraining batch-order seed (the poisoned model's: the same
    objective on the same pairs gives the same model) and the poisoned model as guarded data."""
    d = inputs
    context = DefenseContext(d.clean, d.device, derive_seed(d.seed, "defense"), d.progress,
                             needs=frozenset(d.defense.needs), defense_name=d.name, restricted=d.restricted)
    if acts_in_pretraining(d.defense):
        poisoned = copy.copy(d.bundle)  # the runner's bundle gets the defended model afterwards
        context.restricted = {**d.restricted, POISONED_MODEL: lambda: poisoned}
        context.pretrain_config, context.pretrain_seed = d.pretrain, derive_seed(d.seed, "pretrain")
    return context


def defend(inputs: DefendInput, context: DefenseContext | None = None) -> Defended:
    """The defend stage: apply the defense to a shallow copy of the bundle (the model may change in
    place), or, for a pretraining-stage defense, to a freshly initialised bundle.

    `context` defaults to `defense_context(inputs)`; a caller that must see the context even when the
    defense raises (the conformance check reads `context.reads`) makes it first and passes it."""
    context = context or defense_context(inputs)
    start = time.perf_counter()
    if acts_in_pretraining(inputs.defense):
        if inputs.pretrain is None or inputs.initial is None:
            raise RunError(f"defense {inputs.name!r} acts during pretraining, but the defend stage was given no "
                           "pretraining configuration or initial model (DefendInput.pretrain and .initial)")
        bundle = inputs.initial()
    else:
        bundle = copy.copy(inputs.bundle)
    model = inputs.defense.apply(bundle, context)
    return Defended(model, context, time.perf_counter() - start)
