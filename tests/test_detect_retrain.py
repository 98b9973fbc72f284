"""Detect, remove, retrain: a detector as a pretraining-stage defense."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cleanbench.cache import DEFENDED_MODELS, POISONED_MODELS, ArtifactCache
from cleanbench.detect_retrain import DetectRetrainOptions, ranked_removal
from cleanbench.detectors.neighbourhood import KDistance
from cleanbench.errors import UsageError
from cleanbench.plan import Plan
from cleanbench.runner import run_cell
from cleanbench.stages import initial_model


def test_the_highest_scores_go_first_ties_by_row_and_unscored_last():
    scores = np.array([0.5, 3.0, np.nan, 3.0, 1.0, 2.0])
    kept, removed = ranked_removal(scores, 0.5)
    assert removed.tolist() == [1, 3, 5]
    assert kept.tolist() == [0, 2, 4]
    assert ranked_removal(scores, 0.0)[1].tolist() == []
    assert ranked_removal(scores, 0.99)[1].tolist() == [1, 3, 5, 4, 0, 2]


def test_options_are_checked():
    with pytest.raises(ValueError, match="drop_fraction"):
        DetectRetrainOptions(drop_fraction=1.0)
    with pytest.raises(UsageError, match="did you mean 'k-distance'"):
        DetectRetrainOptions(detector="kdistance")


def _weights(config, kind, key):
    model = initial_model(config.model, config.seed, torch.device("cpu")).model
    ArtifactCache(config.cache_dir).load(kind, key, model)
    return model.state_dict()


def test_removing_nothing_retrains_exactly_the_poisoned_model(tiny):
    config = tiny(defense="detect-retrain", defense_options={"drop_fraction": 0.0})
    card, _ = run_cell(config, progress=False, log=lambda _: None)
    notes = card.defense["notes"]
    assert (notes["removed_pairs"], notes["kept_pairs"], notes["scored_pairs"]) == (0, 256, 256)
    assert notes["restricted_reads"] == ["pretrain_pairs", "poisoned_model"]
    defended = _weights(config, DEFENDED_MODELS, card.artifacts["defended_model"])
    poisoned = _weights(config, POISONED_MODELS, card.artifacts["poisoned_model"])
    assert all(torch.equal(v, poisoned[k]) for k, v in defended.items())


def test_the_top_scored_pairs_are_removed_and_recorded(tiny):
    config = tiny(defense="detect-retrain", defense_options={"drop_fraction": 0.25, "detector": "cosine"})
    card, _ = run_cell(config, progress=False, log=lambda _: None)
    notes = card.defense["notes"]
    assert (notes["removed_pairs"], notes["kept_pairs"], notes["detector"]) == (64, 192, "cosine")
    assert len(set(notes["removed_indices"])) == 64
    assert card.defense["training"][0]["steps"] == 3  # 192 pairs, batches of 64, one epoch
    defended = _weights(config, DEFENDED_MODELS, card.artifacts["defended_model"])
    poisoned = _weights(config, POISONED_MODELS, card.artifacts["poisoned_model"])
    assert any(not torch.equal(v, poisoned[k]) for k, v in defended.items())


def test_the_defended_key_holds_the_detector_its_version_and_the_fraction(tiny, monkeypatch):
    def key(**options):
        return Plan(tiny(defense="detect-retrain", defense_options=options)).defended_model_key()

    base = key()
    assert key(detector="slof") != base and key(drop_fraction=0.1) != base
    monkeypatch.setattr(KDistance, "version", "99")
    assert key() != base
