"""Detection metrics: how well scores rank the poisoned pairs above the clean ones.

Positives are the recorded poison indices; a higher score means "more likely poisoned".

- AUROC: the probability that a random poisoned pair scores above a random clean one, ties counting
  one half (the Mann-Whitney U statistic over n_pos * n_neg).
- AUPRC: average precision, sum over the distinct score thresholds t (high to low) of
  (recall(t) - recall(previous t)) * precision(t), where a pair is flagged when its score >= t. Tied
  scores are flagged together. A random ranking gives about the poison rate.
- TPR at FPR <= 1 %: the largest fraction of poisoned pairs flagged by a threshold that flags at
  most 1 % of the clean pairs (no interpolation between thresholds).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import rankdata

TARGET_FPR = 0.01


@dataclass(frozen=True)
class DetectionMetrics:
    """The three detection metrics of one score vector, with the counts they come from."""

    auroc: float
    auprc: float
    tpr_at_1pct_fpr: float
    positives: int
    negatives: int

    def to_dict(self) -> dict:
        return asdict(self)


def _checked(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if scores.shape != positive.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and labels {positive.shape} must be vectors of one length")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return scores, positive


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (NaN when either class is empty)."""
    scores, positive = _checked(scores, positive)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)  # average ranks: ties count one half
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def _threshold_counts(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct score threshold, from the highest down."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_positive = scores[order], positive[order]
    true_positives = np.cumsum(sorted_positive)
    false_positives = np.cumsum(~sorted_positive)
    last_of_value = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    return true_positives[last_of_value], false_positives[last_of_value]


def auprc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision (NaN without positives)."""
    scores, positive = _checked(scores, positive)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return math.nan
    true_positives, false_positives = _threshold_counts(scores, positive)
    precision = true_positives / (true_positives + false_positives)
    recall_gain = np.diff(np.r_[0, true_positives]) / n_pos
    return float((recall_gain * precision).sum())


def tpr_at_fpr(scores: np.ndarray, positive: np.ndarray, max_fpr: float = TARGET_FPR) -> float:
    """The largest true-positive rate among thresholds whose false-positive rate is <= `max_fpr`."""
    scores, positive = _checked(scores, positive)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    true_positives, false_positives = _threshold_counts(scores, positive)
    allowed = false_positives / n_neg <= max_fpr
    return float(true_positives[allowed].max() / n_pos) if allowed.any() else 0.0


def poisoned_ranks(scores: np.ndarray, positive: np.ndarray) -> dict[str, list[int]]:
    """Where each poisoned pair lies among the clean ones: per poisoned pair (highest score first),
    the number of clean pairs scoring strictly above it and the number tied with it.

    These counts are all that AUROC and TPR at a FPR need (clean pairs below = negatives - above -
    tied), so a card stores them instead of every score, and a bootstrap over pairs can redraw the
    clean pairs between the poisoned ones exactly."""
    scores, positive = _checked(scores, positive)
    clean = np.sort(scores[~positive])
    poisoned = np.sort(scores[positive])[::-1]
    at_or_below = np.searchsorted(clean, poisoned, side="right")
    below = np.searchsorted(clean, poisoned, side="left")
    return {"clean_above": [int(v) for v in len(clean) - at_or_below],
            "clean_tied": [int(v) for v in at_or_below - below]}


def detection_metrics(scores: np.ndarray, positive: np.ndarray) -> DetectionMetrics:
    """AUROC, AUPRC and TPR at 1 % FPR of `scores` against the boolean `positive` labels."""
    positive = np.asarray(positive, dtype=bool)
    return DetectionMetrics(auroc(scores, positive), auprc(scores, positive), tpr_at_fpr(scores, positive),
                            int(positive.sum()), int((~positive).sum()))
