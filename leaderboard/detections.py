"""The detection table: detector x attack, AUROC and TPR at 1 % FPR with bootstrap intervals, from
the detection cards of a results folder (`RESULTS_DIR/detections/*.json`).

The intervals use the method of every other number of the leaderboard (`uncertainty`): a bootstrap
that redraws both the seeds and the scored items. A detection card stores, per poisoned pair (highest
score first), how many clean pairs score above it and how many tie with it (`poisoned_ranks`). That
is all AUROC and TPR at a FPR depend on, and it lets a replicate redraw the pairs exactly:

- the poisoned pairs are resampled with replacement (multinomial weights over them);
- the clean pairs are resampled with replacement, which is a multinomial draw of how many fall in
  each gap between consecutive poisoned scores (and on each tie), with the gaps' observed shares;
- the seeds are resampled with replacement and the replicate is the weighted mean over seeds.

A card without `poisoned_ranks` (written before they were recorded) redraws its seeds only; its
cell says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cleanbench.fileio import RefusedFile, list_files, read_regular_file
from cleanbench.leaderboard.table import setting_of, short_hash
from cleanbench.leaderboard.uncertainty import REPLICATES, generator, interval, seed_weights, weighted_mean

FOLDER = "detections"
KIND = "detection"
MAX_BYTES = 5_000_000
TARGET_FPR = 0.01
METRICS = (("auroc", "AUROC"), ("tpr_at_1pct_fpr", "TPR@1%FPR"))
SEEDS_ONLY = (("auprc", "AUPRC"),)
"""Metrics the ranks do not determine (average precision also depends on the order among the
poisoned pairs): their interval redraws the seeds only."""


@dataclass(frozen=True)
class Ranks:
    """Where the poisoned pairs of one card lie among its clean pairs (see the module docstring)."""

    above: np.ndarray  # per poisoned pair, clean pairs scoring strictly above it
    tied: np.ndarray  # per poisoned pair, clean pairs with the same score
    negatives: int

    def auroc(self) -> float:
        return float(np.mean(self.negatives - self.above - self.tied / 2) / self.negatives)

    def tpr(self, max_fpr: float = TARGET_FPR) -> float:
        return float(np.mean(self.above + self.tied <= max_fpr * self.negatives))

    def bins(self) -> tuple[np.ndarray, np.ndarray]:
        """The clean pairs split by the distinct poisoned scores (levels, highest first): the counts
        [above level 0, tied with 0, between 0 and 1, tied with 1, ..., below the last], and how
        many poisoned pairs each level holds."""
        levels, members = np.unique(np.column_stack([self.above, self.tied]), axis=0, return_counts=True)
        above, tied = levels[:, 0], levels[:, 1]
        gaps = np.diff(np.r_[0, above]) - np.r_[0, tied[:-1]]
        return np.r_[np.column_stack([gaps, tied]).ravel(), self.negatives - above[-1] - tied[-1]], members

    def replicates(self, rng: np.random.Generator, count: int = REPLICATES) -> dict[str, np.ndarray]:
        """AUROC and TPR@1%FPR of `count` bootstrap redraws of the poisoned and the clean pairs."""
        bins, members = self.bins()
        clean = rng.multinomial(self.negatives, bins / self.negatives, size=count)
        before = np.cumsum(clean, axis=1)[:, 0:-1:2]  # clean pairs up to and including each gap
        above_r, tied_r = before, clean[:, 1::2]
        weights = rng.multinomial(int(members.sum()), members / members.sum(), size=count)
        n_pos = members.sum()
        auroc = (weights * (self.negatives - above_r - tied_r / 2)).sum(axis=1) / (n_pos * self.negatives)
        tpr = (weights * (above_r + tied_r <= TARGET_FPR * self.negatives)).sum(axis=1) / n_pos
        return {"auroc": auroc, "tpr_at_1pct_fpr": tpr}


def card_ranks(card: dict[str, Any]) -> Ranks | None:
    """The card's ranks, or None when it has none (or they do not match its counts)."""
    block, metrics = card.get("poisoned_ranks"), card.get("metrics", {})
    if not isinstance(block, dict):
        return None
    above, tied = block.get("clean_above"), block.get("clean_tied")
    negatives = metrics.get("negatives")
    if not (isinstance(above, list) and isinstance(tied, list) and isinstance(negatives, int) and negatives > 0
            and len(above) == len(tied) == metrics.get("positives") and above):
        return None
    above_a, tied_a = np.asarray(above), np.asarray(tied)
    if above_a.dtype.kind != "i" or tied_a.dtype.kind != "i" or (above_a < 0).any() or (tied_a < 0).any() \
            or (above_a + tied_a > negatives).any():
        return None
    ranks = Ranks(above_a, tied_a, negatives)
    return ranks if (ranks.bins()[0] >= 0).all() else None


def _valid(card: Any) -> str | None:
    """Why `card` is not a finished detection card the table can use (None: it is)."""
    if not isinstance(card, dict) or card.get("kind") != KIND:
        return "not a detection card"
    if card.get("status") != "ok":
        return None
    try:
        names = (card["attack"]["name"], card["detector"]["name"])
        numbers = [card["metrics"][key] for key, _ in METRICS]
        config, seed = card["config"], card["seed"]
    except (KeyError, TypeError):
        return "invalid: missing attack, detector, metrics, config or seed"
    if not all(isinstance(n, str) and 0 < len(n) <= 200 for n in names) or not isinstance(config, dict):
        return "invalid: attack or detector name"
    if not isinstance(seed, int) or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in numbers):
        return "invalid: seed or metric out of range"
    return None


def load_detection_cards(results_dir: str | Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """The finished detection cards under `results_dir/detections`, and the files skipped with the reason."""
    cards, rejected = [], []
    for path, refused in list_files(Path(results_dir) / FOLDER, ".json"):
        if refused is not None:
            rejected.append((str(path), f"skipped: {refused}"))
            continue
        try:
            card = json.loads(read_regular_file(path, MAX_BYTES, root=results_dir))
        except RefusedFile as error:
            rejected.append((str(path), f"skipped: {error.reason}"))
            continue
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            rejected.append((str(path), f"unreadable: {type(error).__name__}"))
            continue
        reason = _valid(card)
        if reason is not None:
            rejected.append((str(path), reason))
        elif card["status"] == "ok":
            cards.append(card)
    return cards, rejected


@dataclass
class DetectionCell:
    """One detector x attack cell pooled over seeds: per metric the mean, interval and replicates."""

    seeds: list[int]
    values: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    replicates: dict[str, np.ndarray] = field(default_factory=dict)
    items: bool = True  # whether the pairs were redrawn (every card had ranks)


def pool(cards: list[dict], key: str) -> DetectionCell:
    """The seeds of one cell pooled by the bootstrap (seeds and pairs; seeds only for SEEDS_ONLY and
    for cards without ranks). `key` seeds the draws, so a cell's interval does not depend on the others."""
    cards = sorted(cards, key=lambda c: c["seed"])
    rng = generator(key)
    weights = seed_weights(len(cards), rng)
    per_seed: dict[str, list[np.ndarray]] = {m: [] for m, _ in METRICS}
    ranks = [card_ranks(c) for c in cards]
    for card, rank in zip(cards, ranks):
        drawn = rank.replicates(rng) if rank is not None else None
        for metric, _ in METRICS:
            per_seed[metric].append(drawn[metric] if drawn is not None else np.full(REPLICATES, float(card["metrics"][metric])))
    for metric, _ in SEEDS_ONLY:
        per_seed[metric] = [np.full(REPLICATES, float(c["metrics"].get(metric, math.nan))) for c in cards]
    cell = DetectionCell([c["seed"] for c in cards], items=all(r is not None for r in ranks))
    for metric in per_seed:
        reps = weighted_mean(np.column_stack(per_seed[metric]), weights)
        mean = float(np.mean([c["metrics"].get(metric, math.nan) for c in cards]))
        cell.values[metric] = (mean, *interval(reps, 0.0, 1.0))
        cell.replicates[metric] = reps
    return cell


def _options(card: dict) -> str:
    options = card["detector"].get("options") or {}
    return ", ".join(f"{k}={v}" for k, v in options.items()) if isinstance(options, dict) else ""


def _rate(card: dict) -> str:
    poison = card.get("poison") if isinstance(card.get("poison"), dict) else {}
    rate = poison.get("rate", card["config"].get("poison_rate"))
    return f"{100 * rate:g}%" if isinstance(rate, (int, float)) and math.isfinite(rate) else "?"


def detection_views(cards: list[dict]) -> list[dict[str, Any]]:
    """Per setting, the detector x attack table for the index: rows are detectors (with their options
    where one detector ran with several), columns attack and poison rate, cells AUROC and TPR@1%FPR."""
    groups: dict[tuple, list[dict]] = {}
    settings: dict[str, str] = {}
    variants: dict[str, set[str]] = {}
    for card in cards:
        key, label = setting_of(card["config"])
        settings[key] = label
        variants.setdefault(card["detector"]["name"], set()).add(_options(card))
        groups.setdefault((key, card["detector"]["name"], _options(card), card["attack"]["name"], _rate(card)), []).append(card)
    out = []
    for setting, label in settings.items():
        mine = {k: v for k, v in groups.items() if k[0] == setting}
        columns = sorted({(k[3], k[4]) for k in mine})
        rows = sorted({(k[1], k[2]) for k in mine})
        table_rows = []
        for detector, options in rows:
            shown = detector if len(variants[detector]) == 1 else f"{detector} ({options or 'defaults'})"
            cells = []
            for attack, rate in columns:
                members = mine.get((setting, detector, options, attack, rate))
                if not members:
                    cells.append(None)
                    continue
                key = members[0].get("group_key")  # as `cleanbench detections` draws, so the intervals agree
                pooled = pool(members, key if isinstance(key, str) else f"{setting}|{detector}|{options}|{attack}|{rate}")
                cells.append({"metrics": {m: _text(pooled.values[m]) for m, _ in METRICS}, "seeds": pooled.seeds,
                              "items": pooled.items,
                              "title": f"{shown} on {attack} at {rate}: mean of seeds {', '.join(map(str, pooled.seeds))}; "
                                       + ("95% bootstrap interval over seeds and scored pairs" if pooled.items
                                          else "95% bootstrap interval over seeds only (the cards hold no ranks)")})
            table_rows.append({"detector": shown, "options": options, "cells": cells})
        out.append({"setting": label, "id": short_hash(setting), "columns": [{"attack": a, "rate": r} for a, r in columns],
                    "rows": table_rows, "metrics": [title for _, title in METRICS]})
    return out


def _text(value: tuple[float, float, float]) -> dict[str, str]:
    mean, low, high = value
    return {"value": f"{mean:.3f}", "ci": "" if math.isnan(low) else f"[{low:.3f}, {high:.3f}]"}
