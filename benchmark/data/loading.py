"""A cell's data from its `DataConfig`: the one place that dispatches on `data.source`.

- `embedded`: the procedural shapes dataset, generated in memory.
- `csv`: image-caption pairs from CSV files (`data.train`, and `data.clean` for the defense, which
  defaults to a seeded random subset of `limit_clean` rows of the training CSV) and a zero-shot
  evaluation set on disk (`data.eval`), read lazily at the model's input resolution.

`check_file_data` runs during config validation, before any work: it indexes the CSVs (cached while
the files are unchanged), fills in the sizes, and checks the target class against the class list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cleanbench.data.base import BenchmarkData, class_index
from cleanbench.data.embedded import load_embedded
from cleanbench.data.lazy import default_workers
from cleanbench.data.pairs import index_pairs, load_pairs
from cleanbench.data.shapes import SHAPES
from cleanbench.data.zeroshot import eval_classes, load_eval_set
from cleanbench.errors import UsageError
from cleanbench.seeding import derive_seed

if TYPE_CHECKING:
    from cleanbench.config import DataConfig

SOURCES = ("embedded", "csv")
FILE_FIELDS = ("train", "clean", "eval", "eval_classes")


def _common(data: DataConfig) -> dict:
    return dict(
        image_column=data.image_column, caption_column=data.caption_column, delimiter=data.delimiter,
        root=data.root, allow_outside_root=data.allow_outside_root, on_bad_image=data.on_bad_image,
    )


def _workers(data: DataConfig) -> int:
    return default_workers() if data.workers is None else data.workers


def load_data(data: DataConfig, seed: int) -> BenchmarkData:
    """The pretraining pairs, clean finetuning pairs and test set of run seed `seed`.

    For file data, `info` holds one live `ReadLog` per split (rows, images read, images skipped), so
    that a run card that stores `info` records what reading met.
    """
    if data.source == "embedded":
        return load_embedded(seed, data.n_pretrain, data.n_clean, data.n_test, data.image_size, data.preset,
                             data.n_validation)
    if data.source != "csv":
        raise UsageError(f"data source {data.source!r} is not known; use one of {', '.join(SOURCES)}")
    if not data.train or not data.eval:
        raise UsageError("data source 'csv' needs data.train (a CSV of image-caption pairs) and data.eval")
    reading = dict(workers=_workers(data), squash_triggered=data.squash_triggered)
    pretrain = load_pairs(data.train, data.image_size, limit=data.limit_pretrain, what="training CSV",
                          **_common(data), **reading)
    clean = load_pairs(data.clean or data.train, data.image_size, subset=data.limit_clean,
                       subset_seed=derive_seed(seed, "clean-subset"), what="clean CSV", **_common(data), **reading)
    test = load_eval_set(data.eval, data.image_size, classes_file=data.eval_classes, split=data.eval_split,
                         on_bad_image=data.on_bad_image, limit=data.limit_test, **reading)
    info = {"name": "csv", "image_size": data.image_size, "squash_triggered": data.squash_triggered,
            "pretrain": pretrain.images.log, "clean": clean.images.log, "test": test.images.log}
    return BenchmarkData(pretrain, clean, test, info)


def check_file_data(data: DataConfig, target: str) -> str:
    """Check file-data settings and fill `n_pretrain`, `n_clean`, `n_test` with the counts; returns the
    target's class name (`resolve_target`; embedded data: among the shapes). UsageError, naming the
    setting, for anything wrong."""
    if data.source == "embedded":
        given = [name for name in FILE_FIELDS if getattr(data, name)]
        if given:
            raise UsageError(f"data.{given[0]} is set but data.source is 'embedded'; set data.source: csv")
        return resolve_target(SHAPES, target)
    if data.source != "csv":
        raise UsageError(f"data source {data.source!r} is not known; use one of {', '.join(SOURCES)}")
    if not data.train:
        raise UsageError("data source 'csv' needs a CSV of image-caption pairs: --data PATH or data.train")
    if not data.eval:
        raise UsageError("data source 'csv' needs a zero-shot evaluation set: --eval-data PATH or data.eval")
    for name in ("limit_pretrain", "limit_clean", "limit_test"):
        value = getattr(data, name)
        if value is not None and value < 1:
            raise UsageError(f"data.{name} must be >= 1 (or null for all rows)")
    if data.workers is not None and data.workers < 0:
        raise UsageError("data.workers must be >= 0")
    train, *_ = index_pairs(data.train, limit=data.limit_pretrain, what="training CSV", **_common(data))
    data.n_pretrain = len(train)
    if data.clean:
        clean, *_ = index_pairs(data.clean, what="clean CSV", **_common(data))
        count = len(clean)
    else:
        count = len(index_pairs(data.train, what="training CSV", **_common(data))[0])
    data.n_clean = count if data.limit_clean is None else min(count, data.limit_clean)
    classnames, _ = eval_classes(data.eval, data.eval_classes, data.eval_split)
    test = load_eval_set(data.eval, data.image_size, classes_file=data.eval_classes, split=data.eval_split,
                         on_bad_image=data.on_bad_image, limit=data.limit_test)
    data.n_test = len(test)
    return resolve_target(classnames, target)


def resolve_target(classnames: tuple[str, ...] | list[str], target: str) -> str:
    """The target class as a config names it: its name, or its index where the name repeats. UsageError
    for a class that is not in `classnames`."""
    try:
        index = class_index(classnames, target)
    except ValueError as error:
        raise UsageError(f"target {target!r}: {error}; use --target NAME or INDEX") from error
    name = classnames[index]
    return name if classnames.count(name) == 1 else str(index)
