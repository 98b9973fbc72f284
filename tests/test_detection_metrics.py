"""Detection metrics against cases computed by hand, and against their definitions on random scores."""

import itertools
import math

import numpy as np
import pytest

from cleanbench.detection_metrics import auprc, auroc, detection_metrics, poisoned_ranks, tpr_at_fpr


def test_interleaved_ranking_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    positive = np.array([1, 0, 1, 0], dtype=bool)
    # pairs (pos, neg): 0.9>0.8, 0.9>0.6, 0.7<0.8, 0.7>0.6 -> 3 of 4
    assert auroc(scores, positive) == pytest.approx(0.75)
    # thresholds 0.9: P=1, R=1/2; 0.8: P=1/2, R=1/2; 0.7: P=2/3, R=1; 0.6: P=1/2, R=1
    assert auprc(scores, positive) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert tpr_at_fpr(scores, positive, max_fpr=0.0) == pytest.approx(0.5)  # threshold 0.9
    assert tpr_at_fpr(scores, positive, max_fpr=0.5) == pytest.approx(1.0)  # threshold 0.7


def test_ties_count_one_half_and_are_flagged_together():
    scores = np.array([1.0, 1.0, 0.0, 0.0])
    positive = np.array([1, 0, 1, 0], dtype=bool)
    # (1 vs 1) 1/2, (1 vs 0) 1, (0 vs 1) 0, (0 vs 0) 1/2 -> 2 of 4
    assert auroc(scores, positive) == pytest.approx(0.5)
    # threshold 1: P=1/2, R=1/2; threshold 0: P=1/2, R=1
    assert auprc(scores, positive) == pytest.approx(0.5)
    # the tie at 1 flags a negative with the positive: FPR 1/2 > 0
    assert tpr_at_fpr(scores, positive, max_fpr=0.0) == 0.0


def test_perfect_and_reversed_rankings():
    scores = np.arange(10.0)
    positive = scores >= 8
    assert auroc(scores, positive) == 1.0 and auprc(scores, positive) == 1.0
    assert tpr_at_fpr(scores, positive) == 1.0
    assert auroc(-scores, positive) == 0.0
    # reversed: the positives come last; AP = (1/2)(1/9) + (1/2)(2/10)
    assert auprc(-scores, positive) == pytest.approx(0.5 / 9 + 0.5 * 2 / 10)


def test_one_percent_fpr_allows_one_negative_in_a_hundred():
    negatives = np.zeros(100)
    negatives[0] = 4.0
    scores = np.r_[5.0, 3.0, negatives]
    positive = np.r_[True, True, np.zeros(100, dtype=bool)]
    assert tpr_at_fpr(scores, positive) == 1.0  # threshold 3 flags 1 negative: FPR 1 %
    negatives[1] = 4.0
    scores = np.r_[5.0, 3.0, negatives]
    assert tpr_at_fpr(scores, positive) == 0.5  # threshold 3 flags 2 negatives: 2 % > 1 %


def test_matches_the_definitions_on_random_scores():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=40).astype(float)  # many ties
    positive = rng.random(40) < 0.3
    pos, neg = scores[positive], scores[~positive]
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    assert auroc(scores, positive) == pytest.approx(sum(pairs) / len(pairs))
    ap, previous_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        flagged = scores >= t
        recall = (flagged & positive).sum() / positive.sum()
        ap += (recall - previous_recall) * (flagged & positive).sum() / flagged.sum()
        previous_recall = recall
    assert auprc(scores, positive) == pytest.approx(ap)
    best = max((((scores >= t) & positive).sum() / positive.sum() for t in set(scores)
                if ((scores >= t) & ~positive).sum() / (~positive).sum() <= 0.2), default=0.0)
    assert tpr_at_fpr(scores, positive, max_fpr=0.2) == pytest.approx(best)


def test_degenerate_inputs():
    assert math.isnan(auroc(np.array([1.0, 2.0]), np.array([False, False])))
    assert math.isnan(auprc(np.array([1.0, 2.0]), np.array([False, False])))
    assert math.isnan(tpr_at_fpr(np.array([1.0, 2.0]), np.array([True, True])))
    with pytest.raises(ValueError, match="finite"):
        auroc(np.array([1.0, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match="one length"):
        auroc(np.array([1.0, 2.0]), np.array([True]))


def test_bundle_records_counts():
    metrics = detection_metrics(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
    assert metrics.to_dict() == {"auroc": 0.75, "auprc": pytest.approx(5 / 6), "tpr_at_1pct_fpr": 0.5,
                                 "positives": 2, "negatives": 2}


def test_poisoned_ranks_by_hand_and_they_give_auroc_and_tpr():
    from cleanbench.leaderboard.detections import Ranks

    scores = np.array([0.9, 0.8, 0.8, 0.7, 0.5, 0.5, 0.1])
    positive = np.array([0, 1, 0, 0, 1, 0, 1], dtype=bool)
    ranks = poisoned_ranks(scores, positive)
    # poisoned, highest first: 0.8 (1 clean above, 1 tied), 0.5 (3 above, 1 tied), 0.1 (4 above)
    assert ranks == {"clean_above": [1, 3, 4], "clean_tied": [1, 1, 0]}
    from_ranks = Ranks(np.array(ranks["clean_above"]), np.array(ranks["clean_tied"]), 4)
    assert from_ranks.auroc() == pytest.approx(auroc(scores, positive))
    assert from_ranks.tpr(0.25) == tpr_at_fpr(scores, positive, 0.25) == 0.0
    assert from_ranks.tpr(0.5) == tpr_at_fpr(scores, positive, 0.5) == pytest.approx(1 / 3)
