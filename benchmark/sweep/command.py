"""The `cleanbench sweep` command: read the grid, expand it, run the cells, report."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

import click

from cleanbench.errors import Interrupted, RunError
from cleanbench.sweep.grid import MAX_CELLS
from cleanbench.executors import EXECUTORS, check_slurm_parameters
from cleanbench.interrupts import signals_raise


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
@click.option("--max-cells", type=click.IntRange(min=1), default=MAX_CELLS,
              help="Refuse grids with more cells than this (each is validated and keyed before any work).")
def sweep_command(grid_file: str, dry_run: bool, executor_name: str | None, workers: int | None,
                  results_dir: str | None, no_cache: bool, quiet: bool, json_log: bool, max_cells: int) -> None:
    """Run a grid of attacks x defenses x poison budgets x seeds (schema: docs/sweeps.md)."""
    from cleanbench.sweep.grid import load_grid

    start = time.perf_counter()
    grid = load_grid(grid_file)  # a malformed grid or an unknown name is refused before torch is imported
    from cleanbench.sweep.cells import count_work, dry_run_table, expand
    from cleanbench.sweep.report import Reporter, counts_text, dry_run_event, summary_table
    from cleanbench.sweep.schedule import Job, make_executor, schedule

    spec = grid.executor
    spec.name = executor_name or spec.name
    spec.workers = workers if workers is not None else spec.workers
    if spec.name == "slurm":
        check_slurm_parameters(spec.slurm, spec.cluster, f"{grid.path}: executor.slurm")
    cells = expand(grid, results_dir, use_cache=not no_cache, max_cells=max_cells)
    counts = count_work(cells)
    mode = "json" if json_log else "quiet" if quiet else "bars"
    if dry_run:
        click.echo(dry_run_event(cells, counts) if mode == "json" else f"{dry_run_table(cells)}\n{counts_text(counts)}")
        return
    executor = make_executor(spec, results_dir or grid.results_dir)
    reporter = Reporter(mode, len(cells))
    reporter.event("start", grid=str(grid.path), executor=spec.name, **counts)
    if mode != "json":
        click.echo(f"sweep {grid.name!r}: {counts_text(counts)}; executor: {executor.description or spec.name}")
    command = "cleanbench " + shlex.join(sys.argv[1:])
    jobs = {c.index: Job(c.index, c.config.to_dict(), grid.plugins, os.getcwd(),
                         progress=mode == "bars" and spec.name == "sequential", command=command) for c in cells}
    try:
        with signals_raise():  # SIGINT or SIGTERM: cancel the running cells at once, keep the finished cards
            results = schedule(cells, jobs, executor, reporter.cell_done)
    except Interrupted as interrupt:
        executor.cancel()
        reporter.event("interrupted", signal=interrupt.name, finished=interrupt.finished, cancelled=interrupt.cancelled)
        raise
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
