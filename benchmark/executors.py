"""Where sweep jobs run: in this process, in a local process pool, or on Slurm through submitit.

An executor submits a job (a picklable function and its argument) and returns a handle with
`done()` and `result()`; `wait` returns the handles that have finished. Jobs are idempotent (a job
skips a cell whose run card exists), so a job that runs twice, or a sweep started twice, does the
work once. This module imports no torch at the top, so a pool worker can pin its GPU through
CUDA_VISIBLE_DEVICES before torch starts.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cleanbench.errors import UsageError

EXECUTORS = ("sequential", "local", "slurm")


class Executor(ABC):
    """Runs jobs; at most `slots` at once."""

    slots: int = 1
    description: str = ""

    @abstractmethod
    def submit(self, fn: Callable[[Any], dict], job: Any) -> Any:
        """Start `fn(job)`; returns a handle with `done()` and `result()`."""

    @abstractmethod
    def wait(self, handles: Sequence[Any]) -> list[Any]:
        """Block until at least one of `handles` has finished; returns the finished ones."""

    def close(self) -> None:
        """Release workers."""

    def cancel(self) -> None:
        """Stop the running jobs now (their partial work is lost) and drop the queued ones."""


class _Finished:
    """The handle of a job that already ran."""

    def __init__(self, value: dict) -> None:
        self.value = value

    def done(self) -> bool:
        return True

    def result(self) -> dict:
        return self.value


class SequentialExecutor(Executor):
    """One job after another in this process (progress bars of training are shown)."""

    description = "sequential (this process)"

    def submit(self, fn: Callable[[Any], dict], job: Any) -> _Finished:
        return _Finished(fn(job))

    def wait(self, handles: Sequence[Any]) -> list[Any]:
        return list(handles)


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries ([] without CUDA)."""
    import torch

    count = torch.cuda.device_count()
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def _claim_slot(slots: Any, threads: int) -> None:
    """Pool-worker initialiser: take one GPU (or a CPU slot) for the life of the worker."""
    gpu = slots.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


class LocalExecutor(Executor):
    """A pool of worker processes on this machine: one per GPU, each seeing only its GPU through
    CUDA_VISIBLE_DEVICES; without GPUs, `workers` CPU slots sharing the cores evenly."""

    def __init__(self, workers: int | None = None, gpus: Sequence[str] | None = None) -> None:
        gpus = list(visible_gpus() if gpus is None else gpus)
        cpus = os.cpu_count() or 1
        if workers is not None and workers < 1:
            raise UsageError(f"workers must be >= 1, not {workers}")
        if gpus:
            self.slots = min(workers or len(gpus), len(gpus))
            slot_ids: list[str | None] = list(gpus[: self.slots])
            threads = max(1, cpus // self.slots)
            self.description = f"local pool: {self.slots} worker(s), one GPU each ({', '.join(gpus[: self.slots])})"
        else:
            self.slots = workers or cpus
            slot_ids = [None] * self.slots
            threads = max(1, cpus // self.slots)
            self.description = f"local pool: {self.slots} CPU worker(s) (torch threads: each cell's `threads` setting)"
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        for slot in slot_ids:
            queue.put(slot)
        self._pool = concurrent.futures.ProcessPoolExecutor(
            self.slots, mp_context=context, initializer=_claim_slot, initargs=(queue, threads)
        )

    def submit(self, fn: Callable[[Any], dict], job: Any) -> concurrent.futures.Future:
        return self._pool.submit(fn, job)

    def wait(self, handles: Sequence[Any]) -> list[Any]:
        done, _ = concurrent.futures.wait(handles, return_when=concurrent.futures.FIRST_COMPLETED)
        return list(done)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def cancel(self) -> None:
        """Terminate the worker processes (SIGTERM, then SIGKILL after 5 s) and drop the queued jobs."""
        workers = list((getattr(self._pool, "_processes", None) or {}).values())  # the stdlib pool's processes
        for worker in workers:
            worker.terminate()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=5)


class SlurmExecutor(Executor):
    """One Slurm job per cell through submitit (`pip install cleanbench[slurm]`).

    `parameters` go to `submitit.AutoExecutor.update_parameters` (e.g. `slurm_partition`,
    `timeout_min`, `gpus_per_node`, `cpus_per_task`, `mem_gb`); `cluster` is submitit's: None picks
    Slurm when it is installed, `local` runs jobs as local processes and `debug` in this process.
    """

    def __init__(self, folder: str | Path, parameters: dict[str, Any], cluster: str | None = None,
                 max_parallel: int | None = None, poll_seconds: float = 1.0) -> None:
        try:
            import submitit
        except ImportError as error:
            raise UsageError("the slurm executor needs submitit: pip install 'cleanbench[slurm]'") from error
        self._executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        self._executor.update_parameters(**parameters)
        self.cluster = self._executor.cluster
        self.slots = max_parallel or 1_000_000
        self.poll_seconds = poll_seconds
        self._submitted: list[Any] = []
        self.description = f"submitit ({self.cluster}), logs in {folder}"

    def submit(self, fn: Callable[[Any], dict], job: Any) -> Any:
        handle = self._executor.submit(fn, job)
        self._submitted.append(handle)
        return handle

    def cancel(self) -> None:
        """Cancel the submitted jobs that have not finished (scancel, or a signal to a local job)."""
        for handle in self._submitted:
            if not handle.done():
                handle.cancel(check=False)

    def wait(self, handles: Sequence[Any]) -> list[Any]:
        if self.cluster == "debug":  # debug jobs run in this process when their result is asked for
            return [handles[0]]
        while True:
            done = [handle for handle in handles if handle.done()]
            if done:
                return done
            time.sleep(self.poll_seconds)


def check_slurm_parameters(parameters: dict[str, Any], cluster: str | None, where: str) -> None:
    """UsageError naming `where` unless submitit accepts `parameters` (checked before any job starts)."""
    try:
        import submitit
    except ImportError as error:
        raise UsageError(f"{where}: the slurm executor needs submitit: pip install 'cleanbench[slurm]'") from error
    if cluster not in (None, "slurm", "local", "debug"):
        raise UsageError(f"{where}.cluster: expected slurm, local or debug (or leave it out), not {cluster!r}")
    with tempfile.TemporaryDirectory() as folder:
        probe = submitit.AutoExecutor(folder=folder, cluster="local")
        try:
            probe.update_parameters(**parameters)
        except (NameError, TypeError, ValueError) as error:
            first = str(error).splitlines()[0]
            raise UsageError(f"{where}: {first}") from error
