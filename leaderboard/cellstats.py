"""The numbers of one attack x rate group: each defense's metrics over its seeds, with bootstrap
replicates (see `cleanbench.leaderboard.uncertainty`), against the group's undefended reference."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cleanbench.leaderboard.uncertainty import (
    count_draws,
    der_array,
    generator,
    interval,
    seed_weights,
    weighted_mean,
)
from cleanbench.metrics import der

CARD_METRICS = {"ca": "ca_top1", "asr": "asr", "ra": "ra"}
CLIP = {"ca": (0.0, 1.0), "asr": (0.0, 1.0), "ra": (0.0, 1.0), "d_ca": (-1.0, 1.0), "d_asr": (-1.0, 1.0),
        "der": (0.0, 1.0)}


@dataclass
class Summary:
    """One metric of one cell: mean over seeds, their sample std, the bootstrap 95 % interval, and
    the replicates it came from (None where the metric has no interval)."""

    mean: float = math.nan
    std: float = math.nan
    low: float = math.nan
    high: float = math.nan
    n: int = 0
    replicates: np.ndarray | None = field(default=None, repr=False)

    @property
    def method(self) -> str:
        return "bootstrap" if self.replicates is not None else ("seeds" if self.n else "none")


def summary(values: list[float], replicates: np.ndarray | None, prefix: str) -> Summary:
    """Mean and std of the per-seed `values`; interval from `replicates`, clipped to the metric's range."""
    if not values:
        return Summary()
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    if replicates is None:
        return Summary(mean, std, n=len(values))
    low, high = interval(replicates, *CLIP[prefix])
    return Summary(mean, std, min(low, mean), max(high, mean), len(values), replicates)


Reference = tuple[dict, str]
"""The undefended model of one seed: a card and the metrics block ("defended" of the defense-none
card, else the card's own "poisoned" block) that holds its counts."""


class GroupDraws:
    """Seed weights and count draws shared by every cell of one group, so that cells are paired."""

    def __init__(self, key: str, seeds: list[int]) -> None:
        self.rng = generator(key)
        self.seeds = seeds
        self.weights = seed_weights(len(seeds), self.rng) if seeds else np.zeros((0, 0))
        self._draws: dict[tuple[int, str, str], np.ndarray] = {}

    def counts(self, card: dict, stage: str, metric: str) -> np.ndarray:
        """The replicates of one proportion of one card (drawn once, then reused)."""
        key = (id(card), stage, metric)
        if key not in self._draws:
            block = card["metrics"][stage][metric]
            self._draws[key] = count_draws(block["successes"], block["total"], self.rng)
        return self._draws[key]

    def columns(self, cards: list[dict]) -> np.ndarray:
        """The weight columns of these cards' seeds."""
        return self.weights[:, [self.seeds.index(c["config"]["seed"]) for c in cards]]


def _usable(block: dict) -> bool:
    return block["ca_top1"]["total"] > 0 and block["asr"]["total"] > 0


def cell_summaries(ok: list[dict], draws: GroupDraws, references: dict[int, Reference]) -> tuple[dict[str, Summary], int]:
    """Every metric of a cell over its finished seeds; also how many seeds had no undefended reference."""
    out: dict[str, Summary] = {}
    for prefix, key in CARD_METRICS.items():
        cards = [c for c in ok if c["metrics"]["defended"][key]["total"] > 0]
        values = [c["metrics"]["defended"][key]["value"] for c in cards]
        reps = None
        if cards:
            reps = weighted_mean(np.column_stack([draws.counts(c, "defended", key) for c in cards]), draws.columns(cards))
        out[prefix] = summary(values, reps, prefix)
    paired = [(c, references.get(c["config"]["seed"])) for c in ok]
    paired = [(c, ref) for c, ref in paired if ref is not None and _usable(ref[0]["metrics"][ref[1]])]
    missing = len(ok) - len(paired)
    if paired:
        cards = [c for c, _ in paired]
        weights = draws.columns(cards)

        def reps(card_metric: str, reference: bool) -> np.ndarray:
            return np.column_stack([draws.counts(*(ref if reference else (c, "defended")), card_metric) for c, ref in paired])

        def observed(card_metric: str, reference: bool) -> list[float]:
            return [(ref[0]["metrics"][ref[1]] if reference else c["metrics"]["defended"])[card_metric]["value"]
                    for c, ref in paired]

        ca_a, ca_b, asr_a, asr_b = reps("ca_top1", False), reps("ca_top1", True), reps("asr", False), reps("asr", True)
        ca_av, ca_bv, asr_av, asr_bv = (observed("ca_top1", False), observed("ca_top1", True),
                                        observed("asr", False), observed("asr", True))
        out["d_ca"] = summary([a - b for a, b in zip(ca_av, ca_bv)], weighted_mean(ca_a - ca_b, weights), "d_ca")
        out["d_asr"] = summary([a - b for a, b in zip(asr_av, asr_bv)], weighted_mean(asr_a - asr_b, weights), "d_asr")
        out["der"] = summary([der(cb, ca, ab, aa) for cb, ca, ab, aa in zip(ca_bv, ca_av, asr_bv, asr_av)],
                             weighted_mean(der_array(ca_b, ca_a, asr_b, asr_a), weights), "der")
    else:
        out["d_ca"] = out["d_asr"] = out["der"] = Summary()
    seconds = [c.get("costs", {}).get("defense_seconds") for c in ok]
    out["seconds"] = summary([float(s) for s in seconds if s is not None and math.isfinite(s)], None, "seconds")
    return out, missing


def group_references(cells: dict[str, list[dict]]) -> dict[int, Reference]:
    """Per seed, the undefended model of a group: the defense-none card, else the first card that
    carries its own `poisoned` metrics."""
    references: dict[int, Reference] = {}
    for card in cells.get("none", []):
        references[card["config"]["seed"]] = (card, "defended")
    for defense in sorted(cells):
        for card in cells[defense]:
            if "poisoned" in card["metrics"]:
                references.setdefault(card["config"]["seed"], (card, "poisoned"))
    return references
