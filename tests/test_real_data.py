"""File-backed training data: lazy CSV pairs, bad rows and paths, batches read by worker processes."""

import csv
import json

import open_clip
import pytest
import torch
from PIL import Image

from cleanbench.attacks.badnet import BadNet, BadNetOptions
from cleanbench.attacks.base import Seeded
from cleanbench.data import memcheck
from cleanbench.data.batches import Batches
from cleanbench.data.images import ImageFiles, preprocess
from cleanbench.data.pairs import Captions, TokenColumn, load_pairs
from cleanbench.data.synthetic import write_pairs_csv
from cleanbench.errors import RunError, UsageError
from cleanbench.models import ColumnTokenizer, tokenizer_for
from cleanbench.poisoning import apply_poison, plan_poison
from cleanbench.seeding import torch_generator


@pytest.fixture
def folder(tmp_path):
    """40 rows of shapes with captions; row 3 is a corrupt file and row 7 a missing one."""
    write_pairs_csv(tmp_path / "d", 40, corrupt=[3], missing=[7])
    return tmp_path / "d"


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_building_pairs_opens_no_image_and_reads_captions_on_demand(folder, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an image was opened while indexing")

    monkeypatch.setattr(Image, "open", refuse)
    pairs = load_pairs(folder / "train.csv", 32)
    assert len(pairs) == 40 and isinstance(pairs.images, ImageFiles) and isinstance(pairs.captions, Captions)
    assert list(pairs.captions) == [row["caption"] for row in _rows(folder / "train.csv")]
    assert (pairs.labels == -1).all()
    tokens = ColumnTokenizer(tokenizer_for("cleanbench-tiny"))(pairs.captions)
    assert isinstance(tokens, TokenColumn)  # tokenised when a batch needs them, not here


def test_columns_and_delimiter_are_configurable(folder):
    rows = _rows(folder / "train.csv")
    path = folder / "other.tsv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(["id", "text", "file"])
        for i, row in enumerate(rows[:10]):
            writer.writerow([i, row["caption"], row["image"]])
    pairs = load_pairs(path, 32, image_column="file", caption_column="text", delimiter=";")
    assert len(pairs) == 10 and pairs.captions[9] == rows[9]["caption"]
    with pytest.raises(UsageError, match="has no column 'image'; its columns are id, text, file"):
        load_pairs(path, 32, delimiter=";")


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_is_an_error_naming_the_line_and_file(folder, workers):
    pairs = load_pairs(folder / "train.csv", 32, workers=workers)
    with pytest.raises(RunError, match=r"train.csv, line 5: image 'images/corrupt_3.png': cannot be read"):
        list(Batches({"images": pairs.images}, 8).in_order())
    with pytest.raises(RunError, match=r"line 9: image 'images/missing_7.png': the file does not exist"):
        pairs.images[7]


def test_skipped_images_are_counted_once_and_left_out_of_batches(folder):
    pairs = load_pairs(folder / "train.csv", 32, on_bad_image="skip", workers=2)
    batches = Batches({"images": pairs.images}, 8)
    seen = []
    for seed in range(2):
        for batch in batches.epoch(torch_generator(seed)):
            assert len(batch["images"]) == len(batch["index"])
            seen += batch["index"].tolist()
    assert 3 not in seen and 7 not in seen and len(seen) == 2 * 38
    log = pairs.images.log
    assert log["skipped"] == 2 and log["images_read"] == 76
    assert any("corrupt_3.png" in example for example in log["skipped_examples"])
    json.dumps(log)  # goes into the run card as it is


def test_rows_without_image_path(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("image,caption\na.png,one\n,two\nb.png,three\n")
    with pytest.raises(UsageError, match=r"line 3: the 'image' column is empty"):
        load_pairs(path, 32)
    pairs = load_pairs(path, 32, on_bad_image="skip")
    assert len(pairs) == 2 and list(pairs.captions) == ["one", "three"]
    assert pairs.images.log["skipped_when_indexed"] == 1


@pytest.mark.parametrize("image", ["../outside.png", "/etc/passwd", "images/../../outside.png"])
def test_paths_cannot_leave_the_dataset_root(tmp_path, image):
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "train.csv"
    path.write_text(f"image,caption\nimages/fine.png,ok\n{image},escape\n")
    with pytest.raises(UsageError, match="leaves the dataset root"):
        load_pairs(path, 32)
    assert len(load_pairs(path, 32, allow_outside_root=True)) == 2


def test_outside_file_is_read_when_allowed(tmp_path, folder):
    path = tmp_path / "abs.csv"
    path.write_text(f"image,caption\n{folder / 'images' / '000000.png'},absolute\n")
    pairs = load_pairs(path, 32, allow_outside_root=True)
    assert pairs.images[0].shape == (3, 32, 32)


def test_crop_is_open_clip_preprocessing_up_to_normalisation(folder):
    image = Image.open(folder / "images" / "000001.png")
    assert image.size == (40, 34)
    transform = open_clip.image_transform(32, is_train=False)
    ours = preprocess(image, 32).float() / 255
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    torch.testing.assert_close((ours - mean) / std, transform(image), atol=1e-5, rtol=0)


def test_file_batches_are_the_in_memory_batches(tmp_path):
    pairs = load_pairs(write_pairs_csv(tmp_path, 20), 32, workers=2)
    tokenizer = ColumnTokenizer(tokenizer_for("cleanbench-tiny"))
    eager = {"images": pairs.images[:], "tokens": tokenizer(list(pairs.captions)), "labels": torch.arange(20)}
    lazy = {"images": pairs.images, "tokens": tokenizer(pairs.captions), "labels": torch.arange(20)}
    a = list(Batches(eager, 6).epoch(torch_generator(5)))
    b = list(Batches(lazy, 6).epoch(torch_generator(5)))
    assert len(a) == len(b) == 3  # drop_last, as in memory
    for x, y in zip(a, b):
        for key in ("index", "images", "tokens", "labels"):
            assert torch.equal(x[key], y[key])


def test_poisoned_rows_get_the_same_trigger_wherever_they_are_read(folder):
    pairs = load_pairs(folder / "train.csv", 32, on_bad_image="skip", workers=2)
    attack = BadNet(BadNetOptions(patch_size=64, location="random", noise="fresh"), 32, seed=0)
    plan = plan_poison(pairs, attack, target_index=0, target_name="star", budget=5,
                       templates=("a photo of a {}.",), seed=1)
    poisoned = apply_poison(pairs, plan, attack, seed=1)
    assert isinstance(poisoned.images, ImageFiles)
    for row, caption in zip(plan.indices, plan.captions):
        assert poisoned.captions[row] == caption == "a photo of a star."
    readable = [r for r in plan.indices if r not in (3, 7)]
    once = poisoned.images[readable]
    batches = {}
    for batch in Batches({"images": poisoned.images}, 8).epoch(torch_generator(2)):
        batches.update({int(r): image for r, image in zip(batch["index"], batch["images"])})
    for i, row in enumerate(readable):
        assert torch.equal(batches[row], once[i])
        assert not torch.equal(once[i], pairs.images[row])
    clean_row = next(r for r in range(40) if r not in plan.indices and r not in (3, 7))
    assert torch.equal(batches[clean_row], pairs.images[clean_row])


def test_squash_triggered_reads_poisoned_rows_squashed(folder):
    pairs = load_pairs(folder / "train.csv", 32, squash_triggered=True)
    attack = BadNet(BadNetOptions(), 32, seed=0)
    poisoned = pairs.images.triggered([0], Seeded(attack, 0, "poison-trigger"))
    image = Image.open(folder / "images" / "000000.png")
    squashed, cropped = preprocess(image, 32, "squash"), preprocess(image, 32, "crop")
    assert not torch.equal(squashed, cropped)
    assert torch.equal(poisoned.load(0), squashed) and torch.equal(poisoned.load(1), pairs.images.load(1))
    assert torch.equal(pairs.images.trigger_source().load(0), squashed)


def test_indexing_a_large_csv_adds_little_memory():
    """100,000 rows in a fresh process (issue 7 allows 300 MB for 1,000,000 rows; see memcheck)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        memcheck.main(["--rows", "100000", "--images", "2"])
    result = json.loads(out.getvalue())
    assert result["rows"] == 100_000
    assert result["growth_anonymous_mib"] < 10
    assert result["growth_mib"] < 30
