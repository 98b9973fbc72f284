"""The structured triggers of Perturb and Recover: stripes patch, blended stripes, blended triangles."""

from __future__ import annotations

import pytest
import torch

from cleanbench.attacks import trigger_preview
from cleanbench.attacks.structured import triangle_pattern
from cleanbench.errors import UsageError
from cleanbench.config import build_options
from cleanbench.registry import ATTACKS

STRUCTURED = ["badnet-stripes", "blended-stripes", "blended-triangles"]


def make(name: str, size: int = 32, seed: int = 0, **options):
    cls = ATTACKS.get(name)
    return cls(cls.Options(**options), size, seed)


def generator(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_badnet_stripes_is_a_patch_of_two_level_columns_fresh_at_random_places():
    size = 224
    attack = make("badnet-stripes", size)
    x = torch.full((64, 3, size, size), 0.5)
    out = attack(x, generator())
    assert attack.size == 16
    places, patterns = set(), set()
    for image in out:
        rows, cols = torch.nonzero((image != 0.5).any(dim=0), as_tuple=True)
        top, left = int(rows.min()), int(cols.min())
        assert int(rows.max()) - top < 16 and int(cols.max()) - left < 16
        patch = image[:, top : top + 16, left : left + 16]
        assert set(patch.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(patch, patch[:, :1].expand_as(patch))  # one colour per column: vertical stripes
        assert torch.equal(image[:, :top], x[0, :, :top])  # nothing outside the patch changed
        places.add((top, left))
        patterns.add(tuple(patch[:, 0].flatten().tolist()))
    assert len(places) > 50 and len(patterns) > 50  # fresh location and fresh stripes per image


def test_badnet_stripes_fixed_is_one_pattern_in_the_corner():
    attack = make("badnet-stripes", 32, location="fixed", stripes="fixed", patch_size=28)
    out = attack(torch.full((4, 3, 32, 32), 0.5), generator())
    assert torch.equal(out, out[:1].expand_as(out))
    corner = 32 - 4 - 1
    assert torch.equal(out[0, :, corner : corner + 4, corner : corner + 4], attack.stripes.expand(-1, 4, -1))


@pytest.mark.parametrize("alpha", [0.03, 0.2])
def test_blended_stripes_adds_plus_or_minus_alpha_per_column_fresh_per_image(alpha):
    x = torch.full((8, 3, 32, 32), 0.5)
    out = make("blended-stripes", alpha=alpha)(x, generator())
    residual = (out - (1 - alpha) * x) / alpha
    assert torch.allclose(residual.abs(), torch.ones_like(residual), atol=1e-4)
    assert torch.allclose(residual, residual[:, :, :1].expand_as(residual))  # constant down each column
    assert not torch.allclose(residual[0], residual[1])


def test_triangle_pattern_splits_each_cell_on_its_diagonal():
    pattern = triangle_pattern(28, 14)
    cell = pattern[:14, :14]
    assert cell[5, 3] == 0.4 and cell[3, 3] == 0.4 and cell[3, 5] == 0.8
    assert torch.equal(pattern[14:, 14:], cell) and torch.equal(pattern[:14, 14:], cell)


def test_blended_triangles_is_the_same_grey_blend_for_every_seed_and_image():
    x = torch.rand(4, 3, 224, 224, generator=generator(0))
    attack = make("blended-triangles", 224)
    out = attack(x, generator())
    expected = 0.85 * x + 0.15 * triangle_pattern(224, 14)
    assert torch.allclose(out, expected, atol=1e-6) and attack.cell == 14
    assert torch.equal(attack.pattern, make("blended-triangles", 224, seed=5).pattern)
    assert make("blended-triangles", 32).describe()["cell_pixels"] == 2


@pytest.mark.parametrize("name", STRUCTURED)
def test_trigger_preview_shows_each_structured_trigger(name):
    attack = make(name, 32)
    clean, triggered = trigger_preview(attack, {"source": "embedded", "image_size": 32, "n_test": 50}, "star", count=2)
    assert clean.dtype == triggered.dtype == torch.uint8 and clean.shape == triggered.shape == (2, 3, 32, 32)
    assert not torch.equal(clean, triggered)


@pytest.mark.parametrize(
    "name, options, message",
    [("badnet-stripes", {"stripes": "plaid"}, "stripes must be"), ("badnet-stripes", {"location": "corner"}, "location must be"),
     ("blended-stripes", {"alpha": 0}, "alpha must be in"), ("blended-triangles", {"cell": 0}, "cell must be")],
)
def test_options_are_validated(name, options, message):
    with pytest.raises(UsageError, match=message):
        build_options(ATTACKS.get(name).Options, options, name)
