"""Zero-shot evaluation: CA on clean images, ASR and RA on triggered non-target images.

Class embedding = mean of the L2-normalised embeddings of the class name in every prompt template,
renormalised (spec section 5.1); computed once per model. Logits are cosine similarities.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from cleanbench.attacks.base import Attack, trigger_uint8
from cleanbench.data.base import ClassificationSet
from cleanbench.metrics import proportion, stealthiness
from cleanbench.models import ModelBundle
from cleanbench.seeding import derive_seed, torch_generator


@torch.no_grad()
def class_embeddings(bundle: ModelBundle, classnames: Sequence[str], templates: Sequence[str], device) -> torch.Tensor:
    """(C, D) normalised class embeddings averaged over the prompt templates."""
    texts = [template.format(name) for name in classnames for template in templates]
    tokens = bundle.tokenizer(texts).to(device)
    features = bundle.model.encode_text(tokens, normalize=True).float()
    features = features.view(len(classnames), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(features, dim=-1)


@torch.no_grad()
def predict_topk(
    bundle: ModelBundle, images: torch.Tensor, classes: torch.Tensor, device, k: int = 5, batch_size: int = 512
) -> torch.Tensor:
    """(N, k) indices of the k most similar classes for uint8 `images`."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = bundle.model_input(images[start : start + batch_size].to(device))
        features = bundle.model.encode_image(batch, normalize=True).float()
        out.append((features @ classes.T).topk(min(k, len(classes)), dim=-1).indices.cpu())
    return torch.cat(out)


def evaluate(
    bundle: ModelBundle,
    test: ClassificationSet,
    attack: Attack,
    target_index: int,
    seed: int,
    device,
) -> dict:
    """CA top-1/top-5 on clean images; ASR and RA on triggered images whose class is not the target."""
    start = time.perf_counter()
    bundle.model.eval()
    classes = class_embeddings(bundle, test.classnames, test.templates, device)
    clean_top = predict_topk(bundle, test.images, classes, device)
    labels = test.labels
    keep = labels != target_index
    generator = torch_generator(derive_seed(seed, "eval-trigger"))
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
