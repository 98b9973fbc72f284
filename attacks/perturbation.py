"""Turner et al.'s adversarial perturbation of label-consistent poisons, against a surrogate classifier.

Label-consistent poisons keep their true captions, so the model can explain them by their natural
features and ignore the trigger. Turner et al. (2019) make those features hard to use first: a
projected-gradient attack, bounded in L-infinity by `epsilon`, against a classifier the attacker
trained. Here the attacker's surrogate is a small CNN trained on the attacker's own training pairs
to tell pairs whose caption names the target from the rest; PGD pushes each poison image away from
"target" (Madry et al.'s step 2.5 * epsilon / steps, no random start, so it is deterministic).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cleanbench.seeding import torch_generator

SURROGATE_IMAGES = 4000
"""At most this many training images (half naming the target where there are enough) train the surrogate."""
SURROGATE_EPOCHS = 4


def surrogate(width: int = 32) -> nn.Module:
    """A three-block CNN with a two-way head (target / not target)."""
    layers: list[nn.Module] = []
    previous = 3
    for channels in (width, 2 * width, 2 * width):
        layers += [nn.Conv2d(previous, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(2)]
        previous = channels
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(previous, 2))


def train_surrogate(images: torch.Tensor, is_target: torch.Tensor, seed: int) -> nn.Module:
    """A surrogate trained on uint8 `images` with labels `is_target`, deterministic from `seed`."""
    generator = torch_generator(seed)
    positive, negative = torch.nonzero(is_target).flatten(), torch.nonzero(~is_target).flatten()
    half = SURROGATE_IMAGES // 2
    positive = positive[torch.randperm(len(positive), generator=generator)[:half]]
    negative = negative[torch.randperm(len(negative), generator=generator)[: SURROGATE_IMAGES - len(positive)]]
    rows = torch.cat([positive, negative])
    x, y = images[rows].float().div(255), is_target[rows].long()
    weight = torch.tensor([len(rows) / max(1, 2 * len(negative)), len(rows) / max(1, 2 * len(positive))])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = surrogate()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(SURROGATE_EPOCHS):
        for batch in torch.randperm(len(x), generator=generator).split(128):
            loss = F.cross_entropy(model(x[batch]), y[batch], weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


def push_away_from_target(model: nn.Module, images: torch.Tensor, epsilon: float, steps: int) -> torch.Tensor:
    """uint8 `images` after `steps` of L-inf PGD (radius `epsilon` in 0..255 units) raising the
    surrogate's loss for "target"; rounded back to uint8 inside the ball."""
    if steps == 0 or epsilon == 0 or len(images) == 0:
        return images.clone()
    original = images.float().div(255)
    radius, step = epsilon / 255, 2.5 * epsilon / 255 / steps
    target = torch.ones(len(images), dtype=torch.long)
    x = original.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        loss = F.cross_entropy(model(x), target)
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x = x + step * grad.sign()
            x = (original + (x - original).clamp(-radius, radius)).clamp(0, 1)
    out = x.detach().mul(255).round()
    low, high = images.float() - epsilon, images.float() + epsilon
    return torch.minimum(torch.maximum(out, low.floor()), high.ceil()).clamp(0, 255).to(torch.uint8)
