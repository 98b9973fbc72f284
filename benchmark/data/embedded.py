"""The embedded default dataset: procedural shapes with captions, made offline in seconds.

Splits (sizes configurable): pretraining pairs (seed-dependent), a disjoint clean finetuning split
(seed-dependent, different stream), and a fixed labelled test split that is the same for every run
seed, so that numbers from different seeds are scored on the same images.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import torch

from cleanbench.data.base import BenchmarkData, ClassificationSet, PairSet
from cleanbench.data.shapes import BACKGROUNDS, COLOURS, SHAPES, SIZE_WORDS, ShapeSample, generate_shapes
from cleanbench.seeding import derive_seed

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {shape}.",
    "a photo of a {shape}.",
    "a drawing of a {shape}.",
    "there is a {shape} in the image.",
    "an image with a {shape}.",
    "{a_colour} {colour} {shape}.",
    "{a_size} {size} {colour} {shape} on {a_background} {background} background.",
    "a {shape} at the {position}.",
    "{a_colour} {colour} {shape} at the {position} on {a_background} {background} background.",
    "the {shape} is {colour} and {size}.",
    "a photo of {a_size} {size} {shape}.",
    "a {shape} on {a_background} {background} background.",
    "there is {a_colour} {colour} {shape} in the image.",
    "{a_size} {size} {shape} at the {position}.",
    "a drawing of {a_colour} {colour} {shape}.",
    "an image with a {shape} at the {position}.",
)
"""Caption templates: each names the class; most add colour, size, position or background."""

PROMPT_TEMPLATES: tuple[str, ...] = (
    "a {}.",
    "a photo of a {}.",
    "a drawing of a {}.",
    "there is a {} in the image.",
    "an image with a {}.",
)
"""Zero-shot prompt templates (the embedded counterpart of the 80 OpenAI ImageNet templates).

Every prompt also occurs as an attribute-free caption template, so prompts are in-distribution text
for the model. A trial with prompt phrasings that never occur in clean captions (but did in
poisoned ones, which are built from the prompts as in the reference) broke zero-shot accuracy:
the phrasing itself became a poison signal shared by every class embedding.
"""

POSITION_WORDS: tuple[str, ...] = ("top", "middle", "bottom", "left", "center", "right")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption_for(sample: ShapeSample, rng: np.random.Generator) -> str:
    """One caption for `sample` from a random template."""
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    background = "plain" if sample.background == "plain" else sample.background
    return template.format(
        shape=SHAPES[sample.shape],
        colour=sample.colour,
        a_colour=_article(sample.colour),
        size=sample.size_word,
        a_size=_article(sample.size_word),
        position=sample.position,
        background=background,
        a_background=_article(background),
    )


def vocabulary_words() -> list[str]:
    """Every word and punctuation mark that captions and prompts of this dataset can contain."""
    texts = " ".join([*CAPTION_TEMPLATES, *PROMPT_TEMPLATES])
    words = {w for w in re.findall(r"\{[a-z_]*\}|[a-z-]+|[.,]", texts) if not w.startswith("{")}
    words |= {"a", "an"} | set(SHAPES) | set(COLOURS) | set(BACKGROUNDS) | set(SIZE_WORDS) | set(POSITION_WORDS)
    return sorted(words)


def make_pairs(count: int, seed: int, image_size: int, preset: str) -> PairSet:
    """`count` captioned images from `seed` (a copy of the last ones made in this process, if the same)."""
    images, captions, labels = _generated(count, seed, image_size, preset)
    return PairSet(images.clone(), list(captions), labels.clone(), SHAPES)


@functools.lru_cache(maxsize=4)
def _generated(count: int, seed: int, image_size: int, preset: str) -> tuple[torch.Tensor, tuple[str, ...], torch.Tensor]:
    """The images, captions and labels of one split, kept for the next cell of a sweep or tuning grid
    in this process (the pretraining split of the standard setting takes seconds to draw)."""
    images, samples = generate_shapes(count, seed, image_size, preset)
    rng = np.random.default_rng(derive_seed(seed, "captions"))
    captions = tuple(caption_for(s, rng) for s in samples)
    labels = torch.tensor([s.shape for s in samples], dtype=torch.long)
    return torch.from_numpy(images), captions, labels


TEST_SEED = 3000
"""The test split's seed: fixed, so every run is scored on the same images."""
VALIDATION_SEED = 4000
"""The validation split's seed: fixed, and a stream apart from the test split's."""


def load_embedded(
    seed: int,
    n_pretrain: int = 10_000,
    n_clean: int = 2_000,
    n_test: int = 2_000,
    image_size: int = 32,
    preset: str = "easy",
    n_validation: int = 1000,
) -> BenchmarkData:
    """The embedded benchmark data for run seed `seed`."""
    pretrain = make_pairs(n_pretrain, derive_seed(seed, "pretrain"), image_size, preset)
    clean = make_pairs(n_clean, derive_seed(seed, "clean"), image_size, preset)
    test_pairs = make_pairs(n_test, TEST_SEED, image_size, preset)
    test = ClassificationSet(test_pairs.images, test_pairs.labels, SHAPES, PROMPT_TEMPLATES, "embedded-shapes-test")
    valid_pairs = make_pairs(n_validation, VALIDATION_SEED, image_size, preset)
    validation = ClassificationSet(valid_pairs.images, valid_pairs.labels, SHAPES, PROMPT_TEMPLATES,
                                   "embedded-shapes-validation")
    info = {"name": "embedded-shapes", "preset": preset, "image_size": image_size,
            "n_pretrain": n_pretrain, "n_clean": n_clean, "n_test": n_test, "test_seed": TEST_SEED,
            "n_validation": n_validation, "validation_seed": VALIDATION_SEED}
    return BenchmarkData(pretrain, clean, test, info, validation)
