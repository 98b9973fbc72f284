"""The leaderboard table: run cards grouped into cells and aggregated across seeds.

A cell is (model/data setting, attack, poison rate, defense); each seed of a cell is one run card.
The `defense = none` row of an attack x rate group is its undefended reference (never ranked); the
rows of the clean control (attack `none`) give the base rate an attack has to beat. Numbers and
intervals come from `cleanbench.leaderboard.cellstats`, ranks and the implant test from
`cleanbench.leaderboard.uncertainty`; this module groups the cards and lays out the columns.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cleanbench.leaderboard.cellstats import GroupDraws, Summary, cell_summaries, group_references
from cleanbench.leaderboard.uncertainty import IMPLANT_ALPHA, IMPLANT_MIN_GAIN, bootstrap_ranks, implant_gain, implant_test

# Keys of a config that vary inside one setting (or do not change the numbers at all).
CELL_KEYS = frozenset({
    "attack", "attack_options", "defense", "defense_options", "poison_rate", "poison_count",
    "seed", "device", "results_dir", "cache_dir", "use_cache",
})
GROUP = ["setting", "attack", "poison_rate", "defense"]
# Metric columns: (column prefix, header, higher is better).
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("ca", "CA", True),
    ("asr", "ASR", False),
    ("ra", "RA", True),
    ("d_ca", "CA change", True),
    ("d_asr", "ASR change", False),
    ("der", "DER", True),
    ("seconds", "Cost", False),
)
NOT_RUN = "not run"
REFERENCE = "none"
"""The defense and attack name of the undefended model and of the clean control."""


def short_hash(value: Any, length: int = 8) -> str:
    """A stable short hex digest of any JSON-able value."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def slug(name: str, unique: str | None = None) -> str:
    """A file-name-safe, collision-free form of an untrusted name: its safe characters plus a hash
    of `unique` (default: the name itself)."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in name)[:40].strip(".")
    return f"{safe or 'x'}-{short_hash(name if unique is None else unique, 6)}"


def setting_of(config: dict) -> tuple[str, str]:
    """(key, readable label) of the model/data setting a config belongs to."""
    setting = {k: v for k, v in config.items() if k not in CELL_KEYS}
    data, model, pretrain = config.get("data", {}), config.get("model", {}), config.get("pretrain", {})
    parts = [str(model.get("name", "?")) + (f"+{model['pretrained']}" if model.get("pretrained") else ""),
             f"{data.get('preset', '?')} {data.get('n_pretrain', '?')} pairs",
             f"{pretrain.get('epochs', '?')} ep", f"target {config.get('target', '?')}"]
    if "threads" in config:
        parts.append(f"{config['threads']} thread{'s' if config['threads'] != 1 else ''}")
    if config.get("setting"):
        parts.insert(0, str(config["setting"]))
    return short_hash(setting), " · ".join(parts)


def rate_of(card: dict) -> tuple[str, float]:
    """(label, fraction) of a card's poison budget: 'clean' for the clean control."""
    config = card["config"]
    if config["attack"] == "none":
        return "clean", 0.0
    if config.get("poison_count") is not None:
        n = config.get("data", {}).get("n_pretrain") or 0
        return f"n={config['poison_count']}", config["poison_count"] / n if n else math.nan
    rate = config.get("poison_rate")
    return (f"{100 * rate:g}%", float(rate)) if rate is not None else ("?", math.nan)


def _options_label(name: str, options: dict) -> str:
    inner = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
    return f"{name} ({inner or 'defaults'})"


@dataclass
class CellCards:
    """The run cards of one cell, split by status."""

    ok: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)


def _resolved_options(card: dict, role: str) -> dict:
    """The plugin's options as it ran: the card's resolved options (defaults included) overlaid
    with the config's, plus the plugin version, so that a changed default is never pooled."""
    section = card.get(role) or {}
    options = {**(section.get("options") or {}), **card["config"].get(f"{role}_options", {})}
    return {"options": options, "version": section.get("version")}


def _variants(cards: list[dict], role: str) -> dict[int, str]:
    """Display names per card: the plugin name, plus its options where one name ran with several
    option sets (the options given, then any resolved default or version that differs)."""
    variants: dict[str, dict[str, dict]] = defaultdict(dict)
    for card in cards:
        resolved = _resolved_options(card, role)
        variants[card["config"][role]][json.dumps(resolved, sort_keys=True, default=str)] = card
    labels = {}
    for card in cards:
        name = card["config"][role]
        if len(variants[name]) == 1:
            labels[id(card)] = name
            continue
        given = card["config"].get(f"{role}_options", {})
        twins = [_resolved_options(other, role) for other in variants[name].values()
                 if other["config"].get(f"{role}_options", {}) == given]
        label = _options_label(name, given)
        if len(twins) > 1:
            mine = _resolved_options(card, role)
            keys = sorted({k for twin in twins for k in twin["options"]})
            differing = [k for k in keys if len({json.dumps(t["options"].get(k), default=str) for t in twins}) > 1]
            extra = [f"{k}={mine['options'].get(k)}" for k in differing]
            if len({str(t["version"]) for t in twins}) > 1:
                extra.append(f"version {mine['version']}")
            label = f"{label[:-1]}; {', '.join(extra)})"
        labels[id(card)] = label
    return labels


variant_labels = _variants
"""Public name of `_variants`: the display name of each card's attack or defense, with the options that tell it apart."""


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


@dataclass
class Analysis:
    """The table and, per cell (setting key, attack, rate label, defense), the bootstrap replicates of
    each metric, for the rankings and aggregates built on top of the table."""

    table: pd.DataFrame
    replicates: dict[tuple[str, str, str, str], dict[str, np.ndarray]] = field(default_factory=dict)


def leaderboard_table(cards: list[dict]) -> pd.DataFrame:
    """One row per (setting, attack, poison rate, defense) with every metric aggregated across seeds.

    Columns: setting, setting_key, attack, poison_rate (label), rate (fraction), defense, role
    ("reference": defense none; "control": the clean control; "defense"), implanted (whether the
    group's undefended ASR is clearly above the clean control's, see `implant_test` and `implant_gain`;
    None when untested), implant_p, implant_gain, status ("ok", "failed", "not run"), note, seeds,
    n_seeds, n_failed, cards (card file paths), total_seconds, and for each metric in METRICS
    `<m>_mean`, `<m>_std`, `<m>_low`, `<m>_high`, `<m>_method`, `<m>_best`; plus rank / rank_tied / tied_with (by DER, among the
    defenses of an implanted group; see `cleanbench.leaderboard.uncertainty`).
    """
    return analyse(cards).table


def analyse(cards: list[dict]) -> Analysis:
    """The leaderboard table and the replicates behind its intervals (see `leaderboard_table`)."""
    cards = sorted(cards, key=lambda c: (c["config"]["seed"], c.get("_path", "")))  # draws independent of file order
    attack_labels = _variants(cards, "attack")
    defense_labels = _variants(cards, "defense")
    settings: dict[str, str] = {}
    cells: dict[tuple, CellCards] = defaultdict(CellCards)
    rates: dict[str, float] = {}
    for card in cards:
        key, label = setting_of(card["config"])
        settings[key] = label
        rate_label, rate = rate_of(card)
        rates[rate_label] = rate
        card["_cell"] = (key, attack_labels[id(card)], rate_label, defense_labels[id(card)])
        group = cells[card["_cell"]]
        (group.ok if card["status"] == "ok" else group.failed).append(card)
    label_counts: dict[str, int] = defaultdict(int)
    for label in settings.values():
        label_counts[label] += 1
    setting_names = {k: v if label_counts[v] == 1 else f"{v} #{k[:6]}" for k, v in settings.items()}

    defenses_by_setting: dict[str, set[str]] = defaultdict(set)
    groups_by_setting: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for setting, attack, rate_label, defense in cells:
        defenses_by_setting[setting].add(defense)
        groups_by_setting[setting].add((attack, rate_label))
    rows, replicates = [], {}
    for setting in settings:
        for attack, rate_label in sorted(groups_by_setting[setting]):
            members = {d: cells.get((setting, attack, rate_label, d), CellCards()) for d in sorted(defenses_by_setting[setting])}
            seeds = sorted({c["config"]["seed"] for g in members.values() for c in g.ok})
            draws = GroupDraws(f"{setting}|{attack}|{rate_label}", seeds)
            references = group_references({d: g.ok for d, g in members.items()})
            for defense, group in members.items():
                row, summaries = _row(setting, setting_names[setting], attack, rate_label, rates[rate_label], defense,
                                      group, draws, references)
                rows.append(row)
                replicates[(setting, attack, rate_label, defense)] = {
                    p: s.replicates for p, s in summaries.items() if s.replicates is not None}
    if not rows:
        return Analysis(pd.DataFrame())
    table = pd.DataFrame(rows)
    table["_attack_order"] = table["attack"].map(lambda a: (a != REFERENCE, a))
    table["_defense_order"] = table["defense"].map(lambda d: (d != REFERENCE, d))
    table = table.sort_values(["setting", "_attack_order", "rate", "poison_rate", "_defense_order"])
    table = table.drop(columns=["_attack_order", "_defense_order"]).reset_index(drop=True)
    _mark_implanted(table, cells)
    _mark_best_and_rank(table, replicates)
    return Analysis(table, replicates)


def _row(setting_key: str, setting: str, attack: str, rate_label: str, rate: float, defense: str,
         group: CellCards, draws: GroupDraws, references: dict) -> tuple[dict, dict[str, Summary]]:
    role = "control" if attack == REFERENCE else ("reference" if defense == REFERENCE else "defense")
    row: dict[str, Any] = {
        "setting": setting, "setting_key": setting_key, "attack": attack, "poison_rate": rate_label,
        "rate": rate, "defense": defense, "role": role, "implanted": None, "implant_p": math.nan,
        "implant_gain": math.nan,
        "seeds": " ".join(str(s) for s in sorted(c["config"]["seed"] for c in group.ok)),
        "n_seeds": len(group.ok), "n_failed": len(group.failed),
        "cards": [c.get("_path", "") for c in group.ok + group.failed],
    }
    notes = []
    if group.ok:
        row["status"] = "ok"
        summaries, missing = cell_summaries(group.ok, draws, references)
        if missing:
            notes.append(f"no undefended reference for {missing} seed(s)")
    else:
        row["status"] = "failed" if group.failed else NOT_RUN
        summaries = {prefix: Summary() for prefix, _, _ in METRICS}
    if group.failed:
        seeds = ", ".join(str(c["config"]["seed"]) for c in group.failed)
        notes.append(f"failed (seed {seeds}): {_first_line(group.failed[0]['error'])}")
    elif not group.ok:
        notes.append(NOT_RUN)
    row["note"] = "; ".join(notes)
    for prefix, stats in summaries.items():
        for part in ("mean", "std", "low", "high", "method"):
            row[f"{prefix}_{part}"] = getattr(stats, part)
    totals = [c.get("costs", {}).get("total_seconds", math.nan) for c in group.ok]
    row["total_seconds"] = float(np.nanmean(totals)) if any(not math.isnan(t) for t in totals) else math.nan
    return row, summaries


def _counts(card: dict) -> tuple[int, int]:
    block = card["metrics"]["defended"]["asr"]
    return block["successes"], block["total"]


def _mark_implanted(table: pd.DataFrame, cells: dict[tuple, CellCards]) -> None:
    """`implanted` and `implant_p` of every attack x rate group that has an undefended row and a
    clean control in its setting (the clean control of the same seed, else all its seeds pooled)."""
    for (setting, attack, rate_label), group in table.groupby(["setting_key", "attack", "poison_rate"], sort=False):
        if attack == REFERENCE:
            continue
        clean = {c["config"]["seed"]: _counts(c) for key, g in cells.items()
                 if key[0] == setting and key[1] == REFERENCE and key[3] == REFERENCE for c in g.ok
                 if c["metrics"]["defended"]["asr"]["total"] > 0}
        attacked = sorted((c["config"]["seed"], _counts(c)) for c in cells.get((setting, attack, rate_label, REFERENCE), CellCards()).ok
                          if c["metrics"]["defended"]["asr"]["total"] > 0)
        if not clean or not attacked:
            continue
        pooled = (sum(k for k, _ in clean.values()), sum(n for _, n in clean.values()))
        counts, seeds = [counts for _, counts in attacked], [seed for seed, _ in attacked]
        baseline = lambda seed: clean.get(seed, pooled)  # noqa: E731
        p, gain = implant_test(counts, baseline, seeds), implant_gain(counts, baseline, seeds)
        table.loc[group.index, "implant_p"] = p
        table.loc[group.index, "implant_gain"] = gain
        table.loc[group.index, "implanted"] = p < IMPLANT_ALPHA and gain >= IMPLANT_MIN_GAIN


def ranked(group: pd.DataFrame) -> pd.DataFrame:
    """The rows of one group that take part in rankings: finished defenses (not the reference) of
    an attack that implanted (or could not be tested)."""
    return group[(group["role"] == "defense") & (group["status"] == "ok") & (group["implanted"] != False)]  # noqa: E712


def _mark_best_and_rank(table: pd.DataFrame, replicates: dict) -> None:
    """Per group, the DER rank and the best row (★) of every metric, from the bootstrap replicates."""
    for prefix, _, _ in METRICS:
        table[f"{prefix}_best"] = False
    table["rank"] = pd.array([None] * len(table), dtype="Int64")
    table["rank_tied"] = False
    table["tied_with"] = ""
    for key, group in table.groupby(["setting_key", "attack", "poison_rate"], sort=False):
        rows = ranked(group)
        for prefix, _, higher in METRICS:
            reps = [replicates[key + (d,)].get(prefix) for d in rows["defense"]]
            if not len(rows) or any(r is None for r in reps):
                continue
            ranks, best, tied = bootstrap_ranks(reps, higher_is_better=higher)
            table.loc[rows.index[np.array(best)], f"{prefix}_best"] = True
            if prefix != "der":
                continue
            for i, index in enumerate(rows.index):
                table.loc[index, "rank"] = ranks[i]
                table.loc[index, "rank_tied"] = ranks.count(ranks[i]) > 1
                table.loc[index, "tied_with"] = ", ".join(rows["defense"].iloc[j] for j in tied[i])
