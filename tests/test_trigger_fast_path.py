"""The uint8 trigger path (`trigger_uint8`, `apply_uint8`) gives the bytes of the plain float path.

The oracle is the implementation before the fast paths: `attack(images.float().div(255), generator)`
rounded with a direct float -> uint8 cast. The poisoned images of cached runs depend on these bytes.
"""

from __future__ import annotations

import pytest
import torch

from cleanbench.attacks.base import channel_means, quantize, trigger_rows, trigger_uint8
from cleanbench.registry import ATTACKS
from cleanbench.seeding import derive_seed, torch_generator

COMBOS = [
    *[("badnet", {"location": location, "noise": noise, "values": values})
      for location in ("fixed", "random") for noise in ("fixed", "fresh") for values in ("wrap", "clip")],
    ("badnet", {"location": "random", "noise": "fresh", "patch_size": 16, "margin": 0}),
    ("label-consistent", {}),
    ("label-consistent", {"location": "random", "noise": "fresh", "values": "clip"}),
    *[("solid-patch", {"location": location, "colour": colour})
      for location in ("fixed", "random") for colour in ("yellow", "#7f3a01")],
    ("blended", {"pattern": "fixed"}),
    ("blended", {"pattern": "fresh", "alpha": 0.37}),
    ("sig", {"variant": "reference"}),
    ("sig", {"variant": "original", "amplitude": 90}),
    ("wanet", {"variant": "reference"}),
    ("wanet", {"variant": "original"}),
    ("none", {}),
]


def make(name: str, size: int, **options):
    cls = ATTACKS.get(name)
    return cls(cls.Options(**options), size, 7)


def uint8_images(count: int, size: int) -> torch.Tensor:
    """Random images, with black and white ones first (the extremes of wrap and clip)."""
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=torch_generator(size + count))
    images[:1] = 0
    images[1:2] = 255
    return images


def float_path(attack, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return attack(images.float().div(255), generator).mul(255).round_().clamp_(0, 255).to(torch.uint8)


@pytest.mark.parametrize("name,options", COMBOS, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in COMBOS])
@pytest.mark.parametrize("size,count", [(32, 7), (32, 1), (224, 5), (224, 1)])
def test_uint8_path_matches_the_float_path_and_draws_the_same_numbers(name, options, size, count):
    attack = make(name, size, **options)
    images = uint8_images(count, size)
    expected_generator, fast_generator = torch_generator(3), torch_generator(3)
    expected = float_path(attack, images, expected_generator)
    out = trigger_uint8(attack, images, fast_generator)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out, expected)
    assert torch.equal(torch.rand(4, generator=fast_generator), torch.rand(4, generator=expected_generator))
    assert torch.equal(images, uint8_images(count, size))  # the input is not modified


@pytest.mark.parametrize("size,count", [(32, 9), (224, 5), (224, 1)])
def test_channel_means_are_the_float_paths_bit_for_bit(size, count):
    images = uint8_images(count, size)
    expected = images.float().div(255).mean(dim=(2, 3), keepdim=True)
    assert torch.equal(channel_means(images), expected)  # an ulp off would flip a rounded patch value only rarely


@pytest.mark.parametrize("name,options", [("badnet", {"location": "random", "noise": "fresh"}), ("blended", {"pattern": "fresh"})])
def test_lazy_rows_use_the_uint8_path_with_the_same_bytes(name, options):
    attack = make(name, 32, **options)
    images, rows = uint8_images(5, 32), torch.tensor([4, 0, 9, 2, 3])
    drawn = [attack.sample(1, torch_generator(derive_seed(1, "s", str(row)))) for row in rows.tolist()]
    params = {key: torch.cat([d[key] for d in drawn]) for key in drawn[0]}
    expected = attack.apply(images.float().div(255), params).mul(255).round_().clamp_(0, 255).to(torch.uint8)
    assert torch.equal(trigger_rows(attack, images, rows, 1, "s"), expected)


def test_quantize_casts_through_int16_with_the_bytes_of_a_direct_cast():
    values = torch.arange(-(1 << 20), (1 << 20) + 1).float() / (1 << 19)  # every 2^-19 in [-2, 2]
    values = torch.cat([values, torch.tensor([-0.0, 1e30, -1e30, float("inf"), float("-inf")])])
    assert torch.equal(quantize(values), values.mul(255).round_().clamp_(0, 255).to(torch.uint8))
    every_byte = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(quantize(every_byte.float().div(255)), every_byte)  # untouched pixels survive


def test_a_subclass_that_overrides_apply_is_not_hidden_by_the_parents_fast_path():
    from cleanbench.attacks.badnet import BadNet, BadNetOptions

    class Painted(BadNet):
        def apply(self, images, params):
            return torch.full_like(images, 0.5)

    images = torch.zeros(3, 3, 32, 32, dtype=torch.uint8)
    out = trigger_uint8(Painted(BadNetOptions(), 32, 0), images, torch.Generator().manual_seed(0))
    assert torch.equal(out, torch.full_like(images, 128))
