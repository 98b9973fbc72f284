"""The defense contract.

A defense declares its stage, what it needs, and its hyper-parameters as a dataclass with the
reference's defaults, and turns a model into a defended model in `apply`. Finetuning defenses
share one trainer (`DefenseContext.finetune`) and differ only in objective and views.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from cleanbench.data.base import PairSet
from cleanbench.models import ModelBundle
from cleanbench.trainer import InMemoryBatches, Objective, TrainConfig, TrainStats, train


@dataclass
class DefenseContext:
    """What a defense may use: the clean finetuning pairs, the device, the seed, the trainer."""

    clean: PairSet
    device: torch.device
    seed: int
    progress: bool = True
    stats: list[TrainStats] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def finetune(
        self,
        model: nn.Module,
        batches: InMemoryBatches,
        objective: Objective,
        config: TrainConfig,
        stage: str,
        items_per_pair: int = 1,
    ) -> TrainStats:
        """Run the shared trainer and keep its statistics for the run card."""
        stats = train(
            model, batches, objective, config,
            seed=self.seed, stage=stage, device=self.device, progress=self.progress, items_per_pair=items_per_pair,
        )
        self.stats.append(stats)
        return stats


class Defense(ABC):
    """Base class of defenses; subclasses set the class attributes and implement `apply`."""

    name: ClassVar[str]
    description: ClassVar[str]
    source: ClassVar[str]
    stage: ClassVar[str] = "post-training finetuning"
    needs: ClassVar[frozenset[str]] = frozenset({"clean_pairs"})
    Options: ClassVar[type]
    version: ClassVar[str] = "1"

    def __init__(self, options: Any) -> None:
        self.options = options

    @abstractmethod
    def apply(self, bundle: ModelBundle, context: DefenseContext) -> nn.Module:
        """Return the defended model (it may be `bundle.model`, changed in place)."""

    def describe(self) -> dict[str, Any]:
        return {"options": asdict(self.options), "stage": self.stage, "version": self.version}
