"""Augmented views for CleanCLIP's in-modal losses (reference spec section 3.2).

Image views are recomputed every step; text views once per caption (static across epochs), as in
the reference.

- `autoaugment`: torchvision's AutoAugment (ImageNet policy, the reference's choice) on each uint8
  image, applied independently per image.
- `crop-jitter`: a batched SimCLR-style view for small images: random resized crop (scale 0.6-1,
  aspect 0.8-1.25), horizontal flip, brightness/contrast/saturation jitter in [0.6, 1.4] and
  20 % greyscale, as in the embedded-default trial.

The text view is one EDA operation (Wei & Zou 2019) per caption, chosen uniformly among the ones
available: synonym replacement and random insertion use WordNet through nltk when it is installed;
without WordNet, insertion duplicates a word of the caption and synonym replacement is skipped.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F
from torchvision.transforms import v2

ImageView = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def autoaugment_view() -> ImageView:
    """Per-image torchvision AutoAugment (ImageNet policy) on uint8 tensors."""
    transform = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)

    def view(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # torchvision samples from torch's global generator; reseed it from ours for determinism.
        state = torch.random.get_rng_state()
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        try:
            return torch.stack([transform(image) for image in images])
        finally:
            torch.random.set_rng_state(state)

    return view


def crop_jitter_view() -> ImageView:
    """A batched crop/flip/colour-jitter/greyscale view, one random draw per image."""

    def view(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        count, _, height, width = images.shape
        x = images.float() / 255
        draw = lambda *shape: torch.rand(*shape, generator=generator).to(x.device)  # noqa: E731
        scale = 0.6 + 0.4 * draw(count)
        aspect = torch.exp((draw(count) - 0.5) * 2 * 0.2231)  # log-uniform in [0.8, 1.25]
        half_w = (scale * aspect).sqrt().clamp(max=1.0)
        half_h = (scale / aspect).sqrt().clamp(max=1.0)
        centre_x = (1 - half_w) * (2 * draw(count) - 1)
        centre_y = (1 - half_h) * (2 * draw(count) - 1)
        flip = torch.where(draw(count) < 0.5, -1.0, 1.0)
        theta = torch.zeros(count, 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 2] = half_w * flip, centre_x
        theta[:, 1, 1], theta[:, 1, 2] = half_h, centre_y
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        factors = 0.6 + 0.8 * draw(count, 3)
        x = x * factors[:, 0, None, None, None]
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        mean = grey.mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * factors[:, 1, None, None, None] + mean
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = (x - grey) * factors[:, 2, None, None, None] + grey
        to_grey = (draw(count) < 0.2)[:, None, None, None]
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = torch.where(to_grey, grey.expand_as(x), x)
        return x.clamp(0, 1).mul(255).round().to(torch.uint8)

    return view


IMAGE_VIEWS: dict[str, Callable[[], ImageView]] = {"autoaugment": autoaugment_view, "crop-jitter": crop_jitter_view}


def image_view(name: str) -> ImageView:
    """The image view called `name`."""
    if name not in IMAGE_VIEWS:
        raise ValueError(f"unknown image view {name!r}; choose one of {', '.join(IMAGE_VIEWS)}")
    return IMAGE_VIEWS[name]()


def _wordnet():
    """nltk's WordNet reader, or None when nltk or the corpus is not installed."""
    try:
        from nltk.corpus import wordnet

        wordnet.synsets("dog")
        return wordnet
    except Exception:
        return None


def clean_caption(caption: str) -> str:
    """The reference's EDA cleaning: lower case, letters and spaces only, single spaces."""
    text = caption.lower().replace("'", "")
    text = re.sub(r"[-\t\n]", " ", text)
    text = re.sub(r"[^a-z ]", " ", text)
    return re.sub(" +", " ", text).strip()


class EDA:
    """One EDA operation per caption: synonym replacement, insertion, swap or deletion (alpha 0.1)."""

    def __init__(self, alpha: float = 0.1, seed: int = 0, use_wordnet: bool = True) -> None:
        self.alpha = alpha
        self.rng = random.Random(seed)
        self.wordnet = _wordnet() if use_wordnet else None

    @property
    def operations(self) -> list[str]:
        """Names of the operations this instance can apply (depends on WordNet)."""
        ops = ["insertion", "swap", "deletion"]
        return (["synonym"] + ops) if self.wordnet is not None else ops

    def _synonyms(self, word: str) -> list[str]:
        if self.wordnet is None:
            return []
        names = {lemma.name().replace("_", " ").lower() for s in self.wordnet.synsets(word) for lemma in s.lemmas()}
        names.discard(word)
        return sorted(n for n in names if re.fullmatch(r"[a-z ]+", n))

    def __call__(self, caption: str) -> str:
        words = clean_caption(caption).split()
        if not words:
            return caption
        n = max(1, int(self.alpha * len(words)))
        op = self.rng.choice(self.operations)
        if op == "synonym":
            for word in self.rng.sample(sorted(set(words)), len(set(words))):
                options = self._synonyms(word)
                if options:
                    choice = self.rng.choice(options)
                    words = [choice if w == word else w for w in words]
                    n -= 1
                    if n == 0:
                        break
        elif op == "insertion":
            for _ in range(n):
                source = self.rng.choice(words)
                options = self._synonyms(source) or [source]
                words.insert(self.rng.randrange(len(words) + 1), self.rng.choice(options))
        elif op == "swap":
            for _ in range(n):
                if len(words) > 1:
                    i, j = self.rng.sample(range(len(words)), 2)
                    words[i], words[j] = words[j], words[i]
        else:
            kept = [w for w in words if self.rng.random() > self.alpha]
            words = kept or [self.rng.choice(words)]
        return " ".join(words)

    def views(self, captions: Sequence[str]) -> list[str]:
        """One augmented view per caption."""
        return [self(c) for c in captions]
