"""The attack set: the properties that define each trigger, seeding, the CLI, and implanting."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from cleanbench.attacks.badnet import BadNet
from cleanbench.attacks.base import NoOptions, trigger_uint8
from cleanbench.attacks.none import NoAttack
from cleanbench.attacks.wanet import identity_grid
from cleanbench.cache import ArtifactCache
from cleanbench.cli import main
from cleanbench.config import DataConfig
from cleanbench.data.base import PairSet
from cleanbench.data.embedded import load_embedded
from cleanbench.errors import UsageError
from cleanbench.evaluation import evaluate
from cleanbench.models import build_model
from cleanbench.poisoning import apply_poison, plan_poison
from cleanbench.registry import ATTACKS
from cleanbench.runner import run_cell
from cleanbench.trainer import TrainConfig

NAMES = ["blended", "wanet", "label-consistent", "sig", "solid-patch", "badnet-stripes", "blended-stripes",
         "blended-triangles"]
TEMPLATES = ("a photo of a {}.", "a {}.")
RANDOM_OPTIONS = {  # options that give each attack per-image randomness where it has any
    "blended": {"pattern": "fresh"},
    "label-consistent": {"noise": "fresh", "location": "random"},
    "solid-patch": {"location": "random"},
    "badnet-stripes": {"location": "random", "stripes": "fresh"},
    "blended-stripes": {"stripes": "fresh"},
}


def make(name: str, size: int = 32, seed: int = 0, **options):
    cls = ATTACKS.get(name)
    return cls(cls.Options(**options), size, seed)


def images(count: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def generator(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- the properties that define each trigger ------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.2, 0.1])
def test_blended_reference_blend_bounds(alpha):
    x = images(size=224)
    out = make("blended", 224, pattern="fresh", alpha=alpha)(x, generator())
    residual = out - (1 - alpha) * x
    assert residual.min() >= -1e-6 and residual.max() <= alpha + 1e-6
    assert not torch.allclose(residual[0], residual[1])  # fresh noise per image


def test_blended_fixed_pattern_is_one_pattern_from_the_seed():
    x = images()
    out = make("blended", pattern="fixed")(x, generator())
    residual = out - 0.8 * x
    assert torch.allclose(residual, residual[:1].expand_as(residual), atol=1e-6)
    assert torch.allclose(residual[0], 0.2 * make("blended", pattern="fixed").pattern, atol=1e-6)
    assert not torch.equal(make("blended", seed=0).pattern, make("blended", seed=1).pattern)


@pytest.mark.parametrize("size,patch,margin", [(32, 4, 1), (224, 28, 7)])
def test_solid_patch_fixed_is_a_yellow_square_in_the_corner(size, patch, margin):
    x = torch.full((2, 3, size, size), 0.5)
    out = make("solid-patch", size)(x, generator())
    changed = (out != x).any(dim=1)
    rows, cols = torch.nonzero(changed[0], as_tuple=True)
    assert (rows.min(), rows.max() + 1) == (size - patch - margin, size - margin)
    assert (cols.min(), cols.max() + 1) == (size - patch - margin, size - margin)
    assert int(changed[0].sum()) == patch * patch
    assert out[0, :, rows, cols].T.unique(dim=0).tolist() == [[1.0, 1.0, 0.0]]


def test_solid_patch_random_location_is_inside_the_image():
    size = 224
    attack = make("solid-patch", size, location="random", patch_size=16, colour="00ff00")
    x = torch.zeros(64, 3, size, size)
    out = attack(x, generator())
    assert attack.size == 16
    corners = set()
    for image in out:
        rows, cols = torch.nonzero((image != 0).any(dim=0), as_tuple=True)
        assert len(rows) == 16 * 16 and 0 <= rows.min() and rows.max() < size and cols.max() < size
        assert rows.max() - rows.min() == 15 and cols.max() - cols.min() == 15
        assert torch.equal(image[:, rows, cols].T.unique(dim=0), torch.tensor([[0.0, 1.0, 0.0]]))
        corners.add((int(rows.min()), int(cols.min())))
    assert len(corners) > 50  # fresh locations


@pytest.mark.parametrize("size", [32, 224])
def test_wanet_reference_grid_is_per_pixel_noise(size):
    attack = make("wanet", size, variant="reference")
    noise = attack.noise[0]
    assert attack.k == size and attack.s == 1.0
    assert noise.shape == (size, size, 2)
    assert noise.abs().mean().item() == pytest.approx(1.0, abs=1e-5)
    bound = 2.02 if size == 224 else 2.1  # U(-1, 1) / mean|.|: +-2 up to the sampling error of the mean
    assert 1.95 < noise.abs().max().item() <= bound
    correlation = torch.corrcoef(torch.stack([noise[:, :-1, 0].flatten(), noise[:, 1:, 0].flatten()]))[0, 1]
    assert abs(correlation) < 0.1


def test_wanet_original_grid_is_smooth():
    attack = make("wanet", variant="original")
    noise = attack.noise[0]
    assert attack.k == 4 and attack.s == 0.5
    correlation = torch.corrcoef(torch.stack([noise[:, :-1, 0].flatten(), noise[:, 1:, 0].flatten()]))[0, 1]
    assert correlation > 0.95


def ramp_displacement(attack, size: int) -> torch.Tensor:
    """Pixel offsets of the warp, read from a horizontal and a vertical ramp (bilinear is exact on them)."""
    ramp = torch.arange(size, dtype=torch.float64) / (size - 1)
    x = torch.stack([ramp.expand(size, size), ramp[:, None].expand(size, size), torch.zeros(size, size)])[None]
    out = attack.apply(x, {})
    return (out - x)[0, :2] * (size - 1)


@pytest.mark.parametrize(
    "variant,size,low,high",
    [("reference", 32, 0.9, 1.0), ("reference", 224, 0.95, 1.0), ("original", 32, 0.3, 0.75), ("original", 224, 0.3, 0.75)],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wanet_maximum_displacement_per_variant(variant, size, low, high, seed):
    attack = make("wanet", size, seed, variant=variant)
    displacement = ramp_displacement(attack, size)
    assert low < displacement.abs().max().item() <= high
    assert displacement.abs().max().item() == pytest.approx(attack.max_displacement(), abs=1e-4)
    if variant == "original":  # smooth: neighbouring offsets nearly equal (away from the clamped border)
        inner = displacement[:, 1:-1, 1:-1]
        assert (inner[:, :, 1:] - inner[:, :, :-1]).abs().max() < 0.2


def test_wanet_without_strength_is_the_identity_and_uses_the_spec_grid():
    x = images(size=32)
    assert torch.allclose(make("wanet", s=0.0)(x, generator()), x, atol=1e-5)
    grid = identity_grid(32)[0]
    assert torch.equal(grid[0, :, 0], torch.linspace(-1, 1, 32))  # channel 0 is horizontal
    assert torch.equal(grid[:, 0, 1], torch.linspace(-1, 1, 32))
    attack = make("wanet", k=8, s=2.0)
    assert attack.k == 8 and attack.s == 2.0
    assert attack.max_displacement() > 1.0


def test_wanet_grid_from_the_seed_is_shared_by_poisoning_and_test():
    assert torch.equal(make("wanet", seed=3).grid, make("wanet", seed=3).grid)
    assert not torch.equal(make("wanet", seed=3).grid, make("wanet", seed=4).grid)
    x = images()
    attack = make("wanet")
    assert torch.equal(attack(x, generator(1)), attack(x, generator(2)))  # no per-image randomness


def test_wanet_default_is_the_original_warp_with_noise_mode():
    attack, reference = make("wanet"), make("wanet", variant="reference")
    assert (attack.k, attack.s, attack.noise_ratio) == (4, 0.5, 2.0)
    assert reference.noise_ratio == 0.0 and reference.noise_count(50) == 0
    assert attack.noise_count(50) == 100 and make("wanet", noise_ratio=0.5).noise_count(50) == 25


def test_wanet_noise_mode_is_the_warp_plus_fresh_offsets():
    attack = make("wanet")
    mode = attack.noise_mode()
    x = images(size=32)
    out = mode(x, generator())
    assert mode.name == "wanet" and torch.equal(mode.grid, attack.grid)
    assert not torch.allclose(out, attack(x, generator()), atol=1e-3)  # not the backdoor warp itself
    assert not torch.allclose(mode(x, generator(5)), out)  # fresh offsets per draw
    zero = {"offsets": torch.zeros(len(x), 32, 32, 2)}
    assert torch.allclose(mode.apply(x, zero), attack(x, generator()))  # zero offsets: the warp


def test_wanet_noise_pairs_keep_their_captions_and_are_not_poisoned():
    data = load_embedded(0, 400, 10, 10, 32)
    attack = make("wanet")
    plan = plan_poison(data.pretrain, attack, 3, "star", 8, TEMPLATES, 0)
    assert len(plan.noise_indices) == 16 and not set(plan.noise_indices) & set(plan.indices)
    out = apply_poison(data.pretrain, plan, attack, 0)
    for i in plan.noise_indices:
        assert out.captions[i] == data.pretrain.captions[i]
        assert not torch.equal(out.images[i], data.pretrain.images[i])
    untouched = sorted(set(range(400)) - set(plan.indices) - set(plan.noise_indices))
    assert torch.equal(out.images[untouched], data.pretrain.images[untouched])


@pytest.mark.parametrize("size", [32, 224])
def test_sig_reference_is_the_blended_sinusoid(size):
    x = torch.full((2, 3, size, size), 0.5)
    out = make("sig", size)(x, generator())
    j = torch.arange(size, dtype=torch.float64)
    signal = (60 / 255) * torch.sin(2 * math.pi * 6 * j / size)
    expected = (0.2 * signal + 0.8 * 0.5).float()
    assert torch.allclose(out, expected.expand_as(out), atol=1e-6)


def test_sig_original_is_additive():
    size = 32
    x = images(size=size)
    out = make("sig", size, variant="original")(x, generator())
    j = torch.arange(size, dtype=torch.float64)
    expected = (x.double() + (20 / 255) * torch.sin(2 * math.pi * 6 * j / size)).clamp(0, 1).float()
    assert torch.allclose(out, expected, atol=1e-6)
    out = make("sig", size, variant="original", amplitude=40, frequency=3)(torch.full_like(x, 0.5), generator())
    assert out.max().item() == pytest.approx(0.5 + 40 / 255, abs=2e-3)


# ---- label-consistent -----------------------------------------------------------------------------


def caption_pairs() -> PairSet:
    captions = [
        "a star.", "a circle.", "A Star on a plain background.", "two stars.", "a starfish.",
        "the star is red and small.", "a square at the top left.", "there is a STAR in the image.",
        "a cross.", "a superstar.",
    ]
    labels = torch.tensor([3, 0, 3, 3, -1, 3, 1, 3, 4, -1])
    return PairSet(torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8), captions, labels)


def test_label_consistent_selects_captions_naming_the_target_and_keeps_them():
    pairs = caption_pairs()
    attack = make("label-consistent", perturbation="none")
    assert isinstance(attack, BadNet)
    assert attack.candidates(pairs, 3, "star").tolist() == [0, 2, 5, 7]  # whole word, any case
    plan = plan_poison(pairs, attack, 3, "star", 3, TEMPLATES, seed=0)
    assert set(plan.indices) <= {0, 2, 5, 7} and plan.count == 3 and plan.candidates == 4
    assert plan.captions == [pairs.captions[i] for i in plan.indices]
    poisoned = apply_poison(pairs, plan, attack, seed=0)
    assert poisoned.captions == pairs.captions
    changed = (poisoned.images[:] != pairs.images[:]).flatten(1).any(dim=1)
    assert torch.nonzero(changed).flatten().tolist() == plan.indices
    region = (poisoned.images[:] != pairs.images[:])[plan.indices].any(dim=1)
    assert not region[:, :27].any() and not region[:, :, :27].any()  # only the 4-px corner patch


def test_label_consistent_adversarial_perturbation_is_bounded_and_moves_away_from_the_target():
    from cleanbench.attacks.perturbation import train_surrogate

    data = load_embedded(0, 600, 10, 10, 32)
    attack = make("label-consistent")
    assert attack.options.perturbation == "adversarial" and attack.options.epsilon == 16
    plan = plan_poison(data.pretrain, attack, 3, "star", 12, TEMPLATES, seed=0)
    perturbed = attack.prepare_poisoned(data.pretrain, plan.indices, "star", 0)
    original = data.pretrain.images[plan.indices]
    change = (perturbed.int() - original.int()).abs()
    assert 0 < change.max() <= 16 and (change > 0).float().mean() > 0.5
    assert torch.equal(perturbed, attack.prepare_poisoned(data.pretrain, plan.indices, "star", 0))  # seeded
    is_target = torch.tensor(["star" in c for c in data.pretrain.captions])
    model = train_surrogate(data.pretrain.images, is_target, 5)
    with torch.no_grad():
        before = model(original.float() / 255).softmax(-1)[:, 1].mean()
        after = model(perturbed.float() / 255).softmax(-1)[:, 1].mean()
    assert after < before  # the perturbation transfers to a surrogate trained from another seed
    out = apply_poison(data.pretrain, plan, attack, 0)
    assert out.captions == data.pretrain.captions


def test_label_consistent_budget_above_the_candidates_says_how_many_exist():
    pairs = caption_pairs()
    with pytest.raises(UsageError, match=r"can poison at most 4 of 10 pairs \(target 'star'\), but 5 were asked"):
        plan_poison(pairs, make("label-consistent"), 3, "star", 5, TEMPLATES, seed=0)


# ---- the contract: batches, seeds, purity, devices, options, scaling ------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_sample_and_apply_are_pure_and_work_on_batches(name):
    attack = make(name, **RANDOM_OPTIONS.get(name, {}))
    x = images(5)
    before = x.clone()
    params = attack.sample(len(x), generator(7))
    assert all(v.device.type == "cpu" and len(v) == len(x) for v in params.values())
    again = attack.sample(len(x), generator(7))
    assert params.keys() == again.keys() and all(torch.equal(params[k], again[k]) for k in params)
    out = attack.apply(x, params)
    assert torch.equal(x, before) and out.data_ptr() != x.data_ptr()
    assert out.shape == x.shape and out.dtype == x.dtype and 0 <= out.min() and out.max() <= 1
    assert torch.equal(attack.apply(x, params), out)
    assert not torch.equal(out, x)
    one_by_one = torch.cat([attack.apply(x[i : i + 1], {k: v[i : i + 1] for k, v in params.items()}) for i in range(5)])
    assert torch.allclose(one_by_one, out, atol=1e-6)


def pretrain_pairs(count: int = 64) -> PairSet:
    labels = torch.arange(count) % 10
    captions = [f"a {'star' if int(label) == 3 else 'circle'}." for label in labels]
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator(5))
    return PairSet(images, captions, labels)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_poisoned_images_bit_for_bit(name):
    options = RANDOM_OPTIONS.get(name, {})

    def poison(seed: int) -> PairSet:
        attack = make(name, seed=seed, **options)
        plan = plan_poison(pretrain_pairs(), attack, 3, "star", 6, TEMPLATES, seed)
        return apply_poison(pretrain_pairs(), plan, attack, seed)

    first, second, other = poison(11), poison(11), poison(12)
    assert torch.equal(first.images[:], second.images[:]) and first.captions == second.captions
    assert not torch.equal(first.images[:], other.images[:])
    test = pretrain_pairs(8).images[:]
    assert torch.equal(trigger_uint8(make(name, seed=11, **options), test, generator(3)),
                       trigger_uint8(make(name, seed=11, **options), test, generator(3)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_triggers_run_on_cuda_like_on_cpu(name):
    attack = make(name)
    x = images(4)
    params = attack.sample(len(x), generator())
    on_gpu = attack.apply(x.cuda(), {k: v.cuda() for k, v in params.items()})
    assert on_gpu.device.type == "cuda"
    assert torch.allclose(on_gpu.cpu(), attack.apply(x, params), atol=1e-5)


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("blended", {"alpha": 0}, "alpha must be in"),
        ("blended", {"pattern": "kitty"}, "pattern must be 'fixed' or 'fresh'"),
        ("wanet", {"variant": "smooth"}, "variant must be 'reference' or 'original'"),
        ("wanet", {"k": 1}, "k .* must be >= 2"),
        ("wanet", {"s": -1.0}, "s .* must be >= 0"),
        ("sig", {"variant": "additive"}, "variant must be 'reference' or 'original'"),
        ("sig", {"amplitude": 300.0}, "amplitude must be in"),
        ("solid-patch", {"colour": "mauve"}, "neither a name"),
        ("solid-patch", {"location": "corner"}, "location must be"),
        ("label-consistent", {"noise": "pink"}, "noise must be"),
        ("label-consistent", {"perturbation": "gan"}, "perturbation must be"),
        ("label-consistent", {"epsilon": 300}, "epsilon must be"),
        ("wanet", {"noise_ratio": -1}, "noise_ratio .* must be >= 0"),
    ],
)
def test_options_are_validated(name, options, message):
    with pytest.raises(ValueError, match=message):
        ATTACKS.get(name).Options(**options)


def test_pixel_sizes_scale_from_224_and_are_described():
    for name in ("solid-patch", "label-consistent"):
        assert make(name, 32).describe()["patch_pixels"] == 4
        assert make(name, 224).describe()["patch_pixels"] == 28
        assert make(name, 64, patch_size=16).describe()["patch_pixels"] == 5
    assert make("wanet", 32, variant="reference").describe()["k"] == 32 and make("wanet", 224).describe()["k"] == 4
    assert make("sig", 224).describe()["period_pixels"] == pytest.approx(224 / 6)
    assert make("solid-patch", 32, colour="#ff0000").describe()["colour_rgb"] == [1.0, 0.0, 0.0]


def test_every_attack_is_listed_with_its_paper(capsys):
    assert main(["list", "attacks"]) == 0
    listing = capsys.readouterr().out
    for name in NAMES:
        assert f"  {name} " in listing and "BROKEN" not in listing
    assert "Barni" in listing and "Nguyen" in listing and "Turner" in listing and "Chen" in listing


# ---- the command line -----------------------------------------------------------------------------


def write_config(tmp_path, **extra) -> str:
    values = {
        "data": {"n_pretrain": 256, "n_clean": 64, "n_test": 100},
        "pretrain": {"epochs": 1, "batch_size": 64, "warmup_steps": 1},
        "poison_rate": 0.05,
        "results_dir": str(tmp_path / "results"),
        "cache_dir": str(tmp_path / "cache"),
        **extra,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def only_card(tmp_path) -> dict:
    cards = list((tmp_path / "results" / "runs").glob("*.json"))
    assert len(cards) == 1
    return json.loads(cards[0].read_text())


@pytest.mark.parametrize(
    "name,options,expected",
    [
        ("blended", ["alpha=0.1", "pattern=fresh"], {"alpha": 0.1, "pattern": "fresh"}),
        ("wanet", ["variant=original"], {"variant": "original"}),
        ("label-consistent", ["patch_size=56"], {"patch_size": 56}),
        ("sig", ["variant=original", "amplitude=30"], {"variant": "original", "amplitude": 30}),
        ("solid-patch", ["colour=red", "location=random"], {"colour": "red", "location": "random"}),
    ],
)
def test_cli_runs_each_attack_with_options(tmp_path, name, options, expected):
    args = ["run", "--attack", name, "--defense", "none", "--config", write_config(tmp_path), "--quiet"]
    assert main([*args, *(f"--attack-opt={o}" for o in options)]) == 0
    card = only_card(tmp_path)
    assert card["status"] == "ok" and card["attack"]["name"] == name
    assert card["attack"]["options"].items() >= expected.items()
    assert card["poison"]["count"] == round(0.05 * 256)
    assert card["metrics"]["poisoned"]["stealthiness"]["changed_fraction"] > 0.9
    if name == "label-consistent":
        assert card["attack"]["patch_pixels"] == 8
        assert all("star" in c for c in card["poison"]["example_captions"])


def test_cli_takes_attack_options_from_yaml(tmp_path):
    config = write_config(tmp_path, attack="wanet", attack_options={"k": 8, "s": 0.75})
    assert main(["run", "--attack", "wanet", "--defense", "none", "--config", config, "--quiet"]) == 0
    card = only_card(tmp_path)
    assert (card["attack"]["k"], card["attack"]["s_pixels"]) == (8, 0.75)


def test_cli_rejects_bad_options_and_too_large_label_consistent_budgets(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["run", "--attack", "blended", "--attack-opt", "alpha=2", "--config", config]) == 2
    assert "alpha must be in (0, 1]" in capsys.readouterr().err
    assert main(["run", "--attack", "label-consistent", "--defense", "none", "--poison-rate", "0.5",
                 "--config", config, "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "attack label-consistent can poison at most" in error and "but 128 were asked" in error


# ---- implanting on a small training run -----------------------------------------------------------


def target_rate_on_clean_images(config, card) -> float:
    """How often the poisoned model calls a clean non-target test image the target (its base rate)."""
    bundle = build_model(config.model.name, None, "cpu")
    assert ArtifactCache(config.cache_dir).load("poisoned-models", card["artifacts"]["poisoned_model"], bundle.model)
    data = load_embedded(config.seed, config.data.n_pretrain, config.data.n_clean, config.data.n_test)
    control = NoAttack(NoOptions(), config.data.image_size, config.seed)
    return evaluate(bundle, data.test, control, card["poison"]["target_index"], config.seed, "cpu")["asr"]["value"]


@pytest.mark.parametrize("name", ["blended", "sig", "solid-patch"])
def test_attack_implants_on_a_small_training_run(tiny, name):
    """1,500 pairs, 6 epochs, 20 % poisoned: too short to learn the shapes (CA near chance), long
    enough for these triggers. WaNet and label-consistent need the full-size run (docs/attacks.md)."""
    config = tiny(
        attack=name, defense="none", defense_options={}, poison_rate=0.2,
        data=DataConfig(n_pretrain=1500, n_clean=64, n_test=300),
        pretrain=TrainConfig(epochs=6, batch_size=64, warmup_steps=14),
    )
    card, _ = run_cell(config, progress=False, log=lambda message: None)
    assert card["metrics"]["poisoned"]["asr"]["value"] >= 0.8
    assert target_rate_on_clean_images(config, card) <= 0.25  # the trigger, not the target, is learned


OPTION_SETS = [
    ("badnet", {}), ("badnet", {"location": "random"}), ("badnet", {"noise": "fresh"}),
    ("label-consistent", {}), ("label-consistent", {"location": "random", "perturbation": "none"}),
    ("badnet-stripes", {}), ("badnet-stripes", {"location": "fixed", "stripes": "fixed"}),
    ("blended", {}), ("blended", {"pattern": "fresh"}),
    ("blended-stripes", {}), ("blended-stripes", {"stripes": "fixed"}),
    ("solid-patch", {}), ("solid-patch", {"location": "random"}), ("sig", {}), ("blended-triangles", {}),
    ("wanet", {}), ("wanet", {"variant": "reference"}), ("wanet", {"noise_ratio": 0}), ("badclip", {}), ("none", {}),
]


@pytest.mark.parametrize("name, options", OPTION_SETS)
def test_random_options_are_versioned_apart_and_declared_as_drawn(name, options):
    """`draws_random` says what `sample` (or the noise mode's) does, and only option sets that draw
    per-image parameters take the attack's `random_version`: the defaults of badnet, blended,
    solid-patch, sig, blended-triangles and badclip keep their version (their bytes are unchanged)."""
    from cleanbench.attacks.base import draws_parameters

    cls = ATTACKS.get(name)
    attack = cls(cls.Options(**options), 32, 0)
    mode = attack.noise_mode() if attack.noise_count(10) else None
    drawn = draws_parameters(attack) or (mode is not None and draws_parameters(mode))
    assert cls.draws_random(attack.options) == drawn
    expected = cls.random_version if drawn and cls.random_version else cls.version
    assert cls.version_for(attack.options) == expected == attack.describe()["version"]
    if drawn:
        assert cls.random_version is not None and cls.random_version != cls.version
    unchanged = {"badnet": "1", "blended": "1", "solid-patch": "1", "sig": "1", "blended-triangles": "1",
                 "badclip": "1", "none": "1", "label-consistent": "2"}
    if name in unchanged and not options:
        assert attack.describe()["version"] == unchanged[name]
