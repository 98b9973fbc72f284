"""The grid file's schema: keys, types and plugin options checked before any work starts.

Key and type checks are config's (`check_keys`, `check_value`), so a grid refuses what a run
config refuses, with the same did-you-mean hints; every error names the file and the key.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cleanbench.config import RunConfig, build_options, check_keys, check_value, from_dict, load_yaml
from cleanbench.errors import CleanbenchError, UsageError
from cleanbench.executors import EXECUTORS
from cleanbench.registry import ATTACKS, DEFENSES, Registry, load_plugin_file

GRID_KEYS = ("name", "results_dir", "base", "attacks", "defenses", "poison_rates", "poison_counts", "seeds",
             "plugins", "executor")
ENTRY_KEYS = ("name", "options", "grid")
BUDGET_KEYS = ("poison_rates", "poison_counts")
EXECUTOR_KEYS = ("name", "workers", "gpus", "slurm")
SET_BY_AXES = {
    "attack": "the `attacks` list", "attack_options": "the `attacks` list (options: ...)",
    "defense": "the `defenses` list", "defense_options": "the `defenses` list (options: ...)",
    "poison_rate": "the `poison_rates` list", "poison_count": "the `poison_counts` list",
    "seed": "the `seeds` list", "results_dir": "`results_dir` at the top level of the grid",
}


def _typed(value: Any, kind: Any, where: str, what: str) -> Any:
    """`value` checked (and converted) as config checks type `kind`; the error says `what` was expected."""
    try:
        return check_value(value, kind, where)
    except UsageError as error:
        raise UsageError(f"{where}: expected {what}, got {value!r} ({type(value).__name__})") from error


def _nonempty_list(value: Any, where: str, example: str) -> list:
    _typed(value, list, where, f"a list, e.g. {example}")
    if not value:
        raise UsageError(f"{where}: empty; give at least one value, e.g. {example}")
    return value


MAX_CELLS = 10_000
"""Grids above this many cells are refused unless `--max-cells` raises the limit: each cell is validated
and keyed before any work (about 0.5 ms and 2.5 KB per cell on a 2-core CPU, docs/sweeps.md), so a typo
such as 1000 seeds would otherwise spend minutes and gigabytes before saying anything."""


@dataclass
class Variant:
    """One entry of the attack or defense axis after its `grid` is expanded."""

    name: str
    options: dict[str, Any]
    label: str
    budgets: list[tuple[float | None, int | None]] | None = None
    """An attack's own poison budgets (its entry's `poison_rates`/`poison_counts`); None: the grid's."""


@dataclass
class ExecutorSpec:
    """The `executor:` section; `--executor` and `--workers` override it."""

    name: str = "sequential"
    workers: int | None = None
    gpus: list[str] | None = None
    slurm: dict[str, Any] = field(default_factory=dict)
    cluster: str | None = None
    folder: str | None = None
    max_parallel: int | None = None


@dataclass
class Grid:
    """A validated grid file."""

    path: Path
    name: str
    results_dir: str
    base: dict[str, Any]
    attacks: list[Variant]
    defenses: list[Variant]
    budgets: list[tuple[float | None, int | None]]
    seeds: list[int]
    plugins: list[str]
    executor: ExecutorSpec

    def budgets_of(self, attack: Variant) -> list[tuple[float | None, int | None]]:
        """The poison budgets `attack` runs at: its own when its entry gives them, else the grid's."""
        return attack.budgets if attack.budgets is not None else self.budgets

    def all_budgets(self) -> list[tuple[float | None, int | None]]:
        """Every budget some attack runs at, the grid's first, then attacks' own in entry order."""
        seen = list(self.budgets)
        for attack in self.attacks:
            seen += [budget for budget in self.budgets_of(attack) if budget not in seen]
        return seen

    def size(self) -> int:
        """The number of cells before duplicates are merged (attack `none` ignores the budget): an upper
        bound of what `expand` returns, known without expanding."""
        per_seed = sum(len(self.budgets_of(attack)) for attack in self.attacks) * len(self.defenses)
        return len(self.seeds) * per_seed


def _variants(entries: Any, axis: str, registry: Registry, where: str) -> list[Variant]:
    """Expand `attacks:` or `defenses:`; every option set is checked against the plugin's Options."""
    example = "[badnet]" if axis == "attacks" else "[none, cleanclip]"
    out: list[Variant] = []
    for i, entry in enumerate(_nonempty_list(entries, f"{where}: {axis}", f"{axis}: {example}")):
        at = f"{where}: {axis}[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        _typed(entry, dict, at, "a plugin name or a mapping with name, options, grid")
        check_keys(entry, ENTRY_KEYS + BUDGET_KEYS if axis == "attacks" else ENTRY_KEYS, at)
        if "name" not in entry:
            raise UsageError(f"{at}: missing key 'name'")
        name = _typed(entry["name"], str, f"{at}.name", "a plugin name")
        options = _typed(entry.get("options") or {}, dict, f"{at}.options", "a mapping of options")
        grid = _typed(entry.get("grid") or {}, dict, f"{at}.grid", "a mapping of option -> list of values")
        try:
            cls = registry.get(name)
        except CleanbenchError as error:
            raise UsageError(f"{at}.name: {error}") from error
        build_options(cls.Options, options, f"{at}.options")
        for key, values in grid.items():
            _nonempty_list(values, f"{at}.grid.{key}", f"{key}: [1.0e-3, 2.0e-3]")
            if key in options:
                raise UsageError(f"{at}.grid.{key}: also set in options; give it in one place")
        budgets = _budgets(entry, at) if any(key in entry for key in BUDGET_KEYS) else None
        for combination in itertools.product(*grid.values()):
            values = {**options, **dict(zip(grid, combination))}
            build_options(cls.Options, values, f"{at}.grid")
            out.append(Variant(name, values, name, budgets))
    varying = _varying_options(out)
    for variant in out:  # label each variant by the options that tell it apart from its namesakes
        shown = [k for k in variant.options if k in varying[variant.name]]
        if shown:
            variant.label += "[" + ",".join(f"{k}={variant.options[k]}" for k in shown) + "]"
    return out


def _varying_options(variants: list[Variant]) -> dict[str, set[str]]:
    """For each plugin name, the options whose value differs among its variants (absent counts as None):
    each variant's value is compared with the first variant's, so the work grows linearly."""
    by_name: dict[str, list[Variant]] = {}
    for variant in variants:
        by_name.setdefault(variant.name, []).append(variant)
    varying: dict[str, set[str]] = {}
    for name, namesakes in by_name.items():
        keys = {key for v in namesakes for key in v.options}
        first = namesakes[0].options
        varying[name] = {key for key in keys if any(v.options.get(key) != first.get(key) for v in namesakes)}
    return varying


def _executor_spec(values: Any, where: str) -> ExecutorSpec:
    values = _typed(values if values is not None else {}, dict, where, "a mapping")
    check_keys(values, EXECUTOR_KEYS, where)
    spec = ExecutorSpec()
    if "name" in values:
        spec.name = _typed(values["name"], str, f"{where}.name", f"one of {', '.join(EXECUTORS)}")
        if spec.name not in EXECUTORS:
            raise UsageError(f"{where}.name: unknown executor {spec.name!r}; use one of {', '.join(EXECUTORS)}")
    if values.get("workers") is not None:
        spec.workers = _typed(values["workers"], int, f"{where}.workers", "a number of workers")
    if values.get("gpus") is not None:
        gpus = _nonempty_list(values["gpus"], f"{where}.gpus", "gpus: [0, 1]")
        spec.gpus = [str(_typed(g, int | str, f"{where}.gpus", "GPU ids")) for g in gpus]
    slurm = dict(_typed(values.get("slurm") or {}, dict, f"{where}.slurm", "a mapping of submitit parameters"))
    spec.cluster = slurm.pop("cluster", None)
    spec.folder = slurm.pop("folder", None)
    spec.max_parallel = slurm.pop("max_parallel", None)
    if spec.max_parallel is not None:
        _typed(spec.max_parallel, int, f"{where}.slurm.max_parallel", "a number of jobs")
    spec.slurm = {"timeout_min": 240, **slurm}
    return spec


def _budgets(values: dict[str, Any], where: str) -> list[tuple[float | None, int | None]]:
    """The poison budgets of the grid or of one attack entry: every rate of `poison_rates`, then every count
    of `poison_counts`."""
    budgets: list[tuple[float | None, int | None]] = []
    if "poison_rates" in values:
        rates = _nonempty_list(values["poison_rates"], f"{where}: poison_rates", "poison_rates: [0.01, 0.02]")
        budgets += [(_typed(r, float, f"{where}: poison_rates", "numbers in (0, 1]"), None) for r in rates]
    if "poison_counts" in values:
        counts = _nonempty_list(values["poison_counts"], f"{where}: poison_counts", "poison_counts: [25, 50]")
        budgets += [(None, _typed(n, int, f"{where}: poison_counts", "whole numbers")) for n in counts]
    return budgets


def load_grid(path: str | Path) -> Grid:
    """Read and validate a grid file; UsageError naming the file, the key and the reason."""
    path = Path(path)
    values = load_yaml(path)
    where = str(path)
    check_keys(values, GRID_KEYS, where)
    for key in ("attacks", "defenses", "seeds"):
        if key not in values:
            raise UsageError(f"{where}: missing key {key!r}")
    if "poison_rates" not in values and "poison_counts" not in values:
        raise UsageError(f"{where}: missing key 'poison_rates' (or 'poison_counts'); e.g. poison_rates: [0.01]")
    plugins = _typed(values.get("plugins") or [], list[str], f"{where}: plugins", "a list of .py files")
    for plugin in plugins:
        load_plugin_file(plugin)
    base = _typed(values.get("base") or {}, dict, f"{where}: base", "a mapping of run settings")
    for key in base:
        if key in SET_BY_AXES:
            raise UsageError(f"{where}: base.{key}: set by {SET_BY_AXES[key]}, not in base")
    from_dict(RunConfig, base, f"{where}: base")
    budgets = _budgets(values, where)
    seeds = [_typed(s, int, f"{where}: seeds", "whole numbers")
             for s in _nonempty_list(values["seeds"], f"{where}: seeds", "seeds: [0, 1, 2]")]
    name = _typed(values.get("name", path.stem), str, f"{where}: name", "a string")
    results_dir = _typed(values.get("results_dir", "results"), str, f"{where}: results_dir", "a folder")
    return Grid(path, name, results_dir, base, _variants(values["attacks"], "attacks", ATTACKS, where),
                _variants(values["defenses"], "defenses", DEFENSES, where), budgets, seeds, plugins,
                _executor_spec(values.get("executor"), f"{where}: executor"))
