"""Reading run cards back: the input of every table, plot and leaderboard page.

Run cards are untrusted input (anyone can drop a JSON file into a results folder), so each one is
checked against the schema below before use; invalid files are skipped and reported with a reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cleanbench.fileio import RefusedFile, list_files, read_regular_file
from cleanbench.runcard import MAX_CARD_BYTES, SCHEMA_VERSION

if TYPE_CHECKING:
    import pandas as pd

REQUIRED_KEYS = ("schema_version", "status", "config", "attack", "defense")
STATUSES = ("ok", "failed")
STAGES = ("poisoned", "defended")
PROPORTIONS = ("ca_top1", "ca_top5", "asr", "ra")
MAX_NAME_CHARS = 500
MAX_SECONDS = 1e8
"""Costs and durations above this (about three years) are absurd: refused, like infinities."""
MAX_COUNT = 10**12
"""Counts above this (images, pairs, seeds' magnitude) are absurd."""
_TOLERANCE = 1e-6


class CardInvalid(ValueError):
    """A run card that does not match the schema; the message says where."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CardInvalid(message)


def _mapping(card: dict, key: str, where: str = "") -> dict:
    value = card.get(key)
    _require(isinstance(value, dict), f"{where}{key}: expected an object")
    return value


def _name(value: Any, where: str) -> str:
    _require(isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS,
             f"{where}: expected a non-empty string of at most {MAX_NAME_CHARS} characters")
    return value


def _finite(value: Any, where: str, low: float, high: float, nan: bool = False) -> None:
    """A number in [low, high] (NaN too when `nan`); infinities and absurd magnitudes are refused."""
    _require(_is_number(value), f"{where}: expected a number, got {value!r}")
    if nan and math.isnan(value):
        return
    _require(math.isfinite(value) and low <= value <= high, f"{where}: {value!r} is not a finite number in [{low:g}, {high:g}]")


def _optional(card: dict, key: str, kind: type | tuple[type, ...], where: str = "") -> None:
    if card.get(key) is not None:
        _require(isinstance(card[key], kind), f"{where}{key}: expected {getattr(kind, '__name__', kind)}")


def _check_proportion(value: Any, where: str) -> None:
    """{successes, total, value, low, high}: counts in range, value = successes/total, low <= value <= high."""
    _require(isinstance(value, dict), f"{where}: expected an object")
    k, n = value.get("successes"), value.get("total")
    _require(_is_int(k) and _is_int(n) and 0 <= k <= n <= MAX_COUNT,
             f"{where}: successes and total must be integers, 0 <= successes <= total <= {MAX_COUNT}")
    numbers = [value.get(name) for name in ("value", "low", "high")]
    if n == 0:
        _require(all(v is None or (_is_number(v) and math.isnan(v)) for v in numbers), f"{where}: total 0 must have NaN values")
        return
    _require(all(_is_number(v) and math.isfinite(v) for v in numbers), f"{where}: value, low and high must be finite numbers")
    p, low, high = numbers
    _require(abs(p - k / n) <= _TOLERANCE, f"{where}: value {p} is not successes/total = {k}/{n}")
    _require(-_TOLERANCE <= low <= p + _TOLERANCE and p - _TOLERANCE <= high <= 1 + _TOLERANCE,
             f"{where}: interval [{low}, {high}] must hold the value and lie in [0, 1]")


def _check_metrics(metrics: Any, status: str) -> None:
    _require(isinstance(metrics, dict), "metrics: expected an object")
    required = ("defended",) if status == "ok" else ()
    for stage in STAGES:
        if stage not in metrics:
            _require(stage not in required, f"metrics.{stage}: missing (a card with status ok needs it)")
            continue
        _require(isinstance(metrics[stage], dict), f"metrics.{stage}: expected an object")
        for name in PROPORTIONS:
            _check_proportion(metrics[stage].get(name), f"metrics.{stage}.{name}")
        for name in ("seconds", "images_per_second"):
            if name in metrics[stage]:
                _finite(metrics[stage][name], f"metrics.{stage}.{name}", 0, MAX_SECONDS if name == "seconds" else 1e12)
        stealth = metrics[stage].get("stealthiness", {})
        _require(isinstance(stealth, dict), f"metrics.{stage}.stealthiness: expected an object")
        for name, value in stealth.items():
            _finite(value, f"metrics.{stage}.stealthiness.{name}", 0, 1e4, nan=True)
    change = metrics.get("change", {})
    _require(isinstance(change, dict), "metrics.change: expected an object")
    for name, value in change.items():
        _finite(value, f"metrics.change.{name}", -1, 1, nan=True)


def validate_card(card: Any) -> dict:
    """Return `card` if it matches run-card schema version 1, else raise CardInvalid naming the problem.

    Checked: the required keys and their types, plugin names, the config fields the leaderboard
    groups by, every proportion (counts, value = successes/total, interval), costs, and the
    optional descriptive fields (versions, device, artifacts, command) when present.
    """
    _require(isinstance(card, dict), "expected a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in card]
    _require(not missing, f"missing keys: {', '.join(missing)}")
    _require(_is_int(card["schema_version"]) and card["schema_version"] == SCHEMA_VERSION,
             f"schema_version: expected {SCHEMA_VERSION}, got {card['schema_version']!r}")
    _require(card["status"] in STATUSES, f"status: expected one of {', '.join(STATUSES)}, got {card['status']!r}")

    config = _mapping(card, "config")
    _name(config.get("attack"), "config.attack")
    _name(config.get("defense"), "config.defense")
    _require(_is_int(config.get("seed")) and abs(config["seed"]) < 2**63, "config.seed: expected a 64-bit integer")
    _require(config.get("poison_rate") is None or (_is_number(config["poison_rate"]) and 0 <= config["poison_rate"] <= 1),
             "config.poison_rate: expected a number in [0, 1] or null")
    _require(config.get("poison_count") is None or (_is_int(config["poison_count"]) and 0 <= config["poison_count"] <= MAX_COUNT),
             f"config.poison_count: expected an integer in [0, {MAX_COUNT}] or null")
    for key in ("attack_options", "defense_options", "data", "model", "pretrain"):
        _require(isinstance(config.get(key, {}), dict), f"config.{key}: expected an object")
    _require(isinstance(config.get("target", ""), str), "config.target: expected a string")
    n_pretrain = config.get("data", {}).get("n_pretrain", 1)
    _require(_is_int(n_pretrain) and 1 <= n_pretrain <= MAX_COUNT, f"config.data.n_pretrain: expected an integer in [1, {MAX_COUNT}]")
    _require(isinstance(config.get("model", {}).get("name", ""), str), "config.model.name: expected a string")

    for role in ("attack", "defense"):
        plugin = _mapping(card, role)
        _require(_name(plugin.get("name"), f"{role}.name") == config[role], f"{role}.name differs from config.{role}")
        for key in ("description", "paper", "source", "stage"):
            _optional(plugin, key, str, f"{role}.")
        _optional(plugin, "options", dict, f"{role}.")

    if card["status"] == "ok" or "metrics" in card:
        _check_metrics(card.get("metrics"), card["status"])
    if card["status"] == "failed":
        _require(isinstance(card.get("error"), str), "error: a failed card must say why (a string)")
    costs = card.get("costs", {})
    _require(isinstance(costs, dict), "costs: expected an object")
    for key, value in costs.items():
        _finite(value, f"costs.{key}", 0, MAX_SECONDS)
    if "wall_seconds" in card:
        _finite(card["wall_seconds"], "wall_seconds", 0, MAX_SECONDS)
    for key, kind in (("versions", dict), ("device", dict), ("artifacts", dict), ("poison", dict),
                      ("git_commit", str), ("command", str), ("reproduce", str), ("created", str), ("finished", str)):
        _optional(card, key, kind)
    _require(all(isinstance(v, str) for v in (card.get("versions") or {}).values()), "versions: expected strings")
    poison = card.get("poison") or {}
    for key in ("count", "candidates", "target_index"):
        if poison.get(key) is not None:
            _require(_is_int(poison[key]) and 0 <= poison[key] <= MAX_COUNT, f"poison.{key}: expected an integer in [0, {MAX_COUNT}]")
    if poison.get("rate") is not None:
        _finite(poison["rate"], "poison.rate", 0, 1)
    return card


@dataclass
class CardScan:
    """The valid cards under a results folder, and the files that were skipped with the reason."""

    cards: list[dict] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


def scan_cards(results_dir: str | Path) -> CardScan:
    """Read and validate every `*.json` under `results_dir/runs` (recursively, in name order).

    Only regular files of at most MAX_CARD_BYTES inside `results_dir` are read (`read_regular_file`);
    FIFOs, devices, links out of the folder or into a loop, and links to folders are skipped and listed.
    """
    scan = CardScan()
    for path, refused in list_files(Path(results_dir) / "runs", ".json"):
        if refused is not None:
            scan.rejected.append((str(path), f"skipped: {refused}"))
            continue
        try:
            card = validate_card(json.loads(read_regular_file(path, MAX_CARD_BYTES, root=results_dir).decode("utf-8")))
        except RefusedFile as error:
            scan.rejected.append((str(path), f"skipped: {error.reason}"))
            continue
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            scan.rejected.append((str(path), f"unreadable: {type(error).__name__}: {error}"))
            continue
        except CardInvalid as error:
            scan.rejected.append((str(path), f"invalid: {error}"))
            continue
        card["_path"] = str(path)
        scan.cards.append(card)
    return scan


def load_cards(results_dir: str | Path) -> list[dict]:
    """Every valid run card under `results_dir/runs`, skipping files that are not valid cards."""
    return scan_cards(results_dir).cards


def cards_table(cards: list[dict]) -> pd.DataFrame:
    """One row per card: attack, defense, the options, setting and commit that tell rows apart,
    budget, seed, CA/ASR before and after, time."""
    import pandas as pd

    from cleanbench.leaderboard.table import setting_of, variant_labels

    labels = {role: variant_labels(cards, role) for role in ("attack", "defense")}
    rows = []
    for card in cards:
        config = card["config"]
        options = [labels[role][id(card)].removeprefix(config[role]).strip(" ()") for role in ("attack", "defense")]
        row = {
            "attack": card["attack"]["name"],
            "defense": card["defense"]["name"],
            "options (attack / defense)": " / ".join(o or "-" for o in options) if any(options) else "",
            "poison": card.get("poison", {}).get("count"),
            "seed": config["seed"],
            "setting": setting_of(config)[1],
            "commit": str(card.get("git_commit") or "?")[:8] + ("+dirty" if str(card.get("git_commit")).endswith("+dirty") else ""),
            "status": card["status"],
        }
        metrics = card.get("metrics", {})
        for stage, prefix in (("poisoned", "before"), ("defended", "after")):
            for name in ("ca_top1", "asr"):
                value = metrics.get(stage, {}).get(name, {}).get("value")
                row[f"{name.replace('_top1', '')}_{prefix} %"] = None if value is None else round(100 * value, 1)
        row["seconds"] = round(card.get("costs", {}).get("total_seconds", float("nan")), 1)
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["attack", "defense", "poison", "seed", "options (attack / defense)", "commit"], na_position="last")
