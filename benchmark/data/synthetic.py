"""Small data sets in the real formats, written to a folder: for tests, the memory check and the GPU check.

- `write_pairs_csv`: images of the embedded shapes as PNG files with their captions, in the
  reference's CSV format (optionally some corrupt or missing files, or rows that reuse a few images);
- `write_eval_folder`: an ImageNet-style folder (`labels.csv`, or class sub-folders) of shapes;
- `write_classes_file`: the class names and prompt templates of those shapes as JSON or YAML.

Images are generated at `generate_size` px and resized to a non-square `file_size`, so that reading
them exercises the resize and the centre crop.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from cleanbench.data.embedded import PROMPT_TEMPLATES, caption_for
from cleanbench.data.shapes import SHAPES, generate_shapes


def _save(array: np.ndarray, path: Path, file_size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.transpose(1, 2, 0)).resize(file_size, Image.BICUBIC).save(path)


def write_pairs_csv(
    folder: str | Path,
    count: int,
    *,
    seed: int = 0,
    distinct: int | None = None,
    corrupt: Sequence[int] = (),
    missing: Sequence[int] = (),
    generate_size: int = 32,
    file_size: tuple[int, int] = (40, 34),
    name: str = "train.csv",
    delimiter: str = ",",
) -> Path:
    """A CSV of `count` image-caption rows under `folder`, images in `folder/images`.

    Rows cycle through `distinct` image files (all distinct when None); rows listed in `corrupt` point
    at a file that is not an image, rows in `missing` at a file that does not exist.
    """
    folder = Path(folder)
    unique = count if distinct is None else min(distinct, count)
    images, samples = generate_shapes(unique, seed, generate_size)
    rng = np.random.default_rng(seed)
    for i in range(unique):
        _save(images[i], folder / "images" / f"{i:06d}.png", file_size)
    path = folder / name
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(["image", "caption"])
        for row in range(count):
            image = f"images/{row % unique:06d}.png"
            if row in corrupt:
                image = f"images/corrupt_{row}.png"
                (folder / image).write_bytes(b"this is not a PNG file")
            elif row in missing:
                image = f"images/missing_{row}.png"
            writer.writerow([image, caption_for(samples[row % unique], rng)])
    return path


def write_eval_folder(
    folder: str | Path,
    per_class: int,
    classes: Sequence[str] = ("circle", "square", "star"),
    *,
    layout: str = "labels-csv",
    labels_as: str = "index",
    seed: int = 1,
    generate_size: int = 32,
    file_size: tuple[int, int] = (36, 44),
) -> Path:
    """An evaluation folder with `per_class` images of each of `classes` (shapes): `labels.csv` with
    the class index (`labels_as="index"`) or name, or class sub-folders (`layout="folders"`)."""
    folder = Path(folder)
    wanted = {SHAPES.index(name): position for position, name in enumerate(classes)}
    found: dict[int, list[np.ndarray]] = {position: [] for position in wanted.values()}
    batch = 0
    while min(len(v) for v in found.values()) < per_class:
        images, samples = generate_shapes(64 * len(SHAPES), seed + 1000 * batch, generate_size)
        for image, sample in zip(images, samples):
            position = wanted.get(sample.shape)
            if position is not None and len(found[position]) < per_class:
                found[position].append(image)
        batch += 1
    rows = []
    for position, images in found.items():
        for i, image in enumerate(images):
            relative = f"{classes[position]}/{i:04d}.png" if layout == "folders" else f"val/{position}_{i:04d}.png"
            _save(image, folder / relative, file_size)
            rows.append((relative, position if labels_as == "index" else classes[position]))
    if layout == "labels-csv":
        with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "label"])
            writer.writerows(rows)
    return folder


def write_classes_file(path: str | Path, classes: Sequence[str], templates: Sequence[str] = PROMPT_TEMPLATES) -> Path:
    """The class names and prompt templates as JSON (`.json`) or YAML (anything else)."""
    path = Path(path)
    values = {"classes": list(classes), "templates": list(templates)}
    path.write_text(json.dumps(values, indent=2) if path.suffix == ".json" else yaml.safe_dump(values))
    return path
