"""BadNets trigger: patch geometry, determinism, purity, and the reference variant."""

import torch

from cleanbench.attacks.badnet import BadNet, BadNetOptions
from cleanbench.attacks.base import quantize, trigger_uint8
from cleanbench.seeding import torch_generator


def _images(n=8, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch_generator(seed))


def _changed(a, b):
    return (a != b).any(dim=1)


def test_default_patch_is_fixed_4px_at_bottom_right_with_1px_margin():
    attack = BadNet(BadNetOptions(), image_size=32, seed=0)
    x = _images()
    y = attack(x, torch_generator(1))
    assert attack.size == 4 and attack.margin == 1
    changed = _changed(x, y)
    rows, cols = torch.nonzero(changed.any(dim=0), as_tuple=True)
    assert rows.min() == 27 and rows.max() == 30 and cols.min() == 27 and cols.max() == 30
    assert torch.equal(y[0, :, 27:31, 27:31], y[5, :, 27:31, 27:31])  # one fixed pattern
    assert y.min() >= 0 and y.max() <= 1


def test_reference_variant_random_location_fresh_noise_inside_image():
    options = BadNetOptions(patch_size=16, location="random", noise="fresh")
    attack = BadNet(options, image_size=224, seed=0)
    x = _images(16, 224)
    y = attack(x, torch_generator(3))
    assert attack.size == 16
    for i in range(16):
        rows, cols = torch.nonzero(_changed(x, y)[i], as_tuple=True)
        assert rows.max() - rows.min() < 16 and cols.max() - cols.min() < 16
        assert rows.min() >= 0 and rows.max() <= 223
    corners = {tuple(torch.nonzero(_changed(x, y)[i])[0].tolist()) for i in range(16)}
    assert len(corners) > 1  # the location varies


def test_same_seed_same_images_bit_for_bit():
    attack_a = BadNet(BadNetOptions(location="random", noise="fresh"), 32, seed=5)
    attack_b = BadNet(BadNetOptions(location="random", noise="fresh"), 32, seed=5)
    x = _images()
    assert torch.equal(attack_a(x, torch_generator(9)), attack_b(x, torch_generator(9)))
    assert not torch.equal(attack_a(x, torch_generator(9)), attack_a(x, torch_generator(10)))


def test_apply_is_pure():
    attack = BadNet(BadNetOptions(location="random", noise="fresh"), 32, seed=0)
    x = _images()
    before = x.clone()
    params = attack.sample(len(x), torch_generator(0))
    assert torch.equal(attack.apply(x, params), attack.apply(x, params))
    assert torch.equal(x, before)


def test_patch_size_scales_from_224():
    assert BadNet(BadNetOptions(patch_size=16), 224, 0).size == 16
    assert BadNet(BadNetOptions(patch_size=16), 32, 0).size == 2
    assert BadNet(BadNetOptions(patch_size=28), 64, 0).describe()["patch_pixels"] == 8


def test_quantize_rounds_and_clamps():
    x = torch.tensor([-0.2, 0.0, 0.6 / 255, 1.4 / 255, 0.999, 1.3])
    assert quantize(x).tolist() == [0, 0, 1, 1, 255, 255]
    images = (torch.rand(2, 3, 32, 32) * 255).round().to(torch.uint8)
    out = trigger_uint8(BadNet(BadNetOptions(), 32, 0), images, torch_generator(0))
    assert out.dtype == torch.uint8 and torch.equal(out[:, :, :20, :20], images[:, :, :20, :20])
