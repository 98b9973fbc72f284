"""Zero-shot evaluation sets on disk, and the class names and prompt templates that score them.

An evaluation set (`data.eval`) is one of:

- a folder with `labels.csv` (columns `image,label`; paths relative to the folder; a label is a class
  index or a class name): the reference's ImageNet layout (docs/reference.md §6);
- a folder of class sub-folders (sorted folder names are the classes, as torchvision's ImageFolder);
- `torchvision:NAME:ROOT`, a torchvision classification dataset already on disk (never downloaded),
  e.g. `torchvision:CIFAR10:/data/cifar` (its test split; `data.eval_split` picks another).

Class names: open_clip's 1000 ImageNet names for `labels.csv` folders, for folders of the 1000
ImageNet WordNet IDs and for torchvision's ImageNet; the dataset's `classes` for other torchvision
datasets; the folder names otherwise. Templates: the 80 OpenAI ImageNet templates. A JSON or YAML
file (`data.eval_classes`) with `classes` and/or `templates` replaces either (read as data, never
evaluated; templates have one `{}` where the class name goes).
"""

from __future__ import annotations

import difflib
import inspect
import json
import re
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
from PIL import Image

from cleanbench.data.base import ClassificationSet
from cleanbench.data.csvfile import CsvTable
from cleanbench.data.images import IMAGE_EXTENSIONS, CsvImagePaths, ImageFiles, ImageSource, PathSource, stays_inside
from cleanbench.data.lazy import ReadLog
from cleanbench.errors import UsageError
from cleanbench.fileio import read_input_file

TORCHVISION_PREFIX = "torchvision:"
LABELS_FILE = "labels.csv"
_WORDNET_ID = re.compile(r"n\d{8}")
TEST_SUBSET_SEED = 0
"""Seed of the random subset that `limit_test` keeps: fixed, so every run scores the same images."""


def imagenet_classnames() -> tuple[str, ...]:
    """open_clip's 1000 ImageNet class names (index 954 is 'banana')."""
    return tuple(IMAGENET_CLASSNAMES)


def openai_templates() -> tuple[str, ...]:
    """The 80 OpenAI ImageNet prompt templates, as format strings with one `{}`."""
    return tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)


def read_classes_file(path: str | Path) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    """`classes` and `templates` from a JSON or YAML file (either may be absent)."""
    path = Path(path)
    text = read_input_file(path, "class-names file")
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as error:
        raise UsageError(f"class-names file {path}: cannot parse it: {error}") from error
    if not isinstance(values, dict) or not values:
        raise UsageError(f"class-names file {path}: expected a mapping with 'classes' and/or 'templates'")
    unknown = sorted(set(values) - {"classes", "templates"})
    if unknown:
        raise UsageError(f"class-names file {path}: unknown key {unknown[0]!r}; use 'classes' and 'templates'")
    out = []
    for key in ("classes", "templates"):
        items = values.get(key)
        if items is None:
            out.append(None)
            continue
        if not isinstance(items, list) or not items or not all(isinstance(i, str) and i.strip() for i in items):
            raise UsageError(f"class-names file {path}: {key!r} must be a non-empty list of non-empty strings")
        out.append(tuple(items))
    for template in out[1] or ():
        if template.count("{}") != 1 or template.replace("{}", "").count("{") or template.replace("{}", "").count("}"):
            raise UsageError(f"class-names file {path}: template {template!r} must contain '{{}}' once and no other braces")
    return out[0], out[1]


@dataclass(frozen=True)
class EvalLayout:
    """What `data.eval` points at: `kind` is labels-csv, folders or torchvision."""

    kind: str
    root: Path
    dataset: str = ""


def parse_eval(spec: str) -> EvalLayout:
    """The layout of an evaluation set from its `data.eval` string."""
    if spec.startswith(TORCHVISION_PREFIX):
        name, sep, root = spec[len(TORCHVISION_PREFIX):].partition(":")
        if not sep or not name or not root:
            raise UsageError(f"evaluation set {spec!r}: expected torchvision:NAME:ROOT, e.g. torchvision:CIFAR10:/data/cifar")
        return EvalLayout("torchvision", Path(root), name)
    root = Path(spec)
    if not root.is_dir():
        raise UsageError(
            f"evaluation set {spec!r} is not a folder; give a folder with labels.csv or class sub-folders, "
            "or torchvision:NAME:ROOT"
        )
    if (root / LABELS_FILE).is_file():
        return EvalLayout("labels-csv", root)
    return EvalLayout("folders", root)


def _class_folders(root: Path) -> list[str]:
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UsageError(f"evaluation folder {str(root)!r} has neither {LABELS_FILE} nor class sub-folders")
    return folders


def _folder_classnames(folders: list[str]) -> tuple[str, ...]:
    if len(folders) == len(IMAGENET_CLASSNAMES) and all(_WORDNET_ID.fullmatch(f) for f in folders):
        return imagenet_classnames()
    return tuple(f.replace("_", " ") for f in folders)


def _torchvision_dataset(layout: EvalLayout, split: str | None) -> Any:
    """The torchvision dataset, built without downloading; UsageError saying how to get it otherwise."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, layout.dataset, None)
    if not inspect.isclass(cls) or not issubclass(cls, torchvision.datasets.VisionDataset):
        names = [n for n in dir(torchvision.datasets) if n[:1].isupper()]
        close = difflib.get_close_matches(layout.dataset, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"torchvision has no dataset {layout.dataset!r}{hint}")
    parameters = inspect.signature(cls).parameters
    attempts: list[dict[str, Any]] = []
    if "train" in parameters:
        attempts.append({"train": split == "train"})
    elif "split" in parameters:
        attempts += [{"split": split}] if split else [{"split": "test"}, {"split": "val"}]
    else:
        attempts.append({})
    errors = []
    for kwargs in attempts:
        if "download" in parameters:
            kwargs["download"] = False
        try:
            return cls(str(layout.root), **kwargs)
        except (RuntimeError, OSError, ValueError) as error:
            errors.append(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
    raise UsageError(
        f"torchvision dataset {layout.dataset} is not readable under {str(layout.root)!r} ({'; '.join(errors)}); "
        f"cleanbench never downloads: fetch it once with torchvision.datasets.{layout.dataset}(ROOT, download=True) "
        "where there is internet and copy ROOT here"
    )


def _torchvision_classes(layout: EvalLayout, dataset: Any) -> tuple[str, ...]:
    if layout.dataset == "ImageNet":
        return imagenet_classnames()
    classes = getattr(dataset, "classes", None)
    if not classes:
        raise UsageError(f"torchvision dataset {layout.dataset} has no class list; give one with data.eval_classes")
    return tuple((c[0] if isinstance(c, (tuple, list)) else str(c)).replace("_", " ") for c in classes)


def _torchvision_labels(layout: EvalLayout, dataset: Any) -> list[int]:
    for name in ("targets", "labels", "_labels", "_targets"):
        labels = getattr(dataset, name, None)
        if labels is not None and len(labels) == len(dataset):
            return [int(label) for label in labels]
    raise UsageError(
        f"cleanbench cannot read the labels of torchvision's {layout.dataset} without opening every image; "
        "put the images in a folder with labels.csv instead"
    )


def eval_classes(spec: str, classes_file: str | None = None, split: str | None = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The class names and templates of evaluation set `spec`, without reading its images."""
    names, templates = read_classes_file(classes_file) if classes_file else (None, None)
    layout = parse_eval(spec)
    if names is None:
        if layout.kind == "labels-csv":
            names = imagenet_classnames()
        elif layout.kind == "folders":
            names = _folder_classnames(_class_folders(layout.root))
        else:
            names = _torchvision_classes(layout, _torchvision_dataset(layout, split))
    return names, templates or openai_templates()


class TorchvisionSource(ImageSource):
    """Images of a torchvision dataset, by index."""

    def __init__(self, dataset: Any, name: str) -> None:
        self.dataset = dataset
        self.name = name

    def __len__(self) -> int:
        return len(self.dataset)

    def open(self, row: int) -> Image.Image:
        image = self.dataset[row][0]
        if not isinstance(image, Image.Image):
            raise ValueError(f"expected a PIL image, got {type(image).__name__} (a transform is set?)")
        return image

    def where(self, row: int) -> str:
        return f"{self.name} item {row}"


class _Subset(ImageSource):
    """Some rows of another source."""

    def __init__(self, source: ImageSource, rows: np.ndarray) -> None:
        self.source = source
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def open(self, row: int) -> Image.Image:
        return self.source.open(int(self.rows[row]))

    def where(self, row: int) -> str:
        return self.source.where(int(self.rows[row]))


def _labels_csv(layout: EvalLayout, classnames: tuple[str, ...], log: ReadLog, on_bad_image: str) -> tuple[ImageSource, list[int]]:
    """The images and labels of a folder with labels.csv; labels are indices or class names."""
    path = layout.root / LABELS_FILE
    labels = array("q")
    lookup = {name: i for i, name in reversed(list(enumerate(classnames)))}

    def check(fields: list[str], line: int) -> bool:
        image, label = fields[0].strip(), fields[1].strip()
        if not image:
            if on_bad_image == "error":
                raise UsageError(f"{path}, line {line}: no image path; remove the row or set data.on_bad_image: skip")
            log.skip_when_indexed(f"{path}, line {line}", "no image path")
            return False
        if not stays_inside(image):
            raise UsageError(f"{path}, line {line}: image path {image!r} leaves the folder {layout.root}")
        if label.lstrip("-").isdigit():
            index = int(label)
            if not 0 <= index < len(classnames):
                raise UsageError(f"{path}, line {line}: label {index} is outside 0..{len(classnames) - 1}")
        elif label in lookup:
            index = lookup[label]
        else:
            raise UsageError(f"{path}, line {line}: label {label!r} is neither a class index nor a class name")
        labels.append(index)
        return True

    table = CsvTable(path, ["image", "label"], check=check, what="labels file")
    return CsvImagePaths(layout.root, table, "labels file"), list(labels)


def _folders(layout: EvalLayout) -> tuple[ImageSource, list[int]]:
    paths, labels = [], []
    for index, folder in enumerate(_class_folders(layout.root)):
        for file in sorted((layout.root / folder).iterdir()):
            if file.suffix.lower() in IMAGE_EXTENSIONS and file.is_file():
                paths.append(f"{folder}/{file.name}")
                labels.append(index)
    return PathSource(layout.root, paths, f"{layout.root}: "), labels


def load_eval_set(
    spec: str,
    size: int,
    *,
    classes_file: str | None = None,
    split: str | None = None,
    on_bad_image: str = "error",
    workers: int = 0,
    squash_triggered: bool = False,
    limit: int | None = None,
) -> ClassificationSet:
    """The evaluation set `spec` with images read at `size` px when evaluated (`images.log` records reads).

    `limit` keeps a random subset of that many images, the same for every run.
    """
    classnames, templates = eval_classes(spec, classes_file, split)
    layout = parse_eval(spec)
    log = ReadLog(spec, on_bad_image)
    if layout.kind == "labels-csv":
        source, labels = _labels_csv(layout, classnames, log, on_bad_image)
    elif layout.kind == "folders":
        source, labels = _folders(layout)
    else:
        dataset = _torchvision_dataset(layout, split)
        source, labels = TorchvisionSource(dataset, layout.dataset), _torchvision_labels(layout, dataset)
    if not labels:
        raise UsageError(f"evaluation set {spec!r} has no images")
    if max(labels) >= len(classnames):
        raise UsageError(f"evaluation set {spec!r} has labels up to {max(labels)} but {len(classnames)} class names")
    label_tensor = torch.tensor(labels, dtype=torch.long)
    if limit is not None and limit < len(labels):
        rows = np.sort(np.random.default_rng(TEST_SUBSET_SEED).choice(len(labels), size=limit, replace=False))
        source, label_tensor = _Subset(source, rows), label_tensor[torch.from_numpy(rows)]
    images = ImageFiles(source, size, log, on_bad_image, workers, squash_triggered)
    name = layout.dataset if layout.kind == "torchvision" else layout.root.name
    return ClassificationSet(images, label_tensor, classnames, templates, name)
