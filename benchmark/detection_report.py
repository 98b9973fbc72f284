"""Detection cards back into tables: one row per card, or per setting and detector pooled over seeds.

Pooled rows give each metric's mean over seeds with the leaderboard's 95 % bootstrap interval
(`cleanbench.leaderboard.detections`): seeds and scored pairs redrawn for AUROC and TPR@1%FPR, seeds
only for AUPRC and for cards that hold no ranks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from cleanbench.detection import CARD_FOLDER, CARD_KIND
from cleanbench.leaderboard.detections import pool
from cleanbench.runcard import select_where

METRICS = (("auroc", "AUROC"), ("auprc", "AUPRC"), ("tpr_at_1pct_fpr", "TPR@1%FPR"))


def load_detection_cards(results_dir: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The finished detection cards under `results_dir/detections`, and the files that could not be read."""
    cards, unreadable = [], []
    for path in sorted(Path(results_dir, CARD_FOLDER).glob("*.json")):
        try:
            card = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            unreadable.append(str(path))
            continue
        if isinstance(card, dict) and card.get("kind") == CARD_KIND and card.get("status") == "ok":
            cards.append(card)
        elif not isinstance(card, dict) or card.get("kind") != CARD_KIND:
            unreadable.append(str(path))
    return cards, unreadable


def _label(card: dict[str, Any]) -> dict[str, Any]:
    poison = card["poison"]
    options = card["detector"].get("options") or {}
    return {"attack": card["attack"]["name"], "poisoned": f"{poison['count']} ({poison['rate']:.2%})",
            "detector": card["detector"]["name"],
            "options": ", ".join(f"{k}={v}" for k, v in options.items()) or "-"}


def _interval(value: tuple[float, float, float]) -> str:
    mean, low, high = value
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f}" if math.isnan(low) else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def pooled_table(cards: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per setting and detector (`group_key`): each metric's mean and 95 % interval over seeds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for card in cards:
        groups.setdefault(card["group_key"], []).append(card)
    rows = []
    for members in groups.values():
        members.sort(key=lambda c: c["seed"])
        row = _label(members[0]) | {"seeds": ",".join(str(c["seed"]) for c in members)}
        pooled = pool(members, members[0]["group_key"])
        for key, title in METRICS:
            row[title] = _interval(pooled.values[key])
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.sort_values(["attack", "poisoned", "detector", "options"], kind="stable") if rows else frame


def card_rows(cards: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per card: the seed's metrics and the detector's own cost."""
    rows = [_label(card) | {"seed": card["seed"], **{title: f"{card['metrics'][key]:.3f}" for key, title in METRICS},
                            "seconds": f"{card['costs']['detector_seconds']:.1f}"} for card in cards]
    return pd.DataFrame(rows)


def detections_markdown(folder: str, options: dict[str, list[str]]) -> str:
    """The pooled table of the detection cards under `folder` as markdown, for `cleanbench doc-tables`
    (`where=PATH=VALUE`, repeatable, keeps the cards whose field at the dotted PATH prints as VALUE)."""
    from cleanbench.errors import UsageError

    cards, _ = load_detection_cards(folder)
    cards = select_where(cards, options.get("where", []), "attack.name=badnet")
    if not cards:
        raise UsageError(f"no detection card in {folder!r} matches {options}")
    table = pooled_table(cards)
    lines = ["| " + " | ".join(table.columns) + " |", "| " + " | ".join("---" for _ in table.columns) + " |"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"
