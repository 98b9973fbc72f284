"""One image column for memory and files: the two storages give the same images, batches, triggered
pixels and evaluation numbers, a third implementation runs through every consumer unchanged, and no
consumer module asks which storage it has."""

from __future__ import annotations

import ast
import csv
import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image

from cleanbench.attacks.base import Seeded
from cleanbench.config import TrainConfig
from cleanbench.data.base import ClassificationSet, PairSet
from cleanbench.data.batches import Batches
from cleanbench.data.column import ImageColumn, MemoryImages
from cleanbench.data.embedded import load_embedded
from cleanbench.data.images import ImageFiles
from cleanbench.data.pairs import load_pairs
from cleanbench.defenses.base import restricted_data
from cleanbench.detectors.base import embed_pairs
from cleanbench.evaluation import evaluate
from cleanbench.models import build_model
from cleanbench.poisoning import apply_poison, plan_poison
from cleanbench.registry import ATTACKS
from cleanbench.seeding import seed_everything, torch_generator
from cleanbench import stages

ROOT = Path(__file__).parent.parent
TEMPLATES = ("a photo of a {}.",)


def _write_csv(images: torch.Tensor, captions, folder: Path) -> Path:
    """The images as PNG files (lossless) with a CSV of captions, in the reference's format."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        for i, (image, caption) in enumerate(zip(images, captions)):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
            writer.writerow([f"{i}.png", caption])
    return folder / "pairs.csv"


@pytest.fixture(scope="module")
def data():
    return load_embedded(0, n_pretrain=192, n_clean=64, n_test=96)


@pytest.fixture(scope="module")
def on_files(data, tmp_path_factory):
    """The embedded pretraining pairs and test images, written to PNG files and read back lazily."""
    folder = tmp_path_factory.mktemp("column")
    pretrain = load_pairs(_write_csv(data.pretrain.images[:], data.pretrain.captions, folder / "pretrain"), 32,
                          workers=2)
    pretrain = PairSet(pretrain.images, pretrain.captions, data.pretrain.labels.clone(), data.pretrain.classnames)
    test_pairs = load_pairs(_write_csv(data.test.images[:], ["x"] * len(data.test), folder / "test"), 32)
    test = dataclasses.replace(data.test, images=test_pairs.images)
    return pretrain, test


class OtherColumn(ImageColumn):
    """A third implementation of the interface (neither memory nor files): every consumer that uses
    only the interface runs on it unchanged."""

    def __init__(self, inner: MemoryImages) -> None:
        self.inner = inner
        self.device = inner.device

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index):
        return self.inner[index]

    def to(self, device):
        return OtherColumn(self.inner.to(device))

    def select(self, rows):
        return OtherColumn(self.inner.select(rows))

    def row_trigger(self, trigger):
        return self.inner.row_trigger(trigger)

    def triggered(self, rows, trigger):
        return OtherColumn(self.inner.triggered(rows, trigger))

    def replaced(self, rows, images):
        return OtherColumn(self.inner.replaced(rows, images))


def test_both_storages_are_image_columns_with_the_same_images(data, on_files):
    pretrain, test = on_files
    for memory, files in ((data.pretrain.images, pretrain.images), (data.test.images, test.images)):
        assert isinstance(memory, ImageColumn) and isinstance(files, ImageColumn)
        assert isinstance(memory, MemoryImages) and isinstance(files, ImageFiles)
        assert len(memory) == len(files)
        assert torch.equal(memory[:], files[:])
        rows = [5, 0, 17]
        assert torch.equal(memory[rows], files[rows]) and torch.equal(memory[3], files[3])
        assert torch.equal(memory.select(rows)[:], files.select(rows)[:])
        mask = torch.arange(len(memory)) % 3 == 0
        assert torch.equal(memory[mask], files[mask])
        assert torch.equal(next(iter(memory)), next(iter(files)))


def test_a_tensor_given_to_a_container_becomes_a_column(data):
    pairs = PairSet(data.clean.images[:], list(data.clean.captions), data.clean.labels, data.clean.classnames)
    assert isinstance(pairs.images, MemoryImages)
    picked = pairs.select([3, 1])
    assert isinstance(picked.images, MemoryImages) and picked.captions == [pairs.captions[3], pairs.captions[1]]
    with pytest.raises(TypeError, match="uint8"):
        MemoryImages(torch.zeros(2, 3, 4, 4))


def test_same_batches_from_both_storages(data, on_files):
    pretrain, _ = on_files
    tokens = torch.arange(len(pretrain))
    memory = Batches({"images": data.pretrain.images, "tokens": tokens}, 40)
    files = Batches({"images": pretrain.images, "tokens": tokens}, 40)
    assert len(memory) == len(files) == 4
    for a, b in ((memory.epoch(torch_generator(3)), files.epoch(torch_generator(3))),
                 (memory.in_order(), files.in_order())):
        a, b = list(a), list(b)
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert x.keys() == y.keys() == {"images", "tokens", "index"}
            assert all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("name", ["badnet", "blended", "sig", "wanet", "solid-patch", "label-consistent"])
def test_same_triggered_pixels_from_both_storages(data, on_files, name):
    """Default options (no random parameters): the memory and file columns give the same bytes, at
    once and batch by batch."""
    pretrain, _ = on_files
    cls = ATTACKS.get(name)
    attack = cls(cls.Options(), 32, 4)
    rows = [1, 4, 9, 30, 31, 100]
    trigger = Seeded(attack, 4, "poison-trigger")
    memory = data.pretrain.images.triggered(rows, trigger)
    files = pretrain.images.triggered(rows, trigger)
    assert torch.equal(memory[:], files[:])
    assert not torch.equal(memory[rows], data.pretrain.images[rows])
    batch = torch.tensor([30, 4])
    for column in (data.pretrain.images, pretrain.images):
        assert torch.equal(column.row_trigger(trigger)(column[batch], batch), memory[batch])
    replacement = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    assert torch.equal(data.pretrain.images.replaced([2, 7], replacement)[:],
                       pretrain.images.replaced([2, 7], replacement)[:])


RANDOM_TRIGGERS = [("badnet", {"location": "random", "noise": "fresh"}), ("blended", {"pattern": "fresh"}),
                   ("solid-patch", {"location": "random"}), ("badnet-stripes", {}), ("blended-stripes", {})]


@pytest.mark.parametrize("name, options", RANDOM_TRIGGERS)
def test_random_trigger_parameters_give_the_same_pixels_from_both_storages(data, on_files, name, options):
    """Random parameters: memory and files give a row the same pixels, at once, in any batch, on every
    read, and whichever other rows are triggered with it."""
    pretrain, _ = on_files
    cls = ATTACKS.get(name)
    attack = cls(cls.Options(**options), 32, 4)
    rows = [0, 3, 8, 50, 120]
    trigger = Seeded(attack, 4, "poison-trigger")
    memory = data.pretrain.images.triggered(rows, trigger)
    files = pretrain.images.triggered(rows, trigger)
    once = memory[rows]
    assert torch.equal(memory[:], files[:]) and not torch.equal(once, data.pretrain.images[rows])
    assert torch.equal(data.pretrain.images.triggered(rows[2:], trigger)[rows[2:]], once[2:])
    for column, triggered in ((data.pretrain.images, memory), (pretrain.images, files)):
        batches = {int(r): image for b in Batches({"images": triggered}, 7).epoch(torch_generator(1))
                   for r, image in zip(b["index"], b["images"])}
        for i, row in enumerate(rows):
            if row in batches:
                assert torch.equal(batches[row], once[i])
        assert torch.equal(column.row_trigger(trigger)(column[[50, 3]], torch.tensor([50, 3])), once[[3, 1]])


def test_same_evaluation_numbers_with_a_random_trigger_from_both_storages(data, on_files):
    """Evaluation triggers each test batch's rows with their own parameters: the same ASR and
    distances from memory and files, and with another batch size."""
    _, test = on_files
    cls = ATTACKS.get("badnet")
    attack = cls(cls.Options(location="random", noise="fresh"), 32, 0)
    seed_everything(0)
    bundle = build_model()
    results = [evaluate(bundle, split, attack, 3, 0, "cpu", batch_size=size)
               for split, size in ((data.test, 40), (test, 40), (data.test, 17))]
    for metrics in results:
        metrics.pop("seconds"), metrics.pop("images_per_second")
    assert results[0] == results[1]
    assert results[2]["stealthiness"] == results[0]["stealthiness"] and results[2]["asr"] == results[0]["asr"]


def test_the_noise_mode_gives_the_same_pixels_from_both_storages(data, on_files):
    """WaNet's noise mode (random per-pixel offsets) on the same rows: the same bytes in memory and on files."""
    pretrain, _ = on_files
    wanet = ATTACKS.get("wanet")
    plan = plan_poison(data.pretrain, wanet(wanet.Options(), 32, 0), 3, "star", 6, TEMPLATES, 0)
    assert plan.noise_indices
    attack = wanet(wanet.Options(), 32, 0)
    memory, files = apply_poison(data.pretrain, plan, attack, 0), apply_poison(pretrain, plan, attack, 0)
    assert torch.equal(memory.images[:], files.images[:])


def _tiny_cell(pretrain: PairSet, test: ClassificationSet) -> tuple[dict, dict, list[float]]:
    """Poison, pretrain 2 steps and evaluate: the metrics before and after, and the losses."""
    cls = ATTACKS.get("badnet")
    attack = cls(cls.Options(), 32, 0)
    poisoned = stages.poison(stages.PoisonInput(pretrain, attack, 3, "star", TEMPLATES, seed=0, poison_count=12))
    seed_everything(0)
    bundle = build_model()
    before = evaluate(bundle, test, attack, 3, 0, "cpu", batch_size=40)
    config = TrainConfig(epochs=1, batch_size=96, warmup_steps=1)
    stats = stages.pretrain(stages.PretrainInput(bundle, poisoned.pairs, config, 0, torch.device("cpu")))
    after = evaluate(bundle, test, attack, 3, 0, "cpu", batch_size=40)
    for metrics in (before, after):
        metrics.pop("seconds"), metrics.pop("images_per_second")
    return before, after, [stats.final_loss, *stats.epoch_losses]


def test_same_evaluation_numbers_on_a_tiny_cell_from_both_storages(data, on_files):
    pretrain, test = on_files
    memory = _tiny_cell(data.pretrain, data.test)
    files = _tiny_cell(pretrain, test)
    assert memory == files
    other = _tiny_cell(dataclasses.replace(data.pretrain, images=OtherColumn(data.pretrain.images)),
                       dataclasses.replace(data.test, images=OtherColumn(data.test.images)))
    assert other == memory


def test_a_third_column_runs_through_poisoning_embedding_and_the_oracle(data):
    other = dataclasses.replace(data.pretrain, images=OtherColumn(data.pretrain.images))
    cls = ATTACKS.get("label-consistent")
    attack = cls(cls.Options(), 32, 0)
    plan = plan_poison(data.pretrain, attack, 3, "star", 4, TEMPLATES, 0)
    a, b = apply_poison(data.pretrain, plan, attack, 0), apply_poison(other, plan, attack, 0)
    assert isinstance(b.images, OtherColumn) and torch.equal(a.images[:], b.images[:])
    seed_everything(0)
    bundle = build_model()
    x = embed_pairs(bundle, a, torch.device("cpu"), batch_size=50, progress=False)
    y = embed_pairs(bundle, b, torch.device("cpu"), batch_size=50, progress=False)
    assert torch.equal(x.images, y.images) and torch.equal(x.texts, y.texts)
    test = dataclasses.replace(data.test, images=OtherColumn(data.test.images))
    oracle_a = restricted_data(a, plan.indices, data.test, attack, 3, 0)["poisoned_test"]()
    oracle_b = restricted_data(b, plan.indices, test, attack, 3, 0)["poisoned_test"]()
    assert isinstance(oracle_a.images, ImageColumn) and torch.equal(oracle_a.images[:], oracle_b.images[:])


STORAGE_TYPES = {"LazyColumn", "ImageFiles", "MemoryImages", "SelectedRows", "TokenColumn", "Tensor"}
COLUMN_INTERNALS = {"data/column.py", "data/batches.py", "data/images.py", "data/lazy.py", "data/pairs.py",
                    "data/base.py"}
"""The modules that implement the columns; every other module uses only their interface."""


def _storage_branches(path: Path, name: str) -> list[str]:
    """`isinstance(x.images, ...)` anywhere, and `isinstance(..., <column type>)` calls."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2):
            continue
        subject, kinds = ast.unparse(node.args[0]), ast.unparse(node.args[1])
        names = {n.attr if isinstance(n, ast.Attribute) else getattr(n, "id", "") for n in ast.walk(node.args[1])}
        if names & (STORAGE_TYPES - {"Tensor"}) or ("images" in subject and names & STORAGE_TYPES):
            found.append(f"{name}:{node.lineno}: isinstance({subject}, {kinds})")
    return found


def test_no_consumer_branches_on_storage():
    branches = []
    for folder in ("benchmark", "attacks", "defenses", "detectors", "leaderboard", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT / "benchmark").as_posix() if folder == "benchmark" else ""
            if relative in COLUMN_INTERNALS:
                continue
            branches += _storage_branches(path, path.relative_to(ROOT).as_posix())
    assert not branches, "consumers must use the ImageColumn interface, not test the storage:\n" + "\n".join(branches)


def test_the_storage_check_finds_a_branch(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("def f(pairs):\n    return isinstance(pairs.images, torch.Tensor)\n"
                    "def g(c):\n    return isinstance(c, LazyColumn)\n"
                    "def h(x):\n    return isinstance(x, torch.Tensor)\n")
    assert len(_storage_branches(path, "probe.py")) == 2


def test_file_data_takes_the_noise_mode_and_the_perturbation(data, on_files):
    """WaNet's noise mode and label-consistent's perturbed poisons on file data: the column applies them."""
    pretrain, _ = on_files
    wanet, consistent = ATTACKS.get("wanet"), ATTACKS.get("label-consistent")
    attack = wanet(wanet.Options(), 32, 0)
    plan = plan_poison(pretrain, attack, 3, "star", 6, TEMPLATES, 0)
    assert plan.noise_indices
    poisoned = apply_poison(pretrain, plan, attack, 0)
    changed = (poisoned.images[:] != pretrain.images[:]).flatten(1).any(dim=1)
    assert set(torch.nonzero(changed).flatten().tolist()) == set(plan.indices) | set(plan.noise_indices)
    attack = consistent(consistent.Options(), 32, 0)
    plan = plan_poison(data.pretrain, attack, 3, "star", 4, TEMPLATES, 0)
    memory = apply_poison(data.pretrain, plan, attack, 0)
    files = apply_poison(pretrain, plan, attack, 0)
    assert torch.equal(memory.images[:], files.images[:])


def test_a_plugin_sees_the_same_kind_of_clean_images_on_both_paths(data, tmp_path):
    """check-plugin's `files` check hands a defense the clean pairs read back from PNG files: the
    same images, and an image column as on the embedded path."""
    from cleanbench.conformance import _pairs_from_files

    from cleanbench.registry import DEFENSES

    files = _pairs_from_files(data.clean, str(tmp_path))
    defense = DEFENSES.get("finetune")(DEFENSES.get("finetune").Options())
    contexts = [stages.defense_context(stages.DefendInput(defense, None, clean, 0, torch.device("cpu"), "finetune"))
                for clean in (data.clean, files)]
    memory_images, file_images = (context.clean.images for context in contexts)
    assert isinstance(memory_images, ImageColumn) and isinstance(file_images, ImageColumn)
    assert not isinstance(memory_images, torch.Tensor) and not isinstance(file_images, torch.Tensor)
    assert torch.equal(memory_images[:], file_images[:])
