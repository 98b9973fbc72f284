"""Image-caption pairs from a CSV file in the reference's format (docs/reference.md §6), read lazily.

Columns `image` and `caption` by default (configurable), any one-character delimiter, image paths
relative to the CSV's folder (or a given root). Indexing the CSV checks every row's path without
touching the file system: a row without an image path is an error that names its line (or, with
`on_bad_image: skip`, a counted skip), and a path that leaves the root (absolute, or through `..`)
is an error unless `allow_outside_root` is set. Links inside the root are followed. Images are
opened, and captions tokenised, only when a batch needs them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from cleanbench.data.base import PairSet
from cleanbench.data.csvfile import CsvTable, StringRows
from cleanbench.data.images import CsvImagePaths, ImageFiles, stays_inside
from cleanbench.data.lazy import BAD_IMAGE_POLICIES, LazyColumn, ReadLog
from cleanbench.errors import UsageError



class Captions(StringRows):
    """Captions read on demand, some of them replaced (the poisoned rows')."""

    def __init__(self, column: Sequence[str], replaced: Mapping[int, str] | None = None) -> None:
        self.column = column
        self.replaced = dict(replaced or {})

    def __len__(self) -> int:
        return len(self.column)

    def row(self, row: int) -> str:
        return self.replaced[row] if row in self.replaced else self.column[row]

    def replacing(self, replaced: Mapping[int, str]) -> Captions:
        """These captions with the rows of `replaced` replaced."""
        return Captions(self.column, {**self.replaced, **replaced})


def replace_captions(captions: Sequence[str], replaced: Mapping[int, str]) -> Sequence[str]:
    """`captions` with the rows of `replaced` replaced: captions read on demand stay so (and are
    tokenised as batches read them), a list is copied."""
    if isinstance(captions, Captions):
        return captions.replacing(replaced)
    out = list(captions)
    for row, caption in replaced.items():
        out[row] = caption
    return out


class TokenColumn(LazyColumn):
    """Captions tokenised one at a time as batches are read (never all up front)."""

    def __init__(self, captions: Sequence[str], tokenizer: Callable[[Sequence[str]], torch.Tensor]) -> None:
        self.captions = captions
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.captions)

    def load(self, row: int) -> torch.Tensor:
        return self.tokenizer([self.captions[row]])[0]


def _stat_key(path: Path) -> tuple[str, int, int]:
    """What identifies a file's version for the index cache: resolved path, size, modification time."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=8)
def _index(
    file: tuple[str, int, int], columns: tuple[str, ...], delimiter: str, limit: int | None, root: str,
    allow_outside_root: bool, on_bad_image: str, what: str,
) -> tuple[CsvTable, int, tuple[str, ...]]:
    """The table of a pairs CSV, the number of rows dropped for lack of an image path, and examples."""
    dropped: list[str] = []
    count = [0]

    def check(fields: list[str], line: int) -> bool:
        image = fields[0].strip()
        if not image:
            if on_bad_image == "error":
                raise UsageError(
                    f"{what} {file[0]}, line {line}: the {columns[0]!r} column is empty; remove such rows "
                    "or set data.on_bad_image: skip to skip them (the run card counts them)"
                )
            count[0] += 1
            if len(dropped) < 5:
                dropped.append(f"{what} {file[0]}, line {line}: no image path")
            return False
        if not allow_outside_root and not stays_inside(image):
            raise UsageError(
                f"{what} {file[0]}, line {line}: image path {image!r} leaves the dataset root {root}; "
                "set data.allow_outside_root: true if the CSV is trusted and that is intended"
            )
        return True

    table = CsvTable(file[0], columns, delimiter, limit, check, what)
    return table, count[0], tuple(dropped)


def index_pairs(
    path: str | Path, image_column: str = "image", caption_column: str = "caption", delimiter: str = ",",
    limit: int | None = None, root: str | Path | None = None, allow_outside_root: bool = False,
    on_bad_image: str = "error", what: str = "CSV",
) -> tuple[CsvTable, Path, int, tuple[str, ...]]:
    """Index a pairs CSV (cached while the file is unchanged): its table, root, rows dropped, examples."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} {str(path)!r} does not exist")
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise UsageError(f"data.on_bad_image must be one of {', '.join(BAD_IMAGE_POLICIES)}, not {on_bad_image!r}")
    base = Path(root) if root else path.resolve().parent
    if not base.is_dir():
        raise UsageError(f"dataset root {str(base)!r} is not a folder")
    table, dropped, examples = _index(
        _stat_key(path), (image_column, caption_column), delimiter, limit, str(base.resolve()),
        allow_outside_root, on_bad_image, what,
    )
    if len(table) == 0:
        raise UsageError(f"{what} {str(path)!r} has no usable rows")
    return table, base, dropped, examples


def load_pairs(
    path: str | Path,
    size: int,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    delimiter: str = ",",
    root: str | Path | None = None,
    allow_outside_root: bool = False,
    on_bad_image: str = "error",
    limit: int | None = None,
    subset: int | None = None,
    subset_seed: int = 0,
    workers: int = 0,
    squash_triggered: bool = False,
    what: str = "CSV",
) -> PairSet:
    """Pairs of a CSV, images read at `size` px when batches need them; `images.log` records reads.

    `limit` keeps the first rows (the reference's `--size_train_data`); `subset` then takes that many
    rows at random from `subset_seed` (all rows when there are fewer).
    """
    table, base, dropped, examples = index_pairs(
        path, image_column, caption_column, delimiter, limit, root, allow_outside_root, on_bad_image, what
    )
    if subset is not None and subset < len(table):
        rows = np.sort(np.random.default_rng(subset_seed).choice(len(table), size=subset, replace=False))
        table = table.take(rows)
    log = ReadLog(str(path), on_bad_image)
    log["skipped_when_indexed"] = dropped
    log["skipped_examples"] = list(examples)
    images = ImageFiles(CsvImagePaths(base, table, what), size, log, on_bad_image, workers, squash_triggered)
    captions = Captions(table.column(1))
    return PairSet(images, captions, torch.full((len(table),), -1, dtype=torch.long))
