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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from cleanbench.data.csvfile import CsvTable
from cleanbench.data.lazy import BAD_IMAGE_POLICIES, Failure, LazyColumn, ReadLog
from cleanbench.errors import RunError

if TYPE_CHECKING:
    from typing import Self

RowTrigger = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A trigger for file-backed images: `trigger(uint8_images, row_numbers)` -> triggered uint8 images."""

MODES = ("crop", "squash", "both")
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


class ImageFiles(LazyColumn):
    """A column of images read from `source` at `size` px; bad files raise or are skipped (`on_bad`).

    `mode` is what `load` returns: `crop`, `squash`, or `both` (a (2, 3, size, size) pair, for
    evaluating with the reference's squashed triggers).
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
        log["rows"] = len(source)

    def __len__(self) -> int:
        return len(self.source)

    def reading(self, mode: str) -> Self:
        """This column returning `mode` images."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        other = self.to(self.device)
        other.mode = mode
        return other

    def _read(self, row: int, mode: str) -> torch.Tensor | Failure:
        try:
            image = self.source.open(row)
            if mode == "both":
                return torch.stack([preprocess(image, self.size, "crop"), preprocess(image, self.size, "squash")])
            return preprocess(image, self.size, mode)
        except FileNotFoundError:
            return Failure(row, self.source.where(row), "the file does not exist")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            return Failure(row, self.source.where(row), f"cannot be read as an image ({type(error).__name__}: {error})")

    def load(self, row: int) -> torch.Tensor | Failure:
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
        self.log["images_read"] += len(rows)
        return batch

    def poisoned(self, rows: Sequence[int], trigger: RowTrigger) -> PoisonedImages:
        """This column with `trigger` applied to `rows` (after reading, on the device)."""
        return PoisonedImages(self, rows, trigger)


class PoisonedImages(ImageFiles):
    """Images of which some rows get a trigger once they are on the device (the poisoned training set).

    `trigger(images, rows)` must treat each row the same whatever batch, worker, device or epoch reads
    it (`cleanbench.attacks.base.row_trigger` draws a row's parameters from its own seeded generator),
    and returns uint8 images, as a poisoned file would be stored.
    """

    def __init__(self, base: ImageFiles, rows: Sequence[int], trigger: RowTrigger) -> None:
        self.__dict__.update(base.__dict__)
        self.rows = frozenset(int(r) for r in rows)
        self.trigger = trigger

    def load(self, row: int) -> torch.Tensor | Failure:
        if self.squash_triggered and row in self.rows and self.mode == "crop":
            return self._read(row, "squash")
        return self._read(row, self.mode)

    def finish(self, batch: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        batch = super().finish(batch, rows)
        hit = torch.tensor([int(r) in self.rows for r in rows.tolist()], dtype=torch.bool)
        if not hit.any():
            return batch
        batch = batch.clone()
        where = hit.to(batch.device)
        batch[where] = self.trigger(batch[where], rows[hit])
        return batch
