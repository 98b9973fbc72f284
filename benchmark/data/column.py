"""One interface for a column of images, whether it is held in memory or read from files.

Every stage, attack, defense and detector sees a split's images as an `ImageColumn`: N uint8 images
of shape (3, H, W) with

- `len(column)`; indexing (`column[i]`, `column[a:b]`, a list or tensor of rows, a boolean mask),
  which gives the items at once as a uint8 tensor on the column's device (for small subsets);
  iteration, one image at a time;
- `to(device)`: the column delivering its items and batches on `device`;
- `select(rows)`: the column of those rows (nothing is read);
- triggers, as attacks apply them (uint8 in, uint8 out): `row_trigger(trigger)` is the trigger as
  this column's batches apply it, a function of (images, their row numbers) for any batch of rows;
  `triggered(rows, trigger)` is this column with the trigger on `rows`; `replaced(rows, images)` is
  this column with other images at `rows`; `trigger_source()` is the column that triggers are
  applied to (the column itself, or the reference's squashed images, `cleanbench.data.images`).

Batches for training, embedding and evaluation are built from columns by
`cleanbench.data.batches.Batches`, whatever the storage. Two implementations: `MemoryImages` (a
uint8 tensor: the embedded data) and `cleanbench.data.images.ImageFiles` (files read by worker
processes when a batch needs them).

Seeding of random trigger parameters (`SeededTrigger`, e.g. `cleanbench.attacks.base.Seeded`):
each row's parameters come from the row's own generator (the trigger's seed and stream, and the row's
number), in memory as on files, so the same images get the same triggered pixels from either
storage, in any batch, worker or order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, Union

import torch

if TYPE_CHECKING:
    from typing import Self

Rows = Union[int, slice, Sequence[int], torch.Tensor]
"""What indexes a column: a row, a slice, a sequence or tensor of rows, or a boolean mask."""

TRIGGER_ROWS = 1024
"""Rows a column held in memory triggers at once (bounds the float temporaries; not the bytes)."""

RowTrigger = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""`trigger(uint8_images, row_numbers)` -> the triggered uint8 images, each row's the same in any batch."""


class SeededTrigger(Protocol):
    """An attack's trigger with its random parameters seeded from a run seed, a stream name and each
    row's number; picklable, so that file-reading workers apply it."""

    def __call__(self, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """uint8 `images` of `rows` -> the triggered uint8 images, each row's the same in any batch."""


def row_list(index: Rows, count: int) -> list[int]:
    """Row numbers from an int, slice, sequence, index tensor or boolean mask (negative rows count back)."""
    if isinstance(index, int):
        if not -count <= index < count:
            raise IndexError(f"row {index} is outside 0..{count - 1}")
        return [index % count]
    if isinstance(index, slice):
        return list(range(count))[index]
    tensor = torch.as_tensor(index)
    if tensor.dtype == torch.bool:
        if len(tensor) != count:
            raise IndexError(f"a mask of {len(tensor)} rows for a column of {count}")
        return torch.nonzero(tensor.cpu()).flatten().tolist()
    rows = tensor.cpu().flatten().tolist()
    bad = [r for r in rows if not -count <= r < count]
    if bad:
        raise IndexError(f"row {bad[0]} is outside 0..{count - 1}")
    return [int(r) % count for r in rows]


class ImageColumn(ABC):
    """N uint8 images (3, H, W), in memory or read from files; see the module docstring."""

    device: torch.device = torch.device("cpu")

    @abstractmethod
    def __len__(self) -> int:
        """The number of images."""

    @abstractmethod
    def __getitem__(self, index: Rows) -> torch.Tensor:
        """The images of `index` at once, uint8 on the column's device ((3, H, W) for one row)."""

    @abstractmethod
    def to(self, device: torch.device | str) -> Self:
        """This column with its items and batches on `device`."""

    @abstractmethod
    def select(self, rows: Rows) -> ImageColumn:
        """The column of `rows`, in that order (a view: nothing is read)."""

    @abstractmethod
    def row_trigger(self, trigger: SeededTrigger) -> RowTrigger:
        """`trigger` for batches of this column: `f(images, row_numbers)` with the numbers its batches
        carry (a file column's selection seeds each row by its number in the file)."""

    @abstractmethod
    def triggered(self, rows: Sequence[int], trigger: SeededTrigger) -> ImageColumn:
        """This column with `trigger` on `rows` (sorted, distinct) and the other rows unchanged."""

    @abstractmethod
    def replaced(self, rows: Sequence[int], images: torch.Tensor) -> ImageColumn:
        """This column with uint8 `images` at `rows` (e.g. adversarially perturbed poisons)."""

    def trigger_source(self) -> ImageColumn:
        """The column whose images a trigger is applied to: this one, unless a file column reads the
        images that get a trigger differently (the reference's squash)."""
        return self

    def __iter__(self) -> Iterator[torch.Tensor]:
        for row in range(len(self)):
            yield self[row]


class MemoryImages(ImageColumn):
    """Images held as one uint8 tensor (N, 3, H, W)."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(f"an image column holds uint8 (N, 3, H, W) images, not {images.dtype} {tuple(images.shape)}")
        self.tensor = images
        self.device = images.device

    def __len__(self) -> int:
        return len(self.tensor)

    def __getitem__(self, index: Rows) -> torch.Tensor:
        if isinstance(index, (int, slice)):
            return self.tensor[index]
        rows = torch.as_tensor(index)
        return self.tensor[rows.to(self.device) if rows.dtype == torch.bool else rows.to(self.device, torch.long)]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.tensor)

    def __repr__(self) -> str:
        return f"MemoryImages({len(self)} x {tuple(self.tensor.shape[1:])}, {self.device})"

    def to(self, device: torch.device | str) -> MemoryImages:
        return MemoryImages(self.tensor.to(device))

    def select(self, rows: Rows) -> MemoryImages:
        return MemoryImages(self.tensor[torch.tensor(row_list(rows, len(self)), dtype=torch.long, device=self.device)])

    def row_trigger(self, trigger: SeededTrigger) -> RowTrigger:
        return trigger

    def triggered(self, rows: Sequence[int], trigger: SeededTrigger) -> MemoryImages:
        out = self.tensor.clone()
        index = torch.tensor([int(r) for r in rows], dtype=torch.long)
        for start in range(0, len(index), TRIGGER_ROWS):
            chunk = index[start : start + TRIGGER_ROWS]
            out[chunk.to(self.device)] = trigger(self.tensor[chunk.to(self.device)], chunk)
        return MemoryImages(out)

    def replaced(self, rows: Sequence[int], images: torch.Tensor) -> MemoryImages:
        out = self.tensor.clone()
        out[torch.tensor([int(r) for r in rows], dtype=torch.long, device=self.device)] = images.to(self.device)
        return MemoryImages(out)


def image_column(images: ImageColumn | torch.Tensor) -> ImageColumn:
    """`images` as a column: a uint8 tensor (N, 3, H, W) becomes `MemoryImages`."""
    return MemoryImages(images) if isinstance(images, torch.Tensor) else images
