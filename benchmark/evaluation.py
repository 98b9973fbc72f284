"""Zero-shot evaluation: CA on clean images, ASR and RA on triggered non-target images.

Class embedding = mean of the L2-normalised embeddings of the class name in every prompt template,
renormalised (docs/reference.md §5.1); computed once per model and prompt set (the runner caches them like an evaluation, and
passes them in as `classes`). Logits are cosine similarities. With `progress`, the class embeddings
(1,000 classes x 80 templates take minutes on a CPU) and the scoring of file-backed test sets show a bar.

In-memory test sets (the embedded data) are scored in one pass. File-backed ones (ImageNet-style
folders, torchvision datasets) stream through `FileBatches`: worker processes read and preprocess
the images, the trigger is applied on the device to each non-target image (parameters from the
image's own seeded generator), and the counts accumulate. With `squash_triggered` (the reference's
behaviour, docs/reference.md §7, item 6) the triggered copy is made from the squashed image. On CUDA the
encoders run under autocast (bf16 where supported).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from cleanbench.attacks.base import Attack, trigger_rows, trigger_uint8
from cleanbench.attacks.preview import EVAL_TRIGGER_STREAM
from cleanbench.data.base import ClassificationSet
from cleanbench.data.images import ImageFiles
from cleanbench.data.lazy import FileBatches
from cleanbench.metrics import proportion, stealthiness
from cleanbench.models import ModelBundle
from cleanbench.seeding import derive_seed, torch_generator

TEXT_BATCH = 2048
IMAGE_BATCH = 512
"""Images per forward pass when scoring in-memory test sets."""


def autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast for inference on CUDA (bf16 where supported, else fp16); nothing elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return contextlib.nullcontext()


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
    bundle: ModelBundle, images: torch.Tensor, classes: torch.Tensor, device, k: int = 5, batch_size: int = IMAGE_BATCH
) -> torch.Tensor:
    """(N, k) indices of the k most similar classes for uint8 `images`."""
    out = []
    for start in range(0, len(images), batch_size):
        out.append(_topk(bundle, images[start : start + batch_size].to(device), classes, k).cpu())
    return torch.cat(out)


def _combine_stealthiness(parts: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """The `stealthiness` of several batches together, from each batch's size and result."""
    total = sum(n for n, _ in parts)
    if total == 0:
        return {"linf": math.nan, "l2": math.nan, "psnr_db": math.nan, "changed_fraction": math.nan}
    out = {key: sum(n * s[key] for n, s in parts) / total for key in ("linf", "l2", "changed_fraction")}
    changed = [(n * s["changed_fraction"], s["psnr_db"]) for n, s in parts if n * s["changed_fraction"] > 0]
    weight = sum(w for w, _ in changed)
    out["psnr_db"] = sum(w * p for w, p in changed) / weight if weight else math.nan
    return out


def _evaluate_files(
    bundle: ModelBundle, test: ClassificationSet, attack: Attack, target_index: int, seed: int, device, batch_size: int,
    classes: torch.Tensor, progress: bool,
) -> dict:
    """Counts of a file-backed test set, streamed batch by batch."""
    column: ImageFiles = test.images.to(device)
    squash = column.squash_triggered
    if squash:
        column = column.reading("both")
    n = m = top1 = top5 = hits = recovered = 0
    parts: list[tuple[int, dict[str, float]]] = []
    bar = tqdm(total=len(test), desc="evaluation", unit="img", disable=not progress, leave=False, dynamic_ncols=True)
    for batch in FileBatches({"images": column}, batch_size).in_order():
        bar.update(len(batch["index"]))
        rows, images = batch["index"], batch["images"]
        clean, source = (images[:, 0], images[:, 1]) if squash else (images, images)
        labels = test.labels[rows].to(device)
        top = _topk(bundle, clean, classes, 5)
        top1 += int((top[:, 0] == labels).sum())
        top5 += int((top == labels[:, None]).any(dim=1).sum())
        keep = labels != target_index
        n += len(rows)
        if not keep.any():
            continue
        triggered = trigger_rows(attack, source[keep], rows[keep.cpu()], seed, EVAL_TRIGGER_STREAM)
        predicted = _topk(bundle, triggered, classes, 1)[:, 0]
        hits += int((predicted == target_index).sum())
        recovered += int((predicted == labels[keep]).sum())
        count = int(keep.sum())
        m += count
        parts.append((count, stealthiness(source[keep].cpu(), triggered.cpu())))
    bar.close()
    return {"n": n, "m": m, "top1": top1, "top5": top5, "hits": hits, "recovered": recovered,
            "stealthiness": _combine_stealthiness(parts), "skipped": column.log["skipped"]}


def evaluate(
    bundle: ModelBundle,
    test: ClassificationSet,
    attack: Attack,
    target_index: int,
    seed: int,
    device,
    batch_size: int = 256,
    classes: torch.Tensor | None = None,
    progress: bool = False,
) -> dict:
    """CA top-1/top-5 on clean images; ASR and RA on triggered images whose class is not the target.

    `classes`: the model's class embeddings for `test` when already computed (else computed here).
    """
    start = time.perf_counter()
    bundle.model.eval()
    if classes is None:
        classes = class_embeddings(bundle, test.classnames, test.templates, device, progress=progress)
    classes = classes.to(device)
    if isinstance(test.images, ImageFiles):
        counts = _evaluate_files(bundle, test, attack, target_index, seed, device, batch_size, classes, progress)
        n, m = counts["n"], counts["m"]
        seconds = time.perf_counter() - start
        return {
            "ca_top1": proportion(counts["top1"], n).to_dict(),
            "ca_top5": proportion(counts["top5"], n).to_dict(),
            "asr": proportion(counts["hits"], m).to_dict(),
            "ra": proportion(counts["recovered"], m).to_dict(),
            "stealthiness": counts["stealthiness"],
            "skipped_images": counts["skipped"],
            "seconds": seconds,
            "images_per_second": (n + m) / max(seconds, 1e-9),
        }
    clean_top = predict_topk(bundle, test.images, classes, device)
    labels = test.labels
    keep = labels != target_index
    generator = torch_generator(derive_seed(seed, EVAL_TRIGGER_STREAM))
    triggered = trigger_uint8(attack, test.images[keep], generator)
    triggered_top1 = predict_topk(bundle, triggered, classes, device, k=1)[:, 0]
    n, m = len(labels), int(keep.sum())
    seconds = time.perf_counter() - start
    return {
        "ca_top1": proportion(int((clean_top[:, 0] == labels).sum()), n).to_dict(),
        "ca_top5": proportion(int((clean_top == labels[:, None]).any(dim=1).sum()), n).to_dict(),
        "asr": proportion(int((triggered_top1 == target_index).sum()), m).to_dict(),
        "ra": proportion(int((triggered_top1 == labels[keep]).sum()), m).to_dict(),
        "stealthiness": stealthiness(test.images[keep], triggered),
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
