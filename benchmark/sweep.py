"""`cleanbench sweep grid.yaml`: attacks x defenses x poison budgets x seeds, with the least work.

A grid file (schema in docs/sweeps.md) is read and every cell is validated before any work starts:
unknown keys, wrong types, empty axes, unknown plugins and bad options are refused naming the file
and the key. Cells are ordered so that the cells sharing a poisoned model follow each other; the
first of them trains it and the others load it from the content-addressed cache, so a sweep of
A attacks x D defenses x R rates trains A x R poisoned models. A cell whose run card exists with
status ok and the same cell key is skipped, so a finished sweep re-runs in seconds and an
interrupted one resumes where it stopped. A cell that raises gets a failed card; the sweep goes on.
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import pandas as pd
from filelock import FileLock
from tqdm.auto import tqdm

from cleanbench.cache import DEFENDED_MODELS, POISONED_MODELS, ArtifactCache
from cleanbench.config import RunConfig, build_options, from_dict, load_yaml, merge
from cleanbench.errors import CleanbenchError, RunError, UsageError
from cleanbench.fileio import RefusedFile, read_regular_file
from cleanbench.runcard import MAX_CARD_BYTES
from cleanbench.executors import (
    EXECUTORS, Executor, LocalExecutor, SequentialExecutor, SlurmExecutor, check_slurm_parameters,
)
from cleanbench.registry import ATTACKS, DEFENSES, Registry, load_plugin_file
from cleanbench.runner import Plan, run_cell

GRID_KEYS = ("name", "results_dir", "base", "attacks", "defenses", "poison_rates", "poison_counts", "seeds",
             "plugins", "executor")
ENTRY_KEYS = ("name", "options", "grid")
EXECUTOR_KEYS = ("name", "workers", "gpus", "slurm")
SLURM_KEYS = ("cluster", "folder", "max_parallel")
SET_BY_AXES = {
    "attack": "the `attacks` list", "attack_options": "the `attacks` list (options: ...)",
    "defense": "the `defenses` list", "defense_options": "the `defenses` list (options: ...)",
    "poison_rate": "the `poison_rates` list", "poison_count": "the `poison_counts` list",
    "seed": "the `seeds` list", "results_dir": "`results_dir` at the top level of the grid",
}


def _unknown(key: Any, known: Sequence[str], where: str) -> UsageError:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    return UsageError(f"{where}: unknown key {key!r}{hint}")


def _typed(value: Any, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, kind) or (kind in (int, (int, float)) and isinstance(value, bool)):
        raise UsageError(f"{where}: expected {what}, got {value!r} ({type(value).__name__})")
    return value


def _nonempty_list(value: Any, where: str, example: str) -> list:
    _typed(value, list, where, f"a list, e.g. {example}")
    if not value:
        raise UsageError(f"{where}: empty; give at least one value, e.g. {example}")
    return value


@dataclass
class Variant:
    """One entry of the attack or defense axis after its `grid` is expanded."""

    name: str
    options: dict[str, Any]
    label: str


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


def _variants(entries: Any, axis: str, registry: Registry, where: str) -> list[Variant]:
    """Expand `attacks:` or `defenses:`; every option set is checked against the plugin's Options."""
    example = "[badnet]" if axis == "attacks" else "[none, cleanclip]"
    out: list[Variant] = []
    for i, entry in enumerate(_nonempty_list(entries, f"{where}: {axis}", f"{axis}: {example}")):
        at = f"{where}: {axis}[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        _typed(entry, dict, at, "a plugin name or a mapping with name, options, grid")
        for key in entry:
            if key not in ENTRY_KEYS:
                raise _unknown(key, ENTRY_KEYS, at)
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
        for combination in itertools.product(*grid.values()):
            values = {**options, **dict(zip(grid, combination))}
            build_options(cls.Options, values, f"{at}.grid")
            out.append(Variant(name, values, name))
    for variant in out:  # label each variant by the options that tell it apart from its namesakes
        namesakes = [v.options for v in out if v.name == variant.name]
        varying = [k for k in variant.options if any(o.get(k) != variant.options[k] for o in namesakes)]
        if varying:
            variant.label += "[" + ",".join(f"{k}={variant.options[k]}" for k in varying) + "]"
    return out


def _executor_spec(values: Any, where: str) -> ExecutorSpec:
    values = _typed(values if values is not None else {}, dict, where, "a mapping")
    for key in values:
        if key not in EXECUTOR_KEYS:
            raise _unknown(key, EXECUTOR_KEYS, where)
    spec = ExecutorSpec()
    if "name" in values:
        spec.name = _typed(values["name"], str, f"{where}.name", f"one of {', '.join(EXECUTORS)}")
        if spec.name not in EXECUTORS:
            raise UsageError(f"{where}.name: unknown executor {spec.name!r}; use one of {', '.join(EXECUTORS)}")
    if values.get("workers") is not None:
        spec.workers = _typed(values["workers"], int, f"{where}.workers", "a number of workers")
    if values.get("gpus") is not None:
        gpus = _nonempty_list(values["gpus"], f"{where}.gpus", "gpus: [0, 1]")
        spec.gpus = [str(_typed(g, (int, str), f"{where}.gpus", "GPU ids")) for g in gpus]
    slurm = dict(_typed(values.get("slurm") or {}, dict, f"{where}.slurm", "a mapping of submitit parameters"))
    spec.cluster = slurm.pop("cluster", None)
    spec.folder = slurm.pop("folder", None)
    spec.max_parallel = slurm.pop("max_parallel", None)
    if spec.max_parallel is not None:
        _typed(spec.max_parallel, int, f"{where}.slurm.max_parallel", "a number of jobs")
    spec.slurm = {"timeout_min": 240, **slurm}
    return spec


def load_grid(path: str | Path) -> Grid:
    """Read and validate a grid file; UsageError naming the file, the key and the reason."""
    path = Path(path)
    values = load_yaml(path)
    where = str(path)
    for key in values:
        if key not in GRID_KEYS:
            raise _unknown(key, GRID_KEYS, where)
    for key in ("attacks", "defenses", "seeds"):
        if key not in values:
            raise UsageError(f"{where}: missing key {key!r}")
    if "poison_rates" not in values and "poison_counts" not in values:
        raise UsageError(f"{where}: missing key 'poison_rates' (or 'poison_counts'); e.g. poison_rates: [0.01]")
    plugins = [str(_typed(p, str, f"{where}: plugins", "a list of .py files"))
               for p in _typed(values.get("plugins") or [], list, f"{where}: plugins", "a list of .py files")]
    for plugin in plugins:
        load_plugin_file(plugin)
    base = _typed(values.get("base") or {}, dict, f"{where}: base", "a mapping of run settings")
    for key in base:
        if key in SET_BY_AXES:
            raise UsageError(f"{where}: base.{key}: set by {SET_BY_AXES[key]}, not in base")
    from_dict(RunConfig, base, f"{where}: base")
    budgets: list[tuple[float | None, int | None]] = []
    if "poison_rates" in values:
        rates = _nonempty_list(values["poison_rates"], f"{where}: poison_rates", "poison_rates: [0.01, 0.02]")
        budgets += [(float(_typed(r, (int, float), f"{where}: poison_rates", "numbers in (0, 1]")), None) for r in rates]
    if "poison_counts" in values:
        counts = _nonempty_list(values["poison_counts"], f"{where}: poison_counts", "poison_counts: [25, 50]")
        budgets += [(None, _typed(n, int, f"{where}: poison_counts", "whole numbers")) for n in counts]
    seeds = [_typed(s, int, f"{where}: seeds", "whole numbers")
             for s in _nonempty_list(values["seeds"], f"{where}: seeds", "seeds: [0, 1, 2]")]
    name = _typed(values.get("name", path.stem), str, f"{where}: name", "a string")
    results_dir = _typed(values.get("results_dir", "results"), str, f"{where}: results_dir", "a folder")
    return Grid(path, name, results_dir, base, _variants(values["attacks"], "attacks", ATTACKS, where),
                _variants(values["defenses"], "defenses", DEFENSES, where), budgets, seeds, plugins,
                _executor_spec(values.get("executor"), f"{where}: executor"))


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


def expand(grid: Grid, results_dir: str | None = None, use_cache: bool = True) -> list[Cell]:
    """Every distinct cell of `grid`, validated; cells sharing a poisoned model are adjacent, in grid order."""
    cells: dict[str, Cell] = {}
    for seed, (rate, count), attack, defense in itertools.product(grid.seeds, grid.budgets, grid.attacks, grid.defenses):
        values = merge(grid.base, {
            "attack": attack.name, "attack_options": attack.options, "defense": defense.name,
            "defense_options": defense.options, "poison_rate": rate, "poison_count": count, "seed": seed,
            "results_dir": results_dir or grid.results_dir,
        })
        if not use_cache:
            values["use_cache"] = False
        budget = f"n{count}" if count is not None else f"p{rate:g}"
        where = f"{grid.path}: cell {attack.label} x {defense.label} {budget} seed {seed}"
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


def done_card(path: Path, cell_key: str) -> dict | None:
    """The run card at `path` if it is finished (status ok) for this very cell, else None."""
    try:
        card = json.loads(read_regular_file(path, MAX_CARD_BYTES, root=path.parent))
    except (OSError, ValueError, RefusedFile, RecursionError):
        return None
    if isinstance(card, dict) and card.get("status") == "ok" and card.get("cell_key") == cell_key:
        return card
    return None


def _cache(cell: Cell) -> ArtifactCache:
    return ArtifactCache(cell.config.cache_dir)


def count_work(cells: Sequence[Cell]) -> dict[str, int]:
    """How many cells, distinct poisoned and defended models the sweep needs, and how many exist."""
    poisoned = {c.poisoned_key: c for c in cells}
    defended = {c.defended_key: c for c in cells if c.defended_key}
    return {
        "cells": len(cells),
        "cells_done": sum(done_card(c.card_path, c.cell_key) is not None for c in cells),
        "poisoned_models": len(poisoned),
        "poisoned_models_cached": sum(_cache(c).has(POISONED_MODELS, k) for k, c in poisoned.items()),
        "defended_models": len(defended),
        "defended_models_cached": sum(_cache(c).has(DEFENDED_MODELS, k) for k, c in defended.items()),
    }


def dry_run_table(cells: Sequence[Cell]) -> str:
    """The cells, their keys and what running each would do."""
    rows = []
    trained_by: dict[str, int] = {}
    for cell in cells:
        cache = _cache(cell)
        if done_card(cell.card_path, cell.cell_key):
            work = "done (card exists)"
        elif not cell.config.use_cache:
            work = "train poisoned model, defend (no cache)"
        elif not cache.has(POISONED_MODELS, cell.poisoned_key) and cell.poisoned_key in trained_by:
            work = f"defend (poisoned model from #{trained_by[cell.poisoned_key]})"
        elif not cache.has(POISONED_MODELS, cell.poisoned_key):
            trained_by[cell.poisoned_key] = cell.index
            work = "train poisoned model, defend"
        elif cell.defended_key and not cache.has(DEFENDED_MODELS, cell.defended_key):
            work = "defend (poisoned model cached)"
        else:
            work = "evaluate (models cached)"
        rows.append({"#": cell.index, "attack": cell.attack, "defense": cell.defense, "budget": cell.budget,
                     "seed": cell.seed, "cell": cell.cell_key[:8], "poisoned model": cell.poisoned_key[:8], "work": work})
    return pd.DataFrame(rows).to_string(index=False)


@dataclass
class Job:
    """What an executor runs for one cell (picklable: plain values only)."""

    index: int
    config: dict[str, Any]
    plugins: list[str]
    cwd: str
    progress: bool = False
    command: str | None = None


_LOADED_PLUGINS: set[str] = set()


def run_job(job: Job) -> dict[str, Any]:
    """Run one cell unless its run card says it is done; never raises (an error becomes a failed result).

    A lock file per cell (under results_dir/.locks) makes two sweeps that share a results folder run
    each cell once: the second waits, then finds the card and skips it.
    """
    start = time.perf_counter()
    result: dict[str, Any] = {"index": job.index, "status": "failed", "reused": [], "seconds": 0.0}
    try:
        if os.getcwd() != job.cwd:
            os.chdir(job.cwd)
        for plugin in job.plugins:
            if plugin not in _LOADED_PLUGINS:
                load_plugin_file(plugin)
                _LOADED_PLUGINS.add(plugin)
        config = from_dict(RunConfig, job.config)
        plan = Plan(config)
        path, key = plan.card_path(), plan.cell_key()
        lock_path = Path(config.results_dir) / ".locks" / f"{key}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(lock_path):
            card = done_card(path, key)
            if card is None:
                card, path = run_cell(config, progress=job.progress, log=lambda message: None, command=job.command)
                result["status"] = "ok"
            else:
                result["status"] = "skipped"
        result.update(_card_result(card), path=str(path))
    except Exception as error:  # the sweep goes on; run_cell has written the failed card
        result["error"] = str(error) or type(error).__name__
    result["seconds"] = time.perf_counter() - start
    return result


def _card_result(card: dict) -> dict[str, Any]:
    metrics = card.get("metrics", {})
    values = {f"{name}_{stage}": metrics.get(stage, {}).get(metric, {}).get("value")
              for name, metric in (("ca", "ca_top1"), ("asr", "asr")) for stage in ("poisoned", "defended")}
    return {"reused": card.get("reused", []), **values}


def make_executor(spec: ExecutorSpec, results_dir: str) -> Executor:
    """The executor `spec` names."""
    if spec.name == "local":
        return LocalExecutor(spec.workers, spec.gpus)
    if spec.name == "slurm":
        folder = spec.folder or str(Path(results_dir) / ".submitit")
        return SlurmExecutor(folder, spec.slurm, spec.cluster, spec.max_parallel)
    return SequentialExecutor()


class Reporter:
    """Progress output: a bar for cells and a line per cell (default), lines only (`quiet`), or one
    JSON object per event on stdout (`json`)."""

    def __init__(self, mode: str, total: int) -> None:
        self.mode = mode
        self.total = total
        self.bar = tqdm(total=total, desc="cells", unit="cell", disable=mode != "bars", dynamic_ncols=True)

    def event(self, kind: str, **values: Any) -> None:
        if self.mode == "json":
            click.echo(json.dumps({"event": kind, "time": round(time.time(), 3), **values}, default=str))

    def line(self, text: str) -> None:
        if self.mode == "bars":
            self.bar.write(text, file=sys.stdout)
        elif self.mode == "quiet":
            click.echo(text)

    def cell_done(self, cell: Cell, result: dict[str, Any]) -> None:
        self.bar.update()
        self.event("cell", cell=cell.index, attack=cell.attack, defense=cell.defense, budget=cell.budget,
                   seed=cell.seed, cell_key=cell.cell_key, **{k: v for k, v in result.items() if k != "index"})
        self.line(f"[{cell.index}/{self.total}] {cell.label()}: {_describe(result)}")

    def close(self) -> None:
        self.bar.close()


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _describe(result: dict[str, Any]) -> str:
    if result["status"] == "failed":
        return f"FAILED after {result['seconds']:.1f} s: {result.get('error')}"
    text = (f"{result['status']} in {result['seconds']:.1f} s  CA {_percent(result.get('ca_poisoned'))} -> "
            f"{_percent(result.get('ca_defended'))}  ASR {_percent(result.get('asr_poisoned'))} -> "
            f"{_percent(result.get('asr_defended'))}")
    reused = [name for name in result.get("reused", []) if name.endswith("_model")]
    return text + (f"  (reused {', '.join(reused)})" if reused and result["status"] == "ok" else "")


def summary_table(cells: Sequence[Cell], results: dict[int, dict[str, Any]]) -> str:
    """One row per cell: status, CA and ASR before -> after the defense, seconds, reused models."""
    rows = []
    for cell in cells:
        result = results.get(cell.index, {"status": "not run", "seconds": 0.0})
        rows.append({
            "#": cell.index, "attack": cell.attack, "defense": cell.defense, "budget": cell.budget, "seed": cell.seed,
            "status": result["status"],
            "CA %": f"{_percent(result.get('ca_poisoned'))} -> {_percent(result.get('ca_defended'))}",
            "ASR %": f"{_percent(result.get('asr_poisoned'))} -> {_percent(result.get('asr_defended'))}",
            "seconds": round(result["seconds"], 1),
            "reused": ", ".join(r.removesuffix("_model") for r in result.get("reused", []) if r.endswith("_model")) or "-",
        })
    return pd.DataFrame(rows).to_string(index=False)


def schedule(cells: Sequence[Cell], jobs: dict[int, Job], executor: Executor,
             on_done: Callable[[Cell, dict[str, Any]], None], run: Callable[[Job], dict] = run_job) -> dict[int, dict]:
    """Run the cells' jobs on `executor`; returns each cell's result by index.

    The first cell of a poisoned model that is not cached yet runs before the others of its group
    (they load the model it stores), so parallel executors never train one poisoned model twice.
    """
    results: dict[int, dict] = {}
    ready: list[Cell] = []
    waiting: dict[int, list[Cell]] = {}
    leaders: dict[str, Cell] = {}
    for cell in cells:
        card = done_card(cell.card_path, cell.cell_key)
        if card is not None:
            results[cell.index] = {"index": cell.index, "status": "skipped", "seconds": 0.0, **_card_result(card)}
            on_done(cell, results[cell.index])
        elif _cache(cell).has(POISONED_MODELS, cell.poisoned_key) or not cell.config.use_cache:
            ready.append(cell)
        elif cell.poisoned_key not in leaders:
            leaders[cell.poisoned_key] = cell
            ready.append(cell)
        else:
            waiting.setdefault(leaders[cell.poisoned_key].index, []).append(cell)
    running: dict[Any, Cell] = {}
    while ready or running:
        while ready and len(running) < executor.slots:
            cell = ready.pop(0)
            try:
                running[executor.submit(run, jobs[cell.index])] = cell
            except Exception as error:  # e.g. a broken process pool
                results[cell.index] = {"index": cell.index, "status": "failed", "seconds": 0.0,
                                       "error": f"could not start: {type(error).__name__}: {error}"}
                on_done(cell, results[cell.index])
                ready = waiting.pop(cell.index, []) + ready
        if not running:
            continue
        for handle in executor.wait(list(running)):
            cell = running.pop(handle)
            try:
                result = handle.result()
            except Exception as error:  # the job's process died (SIGKILL, out of memory, node failure)
                result = {"index": cell.index, "status": "failed", "seconds": 0.0,
                          "error": f"job died: {type(error).__name__}: {error}"}
            results[cell.index] = result
            on_done(cell, result)
            ready = waiting.pop(cell.index, []) + ready
    return results


@click.command("sweep")
@click.argument("grid_file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the cells and what is cached; run nothing.")
@click.option("--executor", "executor_name", type=click.Choice(EXECUTORS), default=None,
              help="Where cells run [default: the grid's executor.name, else sequential].")
@click.option("--workers", type=int, default=None, help="Local pool size [default: one per GPU, else one per CPU core].")
@click.option("--results-dir", default=None, help="Override the grid's results_dir.")
@click.option("--no-cache", is_flag=True, help="Neither reuse nor store models and evaluations (cards are still skipped when done).")
@click.option("--quiet", is_flag=True, help="No progress bars: one line per cell and the summary.")
@click.option("--json-log", is_flag=True, help="One JSON object per event on stdout (for clusters); no bars, no table.")
def sweep_command(grid_file: str, dry_run: bool, executor_name: str | None, workers: int | None,
                  results_dir: str | None, no_cache: bool, quiet: bool, json_log: bool) -> None:
    """Run a grid of attacks x defenses x poison budgets x seeds (schema: docs/sweeps.md)."""
    start = time.perf_counter()
    grid = load_grid(grid_file)
    spec = grid.executor
    spec.name = executor_name or spec.name
    spec.workers = workers if workers is not None else spec.workers
    if spec.name == "slurm":
        check_slurm_parameters(spec.slurm, spec.cluster, f"{grid.path}: executor.slurm")
    cells = expand(grid, results_dir, use_cache=not no_cache)
    counts = count_work(cells)
    mode = "json" if json_log else "quiet" if quiet else "bars"
    if dry_run:
        if mode == "json":
            click.echo(json.dumps({"event": "dry-run", **counts, "cells_list": [
                {"cell": c.index, "attack": c.attack, "defense": c.defense, "budget": c.budget, "seed": c.seed,
                 "cell_key": c.cell_key, "poisoned_key": c.poisoned_key} for c in cells]}))
            return
        click.echo(dry_run_table(cells))
        click.echo(_counts_text(counts))
        return
    executor = make_executor(spec, results_dir or grid.results_dir)
    reporter = Reporter(mode, len(cells))
    reporter.event("start", grid=str(grid.path), executor=spec.name, **counts)
    if mode != "json":
        click.echo(f"sweep {grid.name!r}: {_counts_text(counts)}; executor: {executor.description or spec.name}")
    command = "cleanbench " + shlex.join(sys.argv[1:])
    jobs = {c.index: Job(c.index, c.config.to_dict(), grid.plugins, os.getcwd(),
                         progress=mode == "bars" and spec.name == "sequential", command=command) for c in cells}
    try:
        results = schedule(cells, jobs, executor, reporter.cell_done)
    finally:
        reporter.close()
        executor.close()
    tally = {status: sum(r["status"] == status for r in results.values()) for status in ("ok", "skipped", "failed")}
    seconds = time.perf_counter() - start
    reporter.event("end", seconds=round(seconds, 3), **tally)
    if mode != "json":
        click.echo(summary_table(cells, results))
        click.echo(f"{len(cells)} cells: {tally['ok']} ran, {tally['skipped']} skipped (already done), "
                   f"{tally['failed']} failed; {seconds:.1f} s; run cards in {Path(results_dir or grid.results_dir) / 'runs'}")
    if tally["failed"]:
        raise RunError(f"{tally['failed']} of {len(cells)} cells failed; their run cards say why, "
                       "and running the sweep again retries them")


def _counts_text(counts: dict[str, int]) -> str:
    return (f"{counts['cells']} cells ({counts['cells_done']} done); "
            f"{counts['poisoned_models']} poisoned models ({counts['poisoned_models_cached']} cached), "
            f"{counts['defended_models']} defended models ({counts['defended_models_cached']} cached)")
