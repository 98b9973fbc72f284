"""The defense set: finetune, unimodal, cleanclip, supervised-finetune, none; options; views; controls."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from cleanbench import augment, synonyms
from cleanbench.augment import EDA, clean_caption
from cleanbench.cli import main
from cleanbench.config import build_options
from cleanbench.data.base import PairSet
from cleanbench.data.embedded import load_embedded, vocabulary_words
from cleanbench.defenses import cleanclip, finetune, supervised, unimodal
from cleanbench.defenses.base import DefenseContext, UndeclaredAccessError
from cleanbench.errors import UsageError
from cleanbench.models import build_model
from cleanbench.registry import DEFENSES
from cleanbench.runner import run_cell
from cleanbench.synonyms import check_source_name, embedded_table, load_wordnet, synonym_source, wordnet_synonyms

DEFENSE_NAMES = ["none", "finetune", "unimodal", "cleanclip", "supervised-finetune"]
FAST = {"epochs": 1, "batch_size": 64}


def _options(name: str) -> dict:
    return {} if name == "none" else dict(FAST)


@pytest.fixture(scope="module")
def small():
    """A tiny untrained model and 128 clean labelled pairs."""
    torch.manual_seed(0)
    bundle = build_model()
    data = load_embedded(0, n_pretrain=8, n_clean=128, n_test=8)
    return bundle, data.clean


def _apply(name: str, bundle, clean, **options):
    cls = DEFENSES.get(name)
    defense = cls(build_options(cls.Options, {**_options(name), **options}, name))
    context = DefenseContext(clean, torch.device("cpu"), seed=0, progress=False, needs=cls.needs, defense_name=name)
    bundle = dataclasses.replace(bundle, model=copy.deepcopy(bundle.model))
    model = defense.apply(bundle, context)
    return model, context


def test_list_shows_every_defense_with_stage_and_source(capsys):
    assert main(["list", "defenses"]) == 0
    out = capsys.readouterr().out
    for name in DEFENSE_NAMES:
        cls = DEFENSES.get(name)
        assert f"  {name:<20} {cls.description}" in out
        assert cls.source in out
    assert out.count("[stage: post-training finetuning]") >= 4


@pytest.mark.parametrize("module, name, batch, lr, warmup", [
    (finetune, "finetune", 64, 1e-5, 50), (unimodal, "unimodal", 64, 1e-5, 50),
    (cleanclip, "cleanclip", 64, 1e-5, 50), (supervised, "supervised-finetune", 80, 1e-4, 500),
])
def test_reference_options_are_the_specs(module, name, batch, lr, warmup):
    cls = DEFENSES.get(name)
    build_options(cls.Options, {}, name)  # the embedded defaults build
    reference = build_options(cls.Options, module.REFERENCE_OPTIONS, name).train_config()
    assert (reference.batch_size, reference.lr, reference.warmup_steps, reference.epochs) == (batch, lr, warmup, 10)


def test_objectives_differ_only_in_weights():
    weights = {name: DEFENSES.get(name)(None).objective_weights() for name in ("finetune", "unimodal")}
    assert weights == {"finetune": (1.0, 0.0), "unimodal": (0.0, 1.0)}
    clean = DEFENSES.get("cleanclip")
    assert clean(clean.Options(clip_weight=1.0, inmodal_weight=2.0)).objective_weights() == (1.0, 2.0)


def test_finetune_has_no_view_options():
    with pytest.raises(UsageError, match="unknown key 'inmodal_weight'"):
        build_options(DEFENSES.get("finetune").Options, {"inmodal_weight": 1.0}, "finetune")
    with pytest.raises(UsageError, match="unknown image view"):
        build_options(DEFENSES.get("unimodal").Options, {"image_view": "mixup"}, "unimodal")


@pytest.mark.parametrize("name, views", [("finetune", False), ("unimodal", True), ("cleanclip", True)])
def test_contrastive_defenses_share_the_trainer(small, name, views):
    bundle, clean = small
    before = copy.deepcopy(bundle.model.state_dict())
    model, context = _apply(name, bundle, clean)
    assert [s.stage for s in context.stats] == [f"defense:{name}"]
    assert context.stats[0].steps == 2  # 128 pairs, batch 64, one epoch
    assert ("text_view_operations" in context.notes) is views
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_options_from_command_line_and_yaml(tmp_path, tiny, capsys):
    config = tiny(defense="finetune").to_dict()
    config["defense_options"] = {"epochs": 1, "batch_size": 64, "lr": 5e-4}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(path), "--defense-opt", "weight_decay=0.05", "--quiet"]) == 0
    card_path = capsys.readouterr().out.strip().splitlines()[-1].removeprefix("run card: ")
    card = json.loads(Path(card_path).read_text())
    assert card["defense"]["options"]["lr"] == 5e-4  # from YAML
    assert card["defense"]["options"]["weight_decay"] == 0.05  # from --defense-opt
    assert card["defense"]["training"][0]["stage"] == "defense:finetune"


def test_supervised_trains_the_image_tower_only(small):
    bundle, clean = small
    before = copy.deepcopy(bundle.model.state_dict())
    model, context = _apply("supervised-finetune", bundle, clean)
    after = model.state_dict()
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("visual.") for k in changed)
    assert context.notes == {"head": "zeroshot", "classes": 10}


def test_supervised_linear_head_is_seeded(small):
    bundle, clean = small
    first, _ = _apply("supervised-finetune", bundle, clean, head="linear")
    second, _ = _apply("supervised-finetune", bundle, clean, head="linear")
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())


def test_supervised_refuses_unlabelled_data(small):
    bundle, clean = small
    unlabelled = PairSet(clean.images, clean.captions, torch.full_like(clean.labels, -1), clean.classnames)
    with pytest.raises(UsageError, match=r"needs a class label for every clean finetuning image, but 128 of 128"):
        _apply("supervised-finetune", bundle, unlabelled)


def test_supervised_refusal_in_a_run_is_one_line_and_a_failed_card(tiny, tmp_path, capsys):
    plugin = tmp_path / "unlabelled.py"  # SuFi on clean pairs whose labels are unknown
    plugin.write_text(
        "import torch\n"
        "from cleanbench.defenses.supervised import SupervisedFinetune\n"
        "from cleanbench.registry import register_defense\n"
        "@register_defense\n"
        "class Unlabelled(SupervisedFinetune):\n"
        "    name = 'sufi-unlabelled'\n"
        "    def apply(self, bundle, context):\n"
        "        context.clean.labels = torch.full_like(context.clean.labels, -1)\n"
        "        return super().apply(bundle, context)\n"
    )
    config = tiny(defense="sufi-unlabelled")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    code = main(["run", "--config", str(path), "--plugin", str(plugin), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(
        "error: defense 'sufi-unlabelled' needs a class label for every clean finetuning image, but 128 of 128 have none")
    (card_path,) = Path(config.results_dir).rglob("*.json")
    card = json.loads(card_path.read_text())
    assert card["status"] == "failed" and "needs a class label" in card["error"]


@pytest.mark.parametrize("name", DEFENSE_NAMES)
def test_clean_control_runs_every_defense(tiny, name):
    card, _ = run_cell(tiny(attack="none", defense=name, defense_options=_options(name)), progress=False, log=lambda m: None)
    assert card["status"] == "ok"
    assert card["poison"]["count"] == 0
    assert card["defense"]["name"] == name
    assert 0 <= card["metrics"]["defended"]["ca_top1"]["value"] <= 1


def test_guarded_data_needs_a_declaration(small):
    bundle, clean = small
    context = DefenseContext(clean, torch.device("cpu"), 0, needs=frozenset({"clean_pairs"}), defense_name="x",
                             restricted={"poison_indices": lambda: torch.arange(3)})
    with pytest.raises(UndeclaredAccessError, match="read poison_indices without declaring it"):
        context.poison_indices()
    assert context.reads == ["poison_indices"]
    allowed = DefenseContext(clean, torch.device("cpu"), 0, needs=frozenset({"poison_indices"}),
                             restricted={"poison_indices": lambda: torch.arange(3)})
    assert allowed.poison_indices().tolist() == [0, 1, 2]
    assert allowed.notes["restricted_reads"] == ["poison_indices"]


# --- text views (docs/reference.md §3.2) ---------------------------------------------------------------


def test_clean_caption_matches_the_reference():
    assert clean_caption("The ring's  ORANGE-red\tand 2 large!") == "the rings orange red and large"


def _counting(eda: EDA) -> Counter:
    counts: Counter = Counter()
    for method in ("_replace", "_insert", "_swap", "_delete"):
        real = getattr(eda, method)

        def wrapped(*args, _real=real, _name=method):
            counts[_name] += 1
            return _real(*args)

        setattr(eda, method, wrapped)
    return counts


def test_one_uniform_operation_per_caption_without_synonyms():
    eda = EDA(seed=3, synonyms=synonym_source("none"))
    assert eda.operations == ["insertion", "swap", "deletion"] and eda.source.origin is None
    counts = _counting(eda)
    views = eda.views(["a large red diamond on a noisy background."] * 900)
    assert sum(counts.values()) == 900 and "_replace" not in counts
    assert all(250 < counts[m] < 350 for m in ("_insert", "_swap", "_delete"))
    assert all(v == clean_caption(v) for v in views)


def test_operations_follow_eda():
    eda = EDA(seed=0, synonyms=synonym_source("none"))
    words = "a cyan crescent at the top left on a gradient background".split()  # 11 words: n = 1
    assert sorted(eda._swap(words, 1)) == sorted(words)
    inserted = eda._insert(words, 1)
    assert len(inserted) == 12 and Counter(inserted) - Counter(words) <= Counter(words)
    for _ in range(20):
        kept = eda._delete(words)
        assert 1 <= len(kept) <= len(words) and all(w in words for w in kept)
    assert eda._delete(["star"]) == ["star"]
    assert EDA()("123 !") == "123 !"  # no letters: returned as is (the reference crashes)


def test_views_are_seeded():
    captions = ["a large red diamond on a noisy background."] * 20
    assert EDA(seed=1).views(captions) == EDA(seed=1).views(captions)
    assert EDA(seed=1).views(captions) != EDA(seed=2).views(captions)


needs_wordnet = pytest.mark.skipif(load_wordnet() is None, reason="nltk with a WordNet database is not installed")


def test_embedded_synonyms_ship_with_the_package_and_spare_stop_words():
    eda = EDA(seed=0, synonyms=synonym_source("embedded"))
    assert eda.operations == ["synonym", "insertion", "swap", "deletion"]
    assert "big" in eda.synonyms("large") and "large" not in eda.synonyms("large")
    assert all(s == clean_caption(s) for s in eda.synonyms("red"))
    assert eda.synonyms("zebra") == []  # outside the embedded vocabulary: no synonyms
    words = "the ring is on the".split()  # one content word: it is the one replaced
    for _ in range(5):
        replaced = eda._replace(words, 1)
        assert replaced[0] == "the" and replaced[-3:] == ["is", "on", "the"] and "ring" not in replaced


def test_embedded_table_covers_every_caption_word():
    words = set(clean_caption(" ".join(vocabulary_words())).split())
    assert set(embedded_table()["synonyms"]) == words


@needs_wordnet
def test_embedded_table_is_what_wordnet_gives():
    reader, _ = load_wordnet()
    table = embedded_table()
    assert table["source"] == f"WordNet {reader.get_version()}"
    assert {w: wordnet_synonyms(reader, w) for w in table["synonyms"]} == table["synonyms"]


def test_synonym_sources_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="choose one of embedded, wordnet, none"):
        check_source_name("wordnett")
    monkeypatch.setattr(synonyms, "load_wordnet", lambda: None)
    with pytest.raises(ValueError, match="pip install 'cleanbench\\[wordnet\\]'.*synonyms=embedded"):
        check_source_name("wordnet")
    with pytest.raises(UsageError, match="synonyms=wordnet needs nltk"):
        build_options(cleanclip.CleanCLIPOptions, {"synonyms": "wordnet"}, "defense 'cleanclip' options")


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(), reason="Debian's wordnet-base is not installed")
def test_debian_wordnet_database_opens_offline():
    pytest.importorskip("nltk")
    reader = synonyms._database_reader(Path("/usr/share/wordnet"))
    assert reader.get_version() == "3.0"
    assert "noun.shape" in {s.lexname() for s in reader.synsets("circle")}
    assert "big" in {lemma.name() for s in reader.synsets("large") for lemma in s.lemmas()}


def test_run_card_says_which_text_operations_ran(tiny):
    card, _ = run_cell(tiny(defense="cleanclip"), progress=False, log=lambda m: None)
    notes = card["defense"]["notes"]
    assert notes["text_view_operations"] == ["synonym", "insertion", "swap", "deletion"]
    assert notes["synonyms_from"] == "cleanbench:embedded_synonyms.json (WordNet 3.0)"
    assert card["defense"]["options"]["synonyms"] == "embedded"
    card, _ = run_cell(tiny(defense="cleanclip", defense_options={**FAST, "synonyms": "none"}),
                       progress=False, log=lambda m: None)
    assert card["defense"]["notes"]["text_view_operations"] == ["insertion", "swap", "deletion"]
    assert card["defense"]["notes"]["synonyms_from"] is None


def test_crop_jitter_draws_nine_numbers_per_image_and_moves_them_in_one_copy(device_copies):
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    view = augment.image_view("crop-jitter")
    copies = device_copies()
    generator = torch.Generator().manual_seed(1)
    out = view(images, generator)
    assert len(copies) == 1 and out.dtype == torch.uint8 and out.shape == images.shape
    reference = torch.Generator().manual_seed(1)
    torch.rand(6 * 9, generator=reference)
    assert torch.equal(generator.get_state(), reference.get_state())
    assert torch.equal(out, view(images, torch.Generator().manual_seed(1)))
