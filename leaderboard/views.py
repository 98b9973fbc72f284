"""Views on the leaderboard table for the index: the attack x defense matrix per poison rate, the
defense ranking and the attack ranking. Every interval and rank comes from the bootstrap replicates
of `cleanbench.leaderboard.table.analyse` (see `cleanbench.leaderboard.uncertainty`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cleanbench.leaderboard.table import REFERENCE, Analysis, ranked
from cleanbench.leaderboard.uncertainty import bootstrap_ranks, interval

STEALTH = ("psnr_db", "linf", "l2")
THRESHOLDS = (0.5, 0.9)


@dataclass
class Matrix:
    """One setting and poison rate: rows are attacks (the clean control first), columns defenses
    (the undefended reference first); cells are rows of the leaderboard table (None: not run)."""

    setting: str
    rate: str
    defenses: list[str]
    rows: list[tuple[str, bool | None, list[pd.Series | None]]] = field(default_factory=list)


def _order(names: Any) -> list[str]:
    return sorted(dict.fromkeys(names), key=lambda name: (name != REFERENCE, name))


def matrices(table: pd.DataFrame) -> list[Matrix]:
    """An attack x defense matrix per setting and poison rate (the clean control is a row of each)."""
    out = []
    for setting, rows in table.groupby("setting", sort=False):
        defenses = _order(rows["defense"])
        clean = rows[rows["attack"] == REFERENCE]
        attacked = rows[rows["attack"] != REFERENCE]
        for rate in attacked.drop_duplicates("poison_rate").sort_values("rate")["poison_rate"]:
            matrix = Matrix(setting, rate, defenses)
            at_rate = pd.concat([clean, attacked[attacked["poison_rate"] == rate]])
            for attack in _order(at_rate["attack"]):
                cells = at_rate[at_rate["attack"] == attack].set_index("defense", drop=False)
                implanted = cells["implanted"].iloc[0]
                matrix.rows.append((attack, None if attack == REFERENCE or implanted is None else bool(implanted),
                                    [cells.loc[d] if d in cells.index else None for d in defenses]))
            out.append(matrix)
    return out


@dataclass
class Ranked:
    """One entry of a ranking: its name, point value and interval, rank (None: not ranked, with the
    reason in `note`), whether it is clearly first, and extra columns for display."""

    name: str
    value: float
    low: float
    high: float
    rank: int | None = None
    best: bool = False
    tied: bool = False
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _rank(entries: list[Ranked], reps: list[np.ndarray], higher_is_better: bool) -> None:
    """Rank the entries that have replicates (the others keep rank None), best first."""
    if reps:
        ranks, best, _ = bootstrap_ranks(reps, higher_is_better)
        for entry, rank, first in zip(entries, ranks, best):
            entry.rank, entry.best, entry.tied = rank, first, ranks.count(rank) > 1


def _sorted(entries: list[Ranked], higher_is_better: bool) -> list[Ranked]:
    sign = -1 if higher_is_better else 1
    return sorted(entries, key=lambda e: (e.rank is None, e.rank or 0, sign * (e.value if not math.isnan(e.value) else 0)))


def defense_ranking(analysis: Analysis, setting: str) -> tuple[list[Ranked], int, int]:
    """Defenses by mean DER over the implanted attack x rate groups of `setting` that every ranked
    defense ran in (the common groups; each counts once), with its bootstrap interval. A defense that
    ran in fewer than half of the implanted groups is listed with its coverage but not ranked, so one
    sparse entry cannot shrink the comparison. Returns the entries, the number of common groups and
    the number of implanted groups."""
    table = analysis.table[analysis.table["setting"] == setting]
    groups = [key for key, group in table.groupby(["setting_key", "attack", "poison_rate"], sort=False)
              if key[1] != REFERENCE and not ranked(group).empty]
    coverage = {defense: [key for key in groups if "der" in analysis.replicates.get(key + (defense,), {})]
                for defense in _order(table[table["role"] == "defense"]["defense"])}
    coverage = {defense: keys for defense, keys in coverage.items() if keys}
    wide = [defense for defense, keys in coverage.items() if 2 * len(keys) >= len(groups)]
    common = [key for key in groups if all(key in coverage[defense] for defense in wide)]
    indexed = table.set_index(["setting_key", "attack", "poison_rate", "defense"])
    ranked_entries, reps, unranked = [], [], []
    for defense, keys in coverage.items():
        rank_it = defense in wide and bool(common)
        keys = common if rank_it else keys
        values = {p: np.mean([analysis.replicates[key + (defense,)][p] for key in keys], axis=0) for p in ("der", "d_ca", "asr")}
        means = {p: float(np.mean([indexed.loc[key + (defense,), f"{p}_mean"] for key in keys])) for p in values}
        entry = Ranked(defense, means["der"], *interval(values["der"]),
                       extra={"d_ca": (means["d_ca"], *interval(values["d_ca"])), "asr": (means["asr"], *interval(values["asr"])),
                              "groups": f"{len(keys)} of {len(groups)}"})
        if rank_it:
            ranked_entries.append(entry)
            reps.append(values["der"])
        else:
            entry.note = (f"ran in {len(keys)} of the {len(groups)} implanted groups (fewer than half): "
                          "its mean is over other groups, not ranked")
            unranked.append(entry)
    _rank(ranked_entries, reps, higher_is_better=True)
    return _sorted(ranked_entries, True) + unranked, len(common), len(groups)


def ranking_rate(table: pd.DataFrame) -> str:
    """The poison rate the attack ranking compares at: the one with the most attacks that implanted
    and have a defended result (ties: the higher rate)."""
    attacked = table[table["attack"] != REFERENCE]
    counts = {}
    for (rate_label, rate), group in attacked.groupby(["poison_rate", "rate"], sort=False):
        counts[rate_label] = (sum(1 for _, rows in group.groupby("attack") if not ranked(rows).empty), rate)
    return max(counts, key=lambda label: counts[label])


def _threshold_rate(curve: list[tuple[float, float]], threshold: float) -> str:
    """The lowest poison rate at which the undefended ASR reaches `threshold`, interpolated on a log
    rate scale between the measured rates; "≤ r" / "> r" outside them."""
    for i, (rate, asr) in enumerate(curve):
        if asr >= threshold:
            if i == 0:
                return f"≤ {100 * rate:g}%"
            (r0, a0) = curve[i - 1]
            if r0 <= 0:
                return f"≤ {100 * rate:g}%"
            share = (threshold - a0) / (asr - a0)
            return f"≈ {100 * math.exp(math.log(r0) + share * (math.log(rate) - math.log(r0))):.2g}%"
    return f"> {100 * curve[-1][0]:g}%" if curve else "n/a"


def _stealth(cards: list[dict]) -> dict[str, float]:
    """Mean PSNR (dB), L-inf and L2 of the triggered test images, over the cards that report them."""
    values: dict[str, list[float]] = {k: [] for k in STEALTH}
    for card in cards:
        metrics = card.get("metrics", {})
        block = next((metrics[s]["stealthiness"] for s in ("poisoned", "defended")
                      if isinstance(metrics.get(s), dict) and isinstance(metrics[s].get("stealthiness"), dict)), None)
        if block is not None:
            for key in STEALTH:
                if isinstance(block.get(key), (int, float)) and math.isfinite(block[key]):
                    values[key].append(float(block[key]))
    return {k: (float(np.mean(v)) if v else math.nan) for k, v in values.items()}


def attack_ranking(analysis: Analysis, setting: str, cards: list[dict]) -> tuple[list[Ranked], str]:
    """Attacks by how well they survive: at the setting's `ranking_rate`, the worst case
    over the defenses of the post-defense ASR (the lowest ASR any defense leaves), with a bootstrap
    interval. Extra: per rate the undefended and worst-case ASR, the rates that reach 50 % and 90 %
    undefended ASR, and stealthiness. Returns the entries and the rate ranked at."""
    table = analysis.table[(analysis.table["setting"] == setting) & (analysis.table["attack"] != REFERENCE)]
    if table.empty:
        return [], ""
    top_rate = ranking_rate(table)
    entries, reps, unranked = [], [], []
    for attack in _order(table["attack"]):
        rows = table[table["attack"] == attack].sort_values("rate")
        per_rate, curve, top = [], [], None
        for rate, group in rows.groupby("poison_rate", sort=False):
            undefended = group[group["role"] == "reference"]
            defended = group[(group["role"] == "defense") & (group["status"] == "ok")]
            implanted = group["implanted"].iloc[0]
            under = undefended.iloc[0] if len(undefended) and undefended.iloc[0]["status"] == "ok" else None
            if under is not None:
                curve.append((float(group["rate"].iloc[0]), float(under["asr_mean"])))
            worst = None
            key = (group["setting_key"].iloc[0], attack, rate)
            reps_rate = [analysis.replicates.get(key + (d,), {}).get("asr") for d in defended["defense"]]
            if len(defended) and all(r is not None for r in reps_rate):
                lowest = defended.loc[defended["asr_mean"].idxmin()]
                replicate_min = np.min(np.vstack(reps_rate), axis=0)
                worst = (float(lowest["asr_mean"]), *interval(replicate_min), lowest["defense"], replicate_min)
            per_rate.append({"rate": rate, "implanted": None if implanted is None else bool(implanted),
                             "undefended": None if under is None else (under["asr_mean"], under["asr_low"], under["asr_high"]),
                             "worst": None if worst is None else worst[:4]})
            if rate == top_rate:
                top = (implanted, worst)
        attack_cards = [c for c in cards if c["_cell"][1] == attack and c["_cell"][0] == rows["setting_key"].iloc[0]]
        extra = {"rates": per_rate, "reach": {t: _threshold_rate(curve, t) for t in THRESHOLDS}, **_stealth(attack_cards)}
        if top is None or top[1] is None:
            unranked.append(Ranked(attack, math.nan, math.nan, math.nan, note=f"no defended result at {top_rate}", extra=extra))
        elif top[0] is False:
            entry = Ranked(attack, *top[1][:3], note=f"did not implant at {top_rate}", extra=extra)
            unranked.append(entry)
        else:
            entries.append(Ranked(attack, *top[1][:3], extra={**extra, "by": top[1][3]}))
            reps.append(top[1][4])
    _rank(entries, reps, higher_is_better=True)
    return _sorted(entries, True) + unranked, top_rate
