"""Running a sweep's cells: the worker that runs one cell, and the scheduler that feeds an executor."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from cleanbench.cache import POISONED_MODELS
from cleanbench.config import RunConfig, from_dict
from cleanbench.errors import Interrupted, RunError
from cleanbench.executors import Executor, LocalExecutor, SequentialExecutor, SlurmExecutor
from cleanbench.registry import load_plugin_file
from cleanbench.runcard import RunCard
from cleanbench.plan import Plan
from cleanbench.runner import run_cell
from cleanbench.sweep.cells import Cell, cell_cache, done_card
from cleanbench.sweep.grid import ExecutorSpec


@dataclass
class Job:
    """What an executor runs for one cell (picklable: plain values only)."""

    index: int
    config: dict[str, Any]
    plugins: list[str]
    cwd: str
    progress: bool = False
    command: str | None = None


def run_job(job: Job) -> dict[str, Any]:
    """Run one cell unless its run card says it is done; never raises (an error becomes a failed result).

    Relative paths in the job mean what they meant where the sweep started: every executor starts
    jobs in that folder (a job that finds itself elsewhere fails, naming both). Plugin files load
    once per process. A lock file per cell (under results_dir/.locks) makes two sweeps that share a
    results folder run each cell once: the second waits, then finds the card and skips it.
    """
    start = time.perf_counter()
    result: dict[str, Any] = {"index": job.index, "status": "failed", "reused": [], "seconds": 0.0}
    try:
        if os.path.realpath(os.getcwd()) != os.path.realpath(job.cwd):
            raise RunError(f"the job runs in {os.getcwd()!r} but the sweep started in {job.cwd!r}; "
                           "start the executor's jobs in the sweep's folder")
        for plugin in job.plugins:
            load_plugin_file(plugin)
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
        result.update(card_result(card), path=str(path))
    except Exception as error:  # the sweep goes on; run_cell has written the failed card
        result["error"] = str(error) or type(error).__name__
    result["seconds"] = time.perf_counter() - start
    return result


def card_result(card: RunCard) -> dict[str, Any]:
    """The numbers of a run card that the sweep reports: reused artifacts, CA and ASR before and after."""
    values = {f"{name}_{stage}": card.metric(stage, metric)
              for name, metric in (("ca", "ca_top1"), ("asr", "asr")) for stage in ("poisoned", "defended")}
    return {"reused": card.reused or [], **values}


def make_executor(spec: ExecutorSpec, results_dir: str) -> Executor:
    """The executor `spec` names."""
    if spec.name == "local":
        return LocalExecutor(spec.workers, spec.gpus)
    if spec.name == "slurm":
        folder = spec.folder or str(Path(results_dir) / ".submitit")
        return SlurmExecutor(folder, spec.slurm, spec.cluster, spec.max_parallel)
    return SequentialExecutor()


def schedule(cells: Sequence[Cell], jobs: dict[int, Job], executor: Executor,
             on_done: Callable[[Cell, dict[str, Any]], None], run: Callable[[Job], dict] = run_job) -> dict[int, dict]:
    """Run the cells' jobs on `executor`; returns each cell's result by index.

    The first cell of a poisoned model that is not cached yet runs before the others of its group
    (they load the model it stores), so parallel executors never train one poisoned model twice.
    """
    results: dict[int, dict] = {}
    ready: deque[Cell] = deque()
    waiting: dict[int, list[Cell]] = {}
    leaders: dict[str, Cell] = {}
    for cell in cells:
        card = done_card(cell.card_path, cell.cell_key)
        if card is not None:
            results[cell.index] = {"index": cell.index, "status": "skipped", "seconds": 0.0, **card_result(card)}
            on_done(cell, results[cell.index])
        elif cell_cache(cell).has(POISONED_MODELS, cell.poisoned_key) or not cell.config.use_cache:
            ready.append(cell)
        elif cell.poisoned_key not in leaders:
            leaders[cell.poisoned_key] = cell
            ready.append(cell)
        else:
            waiting.setdefault(leaders[cell.poisoned_key].index, []).append(cell)
    running: dict[Any, Cell] = {}
    try:
        _feed(ready, waiting, running, results, jobs, executor, on_done, run)
    except Interrupted as interrupt:  # the caller cancels the running cells; it says which they were
        interrupt.cancelled = sorted({*interrupt.cancelled, *(cell.index for cell in running.values())})
        interrupt.finished = sum(r["status"] in ("ok", "skipped") for r in results.values())
        raise
    return results


def _feed(ready: deque[Cell], waiting: dict[int, list[Cell]], running: dict[Any, Cell], results: dict[int, dict],
          jobs: dict[int, Job], executor: Executor, on_done: Callable[[Cell, dict[str, Any]], None],
          run: Callable[[Job], dict]) -> None:
    """Keep the executor's slots busy with ready cells until every cell has a result."""
    while ready or running:
        while ready and len(running) < executor.slots:
            cell = ready.popleft()
            try:
                running[executor.submit(run, jobs[cell.index])] = cell
            except Interrupted as interrupt:  # the sequential executor runs the cell inside `submit`
                interrupt.cancelled.append(cell.index)
                raise
            except Exception as error:  # e.g. a broken process pool
                results[cell.index] = {"index": cell.index, "status": "failed", "seconds": 0.0,
                                       "error": f"could not start: {type(error).__name__}: {error}"}
                on_done(cell, results[cell.index])
                ready.extendleft(reversed(waiting.pop(cell.index, [])))
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
            ready.extendleft(reversed(waiting.pop(cell.index, [])))  # the group's other cells go next
