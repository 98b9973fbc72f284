"""Zero-shot evaluation sets on disk: ImageNet-style folders, torchvision datasets, class-name files,
target validation, and evaluation streamed from files."""

import pickle

import numpy as np
import pytest
import torch
import torchvision

from cleanbench.attacks.badnet import BadNet, BadNetOptions
from cleanbench.config import DataConfig
from cleanbench.data.base import ClassificationSet
from cleanbench.data.embedded import PROMPT_TEMPLATES
from cleanbench.data.images import ImageFiles
from cleanbench.data.loading import check_file_data
from cleanbench.data.synthetic import write_classes_file, write_eval_folder, write_pairs_csv
from cleanbench.data.zeroshot import eval_classes, load_eval_set, read_classes_file
from cleanbench.errors import UsageError
from cleanbench.evaluation import evaluate
from cleanbench.models import build_model

SHAPES3 = ("circle", "square", "star")


@pytest.fixture
def imagenet_style(tmp_path):
    """labels.csv with class indices over three classes, and a YAML file naming them."""
    folder = write_eval_folder(tmp_path / "val", 6, SHAPES3)
    write_classes_file(folder / "classes.yaml", SHAPES3)
    return folder


def test_labels_csv_folder_defaults_to_imagenet_names_and_80_templates(imagenet_style):
    test = load_eval_set(str(imagenet_style), 32)
    assert len(test) == 18 and test.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert len(test.classnames) == 1000 and test.classnames[954] == "banana"
    assert len(test.templates) == 80 and test.templates[0] == "a bad photo of a {}."
    assert isinstance(test.images, ImageFiles) and test.images[0].shape == (3, 32, 32)


def test_classes_file_names_classes_and_templates(imagenet_style, tmp_path):
    test = load_eval_set(str(imagenet_style), 32, classes_file=str(imagenet_style / "classes.yaml"))
    assert test.classnames == SHAPES3 and test.templates == PROMPT_TEMPLATES
    json_file = write_classes_file(tmp_path / "c.json", SHAPES3, ["a {} drawing."])
    assert read_classes_file(json_file) == (SHAPES3, ("a {} drawing.",))


def test_labels_may_be_class_names(tmp_path):
    folder = write_eval_folder(tmp_path / "named", 2, SHAPES3, labels_as="name")
    write_classes_file(folder / "classes.json", SHAPES3)
    test = load_eval_set(str(folder), 32, classes_file=str(folder / "classes.json"))
    assert test.labels.tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("text, message", [
    ("classes: [a, b]\ntemplates: ['no placeholder']\n", "must contain '{}' once"),
    ("templates: ['{} and {}']\n", "must contain '{}' once"),
    ("classes: !!python/object/apply:os.system ['true']\n", "cannot parse"),
    ("classses: [a]\n", "unknown key 'classses'"),
    ("classes: []\n", "non-empty list"),
])
def test_bad_classes_files_are_refused_and_never_run(tmp_path, text, message):
    path = tmp_path / "classes.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        read_classes_file(path)


def test_class_subfolders(tmp_path):
    folder = write_eval_folder(tmp_path / "folders", 3, ("square", "star"), layout="folders")
    test = load_eval_set(str(folder), 32)
    assert test.classnames == ("square", "star") and test.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_imagenet_wordnet_folders_get_imagenet_names(tmp_path):
    for i in range(1000):
        (tmp_path / f"n{i:08d}").mkdir()
    classnames, templates = eval_classes(str(tmp_path))
    assert classnames[954] == "banana" and len(templates) == 80


def test_torchvision_folder_dataset(tmp_path):
    folder = write_eval_folder(tmp_path / "tv", 2, ("circle", "star"), layout="folders")
    test = load_eval_set(f"torchvision:ImageFolder:{folder}", 32)
    assert test.classnames == ("circle", "star") and len(test) == 4 and test.images[3].shape == (3, 32, 32)


def test_cifar10_on_disk(tmp_path, monkeypatch):
    """A CIFAR-10 test batch in torchvision's format (its checksums patched away for this fake)."""
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    with open(base / "test_batch", "wb") as handle:
        pickle.dump({"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3, 4, 9]}, handle)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(base / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": names}, handle)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    test = load_eval_set(f"torchvision:CIFAR10:{tmp_path}", 32)
    assert test.classnames[9] == "truck" and test.labels.tolist() == [0, 1, 2, 3, 4, 9]
    assert len(test.templates) == 80 and test.images[5].shape == (3, 32, 32)


def test_missing_torchvision_dataset_is_never_downloaded(tmp_path):
    with pytest.raises(UsageError, match="never downloads"):
        load_eval_set(f"torchvision:CIFAR100:{tmp_path}", 32)
    with pytest.raises(UsageError, match="did you mean 'CIFAR10'"):
        load_eval_set(f"torchvision:CIFAR11:{tmp_path}", 32)


@pytest.fixture
def csv_data(tmp_path, imagenet_style):
    train = write_pairs_csv(tmp_path / "train", 8)
    return lambda **values: DataConfig(source="csv", train=str(train), eval=str(imagenet_style), **values)


@pytest.mark.parametrize("target, expected", [("banana", "banana"), ("954", "banana"), (954, "banana"), ("744", "744")])
def test_target_by_name_or_index_against_the_class_list(csv_data, target, expected):
    data = csv_data()
    assert check_file_data(data, target) == expected
    assert (data.n_pretrain, data.n_clean, data.n_test) == (8, 8, 18)


@pytest.mark.parametrize("target, message", [
    ("bananna", "did you mean 'banana'"), ("1000", "outside 0..999"), ("missile", "occurs at indices 657, 744"),
])
def test_bad_targets(csv_data, target, message):
    with pytest.raises(UsageError, match=message):
        check_file_data(csv_data(), target)


def test_target_must_be_in_a_given_class_list(csv_data, imagenet_style):
    data = csv_data(eval_classes=str(imagenet_style / "classes.yaml"))
    assert check_file_data(data, "2") == "star"
    with pytest.raises(UsageError, match="'banana' is not in the class list"):
        check_file_data(data, "banana")


def test_streamed_evaluation_equals_in_memory_evaluation(imagenet_style):
    """Same images, a trigger without randomness: the file-backed path gives the same numbers."""
    files = load_eval_set(str(imagenet_style), 32, classes_file=str(imagenet_style / "classes.yaml"), workers=2)
    memory = ClassificationSet(files.images[:], files.labels, files.classnames, files.templates)
    torch.manual_seed(0)
    bundle = build_model()
    attack = BadNet(BadNetOptions(), 32, seed=0)
    a = evaluate(bundle, files, attack, 2, seed=0, device="cpu", batch_size=5)
    b = evaluate(bundle, memory, attack, 2, seed=0, device="cpu")
    for key in ("ca_top1", "ca_top5", "asr", "ra", "stealthiness"):
        assert a[key] == b[key]
    assert a.keys() == b.keys()  # one result shape
    assert files.images.log["images_read"] == 2 * 18  # read at once, then streamed


def test_squash_triggered_evaluation_triggers_squashed_copies(imagenet_style):
    """The reference's behaviour: clean images are cropped, the triggered copies made from squashed ones."""
    classes = str(imagenet_style / "classes.yaml")
    cropped = load_eval_set(str(imagenet_style), 32, classes_file=classes)
    squashed = load_eval_set(str(imagenet_style), 32, classes_file=classes, squash_triggered=True)
    torch.manual_seed(0)
    bundle = build_model()
    attack = BadNet(BadNetOptions(), 32, seed=0)
    a = evaluate(bundle, cropped, attack, 2, seed=0, device="cpu")
    b = evaluate(bundle, squashed, attack, 2, seed=0, device="cpu")
    assert a["ca_top1"] == b["ca_top1"] and a["asr"]["total"] == b["asr"]["total"] == 12
    assert a["stealthiness"]["l2"] != pytest.approx(b["stealthiness"]["l2"])  # another image under the patch
