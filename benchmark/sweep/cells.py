"""A grid's cells: expansion into validated run configs, and what of them is already done or cached."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cleanbench.cache import DEFENDED_MODELS, POISONED_MODELS, ArtifactCache
from cleanbench.config import RunConfig, budget_label, from_dict, merge
from cleanbench.errors import CleanbenchError, UsageError
from cleanbench.runcard import RunCard, finished_card
from cleanbench.plan import Plan
from cleanbench.sweep.grid import MAX_CELLS, Grid


@dataclass
class Cell:
    """One attack x defense x budget x seed of a grid, with its cache keys and card path."""

    index: int
    config: RunConfig
    attack: str
    defense: str
    budget: str
    seed: int
    cell_key: str
    poisoned_key: str
    defended_key: str | None
    card_path: Path

    def label(self) -> str:
        return f"{self.attack} x {self.defense} {self.budget} s{self.seed}"


def expand(grid: Grid, results_dir: str | None = None, use_cache: bool = True,
           max_cells: int = MAX_CELLS) -> list[Cell]:
    """Every distinct cell of `grid`, validated; cells sharing a poisoned model are adjacent, in grid order.

    UsageError, before any cell is built, when the grid has more than `max_cells` cells."""
    if grid.size() > max_cells:
        axes = (f"{len(grid.attacks)} attacks x {len(grid.defenses)} defenses x {len(grid.all_budgets())} budgets x "
                f"{len(grid.seeds)} seeds")
        raise UsageError(f"{grid.path}: {grid.size():,} cells ({axes}) is above the limit of {max_cells:,}; "
                         f"pass --max-cells {grid.size()} to expand it anyway (about 0.5 ms and 2.5 KB per cell), "
                         "or split the grid")
    cells: dict[str, Cell] = {}
    for seed, (rate, count), attack, defense in itertools.product(grid.seeds, grid.all_budgets(), grid.attacks,
                                                                  grid.defenses):
        if (rate, count) not in grid.budgets_of(attack):
            continue
        values = merge(grid.base, {
            "attack": attack.name, "attack_options": attack.options, "defense": defense.name,
            "defense_options": defense.options, "poison_rate": rate, "poison_count": count, "seed": seed,
            "results_dir": results_dir or grid.results_dir,
        })
        if not use_cache:
            values["use_cache"] = False
        where = f"{grid.path}: cell {attack.label} x {defense.label} {budget_label(rate, count)} seed {seed}"
        config = from_dict(RunConfig, values, where)
        try:
            plan = Plan(config)
        except CleanbenchError as error:
            raise UsageError(f"{where}: {error}") from error
        key = plan.cell_key()
        if key not in cells:
            cells[key] = Cell(0, plan.config, attack.label, defense.label, plan.budget_label, seed, key,
                              plan.poisoned_model_key(), None if plan.defense_is_identity else plan.defended_model_key(),
                              plan.card_path())
    groups: dict[str, list[Cell]] = {}
    for cell in cells.values():
        groups.setdefault(cell.poisoned_key, []).append(cell)
    ordered = [cell for group in groups.values() for cell in group]
    for i, cell in enumerate(ordered, 1):
        cell.index = i
    return ordered


def done_card(path: Path, cell_key: str) -> RunCard | None:
    """The run card at `path` if it is finished (status ok, valid) for this very cell, else None."""
    return finished_card(path, cell_key)


def cell_cache(cell: Cell) -> ArtifactCache:
    """The artifact cache the cell's run uses."""
    return ArtifactCache(cell.config.cache_dir)


def count_work(cells: Sequence[Cell]) -> dict[str, int]:
    """How many cells, distinct poisoned and defended models the sweep needs, and how many exist."""
    poisoned = {c.poisoned_key: c for c in cells}
    defended = {c.defended_key: c for c in cells if c.defended_key}
    return {
        "cells": len(cells),
        "cells_done": sum(done_card(c.card_path, c.cell_key) is not None for c in cells),
        "poisoned_models": len(poisoned),
        "poisoned_models_cached": sum(cell_cache(c).has(POISONED_MODELS, k) for k, c in poisoned.items()),
        "defended_models": len(defended),
        "defended_models_cached": sum(cell_cache(c).has(DEFENDED_MODELS, k) for k, c in defended.items()),
    }


def _planned_work(cell: Cell, trained_by: dict[str, int]) -> str:
    """What running `cell` would do; `trained_by` maps the poisoned models earlier cells will train."""
    cache = cell_cache(cell)
    if done_card(cell.card_path, cell.cell_key):
        return "done (card exists)"
    if not cell.config.use_cache:
        return "train poisoned model, defend (no cache)"
    if not cache.has(POISONED_MODELS, cell.poisoned_key) and cell.poisoned_key in trained_by:
        return f"defend (poisoned model from #{trained_by[cell.poisoned_key]})"
    if not cache.has(POISONED_MODELS, cell.poisoned_key):
        trained_by[cell.poisoned_key] = cell.index
        return "train poisoned model, defend"
    if cell.defended_key and not cache.has(DEFENDED_MODELS, cell.defended_key):
        return "defend (poisoned model cached)"
    return "evaluate (models cached)"


def dry_run_table(cells: Sequence[Cell]) -> str:
    """The cells, their keys and what running each would do."""
    trained_by: dict[str, int] = {}
    rows = [{"#": cell.index, "attack": cell.attack, "defense": cell.defense, "budget": cell.budget,
             "seed": cell.seed, "cell": cell.cell_key[:8], "poisoned model": cell.poisoned_key[:8],
             "work": _planned_work(cell, trained_by)} for cell in cells]
    return pd.DataFrame(rows).to_string(index=False)
