"""What each stage of a setting's cells cost, from the run cards' `costs` and `artifacts`.

A card's `costs` hold the seconds of each stage (data, poison, pretrain, eval, defense), taken from
the cached artifact when the run reused it (`artifacts.<name>_reused`), so a model shared by many
cards is counted once here: pretraining per distinct poisoned model, a defense per distinct
defended model. A defense that acts during pretraining trains a whole model on the poisoned pairs,
so its cost is a full pretraining; the box says how it compares with the undefended pretraining.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cleanbench.leaderboard.display import stage_label

STAGES = (("data_seconds", "data"), ("poison_seconds", "poisoning"), ("eval_seconds", "evaluation (per card)"))


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _by_artifact(cards: list[dict], artifact: str, cost: str) -> list[float]:
    """One cost per distinct artifact key (cards without the key count each)."""
    seen: dict[str, float] = {}
    for i, card in enumerate(cards):
        value = _seconds((card.get("costs") or {}).get(cost))
        if value is not None:
            seen.setdefault(str((card.get("artifacts") or {}).get(artifact) or f"card {i}"), value)
    return list(seen.values())


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def _reused(cards: list[dict], artifact: str) -> int:
    return sum(bool((c.get("artifacts") or {}).get(f"{artifact}_reused")) for c in cards)


def stage_costs(cards: list[dict]) -> dict[str, Any]:
    """Per stage, the mean seconds and how many cards or models it is over; per defense, its stage
    and cost (and, for a pretraining-stage defense, the ratio to the undefended pretraining)."""
    ok = [c for c in cards if c.get("status") == "ok"]
    stages = []
    for key, name in STAGES:
        values = [v for v in (_seconds((c.get("costs") or {}).get(key)) for c in ok) if v is not None]
        if values:
            stages.append({"stage": name, "seconds": float(np.mean(values)), "over": f"{len(values)} cards"})
    pretrain = _by_artifact(ok, "poisoned_model", "pretrain_seconds")
    if pretrain:
        stages.insert(2, {"stage": "pretraining (the undefended model)", "seconds": float(np.mean(pretrain)),
                          "over": f"{_plural(len(pretrain), 'model')}; {_reused(ok, 'poisoned_model')} of {len(ok)} cards reused one"})
    triggers = _by_artifact(ok, "attack_trigger", "trigger_seconds")
    if triggers:
        stages.insert(2, {"stage": "trigger optimisation (on the clean surrogate)", "seconds": float(np.mean(triggers)),
                          "over": f"{_plural(len(triggers), 'trigger')}; {_reused(ok, 'attack_trigger')} of "
                                  f"{sum('trigger_seconds' in (c.get('costs') or {}) for c in ok)} cards reused one"})
    defenses = []
    by_name: dict[str, list[dict]] = {}
    for card in ok:
        name = (card.get("defense") or {}).get("name")
        if name and name != "none":
            by_name.setdefault(name, []).append(card)
    mean_pretrain = float(np.mean(pretrain)) if pretrain else math.nan
    for name, members in sorted(by_name.items()):
        values = _by_artifact(members, "defended_model", "defense_seconds")
        if not values:
            continue
        stage = stage_label((members[0].get("defense") or {}).get("stage"))
        seconds = float(np.mean(values))
        note = ""
        if stage == "pretraining":
            ratio = f" ({seconds / mean_pretrain:.1f}× the undefended pretraining)" if mean_pretrain > 0 else ""
            note = f"a full pretraining on the poisoned pairs{ratio}"
        defenses.append({"name": name, "stage": stage, "seconds": seconds, "models": len(values),
                         "reused": _reused(members, "defended_model"), "cards": len(members), "note": note})
    return {"stages": stages, "defenses": defenses}


REUSE_OF = {"pretrain_seconds": "poisoned_model", "defense_seconds": "defended_model", "trigger_seconds": "attack_trigger"}
"""The artifact whose reuse a stage's cost on a card page refers to."""


def card_cost_rows(card: dict) -> list[dict[str, Any]]:
    """The card page's cost table: each stage's seconds and whether it came from a reused artifact."""
    artifacts = card.get("artifacts") or {}
    rows = []
    for key, value in (card.get("costs") or {}).items():
        artifact = REUSE_OF.get(key)
        reused = None if artifact is None or f"{artifact}_reused" not in artifacts else bool(artifacts[f"{artifact}_reused"])
        if key == "eval_seconds" and "poisoned_evaluation_reused" in artifacts:
            reused = bool(artifacts["poisoned_evaluation_reused"]) and bool(artifacts.get("defended_evaluation_reused"))
        rows.append({"stage": key.removesuffix("_seconds"), "value": value, "reused": reused})
    return rows
