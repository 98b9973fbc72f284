"""Run cards: one JSON file per benchmark cell, the only input of tables and the leaderboard.

A card holds the resolved config, seeds, poisoned indices, metrics of the poisoned and defended
model with intervals, costs per stage, versions, device, git commit and artifact keys. `RunCard`
is its type; this module alone writes (atomically), validates and reads cards, so the runner, the
sweep, the summary, the bench and the leaderboard share one schema. The file name is stable for a
given config, so re-running a cell replaces it. Cards read back are untrusted input (anyone can drop
a JSON file into a results folder): `read_card` checks each against the schema and raises
`CardInvalid` naming the problem.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cleanbench
from cleanbench.errors import UsageError
from cleanbench.fileio import RefusedFile, read_regular_file, write_json_atomic

if TYPE_CHECKING:
    import torch

SCHEMA_VERSION = 1
MAX_CARD_BYTES = 20_000_000
"""Readers skip larger files: a run card is a few hundred kilobytes at most."""
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


@dataclass
class RunCard:
    """One cell's record, field by field the JSON object of its file. `stage` names the stage that was
    running when a cell failed; keys this version does not know are kept in `extra` and written back."""

    schema_version: int = SCHEMA_VERSION
    status: str = "running"
    created: str | None = None
    command: str | None = None
    reproduce: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    cell_key: str | None = None
    setting: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    environment: dict[str, Any] | None = None
    git_commit: str | None = None
    device: dict[str, Any] = field(default_factory=dict)
    attack: dict[str, Any] = field(default_factory=dict)
    defense: dict[str, Any] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    stage: str | None = None
    data: dict[str, Any] | None = None
    poison: dict[str, Any] | None = None
    artifacts: dict[str, Any] | None = None
    pretrain: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    wall_seconds: float | None = None
    reused: list[str] | None = None
    environment_notes: list[str] = field(default_factory=list)
    finished: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    read_keys: frozenset[str] | None = field(default=None, repr=False, compare=False)
    """The keys of the JSON object a card was read from (None for a card made here): a key that was
    there with a null value is written back, one that was not there is not added."""

    _ALWAYS = ("schema_version", "status", "created", "command", "reproduce", "config", "seed", "cell_key",
               "setting", "versions", "git_commit", "device", "attack", "defense", "costs")
    """Keys a new card always has (null when unknown); the others appear once their stage has run."""

    def to_dict(self) -> dict[str, Any]:
        """The card as its JSON object."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "read_keys")}
        given = self._ALWAYS if self.read_keys is None else self.read_keys
        empty = {k for k, v in out.items() if v is None or (k == "environment_notes" and not v)}
        return {k: v for k, v in out.items() if k in given or k not in empty} | self.extra

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunCard:
        """A card from its JSON object, validated (CardInvalid naming the problem)."""
        validate_card(values)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "read_keys"}
        return cls(**{k: v for k, v in values.items() if k in names},
                   extra={k: v for k, v in values.items() if k not in names}, read_keys=frozenset(values))

    def __getitem__(self, key: str) -> Any:
        """A section by its JSON key (`card["metrics"]`), for code written against the file's layout."""
        return self.to_dict()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def metric(self, stage: str, name: str) -> float | None:
        """A metric's value for `stage` (poisoned or defended), or None when it was not measured."""
        return ((self.metrics or {}).get(stage) or {}).get(name, {}).get("value")

    @property
    def ok(self) -> bool:
        return self.status == "ok"


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


def read_card(path: str | Path, root: str | Path | None = None) -> RunCard:
    """The validated run card in file `path`, a regular file of at most MAX_CARD_BYTES inside `root`
    (default: its folder). Raises `RefusedFile` (not a regular file, too large, a link out of `root`),
    OSError (cannot be read) or CardInvalid (not JSON: "unreadable: ...", or not a valid card)."""
    path = Path(path)
    data = read_regular_file(path, MAX_CARD_BYTES, root=root if root is not None else path.parent)
    try:
        values = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise CardInvalid(f"unreadable: {type(error).__name__}: {error}") from error
    return RunCard.from_dict(values)


def finished_card(path: str | Path, cell_key: str) -> RunCard | None:
    """The run card at `path` if it is a valid, finished (status ok) card of this very cell, else None."""
    try:
        card = read_card(path)
    except (OSError, RefusedFile, CardInvalid):
        return None
    return card if card.ok and card.cell_key == cell_key else None


def versions() -> dict[str, str]:
    """Versions of the software that determines the numbers."""
    import numpy as np
    import open_clip
    import torch

    return {
        "cleanbench": cleanbench.__version__,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def git_commit() -> str | None:
    """The commit of the cleanbench checkout, when it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(cleanbench.__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(cleanbench.__file__).parent,
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_info(device: Any) -> dict[str, Any]:
    """The device (a torch.device) a run used."""
    import torch

    info: dict[str, Any] = {"type": device.type, "torch_threads": torch.get_num_threads(), "machine": platform.machine()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def now() -> str:
    """The current UTC time, as cards record it."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def card_path(results_dir: str | Path, attack: str, defense: str, budget: str, seed: int, key: str) -> Path:
    """results_dir/runs/<attack>__<defense>__<budget>__s<seed>__<key8>.json"""
    safe = lambda s: "".join(c if c.isalnum() or c in "-." else "_" for c in s)  # noqa: E731
    name = f"{safe(attack)}__{safe(defense)}__{safe(budget)}__s{seed}__{key[:8]}.json"
    return Path(results_dir) / "runs" / name


def write_card(path: str | Path, card: RunCard) -> Path:
    """Write `card` atomically."""
    return write_json_atomic(path, card.to_dict())


def select_where(cards: list[dict[str, Any]], conditions: list[str], example: str) -> list[dict[str, Any]]:
    """The cards whose field at each condition's dotted PATH prints as its VALUE (`PATH=VALUE`, all
    must hold); a condition without `=` is a UsageError that shows `example`."""
    for condition in conditions:
        path, sep, wanted = condition.partition("=")
        if not sep:
            raise UsageError(f"where={condition!r}: expected where=PATH=VALUE, e.g. where={example}")
        cards = [c for c in cards if str(_field(c, path)) == wanted]
    return cards


def _field(card: dict[str, Any], path: str) -> Any:
    value: Any = card
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
