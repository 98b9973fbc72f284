"""RoCLIP: the caption pool, the matching schedule, and what learns on a matching epoch."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from cleanbench.defenses.roclip import CaptionPool, RoCLIPOptions
from cleanbench.runner import run_cell
from cleanbench.seeding import torch_generator
from cleanbench.stages import initial_model
from cleanbench.trainer import TrainConfig


def test_the_pool_returns_each_query_its_most_similar_entry():
    pool = CaptionPool(4, 3, torch_generator(0), torch.device("cpu"))
    entries = F.normalize(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]), dim=1)
    pool.push(entries)
    queries = F.normalize(torch.tensor([[0.9, 0.1, 0], [0.1, 0.2, 0.9], [0.6, 0.5, 0]]), dim=1)
    assert torch.equal(pool.nearest(queries), entries[[0, 2, 3]])


def test_the_pool_is_first_in_first_out_and_keeps_the_last_entries_of_a_long_push():
    pool = CaptionPool(3, 2, torch_generator(0), torch.device("cpu"))
    pool.push(torch.tensor([[1.0, 0], [2, 0]]))
    pool.push(torch.tensor([[3.0, 0], [4, 0]]))  # the oldest (1) goes
    assert pool.embeddings[:, 0].tolist() == [4.0, 2.0, 3.0]
    pool.push(torch.arange(5, 10, dtype=torch.float).unsqueeze(1).repeat(1, 2))
    assert sorted(pool.embeddings[:, 0].tolist()) == [7.0, 8.0, 9.0]
    assert pool.pushed == 9


def test_the_pool_starts_with_random_unit_vectors():
    pool = CaptionPool(16, 8, torch_generator(1), torch.device("cpu"))
    assert torch.allclose(pool.embeddings.norm(dim=1), torch.ones(16))
    assert pool.embeddings.std() > 0.1


@pytest.mark.parametrize("values, message", [({"pool_size": 0}, "pool_size"), ({"match_every": 0}, "match_every"),
                                             ({"image_view": "sepia"}, "unknown image view")])
def test_bad_options_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        RoCLIPOptions(**values)


def _parameters(model, prefix_visual: bool):
    return {k: v for k, v in model.state_dict().items() if k.startswith("visual.") == prefix_visual
            and k != "logit_scale"}


def test_on_a_matching_epoch_only_the_image_tower_and_the_temperature_learn(tiny):
    config = tiny(defense="roclip", defense_options={"match_every": 1},
                  pretrain=TrainConfig(epochs=1, batch_size=64, warmup_steps=1))
    card, _ = run_cell(config, progress=False, log=lambda _: None)
    assert card.defense["notes"]["matching_epochs"] == [1]
    assert card.defense["notes"]["captions_pooled"] == 256  # 4 batches of 64
    from cleanbench.cache import DEFENDED_MODELS, ArtifactCache

    initial = initial_model(config.model, config.seed, torch.device("cpu")).model
    defended = initial_model(config.model, config.seed, torch.device("cpu")).model
    ArtifactCache(config.cache_dir).load(DEFENDED_MODELS, card.artifacts["defended_model"], defended)
    text_before, text_after = _parameters(initial, False), _parameters(defended, False)
    assert all(torch.equal(v, text_before[k]) for k, v in text_after.items())
    visual_before = _parameters(initial, True)
    assert any(not torch.equal(v, visual_before[k]) for k, v in _parameters(defended, True).items())


def test_epochs_alternate_and_the_card_says_so(tiny):
    config = tiny(defense="roclip", defense_options={}, pretrain=TrainConfig(epochs=3, batch_size=64, warmup_steps=1))
    card, _ = run_cell(config, progress=False, log=lambda _: None)
    notes = card.defense["notes"]
    assert notes["matching_epochs"] == [2] and notes["captions_pooled"] == 256
    assert notes["image_view"] == "crop-jitter" and notes["synonyms_from"]
    assert card.defense["stage"] == "pretraining"
    assert card.defense["training"][0]["steps"] == 12 == card.pretrain["steps"]
    assert card.artifacts["defended_model"] != card.artifacts["poisoned_model"]
