"""Batches of named columns, the one way training, embedding and evaluation read a split.

A column is a tensor, an `ImageColumn` held in memory, or a column read on demand (a
`cleanbench.data.lazy.LazyColumn`: image files, captions tokenised as they are read). `epoch` draws
one permutation from the generator and drops the last partial batch (as the reference's
DataLoader); `in_order` visits every row in order, the last batch partial. Columns read on demand
are read by DataLoader worker processes (`workers` of the columns, at most) into pinned memory when
a column lives on a GPU, then finished on their device; the other columns are indexed where they
are. Every batch holds the columns and `index`, its row numbers. Rows that cannot be read are
dropped from the batch when their column skips them, so a batch may be smaller than `batch_size`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from cleanbench.data.lazy import Failure, LazyColumn

Batch = dict[str, torch.Tensor]


class _Rows(Dataset):
    """Row `i` of every column read on demand, as (i, {name: item})."""

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


class Batches:
    """Batches of named columns of one length (see the module docstring)."""

    def __init__(self, columns: Mapping[str, Any], batch_size: int) -> None:
        lengths = {len(c) for c in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"columns differ in length: {lengths}")
        self.columns = dict(columns)
        self.count = lengths.pop()
        self.batch_size = max(1, min(batch_size, self.count))
        self.read = {k: c for k, c in columns.items() if isinstance(c, LazyColumn)}
        self.held = {k: c for k, c in columns.items() if k not in self.read}
        self.workers = max((c.workers for c in self.read.values()), default=0)
        self.pin = any(c.device.type == "cuda" for c in self.read.values())

    def __len__(self) -> int:
        return self.count // self.batch_size

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        """One pass in a random order drawn from `generator`, without the last partial batch."""
        order = torch.randperm(self.count, generator=generator)
        size = self.batch_size
        yield from self._batches(order, [slice(i * size, (i + 1) * size) for i in range(len(self))])

    def in_order(self) -> Iterator[Batch]:
        """One pass over every row in order, the last batch partial (for evaluation)."""
        size = self.batch_size
        order = torch.arange(self.count)
        yield from self._batches(order, [slice(i, min(i + size, self.count)) for i in range(0, self.count, size)])

    def _batches(self, order: torch.Tensor, spans: list[slice]) -> Iterator[Batch]:
        if not self.read:
            yield from self._held_batches(order, spans)
            return
        chunks = [order[span].tolist() for span in spans]
        for rows, values in self._read(chunks):
            batch = {name: values[name] for name in self.read}
            for name, column in self.held.items():
                batch[name] = column[rows.to(column.device)]
            batch["index"] = rows
            yield batch

    def _held_batches(self, order: torch.Tensor, spans: list[slice]) -> Iterator[Batch]:
        """Batches of columns held in memory, indexed where they are."""
        # the order on each column's device, copied once a pass (not once a batch and column: on CUDA
        # each such copy synchronised)
        placed = {device: order.to(device) for device in {c.device for c in self.held.values()}}
        for span in spans:
            batch = {k: c[placed[c.device][span]] for k, c in self.held.items()}
            batch["index"] = order[span]
            yield batch

    def _read(self, chunks: list[list[int]]) -> Iterator[tuple[torch.Tensor, Batch]]:
        """The rows kept and the finished values of the columns read on demand, chunk by chunk."""
        if not chunks:
            return
        workers = min(self.workers, len(chunks))
        loader = DataLoader(
            _Rows(self.read), batch_sampler=chunks, collate_fn=_collate, num_workers=workers,
            pin_memory=self.pin and torch.cuda.is_available(), prefetch_factor=4 if workers else None,
        )
        for rows, values, failures in loader:
            for name, failure in failures:
                self.read[name].failed(failure)
            if len(rows) == 0:
                continue
            yield rows, {name: column.finish(values[name].to(column.device, non_blocking=True), rows)
                         for name, column in self.read.items()}
