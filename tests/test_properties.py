"""Property-based tests (hypothesis): config and grid parsing, poison selection, metric formulas and
dataset-root containment hold for every input, not only for the examples the other tests pick."""

from __future__ import annotations

import math
import os

import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from cleanbench.attacks.badnet import BadNet, BadNetOptions
from cleanbench.attacks.label_consistent import LabelConsistent
from cleanbench.config import RunConfig, from_dict, merge, parse_key_values
from cleanbench.data.base import PairSet
from cleanbench.data.images import stays_inside
from cleanbench.data.shapes import SHAPES
from cleanbench.errors import UsageError
from cleanbench.metrics import der, proportion, stealthiness
from cleanbench.poisoning import apply_poison, plan_poison, poison_budget
from cleanbench.sweep import expand, load_grid
from cleanbench.trainer import TrainConfig

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)
RATES = st.floats(min_value=1e-6, max_value=1.0, exclude_min=False)


# --- config parsing -------------------------------------------------------------------------------


@st.composite
def run_config_values(draw) -> dict:
    """A valid (partial) run configuration as YAML would give it."""
    values: dict = {}
    if draw(st.booleans()):
        values["seed"] = draw(st.integers(0, 2**31 - 1))
    if draw(st.booleans()):
        values["attack"] = draw(st.sampled_from(["badnet", "blended", "sig", "wanet", "none"]))
    if draw(st.booleans()):
        values["target"] = draw(st.sampled_from(SHAPES))
    if draw(st.booleans()):
        values["poison_rate"] = draw(RATES)
    elif draw(st.booleans()):
        values["poison_rate"], values["poison_count"] = None, draw(st.integers(0, 100))
    if draw(st.booleans()):
        values["data"] = {"n_pretrain": draw(st.integers(1, 10**6)), "image_size": draw(st.integers(8, 512))}
    if draw(st.booleans()):
        values["pretrain"] = {"epochs": draw(st.integers(1, 100)),
                              "lr": draw(st.floats(1e-9, 1.0) | st.integers(1, 3))}  # an int where a float goes
    if draw(st.booleans()):
        values["defense_options"] = {"lr": draw(st.floats(1e-9, 1.0))}
    return values


@FAST
@given(values=run_config_values())
def test_valid_configs_parse_keep_every_value_and_round_trip(values):
    config = from_dict(RunConfig, values)
    out = config.to_dict()
    for key, value in values.items():
        if isinstance(value, dict) and key != "defense_options":
            for inner, item in value.items():
                assert out[key][inner] == item and type(out[key][inner]) is type(getattr(getattr(config, key), inner))
        else:
            assert out[key] == value
    assert isinstance(config.pretrain.lr, float)
    assert from_dict(RunConfig, out) == config


@FAST
@given(values=st.dictionaries(st.sampled_from([f.name for f in RunConfig.__dataclass_fields__.values()])
                              | st.text(max_size=10), JSON, max_size=4))
def test_any_config_mapping_is_accepted_or_refused_with_a_usage_error(values):
    try:
        config = from_dict(RunConfig, values)
    except UsageError as error:
        message = str(error)
        assert message.startswith("config") and "\n" not in message
        return
    assert isinstance(config, RunConfig)


@FAST
@given(key=st.text(min_size=1, max_size=15).filter(lambda k: k not in RunConfig.__dataclass_fields__))
def test_an_unknown_key_is_named(key):
    with pytest.raises(UsageError, match="unknown key"):
        from_dict(RunConfig, {key: 1})


@FAST
@given(value=st.booleans() | st.floats() | st.text(max_size=5) | st.lists(st.integers(), max_size=2))
def test_seeds_must_be_integers(value):
    with pytest.raises(UsageError, match="config.seed: expected int"):
        from_dict(RunConfig, {"seed": value})


@FAST
@given(lr=st.floats(min_value=1e-12, max_value=1e12), epochs=st.integers(1, 10**6))
def test_command_line_values_reach_their_fields_exactly(lr, epochs):
    """`--defense-opt lr=1e-05` (YAML 1.1 reads 1e-05 as a string) still gives the float."""
    parsed = parse_key_values([f"lr={lr!r}", f"epochs={epochs}"], "--defense-opt")
    options = from_dict(TrainConfig, parsed)
    assert options.lr == lr and options.epochs == epochs


@FAST
@given(base=st.dictionaries(st.sampled_from("abc"), JSON, max_size=3),
       override=st.dictionaries(st.sampled_from("bcd"), JSON, max_size=3))
def test_merge_keeps_base_keys_and_override_leaves_win(base, override):
    merged = merge(base, override)
    assert set(merged) == set(base) | set(override)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            assert merge(base[key], value) == merged[key]
        else:
            assert merged[key] == value
    assert merge(base, {}) == base and merge({}, override) == override


# --- grid parsing ---------------------------------------------------------------------------------


@st.composite
def grids(draw) -> dict:
    attacks = draw(st.lists(st.sampled_from(["badnet", "blended", "none"]), min_size=1, max_size=2, unique=True))
    defenses = draw(st.lists(st.sampled_from(["none", "finetune", "cleanclip"]), min_size=1, max_size=2, unique=True))
    rates = draw(st.lists(st.floats(0.001, 1.0), min_size=1, max_size=2, unique=True))
    seeds = draw(st.lists(st.integers(0, 10**6), min_size=1, max_size=2, unique=True))
    return {"attacks": attacks, "defenses": defenses, "poison_rates": rates, "seeds": seeds,
            "base": {"device": "cpu", "data": {"n_pretrain": 200}}}


@SLOW
@given(grid=grids())
def test_grids_expand_to_every_distinct_cell_once(tmp_path, grid):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({**grid, "results_dir": str(tmp_path / "results")}))
    cells = expand(load_grid(path))
    poisoning = len([a for a in grid["attacks"] if a != "none"]) * len(grid["poison_rates"])
    with_none = 1 if "none" in grid["attacks"] else 0  # attack none ignores the rate: its cells merge
    assert len(cells) == (poisoning + with_none) * len(grid["defenses"]) * len(grid["seeds"])
    assert len({c.cell_key for c in cells}) == len(cells) and len({c.card_path for c in cells}) == len(cells)
    assert [c.index for c in cells] == list(range(1, len(cells) + 1))
    for cell in cells:
        assert cell.seed in grid["seeds"] and cell.config.seed == cell.seed
        assert cell.config.attack == "none" or cell.config.poison_rate in grid["poison_rates"]
    order = [c.poisoned_key for c in cells]
    for key in set(order):  # the cells that share a poisoned model follow each other
        where = [i for i, k in enumerate(order) if k == key]
        assert where == list(range(where[0], where[-1] + 1))
    assert not (tmp_path / "results").exists()


GRID_KEYS = ["name", "base", "attacks", "defenses", "poison_rates", "poison_counts", "seeds", "executor", "other"]


@SLOW
@given(changes=st.dictionaries(st.sampled_from(GRID_KEYS), JSON, min_size=1, max_size=2),
       entry=st.dictionaries(st.sampled_from(["name", "options", "grid", "extra"]), JSON, max_size=3))
def test_any_damaged_grid_is_accepted_or_refused_with_a_usage_error(tmp_path, changes, entry):
    grid = {"attacks": ["badnet"], "defenses": ["none", entry], "poison_rates": [0.1], "seeds": [0],
            "results_dir": str(tmp_path / "results"), "base": {"device": "cpu"}, **changes}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    try:
        cells = expand(load_grid(path))
    except UsageError as error:
        assert str(path) in str(error) or "config" in str(error) or "plugin" in str(error), str(error)
        return
    assert cells and all(isinstance(c.seed, int) and not isinstance(c.seed, bool) for c in cells)


# --- poison selection -----------------------------------------------------------------------------


@FAST
@given(total=st.integers(1, 10**7), rate=RATES)
def test_budget_from_a_rate_is_in_range(total, rate):
    budget = poison_budget(total, rate=rate)
    assert budget == max(1, round(rate * total)) and 1 <= budget <= total


@FAST
@given(total=st.integers(0, 10**6), count=st.integers(-10, 10**6 + 10))
def test_budget_from_a_count_is_exact_or_refused(total, count):
    if 0 <= count <= total:
        assert poison_budget(total, count=count) == count
    else:
        with pytest.raises(UsageError, match=f"poison count {count} is outside 0..{total}"):
            poison_budget(total, count=count)


@FAST
@given(rate=st.floats(allow_nan=True, allow_infinity=True).filter(lambda r: not 0 < r <= 1))
def test_rates_outside_the_unit_interval_are_refused(rate):
    with pytest.raises(UsageError, match=r"outside \(0, 1\]"):
        poison_budget(100, rate=rate)


@st.composite
def pair_sets(draw) -> tuple[PairSet, int, str]:
    """Pairs with labels (or -1 where unknown) and captions that may name the target class."""
    n = draw(st.integers(1, 60))
    target = draw(st.integers(0, len(SHAPES) - 1))
    labels = draw(st.lists(st.integers(-1, len(SHAPES) - 1), min_size=n, max_size=n))
    words = st.sampled_from(["a", "photo", "of", SHAPES[target], SHAPES[target].upper(), f"{SHAPES[target]}s", "red"])
    captions = [" ".join(draw(st.lists(words, min_size=1, max_size=4))) for _ in range(n)]
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 8, 8).clone()
    return PairSet(images, captions, torch.tensor(labels, dtype=torch.long), SHAPES), target, SHAPES[target]


def _names_target(caption: str, target: str) -> bool:
    return target in caption.lower().split()


@FAST
@given(data=pair_sets(), fraction=st.floats(0, 1), seed=st.integers(0, 2**32 - 1),
       clean_label=st.booleans())
def test_poison_plans_take_exactly_the_budget_of_allowed_pairs(data, fraction, seed, clean_label):
    pairs, target, name = data
    attack = LabelConsistent(LabelConsistent.Options(perturbation="none"), 8, seed) if clean_label else BadNet(BadNetOptions(), 8, seed)
    if clean_label:
        allowed = [i for i, c in enumerate(pairs.captions) if _names_target(c, name)]
    else:  # dirty-label: never an image of the target class (by label, or by caption where unlabelled)
        allowed = [i for i in range(len(pairs)) if (pairs.labels[i] != target if pairs.labels[i] >= 0
                                                     else not _names_target(pairs.captions[i], name))]
    budget = round(fraction * len(pairs))
    templates = ["a photo of a {}.", "{}"]
    if budget > len(allowed):
        with pytest.raises(UsageError, match=f"can poison at most {len(allowed)} of {len(pairs)} pairs"):
            plan_poison(pairs, attack, target, name, budget, templates, seed)
        return
    plan = plan_poison(pairs, attack, target, name, budget, templates, seed)
    assert plan.count == budget == len(set(plan.indices))  # exact, no duplicates
    assert plan.indices == sorted(plan.indices) and set(plan.indices) <= set(allowed)
    assert plan.candidates == len(allowed)
    if clean_label:
        assert plan.captions == [pairs.captions[i] for i in plan.indices]
    else:
        assert all(c in ("a photo of a {}.".format(name), name) for c in plan.captions)
    again = plan_poison(pairs, attack, target, name, budget, templates, seed)
    assert (again.indices, again.captions) == (plan.indices, plan.captions)  # a pure function of the seed
    poisoned = apply_poison(pairs, plan, attack, seed)
    untouched = [i for i in range(len(pairs)) if i not in set(plan.indices)]
    assert torch.equal(poisoned.images[untouched], pairs.images[untouched])
    assert [poisoned.captions[i] for i in untouched] == [pairs.captions[i] for i in untouched]
    assert torch.equal(poisoned.labels, pairs.labels)


# --- metric formulas ------------------------------------------------------------------------------

Z = norm.ppf(0.975)


@FAST
@given(total=st.integers(1, 10**6), data=st.data())
def test_proportions_follow_the_wilson_formula(total, data):
    k = data.draw(st.integers(0, total))
    p = proportion(k, total)
    assert p.value == k / total and 0 <= p.low <= p.value <= p.high <= 1
    centre = (k / total + Z**2 / (2 * total)) / (1 + Z**2 / total)
    half = Z / (1 + Z**2 / total) * math.sqrt(k / total * (1 - k / total) / total + Z**2 / (4 * total**2))
    assert p.low == pytest.approx(max(0.0, centre - half), abs=1e-9)
    assert p.high == pytest.approx(min(1.0, centre + half), abs=1e-9)
    mirror = proportion(total - k, total)
    assert p.low == pytest.approx(1 - mirror.high, abs=1e-9)


@FAST
@given(total=st.integers(0, 100), successes=st.integers(-5, 110))
def test_impossible_counts_are_refused(total, successes):
    assume(total > 0 and not 0 <= successes <= total)
    with pytest.raises(ValueError):
        proportion(successes, total)


UNIT = st.floats(0, 1)


@FAST
@given(ca_before=UNIT, ca_after=UNIT, asr_before=UNIT, asr_after=UNIT, lower=UNIT)
def test_der_formula_range_and_monotonicity(ca_before, ca_after, asr_before, asr_after, lower):
    value = der(ca_before, ca_after, asr_before, asr_after)
    assert value == (max(0.0, asr_before - asr_after) - max(0.0, ca_before - ca_after) + 1) / 2
    assert 0 <= value <= 1
    assert der(ca_before, ca_before, asr_before, asr_before) == 0.5
    assert der(ca_before, ca_after, asr_before, min(asr_after, lower)) >= value  # less ASR is never worse
    assert der(ca_before, max(ca_after, lower), asr_before, asr_after) >= value  # more CA is never worse
    assert math.isnan(der(math.nan, ca_after, asr_before, asr_after))


@FAST
@given(shifts=st.lists(st.floats(-3, 3), min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1),
       higher_is_better=st.booleans())
def test_bootstrap_ranks_and_stars_never_disagree(shifts, seed, higher_is_better):
    import numpy as np

    from cleanbench.leaderboard.uncertainty import bootstrap_ranks

    rng = np.random.default_rng(seed)
    replicates = [rng.normal(shift, 1, size=400) for shift in shifts]
    ranks, best, tied = bootstrap_ranks(replicates, higher_is_better)
    for i in range(len(shifts)):
        assert 1 <= ranks[i] <= len(shifts)
        assert not best[i] or (ranks[i] == 1 and ranks.count(1) == 1)  # a star is rank 1 alone
        assert all(i in tied[j] for j in tied[i])  # "not told apart" is symmetric
    assert min(ranks) == 1


@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 4))
def test_stealthiness_of_unchanged_images_is_zero(seed, n):
    images = torch.randint(0, 256, (n, 3, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    same = stealthiness(images, images.clone())
    assert same["linf"] == same["l2"] == same["changed_fraction"] == 0 and math.isnan(same["psnr_db"])
    changed = images.clone()
    changed[0, 0, 0, 0] ^= 1
    result = stealthiness(images, changed)
    assert result["changed_fraction"] == 1 / n and result["linf"] == pytest.approx(1 / 255 / n)


# --- paths from CSV files -------------------------------------------------------------------------

SEGMENTS = st.sampled_from(["a", "b", "..", ".", "", "...", "..a", "a..", "~", "c d"])


@FAST
@given(parts=st.lists(SEGMENTS, max_size=6), absolute=st.booleans())
def test_a_path_stays_inside_exactly_when_it_resolves_inside_the_root(parts, absolute):
    relative = ("/" if absolute else "") + "/".join(parts)
    root = "/data/root"
    resolved = os.path.normpath(os.path.join(root, relative))
    inside = not os.path.isabs(relative) and os.path.commonpath([root, resolved]) == root
    assert stays_inside(relative) == inside


@FAST
@given(relative=st.text(alphabet="ab./\\~", max_size=12))
def test_no_accepted_path_leaves_the_root(relative):
    if stays_inside(relative):
        root = "/data/root"
        assert os.path.commonpath([root, os.path.normpath(os.path.join(root, relative))]) == root


def test_hypothesis_is_in_the_test_extra():
    import tomllib
    from pathlib import Path

    extra = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("hypothesis") for requirement in extra["test"])

