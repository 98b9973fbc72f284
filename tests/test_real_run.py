"""Runs on files: `cleanbench run --data ... --eval-data ...`, skipped images in the card, saved models that
open_clip loads back, the finetune-pretrained threat, the paper presets, and the GPU check's CPU path."""

import contextlib
import io
import json
import time
from pathlib import Path

import open_clip
import pytest
import torch
import yaml

from cleanbench import gpu_check
from cleanbench.cache import ArtifactCache
from cleanbench.cli import main
from cleanbench.config import RunConfig, from_dict, merge, validate
from cleanbench.data.synthetic import write_classes_file, write_eval_folder, write_pairs_csv
from cleanbench.errors import UsageError
from cleanbench.export import saving_models
from cleanbench.presets import PRESETS, preset_values
from cleanbench.stages import resolve_file_data

SHAPES3 = ("circle", "square", "star")
TINY = {
    "pretrain": {"epochs": 1, "batch_size": 32, "warmup_steps": 1},
    "defense_options": {"epochs": 1, "batch_size": 32, "synonyms": "none"},
    "poison_rate": 0.1,
    "target": "star",
    "device": "cpu",
}


@pytest.fixture
def files(tmp_path):
    """64 training pairs (row 10 corrupt), a three-class labels.csv folder and its class-names file."""
    train = write_pairs_csv(tmp_path / "cc", 64, corrupt=[10])
    evaluation = write_eval_folder(tmp_path / "val", 5, SHAPES3)
    classes = write_classes_file(evaluation / "classes.yaml", SHAPES3)
    return train, evaluation, classes


def _run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def _config(tmp_path, files, **data):
    train, evaluation, classes = files
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**TINY, "results_dir": str(tmp_path / "results"), "cache_dir": str(tmp_path / "cache"),
                                    "data": {"eval_classes": str(classes), "limit_clean": 32, "workers": 2, **data}}))
    return path


def test_run_on_files_records_skips_and_saves_models_open_clip_loads(capsys, tmp_path, files):
    train, evaluation, _ = files
    config = _config(tmp_path, files, on_bad_image="skip")
    code, out, err = _run(capsys, "run", "--config", str(config), "--data", str(train), "--eval-data", str(evaluation),
                          "--save-model", str(tmp_path / "models"), "--quiet")
    assert code == 0, err
    card = json.loads(next((tmp_path / "results" / "runs").glob("*.json")).read_text())
    assert card["status"] == "ok"
    data = card["config"]["data"]
    assert (data["source"], data["n_pretrain"], data["n_clean"], data["n_test"], data["image_size"]) == ("csv", 64, 32, 15, 32)
    assert card["data"]["pretrain"]["skipped"] == 1 and card["data"]["pretrain"]["images_read"] == 63
    assert "corrupt_10.png" in card["data"]["pretrain"]["skipped_examples"][0]
    assert card["poison"]["count"] == 6 and card["metrics"]["poisoned"]["asr"]["total"] == 10
    cache = ArtifactCache(tmp_path / "cache")
    for name, kind in (("poisoned", "poisoned-models"), ("defended", "defended-models")):
        assert f"{name} model: local-dir:" in out
        folder = tmp_path / "models" / name
        saved = torch.load(folder / "open_clip_pytorch_model.bin", weights_only=True)
        stored = open_clip.create_model("cleanbench-tiny")
        assert cache.load(kind, card["artifacts"][f"{name}_model"], stored)
        reloaded = open_clip.create_model(f"local-dir:{folder}")
        by_path = open_clip.create_model("cleanbench-tiny", pretrained=str(folder / "open_clip_pytorch_model.bin"))
        assert saved.keys() == stored.state_dict().keys()
        for key, value in stored.state_dict().items():
            assert torch.equal(saved[key], value)
            assert torch.equal(reloaded.state_dict()[key], value) and torch.equal(by_path.state_dict()[key], value)


def test_saving_without_the_cache_uses_a_temporary_one(tmp_path):
    config = RunConfig(use_cache=False, cache_dir=str(tmp_path / "never"))
    with saving_models(config, str(tmp_path / "models")) as save:
        assert config.use_cache and Path(config.cache_dir).is_dir() and callable(save)
        temporary = Path(config.cache_dir)
    assert not temporary.exists()
    with saving_models(RunConfig(), None) as save:
        assert save({}) == {}


def test_unreadable_image_fails_the_run_naming_the_file(capsys, tmp_path, files):
    train, evaluation, _ = files
    config = _config(tmp_path, files)
    code, _, err = _run(capsys, "run", "--config", str(config), "--data", str(train), "--eval-data", str(evaluation), "--quiet")
    assert code == 1 and "line 12: image 'images/corrupt_10.png'" in err and "on_bad_image: skip" in err
    card = json.loads(next((tmp_path / "results" / "runs").glob("*.json")).read_text())
    assert card["status"] == "failed" and "corrupt_10.png" in card["error"]


def test_finetune_pretrained_threat_from_a_checkpoint(tmp_path, files):
    from cleanbench.runner import run_cell

    train, evaluation, classes = files
    torch.manual_seed(0)
    start = tmp_path / "pretrained.pt"
    torch.save(open_clip.create_model("cleanbench-tiny").state_dict(), start)
    values = merge({k: v for k, v in TINY.items() if k != "pretrain"}, {"data": {"source": "csv", "train": str(train), "eval": str(evaluation), "eval_classes": str(classes),
                                   "on_bad_image": "skip", "limit_clean": 32, "workers": 0},
                          "model": {"pretrained": str(start), "threat": "finetune-pretrained"},
                          "pretrain": {"lr": 1e-5, "batch_size": 32},
                          "results_dir": str(tmp_path / "r"), "cache_dir": str(tmp_path / "c")})
    config = from_dict(RunConfig, values)
    assert (config.pretrain.epochs, config.pretrain.lr, config.pretrain.warmup_steps, config.pretrain.beta2) == (5, 1e-5, 50, 0.999)
    config.pretrain.epochs = 1  # the schedule's defaults are checked above; one epoch is enough to run
    card, _ = run_cell(config, progress=False, log=lambda _: None)
    assert card["status"] == "ok" and card["pretrain"]["steps"] == 2 and card["config"]["model"]["pretrained"] == str(start)


@pytest.mark.parametrize("model, message", [
    ({"threat": "finetune-pretrained"}, "give its weights with --pretrained"),
    ({"pretrained": "weights.pt"}, "model.threat is scratch"),
    ({"threat": "finetune"}, "did you mean 'finetune-pretrained'"),
])
def test_threat_must_fit_the_weights(model, message):
    with pytest.raises(UsageError, match=message):
        validate(from_dict(RunConfig, {"model": model}))


def test_threat_on_the_command_line(capsys, tmp_path):
    code, _, err = _run(capsys, "run", "--pretrained", "weights.pt", "--results-dir", str(tmp_path / "r"))
    assert code == 2 and "add --threat finetune-pretrained" in err
    code, _, err = _run(capsys, "run", "--threat", "finetune-pretrained", "--results-dir", str(tmp_path / "r"))
    assert code == 2 and "give its weights with --pretrained" in err


def test_presets_write_down_the_paper_settings(tmp_path, files):
    train, evaluation, _ = files
    scratch = from_dict(RunConfig, merge(preset_values("paper-cc3m-rn50-scratch"),
                                         {"data": {"train": str(train), "eval": str(evaluation)}}))
    resolve_file_data(validate(scratch))
    assert (scratch.model.name, scratch.model.threat, scratch.data.image_size) == ("RN50-quickgelu", "scratch", 224)
    assert (scratch.pretrain.epochs, scratch.pretrain.lr, scratch.pretrain.warmup_steps) == (64, 5e-4, 10_000)
    assert (scratch.poison_count, scratch.target, scratch.attack_options["patch_size"]) == (1500, "banana", 16)
    assert (scratch.defense_options["lr"], scratch.defense_options["batch_size"], scratch.data.limit_clean) == (1e-5, 64, 100_000)
    finetune = from_dict(RunConfig, preset_values("paper-openai-rn50-finetune"))
    assert (finetune.model.pretrained, finetune.model.threat, finetune.data.limit_pretrain) == ("openai", "finetune-pretrained", 500_000)
    assert (finetune.pretrain.epochs, finetune.pretrain.lr, finetune.pretrain.warmup_steps) == (5, 1e-6, 50)
    assert {"paper-cc3m-rn50-scratch", "paper-openai-rn50-finetune"} <= set(PRESETS)
    with pytest.raises(UsageError, match="did you mean 'paper-cc3m-rn50-scratch'"):
        preset_values("paper-cc3m-rn50")


def test_preset_run_without_cached_weights_stops_at_once(capsys, tmp_path, files, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    train, evaluation, _ = files
    start = time.perf_counter()
    code, _, err = _run(capsys, "run", "--preset", "paper-openai-rn50-finetune", "--data", str(train),
                        "--eval-data", str(evaluation), "--poison-count", "5", "--results-dir", str(tmp_path / "r"))
    # "At once" means before any training and without the ~47 s offline hub look-up; the bound is
    # loose so that a busy machine does not fail it.
    assert time.perf_counter() - start < 20.0
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "RN50-quickgelu / openai" in err and "HF_HUB_OFFLINE" in err and not (tmp_path / "r").exists()


def test_gpu_check_runs_on_cpu():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        gpu_check.main(["--model", "cleanbench-tiny", "--device", "cpu", "--steps", "2", "--batch", "8",
                        "--eval-images", "12", "--classes", "4", "--distinct", "4", "--workers", "0"])
    result = json.loads(out.getvalue())
    assert result["cleanclip"]["images_per_second"] > 0 and result["evaluation"]["images_per_second"] > 0
    assert 12 < result["evaluation"]["images"] <= 24  # 12 clean images, and the triggered non-target ones
