"""The defender-realistic tuning protocol: each defense's strength picked on the clean-model control.

A defender cannot see ASR and must not look at the test set. So, per defense and setting, the
benchmark runs the defense's strength grid (`Defense.strength`: a knob and values, weakest first)
on the clean-model control (`--attack none`) and picks the strongest value whose mean drop of
zero-shot CA on the validation split stays within a budget (default 2 points). The record (rule,
grid, drops, choice) is a JSON file; a run given it (`tuning:` in the config, `--tuning FILE`)
takes the chosen value as the defense's option and carries the record in its run card.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from cleanbench.config import RunConfig
from cleanbench.errors import UsageError
from cleanbench.fileio import write_json_atomic

RULE = ("the strongest value of the defense's strength knob whose mean zero-shot CA drop on the validation "
        "split of the clean-model control (attack none) is at most the budget; the test set and ASR are not read")
DEFAULT_BUDGET_POINTS = 2.0


def choose(grid: list[float], drops: list[float], budget_points: float) -> tuple[float, bool]:
    """The strongest grid value (grid weakest first) whose drop (points) is <= the budget, and True;
    the weakest value and False when none is."""
    within = [value for value, drop in zip(grid, drops) if drop <= budget_points]
    return (within[-1], True) if within else (grid[0], False)


def tuning_runs(base: RunConfig, defense: str, knob: str, grid: list[float], seeds: list[int]) -> list[RunConfig]:
    """The clean-model control cells of one defense's grid: one per value and seed."""
    runs = []
    for value in grid:
        for seed in seeds:
            config = copy.deepcopy(base)
            config.attack, config.attack_options, config.poison_rate, config.poison_count = "none", {}, None, None
            config.defense, config.seed, config.tuning = defense, seed, None
            config.defense_options = {**(base.defense_options if base.defense == defense else {}), knob: value}
            runs.append(config)
    return runs


def validation_drop(card: dict) -> float:
    """The validation CA drop of a run card, in points (poisoned model minus defended model)."""
    validation = card.get("metrics", {}).get("validation")
    if not validation:
        raise UsageError("the tuning protocol needs a validation split: only embedded data has one "
                         "(data.n_validation); file data cannot be tuned yet")
    before, after = validation["poisoned"]["ca_top1"], validation["defended"]["ca_top1"]
    if "successes" in before and before.get("total") == after.get("total"):  # exact: 20 of 1,000 is 2.0 points
        return 100 * (before["successes"] - after["successes"]) / before["total"]
    return 100 * (before["value"] - after["value"])


def defense_record(knob: str, grid: list[float], cards: list[list[dict]], budget_points: float) -> dict[str, Any]:
    """One defense's entry of the tuning record; `cards[i]` are the cards of `grid[i]` (one per seed)."""
    drops = [sum(validation_drop(c) for c in group) / len(group) for group in cards]
    chosen, within = choose(grid, drops, budget_points)
    return {"knob": knob, "grid": grid, "validation_ca_drop_points": [round(d, 3) for d in drops],
            "chosen": chosen, "within_budget": within,
            "cards": [[c["cell_key"] for c in group] for group in cards]}


def record(setting: str, seeds: list[int], budget_points: float, defenses: dict[str, dict]) -> dict[str, Any]:
    """The whole tuning record of a setting."""
    return {"kind": "cleanbench-tuning", "setting": setting, "rule": RULE, "budget_points": budget_points,
            "seeds": seeds, "defenses": defenses}


def merge_records(existing: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`existing` with the defense entries of `new` added or replaced; UsageError when the two were
    not made under the same protocol (setting, seeds, budget, rule), whose entries would not compare."""
    for key in ("setting", "seeds", "budget_points", "rule"):
        if existing.get(key) != new.get(key):
            raise UsageError(f"the tuning record to update has {key} {existing.get(key)!r}, this tuning {new.get(key)!r}; "
                             "tune with the record's setting, seeds and budget, or write a new record (no --update)")
    return {**existing, "defenses": {**existing["defenses"], **new["defenses"]}}


def write_record(path: str | Path, values: dict[str, Any]) -> Path:
    """Write the record as JSON (atomically)."""
    return write_json_atomic(path, values)


SHIPPED = Path(__file__).parent / "settings"
"""Tuning records shipped with named settings: `tuning: standard` reads settings/standard.tuning.json."""


def record_path(name: str | Path) -> Path:
    """The file of a tuning record: a shipped setting's record by its bare name, else the path itself."""
    text = str(name)
    if "/" not in text and "\\" not in text and not text.endswith(".json"):
        return SHIPPED / f"{text}.tuning.json"
    return Path(text)


def load_record(path: str | Path) -> dict[str, Any]:
    """A tuning record from `path` (or a shipped setting's name), or UsageError naming the problem."""
    path = record_path(path)
    try:
        values = json.loads(path.read_text())
    except OSError as error:
        raise UsageError(f"tuning record {str(path)!r} cannot be read ({error.strerror}); "
                         "make it with `cleanbench tune`") from error
    except json.JSONDecodeError as error:
        raise UsageError(f"tuning record {str(path)!r} is not JSON (line {error.lineno}): {error.msg}") from error
    if not isinstance(values, dict) or values.get("kind") != "cleanbench-tuning":
        raise UsageError(f"{path} is not a tuning record (made by `cleanbench tune`)")
    return values


def apply_record(config: RunConfig) -> dict[str, Any] | None:
    """Set the config's defense option from its tuning record (`config.tuning`); returns what the run
    card records about it, or None when no record is given, the defense has no strength knob, or the
    record has no entry for it.

    An explicit option with another value than the record's choice is refused: the two disagree."""
    from cleanbench.registry import DEFENSES

    if not config.tuning or DEFENSES.get(config.defense).strength is None:
        return None  # a defense without a strength knob is never tuned
    values = load_record(config.tuning)
    entry = values["defenses"].get(config.defense)
    if entry is None:
        return None
    knob, chosen = entry["knob"], entry["chosen"]
    given = config.defense_options.get(knob)
    if given is not None and given != chosen:
        raise UsageError(f"defense option {knob}={given} contradicts the tuning record {config.tuning} "
                         f"({knob}={chosen}); drop one of them")
    config.defense_options = {**config.defense_options, knob: chosen}
    digest = hashlib.sha256(record_path(config.tuning).read_bytes()).hexdigest()
    return {"record": record_path(config.tuning).name, "record_sha256": digest, "setting": values["setting"],
            "rule": values["rule"], "budget_points": values["budget_points"], "seeds": values["seeds"], **entry}
