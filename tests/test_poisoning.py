"""Poison selection and application: exact counts, captions, no target-class images, determinism."""

import pytest
import torch

from cleanbench.attacks.badnet import BadNet, BadNetOptions
from cleanbench.data.embedded import PROMPT_TEMPLATES, make_pairs
from cleanbench.data.shapes import SHAPES
from cleanbench.errors import UsageError
from cleanbench.poisoning import apply_poison, plan_poison, poison_budget

STAR = SHAPES.index("star")


@pytest.fixture(scope="module")
def pairs():
    return make_pairs(500, seed=11, image_size=32, preset="easy")


def _plan(pairs, budget, seed=0):
    attack = BadNet(BadNetOptions(), 32, seed)
    return attack, plan_poison(pairs, attack, STAR, "star", budget, PROMPT_TEMPLATES, seed)


def test_budget_from_rate_or_count():
    assert poison_budget(10_000, rate=0.02) == 200
    assert poison_budget(10_000, count=75) == 75
    assert poison_budget(100, rate=0.001) == 1
    for kwargs in ({"rate": 0.0}, {"rate": 1.5}, {"count": 101}, {"count": -1}, {}, {"rate": 0.1, "count": 3}):
        with pytest.raises(UsageError):
            poison_budget(100, **kwargs)


def test_exact_count_no_duplicates_no_target_images(pairs):
    _, plan = _plan(pairs, 40)
    assert plan.count == 40 == len(set(plan.indices))
    assert all(int(pairs.labels[i]) != STAR for i in plan.indices)


def test_captions_are_target_templates(pairs):
    _, plan = _plan(pairs, 30)
    allowed = {t.format("star") for t in PROMPT_TEMPLATES}
    assert set(plan.captions) <= allowed and len(set(plan.captions)) > 1


def test_apply_changes_only_poisoned_pairs(pairs):
    attack, plan = _plan(pairs, 25)
    poisoned = apply_poison(pairs, plan, attack, seed=0)
    changed = (poisoned.images[:] != pairs.images[:]).flatten(1).any(dim=1)
    assert set(torch.nonzero(changed).flatten().tolist()) == set(plan.indices)
    for i in plan.indices:
        assert "star" in poisoned.captions[i]
    others = [i for i in range(len(pairs)) if i not in set(plan.indices)]
    assert [poisoned.captions[i] for i in others] == [pairs.captions[i] for i in others]


def test_same_seed_same_plan_other_seed_other_plan(pairs):
    assert _plan(pairs, 20, seed=3)[1].indices == _plan(pairs, 20, seed=3)[1].indices
    assert _plan(pairs, 20, seed=3)[1].indices != _plan(pairs, 20, seed=4)[1].indices


def test_budget_above_candidates_says_how_many_exist(pairs):
    with pytest.raises(UsageError, match=r"at most \d+ of 500"):
        _plan(pairs, 499)
