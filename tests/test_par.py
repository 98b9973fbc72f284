"""PAR (Perturb and Recover): the thresholded push, the augmentation, the frozen reference, the knob."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch.nn import functional as F

from cleanbench.config import build_options
from cleanbench.data.embedded import load_embedded
from cleanbench.defenses.base import DefenseContext
from cleanbench.defenses.par import PAR, PAROptions, par_view
from cleanbench.errors import UsageError
from cleanbench.losses import clip_loss, par_loss, thresholded_distance
from cleanbench.models import build_model
from cleanbench.registry import DEFENSES


def unit(rows: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_distance_is_two_minus_twice_the_cosine_and_off_beyond_tau():
    a, b = unit(16, seed=0), unit(16, seed=1)
    expected = (2 - 2 * (a * b).sum(dim=1)).mean()
    kept, distance = thresholded_distance(a, b, tau=4.0)
    assert torch.allclose(kept, expected, atol=1e-6) and torch.allclose(distance, expected, atol=1e-6)
    cut, distance = thresholded_distance(a, b, tau=float(expected) - 1e-3)
    assert float(cut) == 0.0 and torch.allclose(distance, expected, atol=1e-6)


def test_par_loss_subtracts_half_the_pushes_and_the_push_has_no_gradient_beyond_tau():
    image, text = unit(16, seed=0).requires_grad_(), unit(16, seed=1)
    frozen_image, frozen_text = unit(16, seed=2), unit(16, seed=3)
    scale = torch.tensor(10.0)
    below = par_loss(image, text, frozen_image, frozen_text, scale, tau=4.0)
    d_i, d_t = below["image_distance"], below["text_distance"]
    assert torch.allclose(below["loss"], clip_loss(image, text, scale) - 0.5 * (d_i + d_t), atol=1e-6)
    beyond = par_loss(image, text, frozen_image, frozen_text, scale, tau=0.1)
    assert torch.allclose(beyond["loss"], beyond["clip"])
    (push_gradient,) = torch.autograd.grad(below["loss"] - below["clip"], image)
    assert push_gradient.abs().sum() > 0
    (no_gradient,) = torch.autograd.grad(beyond["loss"] - beyond["clip"], image, allow_unused=True)
    assert no_gradient is None or no_gradient.abs().sum() == 0


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build_model(), load_embedded(0, n_pretrain=8, n_clean=128, n_test=8).clean


def test_view_adds_only_positive_noise_before_normalising(small):
    bundle, clean = small
    images = clean.images[:32]
    options = PAROptions(noise_probability=1.0, erase_probability=0.0)
    view = par_view(bundle, images, options, torch.Generator().manual_seed(0))
    plain = bundle.model_input(images)
    assert (view >= plain - 1e-5).all() and (view > plain + 1e-3).any()
    none = par_view(bundle, images, PAROptions(noise_probability=0.0, erase_probability=0.0), torch.Generator())
    assert torch.allclose(none, plain)


def test_view_erases_one_small_square_per_image_to_zero(small):
    bundle, clean = small
    images = clean.images[:32]
    options = PAROptions(noise_probability=0.0, erase_probability=1.0)
    view = par_view(bundle, images, options, torch.Generator().manual_seed(0))
    changed = (view != bundle.model_input(images)).any(dim=1)
    side = bundle.image_size
    for image, mask in zip(view, changed):
        rows, cols = torch.nonzero(mask, as_tuple=True)
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert height == width and 0.005 * side * side - 3 <= height * width <= 0.01 * side * side + 3
        assert torch.all(image[:, rows, cols] == 0)
    again = par_view(bundle, images, options, torch.Generator().manual_seed(0))
    assert torch.equal(view, again)


def apply(bundle, clean, **options):
    defense = PAR(build_options(PAROptions, {"epochs": 1, "batch_size": 64, **options}, "par"))
    context = DefenseContext(clean, torch.device("cpu"), seed=0, progress=False, needs=PAR.needs, defense_name="par")
    bundle = dataclasses.replace(bundle, model=copy.deepcopy(bundle.model))
    return defense, bundle, defense.apply(bundle, context), context


def test_par_trains_against_a_frozen_copy_and_records_the_push(small):
    bundle, clean = small
    before = copy.deepcopy(bundle.model.state_dict())
    _, _, model, context = apply(bundle, clean, tau=4.0)
    assert [s.stage for s in context.stats] == ["defense:par"] and context.stats[0].steps == 2
    after = model.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k != "logit_scale")
    assert torch.equal(after["logit_scale"], before["logit_scale"])  # the temperature is read, not trained
    push = context.notes["push"]
    assert push["steps"] == 2 and push["steps_pushing_images"] == 2 == push["steps_pushing_texts"]
    assert 0 < push["final_image_distance"] <= 4


def test_a_tiny_tau_pushes_only_at_the_first_step_where_both_models_agree(small):
    bundle, clean = small
    _, _, _, context = apply(bundle, clean, tau=1e-6)
    push = context.notes["push"]  # step 1: D = 0 (the trained model is still the frozen one), then D > tau
    assert push["steps_pushing_images"] == 1 == push["steps_pushing_texts"]


def test_lr_is_the_strength_knob_over_the_finetuning_grid_and_tau_is_the_papers():
    strength = DEFENSES.get("par").strength
    assert strength == DEFENSES.get("cleanclip").strength and strength.knob == "lr"
    assert PAROptions().tau == 2.15


@pytest.mark.parametrize(
    "options, message",
    [({"tau": 0}, "tau must be in"), ({"tau": 5}, "tau must be in"), ({"noise_probability": 2}, "noise_probability"),
     ({"noise_std": -1}, "noise_std"), ({"erase_min_area": 0.02, "erase_max_area": 0.01}, "erase areas")],
)
def test_options_are_validated(options, message):
    with pytest.raises(UsageError, match=message):
        build_options(PAROptions, options, "par")
