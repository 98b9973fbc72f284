"""The embedded dataset: deterministic, the right sizes and attributes, captions that name the class."""

import re

import torch

from cleanbench.data.embedded import CAPTION_TEMPLATES, PROMPT_TEMPLATES, load_embedded, make_pairs
from cleanbench.data.shapes import SHAPES, generate_shapes


def test_same_seed_same_data_other_seed_other_data():
    a = make_pairs(50, seed=7, image_size=32, preset="easy")
    b = make_pairs(50, seed=7, image_size=32, preset="easy")
    c = make_pairs(50, seed=8, image_size=32, preset="easy")
    assert torch.equal(a.images[:], b.images[:]) and a.captions == b.captions
    assert not torch.equal(a.images[:], c.images[:])


def test_shapes_and_dtypes():
    images, samples = generate_shapes(20, seed=0, image_size=32)
    assert images.shape == (20, 3, 32, 32) and images.dtype.name == "uint8"
    assert len(samples) == 20 and all(0 <= s.shape < len(SHAPES) for s in samples)


def test_every_caption_names_its_class():
    pairs = make_pairs(300, seed=1, image_size=32, preset="easy")
    for caption, label in zip(pairs.captions, pairs.labels):
        assert re.search(rf"\b{SHAPES[label]}\b", caption), caption


def test_classes_and_backgrounds_all_occur():
    pairs = make_pairs(400, seed=2, image_size=32, preset="easy")
    assert set(pairs.labels.tolist()) == set(range(len(SHAPES)))
    for word in ("plain", "noisy", "gradient", "striped"):
        assert any(word in c for c in pairs.captions)


def test_splits_are_disjoint_and_test_split_is_fixed_across_seeds():
    a = load_embedded(0, n_pretrain=64, n_clean=32, n_test=40)
    b = load_embedded(1, n_pretrain=64, n_clean=32, n_test=40)
    assert torch.equal(a.test.images[:], b.test.images[:])
    assert not torch.equal(a.pretrain.images[:32], a.clean.images[:])
    assert not torch.equal(a.pretrain.images[:], b.pretrain.images[:])
    assert a.test.classnames == SHAPES and a.test.templates == PROMPT_TEMPLATES


def test_prompts_are_in_distribution_captions():
    """Each zero-shot prompt occurs as an attribute-free caption template (see PROMPT_TEMPLATES)."""
    for prompt in PROMPT_TEMPLATES:
        assert prompt.replace("{}", "{shape}") in CAPTION_TEMPLATES
