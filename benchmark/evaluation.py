"""Zero-shot evaluation: CA on clean images, ASR and RA on triggered non-target images.

Class embedding = mean of the L2-normalised embeddings of the class name in every prompt template,
renormalised (docs/reference.md §5.1); computed once per model and prompt set (the runner caches them like an evaluation, and
passes them in as `classes`). Logits are cosine similarities. With `progress`, the class embeddings
(1,000 classes x 80 templates take minutes on a CPU) and the scoring of the test set show a bar.

Every test set streams through `Batches`, whatever its storage (embedded tensors, ImageNet-style
folders, torchvision datasets, whose files worker processes read and preprocess): the trigger is
applied on the device to each non-target image, as the test column seeds it, and the predictions
and per-image distances accumulate. With `squash_triggered` (the reference's behaviour,
docs/reference.md §7, item 6) the triggered copy is made from the squashed image (the column's
`trigger_source`). On CUDA the encoders run under autocast (bf16 where supported).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from cleanbench.attacks.base import Attack, Seeded
from cleanbench.attacks.preview import EVAL_TRIGGER_STREAM
from cleanbench.data.base import ClassificationSet
from cleanbench.data.batches import Batches
from cleanbench.data.column import ImageColumn
from cleanbench.environment import autocast
from cleanbench.metrics import image_distances, proportion, summarize_distances
from cleanbench.models import ModelBundle

TEXT_BATCH = 2048
IMAGE_BATCH = 512
"""Images per forward pass when scoring a test set."""


@torch.no_grad()
def class_embeddings(bundle: ModelBundle, classnames: Sequence[str], templates: Sequence[str], device,
                     progress: bool = False) -> torch.Tensor:
    """(C, D) normalised class embeddings averaged over the prompt templates.

    Texts are encoded in chunks of whole classes (about `TEXT_BATCH` texts): 1000 classes x 80
    templates is too big for one batch. With `progress`, a bar counts the classes.
    """
    per_chunk = max(1, TEXT_BATCH // len(templates))
    features = []
    bar = tqdm(total=len(classnames), desc=f"class embeddings ({len(templates)} templates)", unit="class",
               disable=not progress, leave=False, dynamic_ncols=True)
    with bar:
        for start in range(0, len(classnames), per_chunk):
            names = classnames[start : start + per_chunk]
            tokens = bundle.tokenizer([template.format(name) for name in names for template in templates]).to(device)
            with autocast(device):
                encoded = bundle.model.encode_text(tokens, normalize=True).float()
            features.append(encoded.view(len(names), len(templates), -1).mean(dim=1))
            bar.update(len(names))
    return torch.nn.functional.normalize(torch.cat(features), dim=-1)


@torch.no_grad()
def _topk(bundle: ModelBundle, images: torch.Tensor, classes: torch.Tensor, k: int) -> torch.Tensor:
    with autocast(images.device):
        features = bundle.model.encode_image(bundle.model_input(images), normalize=True).float()
    return (features @ classes.T).topk(min(k, len(classes)), dim=-1).indices


@torch.no_grad()
def predict_topk(
    bundle: ModelBundle, images: ImageColumn | torch.Tensor, classes: torch.Tensor, device, k: int = 5,
    batch_size: int = IMAGE_BATCH,
) -> torch.Tensor:
    """(N, k) indices of the k most similar classes for uint8 `images` (read `batch_size` at a time)."""
    out = []
    for start in range(0, len(images), batch_size):
        out.append(_topk(bundle, images[start : start + batch_size].to(device), classes, k).cpu())
    return torch.cat(out)


class _Chunks:
    """Triggered images gathered from the stream and scored (top-1) in chunks of exactly `size`, in
    order, so the model sees the same chunks however the stream was cut."""

    def __init__(self, bundle: ModelBundle, classes: torch.Tensor, device, size: int) -> None:
        self.bundle, self.classes, self.device, self.size = bundle, classes, device, size
        self.waiting: list[torch.Tensor] = []
        self.top1: list[torch.Tensor] = []

    def add(self, images: torch.Tensor) -> None:
        self.waiting.append(images)
        if sum(len(w) for w in self.waiting) >= self.size:
            pending = torch.cat(self.waiting)
            cut = len(pending) - len(pending) % self.size
            self._score(pending[:cut])
            self.waiting = [pending[cut:]]

    def close(self) -> torch.Tensor:
        """The top-1 class of every image added, in order."""
        if self.waiting:
            self._score(torch.cat(self.waiting))
        return torch.cat(self.top1) if self.top1 else torch.empty(0, dtype=torch.long)

    def _score(self, images: torch.Tensor) -> None:
        for start in range(0, len(images), self.size):
            self.top1.append(_topk(self.bundle, images[start : start + self.size].to(self.device), self.classes, 1)[:, 0].cpu())


def evaluate(
    bundle: ModelBundle,
    test: ClassificationSet,
    attack: Attack,
    target_index: int,
    seed: int,
    device,
    batch_size: int = IMAGE_BATCH,
    classes: torch.Tensor | None = None,
    progress: bool = False,
) -> dict:
    """CA top-1/top-5 on clean images; ASR and RA on triggered images whose class is not the target.

    The test images stream in order, `batch_size` at a time; the trigger is applied to each batch's
    non-target images (stream `eval-trigger`, each row's parameters from the row's own generator), and the triggered
    images are scored in chunks of `batch_size` in test-set order. `classes`: the model's class
    embeddings for `test` when already computed (else computed here).
    """
    start = time.perf_counter()
    bundle.model.eval()
    if classes is None:
        classes = class_embeddings(bundle, test.classnames, test.templates, device, progress=progress)
    classes = classes.to(device)
    column = test.images.to(device)
    keep = test.labels != target_index
    trigger = column.row_trigger(Seeded(attack, seed, EVAL_TRIGGER_STREAM))
    source = column.trigger_source()
    columns = {"images": column} if source is column else {"images": column, "source": source}
    clean_top, triggered, read, distances = [], _Chunks(bundle, classes, device, batch_size), [], []
    bar = tqdm(total=len(test), desc="evaluation", unit="img", disable=not progress, leave=False, dynamic_ncols=True)
    for batch in Batches(columns, batch_size).in_order():
        bar.update(len(batch["index"]))
        rows, images = batch["index"], batch["images"]
        clean_top.append(_topk(bundle, images, classes, 5).cpu())
        kept = keep[rows]
        originals = batch.get("source", images)[kept.to(images.device)]
        changed = trigger(originals, rows[kept])
        triggered.add(changed)
        distances.append(image_distances(originals.cpu(), changed.cpu()))
        read.append(rows)
    bar.close()
    labels = test.labels[torch.cat(read)] if read else test.labels[:0]
    return _metrics(torch.cat(clean_top) if clean_top else torch.empty(0, 5, dtype=torch.long), triggered.close(),
                    labels, target_index, distances, time.perf_counter() - start)


def _metrics(clean_top: torch.Tensor, triggered_top1: torch.Tensor, labels: torch.Tensor, target_index: int,
             distances: list[tuple[torch.Tensor, torch.Tensor]], seconds: float) -> dict:
    """CA, ASR and RA with their intervals, stealthiness and time, from the predictions of the images
    read (`labels` are theirs, in order)."""
    kept_labels = labels[labels != target_index]
    n, m = len(labels), len(triggered_top1)
    return {
        "ca_top1": proportion(int((clean_top[:, 0] == labels).sum()), n).to_dict(),
        "ca_top5": proportion(int((clean_top == labels[:, None]).any(dim=1).sum()), n).to_dict(),
        "asr": proportion(int((triggered_top1 == target_index).sum()), m).to_dict(),
        "ra": proportion(int((triggered_top1 == kept_labels).sum()), m).to_dict(),
        "stealthiness": summarize_distances(distances),
        "seconds": seconds,
        "images_per_second": (n + m) / max(seconds, 1e-9),
    }


def clean_accuracy(bundle: ModelBundle, images: ClassificationSet, device) -> dict:
    """Zero-shot top-1 accuracy on in-memory clean images (the validation split), with its interval."""
    start = time.perf_counter()
    bundle.model.eval()
    classes = class_embeddings(bundle, images.classnames, images.templates, device)
    top1 = predict_topk(bundle, images.images, classes, device, k=1)[:, 0]
    return {"ca_top1": proportion(int((top1 == images.labels).sum()), len(images.labels)).to_dict(),
            "seconds": time.perf_counter() - start}
