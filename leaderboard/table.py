"""The leaderboard table: run cards grouped into cells and aggregated across seeds.

A cell is (model/data setting, attack, poison rate, defense); each seed of a cell is one run card.
Formulas (DER, intervals, aggregation, ranking) live in `cleanbench.metrics`; this module only
groups, picks the undefended reference and lays out the columns.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from cleanbench.metrics import (
    SeedSummary,
    der,
    der_bounds,
    interval_ranks,
    proportion,
    summarize_proportions,
    summarize_values,
)

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
CARD_METRICS = {"ca": "ca_top1", "asr": "asr", "ra": "ra"}
NOT_RUN = "not run"


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


def _reference(card: dict, undefended: dict[tuple, dict]) -> dict | None:
    """The undefended metrics for a card: its own `poisoned` block, or the defended metrics of the
    defense=none card of the same setting, attack, rate and seed."""
    metrics = card.get("metrics", {})
    if "poisoned" in metrics:
        return metrics["poisoned"]
    return undefended.get(card["_cell"][:3] + (card["config"]["seed"],))


def _proportion(block: dict) -> Any:
    return proportion(block["successes"], block["total"])


def _summaries(ok: list[dict], undefended: dict[tuple, dict]) -> tuple[dict[str, SeedSummary], int]:
    """Every metric of a cell summarised over its seeds; also the number of seeds with no reference."""
    out: dict[str, SeedSummary] = {}
    for prefix, key in CARD_METRICS.items():
        out[prefix] = summarize_proportions([c["metrics"]["defended"][key] for c in ok])
    d_ca, d_asr, ders, missing = [], [], [], 0
    pairs = []
    for card in ok:
        before, after = _reference(card, undefended), card["metrics"]["defended"]
        if before is None or before["ca_top1"]["total"] == 0 or before["asr"]["total"] == 0:
            missing += 1
            continue
        pairs.append((before, after))
        ca_b, asr_b = before["ca_top1"]["value"], before["asr"]["value"]
        ca_a, asr_a = after["ca_top1"]["value"], after["asr"]["value"]
        d_ca.append(ca_a - ca_b)
        d_asr.append(asr_a - asr_b)
        ders.append(der(ca_b, ca_a, asr_b, asr_a))
    out["d_ca"] = summarize_values(d_ca, clip=(-1.0, 1.0))
    out["d_asr"] = summarize_values(d_asr, clip=(-1.0, 1.0))
    out["der"] = summarize_values(ders, clip=(0.0, 1.0))
    if len(pairs) == 1:  # one seed: push the defended model's Wilson intervals through the formulas
        before, after = pairs[0]
        ca_b, asr_b = before["ca_top1"]["value"], before["asr"]["value"]
        ca_a, asr_a = _proportion(after["ca_top1"]), _proportion(after["asr"])
        out["d_ca"] = SeedSummary(d_ca[0], math.nan, ca_a.low - ca_b, ca_a.high - ca_b, 1, "propagated")
        out["d_asr"] = SeedSummary(d_asr[0], math.nan, asr_a.low - asr_b, asr_a.high - asr_b, 1, "propagated")
        low, high = der_bounds(ca_b, ca_a, asr_b, asr_a)
        out["der"] = SeedSummary(ders[0], math.nan, low, high, 1, "propagated")
    seconds = [c.get("costs", {}).get("defense_seconds", math.nan) for c in ok]
    out["seconds"] = summarize_values(seconds, clip=(0.0, math.inf))
    return out, missing


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def leaderboard_table(cards: list[dict]) -> pd.DataFrame:
    """One row per (setting, attack, poison rate, defense) with every metric aggregated across seeds.

    Columns: setting, setting_key, attack, poison_rate (label), rate (fraction), defense, status
    ("ok", "failed", "not run"), note (why a value is N/A or partial), seeds, n_seeds, n_failed,
    cards (card file paths), total_seconds, and for each metric in METRICS `<m>_mean`, `<m>_std`,
    `<m>_low`, `<m>_high`, `<m>_method`, `<m>_best`; plus rank / rank_tied (DER within each setting x
    attack x rate group; rows whose 95 % intervals overlap are not told apart) and tied_with (the
    defenses whose DER interval overlaps this row's).
    """
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
    label_counts = defaultdict(int)
    for label in settings.values():
        label_counts[label] += 1
    setting_names = {k: v if label_counts[v] == 1 else f"{v} #{k[:6]}" for k, v in settings.items()}

    undefended = {}
    for cell, group in cells.items():
        if cell[3] == "none":
            for card in group.ok:
                undefended[cell[:3] + (card["config"]["seed"],)] = card["metrics"]["defended"]

    defenses_by_setting: dict[str, set[str]] = defaultdict(set)
    groups_by_setting: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for setting, attack, rate_label, defense in cells:
        defenses_by_setting[setting].add(defense)
        groups_by_setting[setting].add((attack, rate_label))
    rows = []
    for setting in settings:
        for attack, rate_label in groups_by_setting[setting]:
            for defense in defenses_by_setting[setting]:
                group = cells.get((setting, attack, rate_label, defense), CellCards())
                rows.append(_row(setting, setting_names[setting], attack, rate_label, rates[rate_label], defense,
                                 group, undefended))
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    table["_attack_order"] = table["attack"].map(lambda a: (a != "none", a))
    table["_defense_order"] = table["defense"].map(lambda d: (d != "none", d))
    table = table.sort_values(["setting", "_attack_order", "rate", "poison_rate", "_defense_order"])
    table = table.drop(columns=["_attack_order", "_defense_order"]).reset_index(drop=True)
    return _mark_best_and_rank(table)


def _row(setting_key: str, setting: str, attack: str, rate_label: str, rate: float, defense: str,
         group: CellCards, undefended: dict[tuple, dict]) -> dict:
    row: dict[str, Any] = {
        "setting": setting, "setting_key": setting_key, "attack": attack, "poison_rate": rate_label,
        "rate": rate, "defense": defense,
        "seeds": " ".join(str(s) for s in sorted(c["config"]["seed"] for c in group.ok)),
        "n_seeds": len(group.ok), "n_failed": len(group.failed),
        "cards": [c.get("_path", "") for c in group.ok + group.failed],
    }
    notes = []
    if group.ok:
        row["status"] = "ok"
        summaries, missing = _summaries(group.ok, undefended)
        if missing:
            notes.append(f"no undefended reference for {missing} seed(s)")
    else:
        row["status"] = "failed" if group.failed else NOT_RUN
        summaries = {prefix: summarize_values([]) for prefix, _, _ in METRICS}
    if group.failed:
        seeds = ", ".join(str(c["config"]["seed"]) for c in group.failed)
        notes.append(f"failed (seed {seeds}): {_first_line(group.failed[0]['error'])}")
    elif not group.ok:
        notes.append(NOT_RUN)
    row["note"] = "; ".join(notes)
    for prefix, summary in summaries.items():
        for part in ("mean", "std", "low", "high", "method"):
            row[f"{prefix}_{part}"] = getattr(summary, part)
    totals = [c.get("costs", {}).get("total_seconds", math.nan) for c in group.ok]
    row["total_seconds"] = summarize_values(totals).mean
    return row


def _bounds(mean: float, low: float, high: float) -> tuple[float, float]:
    """An interval, or the point at the mean where there is none."""
    return (mean if math.isnan(low) else low, mean if math.isnan(high) else high)


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _mark_best_and_rank(table: pd.DataFrame) -> pd.DataFrame:
    """Best value per metric column and the DER rank, within each setting x attack x rate group."""
    for prefix, _, _ in METRICS:
        table[f"{prefix}_best"] = False
    table["rank"] = pd.array([None] * len(table), dtype="Int64")
    table["rank_tied"] = False
    table["tied_with"] = ""
    for _, group in table.groupby(["setting_key", "attack", "poison_rate"], sort=False):
        ok = group[group["status"] == "ok"]
        if len(ok) >= 2:
            for prefix, _, higher in METRICS:
                values = ok[f"{prefix}_mean"].dropna()
                if len(values) >= 2 and values.max() - values.min() > 1e-9:  # no mark where all are equal
                    best = values.max() if higher else values.min()
                    close = (values - best).abs() <= 1e-9  # equal means, up to summation order
                    table.loc[values.index[close], f"{prefix}_best"] = True
        means, lows, highs = (group[f"der_{p}"].astype(float).tolist() for p in ("mean", "low", "high"))
        ranks = interval_ranks(means, lows, highs, higher_is_better=True)
        for i, index in enumerate(group.index):
            if ranks[i] is None:
                continue
            table.loc[index, "rank"] = ranks[i]
            table.loc[index, "rank_tied"] = any(k != i and ranks[k] == ranks[i] for k in range(len(ranks)))
            overlapping = [group.loc[j, "defense"] for k, j in enumerate(group.index) if k != i and ranks[k] is not None
                           and _overlap(_bounds(means[i], lows[i], highs[i]), _bounds(means[k], lows[k], highs[k]))]
            table.loc[index, "tied_with"] = ", ".join(overlapping)
    return table
