"""File-backed columns, and the batches that DataLoader worker processes read from them.

A `LazyColumn` stands where a tensor of N items would stand in a `PairSet` or `ClassificationSet`:
it has a length, `.to(device)`, and indexing (which reads the items at once, for small subsets).
Its items are read one at a time by `load` in worker processes; after a batch is collated into
pinned memory and moved to the column's device, `finish` runs there (poisoned rows get their
trigger at that point, on the GPU when training runs on one). The shared trainer's
`InMemoryBatches` hands any batch with such a column to `FileBatches`, so stages that build their
batches from tensors (pretraining, every finetuning defense) read files without changing.

An item that cannot be read comes back as a `Failure`; the column decides what happens: a
`RunError` that names the file (the default), or a skip that its `ReadLog` counts for the run card.
"""

from __future__ import annotations

import copy
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from cleanbench.errors import RunError

if TYPE_CHECKING:
    from typing import Self

BAD_IMAGE_POLICIES = ("error", "skip")
MAX_SKIP_EXAMPLES = 5


@dataclass(frozen=True)
class Failure:
    """An item that could not be read: its row, where it is (file and row), and why."""

    row: int
    where: str
    reason: str


class ReadLog(dict):
    """What reading one split met, kept as a plain dict so that it goes into the run card as it is:
    `rows`, `images_read`, `skipped` (unreadable rows met while reading, each counted once),
    `skipped_when_indexed` (rows without an image path, dropped when the CSV was indexed) and a few
    `skipped_examples`."""

    def __init__(self, source: str, policy: str) -> None:
        super().__init__(source=source, on_bad_image=policy, rows=0, images_read=0, skipped=0,
                         skipped_when_indexed=0, skipped_examples=[])
        self._rows: set[int] = set()

    def skip(self, failure: Failure) -> None:
        """Count an unreadable row once, however often it is met."""
        if failure.row in self._rows:
            return
        self._rows.add(failure.row)
        self["skipped"] += 1
        if len(self["skipped_examples"]) < MAX_SKIP_EXAMPLES:
            self["skipped_examples"].append(f"{failure.where}: {failure.reason}")

    def skip_when_indexed(self, where: str, reason: str) -> None:
        """Count a row dropped while indexing (never read)."""
        self["skipped_when_indexed"] += 1
        if len(self["skipped_examples"]) < MAX_SKIP_EXAMPLES:
            self["skipped_examples"].append(f"{where}: {reason}")


class LazyColumn(ABC):
    """N items read on demand: `load` (in a worker), then `finish` on `device` (in the main process)."""

    device: torch.device = torch.device("cpu")
    workers: int = 0

    @abstractmethod
    def __len__(self) -> int:
        """The number of items."""

    @abstractmethod
    def load(self, row: int) -> torch.Tensor | Failure:
        """Item `row` as a CPU tensor, or a `Failure`; runs in DataLoader worker processes."""

    def finish(self, batch: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The collated items of `rows`, already on `device`, made final (identity by default)."""
        return batch

    def failed(self, failure: Failure) -> None:
        """An unreadable item: raise (the default) or record a skip."""
        raise RunError(f"{failure.where}: {failure.reason}")

    def to(self, device: torch.device | str) -> Self:
        """This column, delivering its batches on `device`."""
        moved = copy.copy(self)
        moved.device = torch.device(device)
        return moved

    def __getitem__(self, index: int | slice | Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Items read at once in this process (for small subsets); a boolean mask selects rows."""
        single = isinstance(index, int)
        rows = _rows(index, len(self))
        items = []
        for row in rows:
            item = self.load(row)
            if isinstance(item, Failure):
                raise RunError(f"{item.where}: {item.reason}")
            items.append(item)
        if not items:
            return torch.empty(0)
        rows_tensor = torch.tensor(rows, dtype=torch.long)
        batch = self.finish(torch.stack(items).to(self.device), rows_tensor)
        return batch[0] if single else batch


def _rows(index: int | slice | Sequence[int] | torch.Tensor, count: int) -> list[int]:
    """Row numbers from an int, slice, sequence, index tensor or boolean mask."""
    if isinstance(index, int):
        if not -count <= index < count:
            raise IndexError(f"row {index} is outside 0..{count - 1}")
        return [index % count]
    if isinstance(index, slice):
        return list(range(count))[index]
    tensor = torch.as_tensor(index)
    if tensor.dtype == torch.bool:
        return torch.nonzero(tensor.cpu()).flatten().tolist()
    return [int(i) % count for i in tensor.cpu().flatten().tolist()]


class _Rows(Dataset):
    """Row `i` of every lazy column, as (i, {name: item})."""

    def __init__(self, columns: Mapping[str, LazyColumn]) -> None:
        self.columns = dict(columns)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, row: int) -> tuple[int, dict[str, Any]]:
        return row, {name: column.load(row) for name, column in self.columns.items()}


def _collate(items: list[tuple[int, dict[str, Any]]]) -> tuple[torch.Tensor, dict[str, torch.Tensor], list]:
    """Stack the readable rows; the failures travel beside them, with their column's name."""
    failures = [(name, value) for _, values in items for name, value in values.items() if isinstance(value, Failure)]
    bad = {failure.row for _, failure in failures}
    kept = [(row, values) for row, values in items if row not in bad]
    rows = torch.tensor([row for row, _ in kept], dtype=torch.long)
    stacked = {name: torch.stack([values[name] for _, values in kept]) for name in items[0][1]} if kept else {}
    return rows, stacked, failures


def default_workers() -> int:
    """Worker processes for reading files: the CPUs this process may use, at most 8, minus one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus) - 1)


class FileBatches:
    """Batches of named columns, some of them `LazyColumn`s, some tensors (indexed where they are).

    The same interface as the trainer's `InMemoryBatches` (`epoch(generator)`, `len`, `batch_size`)
    and the same batches: `epoch` draws the same permutation and drops the last partial batch. Lazy
    columns are read by DataLoader worker processes (`workers` of the columns, at most) into pinned
    memory when a column lives on a GPU. Unreadable rows are dropped from the batch when their
    column skips them, so a batch may be smaller than `batch_size`.
    """

    def __init__(self, columns: Mapping[str, LazyColumn | torch.Tensor], batch_size: int) -> None:
        lengths = {len(c) for c in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"columns differ in length: {lengths}")
        self.count = lengths.pop()
        self.batch_size = max(1, min(batch_size, self.count))
        self.lazy = {k: c for k, c in columns.items() if isinstance(c, LazyColumn)}
        if not self.lazy:
            raise ValueError("FileBatches needs at least one LazyColumn")
        self.tensors = {k: c for k, c in columns.items() if not isinstance(c, LazyColumn)}
        self.workers = max(c.workers for c in self.lazy.values())
        self.pin = any(c.device.type == "cuda" for c in self.lazy.values())

    def __len__(self) -> int:
        return self.count // self.batch_size

    def epoch(self, generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        """One pass in a random order drawn from `generator`, without the last partial batch."""
        order = torch.randperm(self.count, generator=generator)
        yield from self.read([order[i * self.batch_size : (i + 1) * self.batch_size].tolist() for i in range(len(self))])

    def in_order(self) -> Iterator[dict[str, torch.Tensor]]:
        """One pass over every row in order, the last batch partial (for evaluation)."""
        size = self.batch_size
        yield from self.read([list(range(i, min(i + size, self.count))) for i in range(0, self.count, size)])

    def read(self, chunks: list[list[int]]) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of the given rows; each has the columns and `index` (the rows kept)."""
        if not chunks:
            return
        workers = min(self.workers, len(chunks))
        loader = DataLoader(
            _Rows(self.lazy), batch_sampler=chunks, collate_fn=_collate, num_workers=workers,
            pin_memory=self.pin and torch.cuda.is_available(), prefetch_factor=4 if workers else None,
        )
        for rows, values, failures in loader:
            for name, failure in failures:
                self.lazy[name].failed(failure)
            if len(rows) == 0:
                continue
            batch = {}
            for name, column in self.lazy.items():
                batch[name] = column.finish(values[name].to(column.device, non_blocking=True), rows)
            for name, tensor in self.tensors.items():
                batch[name] = tensor[rows.to(tensor.device)]
            batch["index"] = rows
            yield batch


def file_batches(columns: Mapping[str, Any], batch_size: int) -> FileBatches | None:
    """`FileBatches` for `columns` when one of them is a `LazyColumn`, else None."""
    if any(isinstance(c, LazyColumn) for c in columns.values()):
        return FileBatches(columns, batch_size)
    return None
