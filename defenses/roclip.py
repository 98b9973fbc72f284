"""RoCLIP (Yang, Gao, Mirzasoleiman, NeurIPS 2023): pretraining that breaks the link between a
poisoned image and its caption by matching each image with its nearest caption in a pool.

- A pool of `pool_size` detached, L2-normalised caption embeddings, first-in first-out, started
  with random unit vectors; it is filled only on matching epochs, with each batch's captions.
- Matching epochs are those whose number (counted from 1) is a multiple of `match_every` (K).
  On them each image's nearest pool caption (cosine, one matmul against the whole pool) is looked
  up *before* the batch's own captions are pushed, and the CLIP loss is taken between the images
  and those pool captions: only the image tower and the temperature learn. Every other epoch is
  the plain CLIP loss.
- Both modalities are augmented in every epoch: a fresh image view each step (`image_view`) and one
  EDA rewrite per caption made once (`synonyms` says where synonyms come from).

The run's pretraining configuration (epochs, batch, lr, warm-up) is used as it is, so the defended
model differs from the poisoned reference only by RoCLIP. docs/roclip.md says what follows the paper,
what differs and why, and the measured numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from cleanbench.augment import EDA, image_view
from cleanbench.defenses.base import PRETRAINING, Defense, DefenseContext
from cleanbench.losses import clip_loss
from cleanbench.seeding import derive_seed, torch_generator
from cleanbench.synonyms import check_source_name, synonym_source
from cleanbench.trainer import Batch, pair_batches

if TYPE_CHECKING:
    from cleanbench.models import ModelBundle


@dataclass
class RoCLIPOptions:
    """RoCLIP's hyper-parameters (docs/roclip.md says how they scale from the paper's)."""

    pool_size: int = 2048
    match_every: int = 2
    image_view: str = "crop-jitter"
    synonyms: str = "embedded"
    augment: bool = True

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, not {self.pool_size}")
        if self.match_every < 1:
            raise ValueError(f"match_every must be >= 1, not {self.match_every}")
        image_view(self.image_view)  # raises on an unknown view
        check_source_name(self.synonyms)


class CaptionPool:
    """A first-in first-out pool of unit caption embeddings, started with random unit vectors."""

    def __init__(self, size: int, dim: int, generator: torch.Generator, device: torch.device) -> None:
        self.embeddings = F.normalize(torch.randn(size, dim, generator=generator), dim=1).to(device)
        self.next = 0
        self.pushed = 0

    def nearest(self, queries: torch.Tensor) -> torch.Tensor:
        """The pool entry with the highest cosine similarity to each (unit) query, in one matmul."""
        return self.embeddings[(queries @ self.embeddings.T).argmax(dim=1)]

    def push(self, embeddings: torch.Tensor) -> None:
        """Replace the oldest entries with `embeddings` (the last `size` of them when there are more)."""
        size = len(self.embeddings)
        self.pushed += len(embeddings)
        embeddings = embeddings[-size:]
        rows = (self.next + torch.arange(len(embeddings), device=self.embeddings.device)) % size
        self.embeddings[rows] = embeddings.to(self.embeddings.dtype)
        self.next = int(rows[-1] + 1) % size


class RoCLIP(Defense):
    """CLIP pretraining with nearest-neighbour caption matching every K epochs and augmented pairs."""

    name = "roclip"
    description = "pretraining that pairs each image with its nearest pool caption every K epochs, with augmented views"
    source = "Yang, Gao, Mirzasoleiman, RoCLIP, NeurIPS 2023"
    stage = PRETRAINING
    needs = frozenset({"clean_pairs", "pretrain_pairs"})
    Options = RoCLIPOptions
    version = "1"

    def apply(self, bundle: ModelBundle, context: DefenseContext) -> nn.Module:
        options, model = self.options, bundle.model
        pairs = context.pretrain_pairs()
        captions = None
        if options.augment:
            eda = EDA(seed=derive_seed(context.seed, self.name, "eda"), synonyms=synonym_source(options.synonyms))
            captions = eda.views(pairs.captions)
            context.notes |= {"text_view_operations": eda.operations, "synonyms_from": eda.source.origin,
                              "image_view": options.image_view}
        view = image_view(options.image_view) if options.augment else None
        views = torch_generator(derive_seed(context.seed, self.name, "views"))
        batches = pair_batches(bundle, pairs, context.device, context.pretrain_config.batch_size, captions=captions)
        with torch.no_grad():
            dim = model.encode_text(bundle.tokenizer(["a caption"]).to(context.device)).shape[1]
        pool = CaptionPool(options.pool_size, dim, torch_generator(derive_seed(context.seed, self.name, "pool")),
                           context.device)
        matching = {"now": False, "epochs": []}

        def on_epoch(epoch: int) -> None:
            matching["now"] = (epoch + 1) % options.match_every == 0
            if matching["now"]:
                matching["epochs"].append(epoch + 1)

        def objective(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
            images = view(batch["images"], views) if view is not None else batch["images"]
            image_features = model.encode_image(bundle.model_input(images), normalize=True)
            scale = model.logit_scale.exp()
            if not matching["now"]:
                text_features = model.encode_text(batch["tokens"], normalize=True)
                return {"loss": clip_loss(image_features, text_features, scale)}
            with torch.no_grad():
                text_features = model.encode_text(batch["tokens"], normalize=True)
            matched = pool.nearest(image_features.detach().to(pool.embeddings.dtype))
            pool.push(text_features)
            return {"loss": clip_loss(image_features, matched.to(image_features.dtype), scale)}

        context.pretrain(model, batches, objective, f"defense:{self.name}", on_epoch=on_epoch)
        context.notes |= {"matching_epochs": matching["epochs"], "pool_size": options.pool_size,
                          "captions_pooled": pool.pushed}
        return model
