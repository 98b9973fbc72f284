"""Data containers shared by every stage.

A split's images are an `ImageColumn` (`cleanbench.data.column`): uint8 images of shape (3, H, W),
held in memory (the embedded data) or read from files when a batch needs them, behind one interface
(index, select, to-device, triggers, batches). A uint8 tensor (N, 3, H, W) given to a container
becomes a `MemoryImages` column. Stages convert images to float in [0, 1] when they need to
(triggers work on floats in [0, 1], the model on normalised floats).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from cleanbench.data.column import ImageColumn, Rows, image_column, row_list


@dataclass
class PairSet:
    """Image-caption pairs; `labels` holds the class index of each image, or -1 where unknown.

    File-backed pairs have a column of images and a sequence of captions read on demand.
    """

    images: ImageColumn
    captions: Sequence[str]
    labels: torch.Tensor
    classnames: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.images = image_column(self.images)
        if not (len(self.images) == len(self.captions) == len(self.labels)):
            raise ValueError(
                f"PairSet parts differ in length: {len(self.images)} images, "
                f"{len(self.captions)} captions, {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.captions)

    def select(self, rows: Rows) -> PairSet:
        """The pairs of `rows`, in that order (file-backed images are not read)."""
        kept = row_list(rows, len(self))
        index = torch.tensor(kept, dtype=torch.long)
        return PairSet(self.images.select(kept), [self.captions[i] for i in kept], self.labels[index], self.classnames)


@dataclass
class ClassificationSet:
    """Labelled test images with the class names and zero-shot prompt templates that score them."""

    images: ImageColumn
    labels: torch.Tensor
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    name: str = "test"

    def __post_init__(self) -> None:
        self.images = image_column(self.images)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class BenchmarkData:
    """Everything one benchmark cell reads: pretraining pairs, clean finetuning pairs, a test set, and
    (embedded data) a validation set that the tuning protocol scores instead of the test set."""

    pretrain: PairSet
    clean: PairSet
    test: ClassificationSet
    info: dict = field(default_factory=dict)
    validation: ClassificationSet | None = None


def class_index(classnames: tuple[str, ...] | list[str], name_or_index: str | int) -> int:
    """The index of a class given by name or index; ValueError when it is not in `classnames` or when
    the name is ambiguous (open_clip's ImageNet names repeat two: give the index)."""
    if isinstance(name_or_index, int) or str(name_or_index).isdigit():
        index = int(name_or_index)
        if not 0 <= index < len(classnames):
            raise ValueError(f"class index {index} is outside 0..{len(classnames) - 1}")
        return index
    if name_or_index not in classnames:
        import difflib

        close = difflib.get_close_matches(str(name_or_index), classnames, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"class {name_or_index!r} is not in the class list; {hint}classes: {', '.join(classnames)}")
    indices = [i for i, name in enumerate(classnames) if name == name_or_index]
    if len(indices) > 1:
        raise ValueError(f"class {name_or_index!r} occurs at indices {', '.join(map(str, indices))}; give the index")
    return indices[0]
