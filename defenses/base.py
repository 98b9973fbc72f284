"""The defense contract.

A defense declares its stage, what it needs, and its hyper-parameters as a dataclass with the
reference's defaults, and turns a model into a defended model in `apply`. Finetuning defenses
share one trainer (`DefenseContext.finetune`) and differ only in objective and views.

Every defense may read the clean finetuning pairs (`context.clean`). What a real defender would not
have is reachable only through accessors that check the defense's `needs` and record each read:
`context.pretrain_pairs()` (the poisoned training pairs as the model saw them; for data-filtering
defenses), `context.poison_indices()` (which of them are poisoned: an oracle),
`context.poisoned_test()` (the test images with the trigger: an oracle) and
`context.poisoned_model()` (the model plain CLIP pretraining made of the poisoned pairs). Reading one
that is not declared raises `UndeclaredAccessError`; `cleanbench check-plugin` checks this too.

Two stages (`Defense.stage`):
- post-training (the default, e.g. `post-training finetuning`): `apply` gets the poisoned model and
  returns the defended model.
- `pretraining` (`PRETRAINING`): the defense replaces the pretraining. `apply` gets the bundle freshly
  initialised (the same initial weights as the poisoned model) and a context whose
  `pretrain_config` is the run's pretraining configuration; it must declare `pretrain_pairs`, read
  the poisoned pairs with `context.pretrain_pairs()` and train the model, usually with
  `context.pretrain` (the shared trainer with its own batches, objective and per-epoch callback).
  The runner caches the result under its own key and evaluates it as the defended model; the plain
  poisoned model of the same cell stays the reference.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from cleanbench.attacks.base import Attack, Seeded
from cleanbench.data.base import ClassificationSet, PairSet
from cleanbench.data.column import ImageColumn, image_column
from cleanbench.errors import RunError
from cleanbench.options import NoOptions
from cleanbench.trainer import Batches, Objective, TrainConfig, TrainStats, train

if TYPE_CHECKING:
    from cleanbench.models import ModelBundle

CLEAN_PAIRS = "clean_pairs"
PRETRAIN_PAIRS = "pretrain_pairs"
POISON_INDICES = "poison_indices"
POISONED_TEST = "poisoned_test"
POISONED_MODEL = "poisoned_model"
KNOWN_NEEDS = frozenset({CLEAN_PAIRS, PRETRAIN_PAIRS, POISON_INDICES, POISONED_TEST, POISONED_MODEL})
"""What a defense can declare in `needs`; all but `clean_pairs` are guarded by accessors."""

PRETRAINING = "pretraining"
"""The stage of a defense that replaces the pretraining (see the module's docstring)."""


def acts_in_pretraining(defense: type | object) -> bool:
    """Whether a defense (class or instance) declares the pretraining stage."""
    return getattr(defense, "stage", None) == PRETRAINING


class UndeclaredAccessError(RunError):
    """A defense read run data that it did not declare in `needs`."""

    def __init__(self, defense: str, name: str) -> None:
        super().__init__(
            f"defense {defense!r} read {name} without declaring it; add {name!r} to the class's `needs` "
            f"(e.g. needs = frozenset({{'clean_pairs', {name!r}}})) if it really needs it"
        )
        self.name = name


@dataclass
class PoisonedTest:
    """The test images whose class is not the target, with the trigger applied (an oracle)."""

    images: ImageColumn
    labels: torch.Tensor
    target_index: int
    classnames: tuple[str, ...]
    templates: tuple[str, ...]

    def __post_init__(self) -> None:
        self.images = image_column(self.images)


@dataclass
class DefenseContext:
    """What a defense may use: the clean finetuning pairs, the device, the seed, the trainer, and the
    guarded run data that it declared in `needs`. A pretraining-stage defense also gets the run's
    pretraining configuration (`pretrain_config`) and the seed of its batch order (`pretrain_seed`)."""

    clean: PairSet
    device: torch.device
    seed: int
    progress: bool = True
    needs: frozenset[str] = frozenset({CLEAN_PAIRS})
    defense_name: str = "defense"
    restricted: Mapping[str, Callable[[], Any]] = field(default_factory=dict, repr=False)
    stats: list[TrainStats] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    reads: list[str] = field(default_factory=list)
    pretrain_config: TrainConfig | None = None
    pretrain_seed: int | None = None

    def _read(self, name: str) -> Any:
        if name not in self.reads:
            self.reads.append(name)
        if name not in self.needs:
            raise UndeclaredAccessError(self.defense_name, name)
        if name not in self.restricted:
            raise RunError(f"defense {self.defense_name!r} needs {name}, which this run does not provide")
        self.notes["restricted_reads"] = list(self.reads)
        return self.restricted[name]()

    def pretrain_pairs(self) -> PairSet:
        """The (poisoned) pretraining pairs as the model saw them; needs `pretrain_pairs`."""
        return self._read(PRETRAIN_PAIRS)

    def poison_indices(self) -> torch.Tensor:
        """Indices of the poisoned pairs in `pretrain_pairs()` (ground truth); needs `poison_indices`."""
        return self._read(POISON_INDICES)

    def poisoned_test(self) -> PoisonedTest:
        """The triggered non-target test images (ground truth of the attack); needs `poisoned_test`."""
        return self._read(POISONED_TEST)

    def poisoned_model(self) -> ModelBundle:
        """The model plain CLIP pretraining made of the poisoned pairs (for a pretraining-stage defense
        that audits the data with it); needs `poisoned_model`. Do not change it in place."""
        return self._read(POISONED_MODEL)

    def pretrain(
        self,
        model: nn.Module,
        batches: Batches,
        objective: Objective,
        stage: str,
        config: TrainConfig | None = None,
        on_epoch: Callable[[int], None] | None = None,
        items_per_pair: int = 1,
    ) -> TrainStats:
        """Pretrain `model` with the shared trainer: the run's pretraining configuration (or `config`),
        the run's pretraining batch-order seed, `objective` over `batches`, and `on_epoch(epoch)` called
        before each epoch (0-based). Keeps the statistics for the run card."""
        config = config or self.pretrain_config
        if config is None or self.pretrain_seed is None:
            raise RunError(f"defense {self.defense_name!r} called context.pretrain outside the pretraining stage; "
                           f"declare stage = {PRETRAINING!r} on the class")
        stats = train(model, batches, objective, config, seed=self.pretrain_seed, stage=stage, device=self.device,
                      progress=self.progress, items_per_pair=items_per_pair, on_epoch=on_epoch)
        self.stats.append(stats)
        return stats

    def finetune(
        self,
        model: nn.Module,
        batches: Batches,
        objective: Objective,
        config: TrainConfig,
        stage: str,
        items_per_pair: int = 1,
    ) -> TrainStats:
        """Run the shared trainer and keep its statistics for the run card.

        `items_per_pair` is how many images the objective encodes per clean pair (2 when it adds one
        augmented view of each image, as CleanCLIP does); it scales only the throughput reported in
        the statistics (`items_per_second`), never the training."""
        stats = train(
            model, batches, objective, config,
            seed=self.seed, stage=stage, device=self.device, progress=self.progress, items_per_pair=items_per_pair,
        )
        self.stats.append(stats)
        return stats


@dataclass(frozen=True)
class Strength:
    """A defense's strength knob for the tuning protocol (`cleanbench tune`): the option's name and
    the values to try, weakest first (for a finetuning defense: its learning rate)."""

    knob: str
    grid: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.grid:
            raise ValueError(f"strength knob {self.knob!r} has an empty grid")


class Defense(ABC):
    """Base class of defenses; subclasses set the class attributes and implement `apply`.

    `name`, `description`, `source` (paper or author) and `stage` are shown by `cleanbench list`;
    `needs` declares the run data the defense reads (see `KNOWN_NEEDS`); `Options` is a dataclass of
    hyper-parameters with defaults (`--defense-opt KEY=VALUE`, YAML `defense_options:`; a defense
    without hyper-parameters leaves the default, `NoOptions`; a finetuning defense can subclass
    `TrainingOptions`, whose `train_config()` gives `context.finetune` its configuration); `version`
    is part of the cache key of results, so bump it when the defense's behaviour changes. `strength`
    (optional) names the option that sets how hard the defense pushes and the grid that
    `cleanbench tune` tries on the clean-model control (docs/setting.md); a pretraining-stage
    defense has none (`tune` refuses it: each grid value would cost a full pretraining).

    `stage = "pretraining"` (`PRETRAINING`) makes `apply` train a freshly initialised model on the
    poisoned pairs instead of changing the poisoned model; such a defense must declare
    `pretrain_pairs` in `needs` (see the module's docstring).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    source: ClassVar[str]
    stage: ClassVar[str] = "post-training finetuning"
    needs: ClassVar[frozenset[str]] = frozenset({"clean_pairs"})
    Options: ClassVar[type] = NoOptions
    version: ClassVar[str] = "1"
    strength: ClassVar[Strength | None] = None

    def __init__(self, options: Any) -> None:
        self.options = options

    @abstractmethod
    def apply(self, bundle: ModelBundle, context: DefenseContext) -> nn.Module:
        """Return the defended model (it may be `bundle.model`, changed in place)."""

    def key_parts(self) -> dict[str, Any]:
        """What else determines the defended model besides the options and `version` (e.g. the version
        of a detector the defense runs); part of the defended model's cache key when not empty."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Options, stage, needs and version, for the run card."""
        return {"options": asdict(self.options), "stage": self.stage, "needs": sorted(self.needs), "version": self.version}


def restricted_data(
    pretrain: PairSet, poison_indices: list[int], test: ClassificationSet, attack: Attack, target_index: int, seed: int
) -> dict[str, Callable[[], Any]]:
    """Lazy providers of the guarded run data, for `DefenseContext.restricted`."""

    def poisoned_test() -> PoisonedTest:
        kept = torch.nonzero(test.labels != target_index).flatten().tolist()
        trigger = Seeded(attack, seed, "defense:poisoned-test")
        images = test.images.triggered(kept, trigger).select(kept)
        return PoisonedTest(images, test.labels[kept], target_index, test.classnames, test.templates)

    return {
        PRETRAIN_PAIRS: lambda: pretrain,
        POISON_INDICES: lambda: torch.tensor(poison_indices, dtype=torch.long),
        POISONED_TEST: poisoned_test,
    }
