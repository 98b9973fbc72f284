"""Supervised finetuning (the paper's SuFi): train the image encoder with a linear head and
cross-entropy on labelled clean images; the text tower is left as it is.

Reference (docs/reference.md §4): a fresh Linear(embed -> classes) on the image features, the whole
vision encoder trained, AdamW with weight decay 0.01, lr 1e-4, 500 warm-up steps, 10 epochs,
batch 80, on a 50,000-image ImageNet subset. cleanbench scores every defense zero-shot, so the
default head here is the zero-shot classifier itself (`head="zeroshot"`): the normalised text
embeddings of `prompt` for each class, times the model's temperature, kept fixed. The encoder then
learns the classes in the space that the zero-shot evaluation reads. `head="linear"` is the
reference's fresh trainable head on unnormalised features.

Needs a class label for every clean image (`PairSet.labels >= 0`) and the class names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from cleanbench.defenses.base import Defense, DefenseContext
from cleanbench.defenses.contrastive import TrainingOptions
from cleanbench.errors import UsageError
from cleanbench.seeding import derive_seed
from cleanbench.trainer import Batch, Batches

if TYPE_CHECKING:
    from cleanbench.models import ModelBundle

HEADS = ("zeroshot", "linear")


@dataclass
class SupervisedOptions(TrainingOptions):
    """Training options, the head (`zeroshot` or `linear`) and the prompt of the zero-shot head."""

    lr: float = 5e-4
    head: str = "zeroshot"
    prompt: str = "a photo of a {}."

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, not {self.head!r}")
        if "{}" not in self.prompt:
            raise ValueError(f"prompt must contain {{}} where the class name goes, not {self.prompt!r}")


REFERENCE_OPTIONS = dict(
    epochs=10, batch_size=80, lr=1e-4, warmup_steps=500, weight_decay=0.01, beta1=0.9, beta2=0.999, eps=1e-8,
    head="linear",
)
"""The reference's SuFi settings (docs/reference.md §4)."""


class ImageClassifier(nn.Module):
    """The image tower with a classification head: logits = scale * head(features)."""

    def __init__(self, visual: nn.Module, head: nn.Linear, normalize: bool, scale: float) -> None:
        super().__init__()
        self.visual = visual
        self.head = head
        self.normalize = normalize
        self.scale = scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.visual(images)
        if self.normalize:
            features = F.normalize(features, dim=-1)
        return self.scale * self.head(features)


class SupervisedFinetune(Defense):
    """Cross-entropy finetuning of the image encoder on labelled clean images."""

    name = "supervised-finetune"
    description = "finetune the image encoder with a classification head and cross-entropy on labelled clean images (SuFi)"
    source = "Bansal et al., CleanCLIP, ICCV 2023 (supervised finetuning baseline)"
    Options: ClassVar[type] = SupervisedOptions

    def _head(self, bundle: ModelBundle, context: DefenseContext, classnames: tuple[str, ...]) -> ImageClassifier:
        model, options = bundle.model, self.options
        with torch.no_grad():
            tokens = bundle.tokenizer([options.prompt.format(c) for c in classnames])
            weights = model.encode_text(tokens.to(context.device), normalize=True).float()
        if options.head == "zeroshot":
            head = nn.Linear(weights.shape[1], len(classnames), bias=False).to(context.device)
            head.weight.data.copy_(weights)
            head.weight.requires_grad_(False)
            return ImageClassifier(model.visual, head, normalize=True, scale=float(model.logit_scale.detach().exp()))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(context.seed, self.name, "head"))
            head = nn.Linear(weights.shape[1], len(classnames))
        return ImageClassifier(model.visual, head.to(context.device), normalize=False, scale=1.0)

    def apply(self, bundle: ModelBundle, context: DefenseContext) -> nn.Module:
        clean = context.clean
        missing = int((clean.labels < 0).sum())
        if missing:
            raise UsageError(
                f"defense {self.name!r} needs a class label for every clean finetuning image, but {missing} of "
                f"{len(clean)} have none (label -1); use labelled data, or a defense that needs only "
                "image-caption pairs (finetune, unimodal, cleanclip)"
            )
        classnames = tuple(clean.classnames)
        if not classnames or int(clean.labels.max()) >= len(classnames):
            raise UsageError(
                f"defense {self.name!r} needs the class names of the clean finetuning data (PairSet.classnames) "
                f"for every label; got {len(classnames)} names for labels up to {int(clean.labels.max())}"
            )
        classifier = self._head(bundle, context, classnames)
        context.notes["head"] = self.options.head
        context.notes["classes"] = len(classnames)

        def objective(module: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
            logits = module(bundle.model_input(batch["images"]))
            return {"loss": F.cross_entropy(logits.float(), batch["labels"])}

        batches = Batches(
            {"images": clean.images.to(context.device), "labels": clean.labels.to(context.device)}, self.options.batch_size
        )
        context.finetune(classifier, batches, objective, self.options.train_config(), f"defense:{self.name}")
        return bundle.model
