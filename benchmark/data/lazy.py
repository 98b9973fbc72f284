"""Columns read on demand, item by item, and what reading them met.

A `LazyColumn` stands where a tensor of N items would stand: it has a length, `.to(device)`, and
indexing (which reads the items at once, for small subsets). Its items are read one at a time by
`load` in DataLoader worker processes (`cleanbench.data.batches.Batches`); after a batch is collated
into pinned memory and moved to the column's device, `finish` runs there (rows that get a trigger
get it at that point, on the GPU when training runs on one). Image files
(`cleanbench.data.images.ImageFiles`) and captions tokenised as they are read are such columns.

An item that cannot be read comes back as a `Failure`; the column decides what happens: a
`RunError` that names the file (the default), or a skip that its `ReadLog` counts for the run card.
"""

from __future__ import annotations

import copy
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cleanbench.data.column import Rows, row_list
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

    def __getitem__(self, index: Rows) -> torch.Tensor:
        """Items read at once in this process (for small subsets); a boolean mask selects rows."""
        single = isinstance(index, int)
        rows = row_list(index, len(self))
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


def default_workers() -> int:
    """Worker processes for reading files: the CPUs this process may use, at most 8, minus one."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus) - 1)
