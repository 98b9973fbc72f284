"""Augmented views for CleanCLIP's in-modal losses (docs/reference.md §3.2).

Image views are recomputed every step; text views once per caption (static across epochs), as in
the reference.

- `autoaugment`: torchvision's AutoAugment (ImageNet policy, the reference's choice) on each uint8
  image, applied independently per image.
- `crop-jitter`: a batched SimCLR-style view for small images: random resized crop (scale 0.6-1,
  aspect 0.8-1.25), horizontal flip, brightness/contrast/saturation jitter in [0.6, 1.4] and
  20 % greyscale, as in the embedded-default trial.

The text view is one EDA operation (Wei & Zou 2019) per caption, chosen uniformly among the ones
available. Synonym replacement and random insertion read synonyms from the configured source
(`cleanbench.synonyms`: the packaged `embedded` table by default, `wordnet`, or `none`); without
synonyms, insertion repeats a word of the caption and synonym replacement is skipped. The run card's
defense notes say which operations ran (`text_view_operations`) and where the synonyms came from.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F
from torchvision.transforms import v2

from cleanbench.synonyms import SynonymSource, synonym_source

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
        # Per image: scale, aspect, centre x, centre y, flip, three jitter factors, greyscale, drawn on the
        # CPU in this order and moved in one copy (one copy per draw synchronised CUDA seven times a view).
        drawn = torch.cat([torch.rand(count, n, generator=generator) for n in (1, 1, 1, 1, 1, 3, 1)], dim=1)
        drawn = drawn.to(x.device)
        scale = 0.6 + 0.4 * drawn[:, 0]
        aspect = torch.exp((drawn[:, 1] - 0.5) * 2 * 0.2231)  # log-uniform in [0.8, 1.25]
        half_w = (scale * aspect).sqrt().clamp(max=1.0)
        half_h = (scale / aspect).sqrt().clamp(max=1.0)
        centre_x = (1 - half_w) * (2 * drawn[:, 2] - 1)
        centre_y = (1 - half_h) * (2 * drawn[:, 3] - 1)
        flip = torch.where(drawn[:, 4] < 0.5, -1.0, 1.0)
        theta = torch.zeros(count, 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 2] = half_w * flip, centre_x
        theta[:, 1, 1], theta[:, 1, 2] = half_h, centre_y
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        factors = 0.6 + 0.8 * drawn[:, 5:8]
        x = x * factors[:, 0, None, None, None]
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        mean = grey.mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * factors[:, 1, None, None, None] + mean
        grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = (x - grey) * factors[:, 2, None, None, None] + grey
        to_grey = (drawn[:, 8] < 0.2)[:, None, None, None]
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


def clean_caption(caption: str) -> str:
    """The reference's EDA cleaning: lower case, letters and spaces only, single spaces."""
    text = caption.lower().replace("'", "")
    text = re.sub(r"[-\t\n]", " ", text)
    text = re.sub(r"[^a-z ]", " ", text)
    return re.sub(" +", " ", text).strip()


STOP_WORDS = frozenset(
    "a about above after again against all am an and any are as at be because been before being below "
    "between both but by can could did do does doing down during each few for from further had has have "
    "having he her here hers herself him himself his how i if in into is it its itself just me more most "
    "my myself no nor not now of off on once only or other our ours ourselves out over own same she should "
    "so some such than that the their theirs them themselves then there these they this those through to "
    "too under until up very was we were what when where which while who whom why will with would you "
    "your yours yourself yourselves".split()
)
"""Function words that synonym replacement leaves alone (EDA replaces only non-stop-words)."""


class EDA:
    """One EDA operation per caption (docs/reference.md §3.2), alpha = 0.1 for every operation.

    With synonyms: synonym replacement, random insertion (of a synonym of a random word), random
    swap and random deletion, one chosen uniformly. Without (source `none`): insertion, swap and
    deletion, where insertion repeats a random word of the caption (there is no synonym to insert).
    """

    def __init__(self, alpha: float = 0.1, seed: int = 0, synonyms: SynonymSource | None = None) -> None:
        self.alpha = alpha
        self.rng = random.Random(seed)
        self.source = synonyms if synonyms is not None else synonym_source("none")

    @property
    def operations(self) -> list[str]:
        """Names of the operations this instance can apply (depends on the synonym source)."""
        ops = ["insertion", "swap", "deletion"]
        return (["synonym"] + ops) if self.source.has_synonyms else ops

    def synonyms(self, word: str) -> list[str]:
        """Synonyms of `word` from the source, sorted; [] without any."""
        return self.source.synonyms(word)

    def _replace(self, words: list[str], n: int) -> list[str]:
        candidates = sorted({w for w in words if w not in STOP_WORDS})
        self.rng.shuffle(candidates)
        replaced = 0
        for word in candidates:
            options = self.synonyms(word)
            if options:
                choice = self.rng.choice(options)
                words = [choice if w == word else w for w in words]
                replaced += 1
                if replaced >= n:
                    break
        return " ".join(words).split()

    def _insert(self, words: list[str], n: int) -> list[str]:
        words = list(words)
        for _ in range(n):
            if not self.source.has_synonyms:
                new = self.rng.choice(words)
            else:
                new = None
                for _ in range(10):  # as EDA: give up after 10 words without synonyms
                    options = self.synonyms(self.rng.choice(words))
                    if options:
                        new = self.rng.choice(options)
                        break
                if new is None:
                    break
            words.insert(self.rng.randrange(len(words) + 1), new)
        return " ".join(words).split()

    def _swap(self, words: list[str], n: int) -> list[str]:
        words = list(words)
        for _ in range(n):
            if len(words) > 1:
                i, j = self.rng.sample(range(len(words)), 2)
                words[i], words[j] = words[j], words[i]
        return words

    def _delete(self, words: list[str]) -> list[str]:
        if len(words) == 1:
            return words
        kept = [w for w in words if self.rng.random() > self.alpha]
        return kept or [self.rng.choice(words)]

    def __call__(self, caption: str) -> str:
        """The caption, cleaned, with one randomly chosen operation applied (a caption without letters is returned as is)."""
        words = clean_caption(caption).split()
        if not words:
            return caption
        n = max(1, int(self.alpha * len(words)))
        op = self.rng.choice(self.operations)
        if op == "synonym":
            words = self._replace(words, n)
        elif op == "insertion":
            words = self._insert(words, n)
        elif op == "swap":
            words = self._swap(words, n)
        else:
            words = self._delete(words)
        return " ".join(words)

    def views(self, captions: Sequence[str]) -> list[str]:
        """One augmented view per caption."""
        return [self(c) for c in captions]
