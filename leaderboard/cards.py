"""Reading run cards back: the input of every table, plot and leaderboard page."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cleanbench.runcard import SCHEMA_VERSION

REQUIRED_KEYS = ("schema_version", "status", "config", "attack", "defense")


def load_cards(results_dir: str | Path) -> list[dict]:
    """Every valid run card under `results_dir/runs`, skipping files that are not cards."""
    cards = []
    for path in sorted(Path(results_dir).glob("runs/*.json")):
        try:
            card = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(card, dict) or any(k not in card for k in REQUIRED_KEYS):
            continue
        if card["schema_version"] != SCHEMA_VERSION:
            continue
        card["_path"] = str(path)
        cards.append(card)
    return cards


def cards_table(cards: list[dict]) -> pd.DataFrame:
    """One row per card: attack, defense, budget, seed, CA/ASR before and after, time."""
    rows = []
    for card in cards:
        config = card["config"]
        row = {
            "attack": card["attack"]["name"],
            "defense": card["defense"]["name"],
            "poison": card.get("poison", {}).get("count"),
            "seed": config["seed"],
            "status": card["status"],
        }
        metrics = card.get("metrics", {})
        for stage, prefix in (("poisoned", "before"), ("defended", "after")):
            for name in ("ca_top1", "asr"):
                value = metrics.get(stage, {}).get(name, {}).get("value")
                row[f"{name.replace('_top1', '')}_{prefix} %"] = None if value is None else round(100 * value, 1)
        row["seconds"] = round(card.get("costs", {}).get("total_seconds", float("nan")), 1)
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["attack", "defense", "poison", "seed"], na_position="last")
