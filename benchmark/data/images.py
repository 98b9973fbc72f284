"""Images read from files at the model's input resolution, and where they come from.

Clean images get CLIP's preprocessing up to normalisation: the shorter side resized to the input
size (bicubic), then a centre crop (`crop`). Triggers are applied to these uint8 images, so they act
at the model's input resolution, before normalisation, in training and at test time alike. The
reference instead squashes every triggered image to 224 x 224 without cropping (docs/reference.md §7,
item 6), so the squash comes with the trigger; `squash_triggered` reproduces that for comparison:
rows that get a trigger are then read with `squash` (the whole image resized to a square).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from cleanbench.data.csvfile import CsvTable
from cleanbench.data.column import ImageColumn, RowTrigger, Rows, SeededTrigger, row_list
from cleanbench.data.lazy import BAD_IMAGE_POLICIES, Failure, LazyColumn, ReadLog
from cleanbench.errors import RunError

if TYPE_CHECKING:
    from typing import Self

MODES = ("crop", "squash")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def preprocess(image: Image.Image, size: int, mode: str = "crop") -> torch.Tensor:
    """A PIL image as uint8 (3, size, size): `crop` (resize the short side, centre crop) or `squash`."""
    image = image.convert("RGB")
    if mode == "squash":
        image = F.resize(image, [size, size], interpolation=InterpolationMode.BICUBIC)
    else:
        image = F.center_crop(F.resize(image, size, interpolation=InterpolationMode.BICUBIC), [size, size])
    return F.pil_to_tensor(image)


class ImageSource(ABC):
    """Where a split's images are: `open(row)` gives a PIL image, `where(row)` names the row and file."""

    @abstractmethod
    def __len__(self) -> int:
        """The number of images."""

    @abstractmethod
    def open(self, row: int) -> Image.Image:
        """Image `row`, decoded (OSError or ValueError when it cannot be)."""

    @abstractmethod
    def where(self, row: int) -> str:
        """Row `row` and its file, for messages."""


def stays_inside(relative: str) -> bool:
    """Whether a path from a file list stays inside the folder it is relative to (checked on the text:
    not absolute, and no `..` that climbs out; links are not resolved)."""
    if os.path.isabs(relative):
        return False
    if ".." not in relative:
        return True
    normal = os.path.normpath(relative)
    return normal != ".." and not normal.startswith(".." + os.sep)


class PathSource(ImageSource):
    """Images at `paths` relative to `root`; `label` starts each row's description (e.g. the folder)."""

    def __init__(self, root: Path, paths: Sequence[str], label: str = "") -> None:
        self.root = Path(root)
        self.paths = paths
        self.label = label

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, row: int) -> str:
        return self.paths[row]

    def open(self, row: int) -> Image.Image:
        with Image.open(self.root / self.path(row)) as image:
            image.load()
            return image

    def where(self, row: int) -> str:
        return f"{self.label}image {self.path(row)!r} (row {row})"


class CsvImagePaths(PathSource):
    """Image paths from the first selected column of a CSV table; rows are described by their line."""

    def __init__(self, root: Path, table: CsvTable, what: str) -> None:
        super().__init__(root, table.column(0))
        self.table = table
        self.what = what

    def where(self, row: int) -> str:
        return f"{self.what} {self.table.path}, line {self.table.line(row)}: image {self.path(row)!r}"


class ImageFiles(LazyColumn, ImageColumn):
    """A column of images read from `source` at `size` px; bad files raise or are skipped (`on_bad`).

    `mode` is what `load` returns: `crop` or `squash`. Rows of `replaced` come from memory instead of
    their files; rows of `triggered` get their trigger once a batch is on the device, each row's
    parameters from its own seeded generator (the same in any batch, worker, device or epoch), and
    with `squash_triggered` they are read squashed.
    """

    def __init__(
        self,
        source: ImageSource,
        size: int,
        log: ReadLog,
        on_bad: str = "error",
        workers: int = 0,
        squash_triggered: bool = False,
    ) -> None:
        if on_bad not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image must be one of {', '.join(BAD_IMAGE_POLICIES)}, not {on_bad!r}")
        self.source = source
        self.size = size
        self.log = log
        self.on_bad = on_bad
        self.workers = workers
        self.squash_triggered = squash_triggered
        self.mode = "crop"
        self.triggers: tuple[tuple[frozenset[int], RowTrigger], ...] = ()
        self.overlay: dict[int, torch.Tensor] = {}
        log["rows"] = len(source)

    def __len__(self) -> int:
        return len(self.source)

    def __repr__(self) -> str:
        return f"ImageFiles({len(self)} x (3, {self.size}, {self.size}), {self.device})"

    def reading(self, mode: str) -> Self:
        """This column returning `mode` images."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        other = self.to(self.device)
        other.mode = mode
        return other

    def _read(self, row: int, mode: str) -> torch.Tensor | Failure:
        try:
            return preprocess(self.source.open(row), self.size, mode)
        except FileNotFoundError:
            return Failure(row, self.source.where(row), "the file does not exist")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            return Failure(row, self.source.where(row), f"cannot be read as an image ({type(error).__name__}: {error})")

    def load(self, row: int) -> torch.Tensor | Failure:
        if row in self.overlay:
            return self.overlay[row]
        if self.squash_triggered and self.mode == "crop" and any(row in rows for rows, _ in self.triggers):
            return self._read(row, "squash")
        return self._read(row, self.mode)

    def failed(self, failure: Failure) -> None:
        if self.on_bad == "skip":
            self.log.skip(failure)
            return
        raise RunError(
            f"{failure.where}: {failure.reason}. Fix or remove the row, or set data.on_bad_image: skip "
            "to skip unreadable images (the run card counts them)"
        )

    def finish(self, batch: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        read = sum(int(r) not in self.overlay for r in rows.tolist()) if self.overlay else len(rows)
        self.log["images_read"] += read
        copied = False
        for triggered_rows, trigger in self.triggers:
            hit = torch.tensor([int(r) in triggered_rows for r in rows.tolist()], dtype=torch.bool)
            if not hit.any():
                continue
            if not copied:
                batch, copied = batch.clone(), True
            where = hit.to(batch.device)
            batch[where] = trigger(batch[where], rows[hit])
        return batch

    def select(self, rows: Rows) -> SelectedRows:
        return SelectedRows(self, rows)

    def row_trigger(self, trigger: SeededTrigger) -> RowTrigger:
        return trigger

    def triggered(self, rows: Sequence[int], trigger: SeededTrigger) -> Self:
        other = self.to(self.device)
        other.triggers = (*self.triggers, (frozenset(int(r) for r in rows), trigger))
        return other

    def replaced(self, rows: Sequence[int], images: torch.Tensor) -> Self:
        other = self.to(self.device)
        other.overlay = {**self.overlay, **{int(r): image.cpu() for r, image in zip(rows, images)}}
        return other

    def trigger_source(self) -> ImageFiles:
        return self.reading("squash") if self.squash_triggered else self


class SelectedRows(LazyColumn, ImageColumn):
    """Some rows of a file column, in a given order; each keeps its row number in the column below
    (for its trigger's parameters, its messages and its overlay)."""

    def __init__(self, base: LazyColumn, rows: Rows) -> None:
        self.base = base
        self.rows = row_list(rows, len(base))
        self.device = base.device
        self.workers = base.workers

    @property
    def log(self) -> ReadLog:
        return self.base.log

    def __len__(self) -> int:
        return len(self.rows)

    def _below(self, rows: Sequence[int] | torch.Tensor) -> list[int]:
        return [self.rows[int(r)] for r in rows]

    def load(self, row: int) -> torch.Tensor | Failure:
        item = self.base.load(self.rows[row])
        return Failure(row, item.where, item.reason) if isinstance(item, Failure) else item

    def failed(self, failure: Failure) -> None:
        self.base.failed(failure)

    def finish(self, batch: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.base.finish(batch, torch.tensor(self._below(rows), dtype=torch.long))

    def to(self, device: torch.device | str) -> SelectedRows:
        return SelectedRows(self.base.to(device), self.rows)

    def select(self, rows: Rows) -> SelectedRows:
        return SelectedRows(self.base, [self.rows[r] for r in row_list(rows, len(self))])

    def row_trigger(self, trigger: SeededTrigger) -> RowTrigger:
        below = self.base.row_trigger(trigger)
        return lambda images, rows: below(images, torch.tensor(self._below(rows), dtype=torch.long))

    def triggered(self, rows: Sequence[int], trigger: SeededTrigger) -> SelectedRows:
        return SelectedRows(self.base.triggered(sorted(set(self._below(rows))), trigger), self.rows)

    def replaced(self, rows: Sequence[int], images: torch.Tensor) -> SelectedRows:
        return SelectedRows(self.base.replaced(self._below(rows), images), self.rows)

    def trigger_source(self) -> SelectedRows:
        return SelectedRows(self.base.trigger_source(), self.rows)
