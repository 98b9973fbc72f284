"""Reliability and safety under bad input, faults and untrusted files (docs/reliability.md lists what
each test proves).

Bad input is answered with one line on stderr that names the problem and the fix, exit code 2 for usage
errors and 1 for run failures, no traceback unless `--debug`, and nothing already computed is lost.
Runs are tiny (64 training pairs); the slowest test kills a sweep with SIGKILL and resumes it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import open_clip
import pytest
import torch
import yaml

from cleanbench.cache import EVALUATIONS, POISONED_MODELS, ArtifactCache
from cleanbench.cli import main
from cleanbench.config import DataConfig
from cleanbench.data.synthetic import write_classes_file, write_eval_folder, write_pairs_csv
from cleanbench.errors import NonFiniteLossError, UsageError
from cleanbench.fileio import write_json_atomic
from cleanbench.leaderboard.cards import scan_cards, validate_card
from cleanbench.leaderboard.site import build_site
from cleanbench.models import build_model
from cleanbench.registry import ATTACKS
from cleanbench.runner import run_cell
from cleanbench.sweep import done_card
from cleanbench.trainer import InMemoryBatches, TrainConfig, train

REPO = Path(__file__).parent.parent
SHAPES3 = ("circle", "square", "star")
SMALL = {  # a run of a few seconds: 64 training pairs, one epoch of two batches
    "data": {"n_pretrain": 64, "n_clean": 32, "n_test": 30},
    "pretrain": {"epochs": 1, "batch_size": 32, "warmup_steps": 1},
    "defense": "finetune",
    "defense_options": {"epochs": 1, "batch_size": 32},
    "poison_rate": 0.05,
    "device": "cpu",
}


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error_line(err: str) -> str:
    """The one error line of a failed command (progress lines may come before it), without a traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert err.strip().splitlines()[-1] == lines[0]  # the last thing printed
    return lines[0]


def _config(tmp_path: Path, name: str = "run.yaml", **values) -> Path:
    """A YAML config of a small run whose results and cache stay under `tmp_path`."""
    merged = {**copy.deepcopy(SMALL), "results_dir": str(tmp_path / "results"), "cache_dir": str(tmp_path / "cache")}
    for key, value in values.items():  # data, pretrain and model settings merge; others replace
        merged[key] = {**merged.get(key, {}), **value} if key in ("data", "pretrain", "model") else value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(merged))
    return path


def _cards(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]


def _plugin(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


# --- 1. bad input: one line, exit 2, nothing started ---------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["run", "--preset", "paper-cc3m-rn50-scratc"], "unknown preset 'paper-cc3m-rn50-scratc'; did you mean 'paper-cc3m-rn50-scratch'?"),
    (["run", "--attack", "blendid"], "unknown attack 'blendid'; did you mean 'blended'"),  # the closest first
    (["run", "--defense", "fine-tune"], "did you mean 'finetune'"),
    (["run", "--model", "RN5O"], "unknown model 'RN5O'; did you mean"),
    (["run", "--poison-rate", "nan"], "poison rate nan is outside (0, 1]; e.g. --poison-rate 0.02"),
    (["run", "--poison-rate", "-0.5"], "poison rate -0.5 is outside (0, 1]"),
    (["run", "--poison-count", "-1"], "poison count -1"),
    (["run", "--poison-rate", "0.1", "--poison-count", "5"], "give either poison_rate or poison_count, not both"),
    (["run", "--target", "99"], "class index 99 is outside 0..9; use --target NAME"),
    (["run", "--seed", "one"], "'one' is not a valid integer"),
    (["run", "--defense", "none", "--defense-opt", "lr=1"], "defense 'none' options: unknown key 'lr'; it takes no options"),
    (["run", "--plugin", "no/such/plugin.py"], "plugin file 'no/such/plugin.py' does not exist; pass the path of a .py file"),
])
def test_bad_options_are_one_line_exit_2(capsys, tmp_path, args, message):
    code, _, err = _run(capsys, *args, "--results-dir", str(tmp_path / "results"))
    assert code == 2
    assert message in _error_line(err)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("text, message", [
    ("seed: 1.5\n", "config.seed: expected int, got 1.5 (float)"),
    ("seed: true\n", "config.seed: expected int, got True (bool)"),
    ("seed: '3'\n", "config.seed: expected int, got '3' (str)"),
    ("- attack\n- badnet\n", "expected a mapping of options at the top level"),
    ("seed:\t1\n", "malformed YAML at line 1, column"),
    ("attack: badnet\n  defense: none\n", "malformed YAML at line 2"),
    ("pretrain: {epoch: 3}\n", "config.pretrain: unknown key 'epoch'; did you mean 'epochs'?"),
    ("data: {n_pretrian: 5}\n", "config.data: unknown key 'n_pretrian'; did you mean 'n_pretrain'?"),
    ("poison_rate: 1.01\n", "poison rate 1.01 is outside (0, 1]"),
    ("poison_rate: null\npoison_count: 20000\n", "poison count 20000 is outside 0..10000"),
    ("target: banana\n", "'banana' is not in the class list"),
    ("defense_options: {lr: fast}\n", "defense 'cleanclip' options.lr: expected float, got 'fast'"),
    ("pretrain: {epochs: 0}\n", "pretrain.epochs must be >= 1"),
])
def test_bad_config_files_are_one_line_exit_2(capsys, tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    code, _, err = _run(capsys, "run", "--config", str(path), "--results-dir", str(tmp_path / "results"))
    assert code == 2
    line = _error_line(err)
    assert message in line
    assert not (tmp_path / "results").exists()


def test_results_path_or_config_path_of_the_wrong_kind(capsys, tmp_path):
    file = tmp_path / "results.txt"
    file.write_text("my notes")
    code, _, err = _run(capsys, "run", "--results-dir", str(file))
    assert code == 2 and "is a file; pass a folder to --results-dir" in _error_line(err)
    assert file.read_text() == "my notes"
    code, _, err = _run(capsys, "run", "--config", str(tmp_path))
    assert code == 2 and "is a directory" in _error_line(err)
    code, _, err = _run(capsys, "run", "--config", str(tmp_path / "absent.yaml"))
    assert code == 2 and "does not exist" in _error_line(err)


def _grid(tmp_path: Path, **values) -> Path:
    """A grid of one small cell; a value None drops the key."""
    grid = {"results_dir": str(tmp_path / "results"), "base": {"device": "cpu"}, "attacks": ["badnet"],
            "defenses": ["none"], "poison_rates": [0.05], "seeds": [0], **values}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in grid.items() if v is not None}))
    return path


@pytest.mark.parametrize("change, message", [
    ({"seeds": [0.5]}, "seeds: expected whole numbers, got 0.5 (float)"),
    ({"seeds": ["1"]}, "seeds: expected whole numbers, got '1' (str)"),
    ({"seeds": [True]}, "seeds: expected whole numbers, got True (bool)"),
    ({"poison_rates": [0.0]}, "poison rate 0.0 is outside (0, 1]"),
    ({"poison_rates": None, "poison_counts": [20000]}, "poison count 20000 is outside 0..10000"),
    ({"base": {"device": "cpu", "target": "moon"}}, "'moon' is not in the class list"),
    ({"plugins": ["absent.py"]}, "plugin file 'absent.py' does not exist"),
])
def test_bad_grids_are_one_line_exit_2(capsys, tmp_path, change, message):
    code, _, err = _run(capsys, "sweep", str(_grid(tmp_path, **change)))
    assert code == 2 and message in _error_line(err)
    assert not (tmp_path / "results").exists()


def test_grid_whose_results_dir_is_a_file_or_whose_yaml_is_malformed(capsys, tmp_path):
    file = tmp_path / "afile"
    file.write_text("x")
    code, _, err = _run(capsys, "sweep", str(_grid(tmp_path, results_dir=str(file))))
    assert code == 2 and "is a file; pass a folder" in _error_line(err)
    broken = tmp_path / "broken.yaml"
    broken.write_text("attacks: [badnet\nseeds: [0]\n")
    code, _, err = _run(capsys, "sweep", str(broken))
    assert code == 2 and "malformed YAML at line" in _error_line(err)


def test_debug_shows_the_traceback_and_unexpected_errors_are_still_one_line(capsys, tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="did you mean 'badnet'"):
        main(["--debug", "run", "--attack", "badnett"])

    def broken(results_dir):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("cleanbench.leaderboard.cards.scan_cards", broken)
    (tmp_path / "results").mkdir()
    code, _, err = _run(capsys, "results", str(tmp_path / "results"))
    assert code == 1
    line = _error_line(err)
    assert "unexpected ZeroDivisionError: a bug" in line and "--debug" in line
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "results", str(tmp_path / "results")])


# --- 1. files: CSVs, images, checkpoints ---------------------------------------------------------


@pytest.fixture
def files(tmp_path):
    """A 24-row training CSV, a three-class evaluation folder and its class-names file."""
    train = write_pairs_csv(tmp_path / "cc", 24)
    evaluation = write_eval_folder(tmp_path / "val", 3, SHAPES3)
    classes = write_classes_file(tmp_path / "classes.yaml", SHAPES3)
    return train, evaluation, classes


def _file_config(tmp_path, files, **data) -> Path:
    _, _, classes = files
    return _config(tmp_path, "files.yaml", target="star", defense="none", defense_options={},
                   pretrain={"batch_size": 8}, data={"eval_classes": str(classes), "workers": 0, **data})


@pytest.mark.parametrize("content, message", [
    ("", "is empty; expected a header row with image, caption"),
    ("image,caption\n", "has no usable rows"),
    ("image;caption\na.png;x\n", "has no column 'image'; its columns are image;caption"),
    ("image,caption\n../../etc/passwd,escape\n", "leaves the dataset root"),
    ("image,caption\n/etc/passwd,escape\n", "set data.allow_outside_root: true if the CSV is trusted"),
])
def test_bad_training_csvs_are_refused_before_any_work(capsys, tmp_path, files, content, message):
    _, evaluation, _ = files
    csv_path = tmp_path / "cc" / "bad.csv"
    csv_path.write_text(content)
    code, _, err = _run(capsys, "run", "--config", str(_file_config(tmp_path, files)), "--data", str(csv_path),
                        "--eval-data", str(evaluation), "--quiet")
    assert code == 2 and message in _error_line(err)
    assert not (tmp_path / "results").exists()


def test_labels_csv_paths_cannot_leave_the_evaluation_folder(capsys, tmp_path, files):
    train, evaluation, _ = files
    labels = evaluation / "labels.csv"
    labels.write_text(labels.read_text() + "../cc/images/000000.png,0\n")
    code, _, err = _run(capsys, "run", "--config", str(_file_config(tmp_path, files)), "--data", str(train),
                        "--eval-data", str(evaluation), "--quiet")
    assert code == 2 and "image path '../cc/images/000000.png' leaves the folder" in _error_line(err)


@pytest.mark.parametrize("damage, message", [
    ("missing", "image 'images/000005.png': the file does not exist"),
    ("truncated", "image 'images/000005.png': cannot be read as an image (OSError"),
])
def test_missing_or_truncated_image_fails_the_run_naming_the_row_and_the_fix(capsys, tmp_path, files, damage, message):
    train, evaluation, _ = files
    image = train.parent / "images" / "000005.png"
    if damage == "missing":
        image.unlink()
    else:
        image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    config = _file_config(tmp_path, files)
    code, _, err = _run(capsys, "run", "--config", str(config), "--data", str(train), "--eval-data", str(evaluation), "--quiet")
    assert code == 1
    line = _error_line(err)
    assert f"{train}, line 7: " in line and message in line and "set data.on_bad_image: skip" in line
    (card,) = _cards(tmp_path / "results")
    assert card["status"] == "failed" and message in card["error"]
    assert card["poison"]["count"] == 1  # what was done before the failure is in the card
    # the fix it names works: tests/test_real_run.py::test_run_on_files_records_skips_and_saves_models_open_clip_loads


def _tiny_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return open_clip.create_model("cleanbench-tiny").state_dict()


@pytest.mark.parametrize("damage, message", [
    ("shape", "does not fit model cleanbench-tiny: 1 tensor(s) of another shape, e.g. 'visual.trunk.features.0.conv.weight'; "
              "pass the --model it was trained with"),
    ("keys", "does not fit model cleanbench-tiny: 1 missing key(s), e.g. 'logit_scale'; 1 unexpected key(s), e.g. 'head.w'"),
    ("other-model", "does not fit model cleanbench-tiny"),
    ("truncated", "cannot be read as weights of cleanbench-tiny (RuntimeError: PytorchStreamReader"),
])
def test_checkpoint_of_another_architecture_or_damaged_is_one_line_exit_2(capsys, tmp_path, damage, message):
    state = _tiny_state(0)
    path = tmp_path / "checkpoint.pt"
    if damage == "shape":
        state["visual.trunk.features.0.conv.weight"] = torch.zeros(8, 3, 3, 3)
    elif damage == "keys":
        state["head.w"] = state.pop("logit_scale")
    elif damage == "other-model":  # a text tower of another width: open_clip's own check fails first
        state = {k: v for k, v in state.items() if not k.startswith("visual.")}
        state["positional_embedding"] = torch.zeros(7, 5)
    torch.save(state, path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    config = _config(tmp_path, model={"pretrained": str(path), "threat": "finetune-pretrained"})
    code, _, err = _run(capsys, "run", "--config", str(config), "--quiet")
    assert code == 2
    line = _error_line(err)
    assert message in line and len(line) < 400
    (card,) = _cards(tmp_path / "results")
    assert card["status"] == "failed" and card["error"] in line


# --- 1. plugins and NaN losses: run failures, exit 1 ---------------------------------------------


def test_plugin_that_fails_to_import_is_one_line_exit_1_in_run_and_sweep(capsys, tmp_path):
    plugin = _plugin(tmp_path, "broken", "import a_module_that_is_not_installed\n")
    code, _, err = _run(capsys, "run", "--plugin", str(plugin), "--results-dir", str(tmp_path / "results"))
    assert code == 1
    line = _error_line(err)
    assert f"plugin file '{plugin}' failed to import: ModuleNotFoundError" in line and "--debug" in line
    code, _, err = _run(capsys, "sweep", str(_grid(tmp_path, plugins=[str(plugin)])))
    assert code == 1 and "failed to import" in _error_line(err)
    assert not (tmp_path / "results").exists()


def test_attack_plugin_that_raises_names_the_stage_and_keeps_the_card(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(ATTACKS, "_entries", dict(ATTACKS._entries))  # the plugin stays in this test
    plugin = _plugin(tmp_path, "raising_attack", """
        from cleanbench.attacks.badnet import BadNet
        from cleanbench.registry import register_attack

        @register_attack
        class Raising(BadNet):
            name = "raising"
            def candidates(self, pairs, target_index, target_name):
                raise KeyError("no candidates today")
    """)
    code, _, err = _run(capsys, "run", "--config", str(_config(tmp_path, attack="raising")), "--plugin", str(plugin),
                        "--quiet")
    assert code == 1
    line = _error_line(err)
    assert "attack 'raising' raised KeyError: 'no candidates today'" in line and "--debug" in line
    (card,) = _cards(tmp_path / "results")
    assert card["status"] == "failed" and card["stage"] == "attack 'raising'" and card["data"]["name"] == "embedded-shapes"
    with pytest.raises(Exception, match="no candidates today"):  # --debug: the traceback, with the plugin's frame
        main(["--debug", "run", "--config", str(_config(tmp_path, attack="raising")), "--plugin", str(plugin), "--quiet"])


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)


@pytest.mark.parametrize("bad_step", [0, 3, 7])
def test_nan_loss_stops_at_that_very_step(bad_step):
    torch.manual_seed(0)
    data = InMemoryBatches({"x": torch.randn(32, 4)}, 4)
    calls = []

    def objective(model, batch):
        calls.append(len(calls))
        loss = model.layer(batch["x"]).pow(2).mean()
        return {"loss": loss * float("nan") if len(calls) - 1 == bad_step else loss}

    model = _Linear()
    with pytest.raises(NonFiniteLossError, match=f"finetune: the loss became nan at step {bad_step}; lower the learning rate"):
        train(model, data, objective, TrainConfig(epochs=2, batch_size=4), seed=0, stage="finetune", progress=False)
    assert len(calls) == bad_step + 1  # not one step more
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN never reached the weights


def test_nan_loss_in_a_run_is_one_line_exit_1_and_loses_nothing(capsys, tmp_path):
    config = _config(tmp_path, pretrain={"lr": 1.0e+30})
    code, _, err = _run(capsys, "run", "--config", str(config), "--quiet")
    assert code == 1
    assert re.search(r"error: pretrain: the loss became (nan|inf|-inf) at step \d+; lower the learning rate", _error_line(err))
    (card,) = _cards(tmp_path / "results")
    assert card["status"] == "failed" and card["stage"] == "pretraining" and "poison" in card
    assert not list((tmp_path / "cache" / POISONED_MODELS).glob("*.pt"))  # a diverged model is never cached

    config = _config(tmp_path, defense_options={"epochs": 3, "batch_size": 32, "lr": 1.0e+30})
    code, _, err = _run(capsys, "run", "--config", str(config), "--quiet")
    assert code == 1
    assert re.search(r"defense:finetune: the loss became (nan|inf|-inf) at step \d+; lower the learning rate \(e\.g\. "
                     r"--defense-opt lr=\.\.\.\)", _error_line(err))
    failed = next(c for c in _cards(tmp_path / "results") if c["config"]["defense_options"].get("lr") == 1.0e+30)
    assert failed["status"] == "failed" and failed["stage"] == "defense 'finetune'"
    assert "defended" not in failed["metrics"] and failed["metrics"]["poisoned"]["ca_top1"]["total"] == 30

    code, _, err = _run(capsys, "run", "--config", str(_config(tmp_path)), "--quiet")  # the fixed learning rate
    assert code == 0, err
    fixed = next(c for c in _cards(tmp_path / "results") if c["status"] == "ok")
    assert fixed["artifacts"]["poisoned_model_reused"] and fixed["artifacts"]["poisoned_evaluation_reused"]
    assert fixed["metrics"]["poisoned"] == failed["metrics"]["poisoned"]


# --- 3. determinism, and 4. a damaged cache is recomputed --------------------------------------


TIMING = ("seconds", "images_per_second")


def _metrics_without_time(card: dict) -> dict:
    """The card's metrics without what a clock measures (the only fields that may differ between runs)."""
    def untimed(values):
        return {k: untimed(v) for k, v in values.items() if k not in TIMING} if isinstance(values, dict) else values

    metrics = untimed(card["metrics"])  # the validation split's accuracy nests a stage further
    assert metrics["poisoned"]["ca_top1"]["total"] > 0 and "asr" in metrics["defended"]
    return metrics


def test_same_seed_on_cpu_gives_identical_cards_and_a_damaged_cache_is_recomputed(tiny, tmp_path):
    def config(**overrides):
        return tiny(device="cpu", data=DataConfig(n_pretrain=64, n_clean=32, n_test=30),
                    pretrain=TrainConfig(epochs=1, batch_size=32, warmup_steps=1),
                    defense_options={"epochs": 1, "batch_size": 32, "synonyms": "none"}, **overrides)

    first, path = run_cell(config(), progress=False, log=lambda _: None)
    again, again_path = run_cell(config(use_cache=False), progress=False, log=lambda _: None)
    assert again_path == path and again["reused"] == [] and first["reused"] == []
    assert _metrics_without_time(again) == _metrics_without_time(first)
    assert again["poison"] == first["poison"]
    assert again["pretrain"]["epoch_losses"] == first["pretrain"]["epoch_losses"]
    assert [s["final_loss"] for s in again["defense"]["training"]] == [s["final_loss"] for s in first["defense"]["training"]]

    # Damage the cache: a truncated poisoned model, and an evaluation whose numbers were changed.
    cache = Path(first["config"]["cache_dir"])
    weights = cache / POISONED_MODELS / f"{first['artifacts']['poisoned_model']}.pt"
    weights.write_bytes(weights.read_bytes()[:-100])
    evaluation = cache / EVALUATIONS / f"{first['artifacts']['defended_evaluation']}.json"
    stored = json.loads(evaluation.read_text())
    stored["value"]["asr"]["value"] = 0.0
    evaluation.write_text(json.dumps(stored))
    third, _ = run_cell(config(), progress=False, log=lambda _: None)
    assert not third["artifacts"]["poisoned_model_reused"] and not third["artifacts"]["defended_evaluation_reused"]
    assert third["artifacts"]["poisoned_evaluation_reused"]  # undamaged artifacts are still used
    assert _metrics_without_time(third) == _metrics_without_time(first)
    model = open_clip.create_model("cleanbench-tiny")
    assert ArtifactCache(cache).load(POISONED_MODELS, first["artifacts"]["poisoned_model"], model) is not None  # repaired


# --- 4. faults: SIGKILL, interrupted writes ------------------------------------------------------

MARKED_DEFENSE = """
    import os
    from pathlib import Path

    from cleanbench.defenses.finetune import Finetune
    from cleanbench.registry import register_defense


    @register_defense
    class MarkedFinetune(Finetune):
        name = "marked-finetune"
        description = "finetune that leaves a marker file when its training starts (for fault tests)"
        source = "tests"

        def apply(self, bundle, context):
            Path(os.environ["CLEANBENCH_TEST_MARKER"]).touch()
            return super().apply(bundle, context)
"""


def _sweep(grid: Path, marker: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLEANBENCH_TEST_MARKER": str(marker)}
    return subprocess.Popen([sys.executable, "-m", "cleanbench", "sweep", str(grid), "--json-log"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_sigkill_during_training_then_restart_completes_every_card_once(tmp_path):
    plugin = _plugin(tmp_path, "marked", MARKED_DEFENSE)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "results_dir": str(tmp_path / "results"), "plugins": [str(plugin)],
        "base": {**{k: v for k, v in SMALL.items() if k not in ("defense", "defense_options", "poison_rate")},
                 "cache_dir": str(tmp_path / "cache")},
        "attacks": ["badnet"], "poison_rates": [0.05], "seeds": [0],
        "defenses": ["none", {"name": "marked-finetune", "options": {"epochs": 30, "batch_size": 32}}],
    }))
    marker = tmp_path / "training-started"
    process = _sweep(grid, marker)
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the defense never started"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # cell 2 is training its defense now
    process.communicate()
    runs = tmp_path / "results" / "runs"
    before = {p.name: p.read_bytes() for p in runs.glob("*.json")}
    assert len(before) == 1 and json.loads(next(iter(before.values())))["defense"]["name"] == "none"
    assert not list((tmp_path / "cache" / "defended-models").glob("*.pt"))  # killed before the defense finished
    poisoned = next((tmp_path / "cache" / POISONED_MODELS).glob("*.pt"))
    trained = poisoned.stat().st_mtime_ns

    marker.unlink()
    process = _sweep(grid, marker)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    log = {e["cell"]: e for e in events if e["event"] == "cell"}
    assert log[1]["status"] == "skipped" and log[2]["status"] == "ok"  # the finished cell was not recomputed
    assert "poisoned_model" in log[2]["reused"] and poisoned.stat().st_mtime_ns == trained  # nor its model
    files = sorted(runs.iterdir())
    assert [p.suffix for p in files] == [".json", ".json"]  # no temporary or partial files
    cards = [validate_card(json.loads(p.read_text())) for p in files]  # complete, valid JSON run cards
    assert all(c["status"] == "ok" for c in cards)
    assert len({c["cell_key"] for c in cards}) == 2  # none duplicated
    assert {name: (runs / name).read_bytes() for name in before} == before  # the finished card is untouched


KILL_BEFORE_RENAME = """
import os, signal, sys
from cleanbench import fileio
os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # the power goes after fsync, before the rename
fileio.write_json_atomic(sys.argv[1], {"schema_version": 1, "status": "ok", "half": "written" * 1000})
"""


def test_a_write_killed_before_its_rename_leaves_the_old_file_and_is_never_read(tmp_path, monkeypatch):
    card = {"status": "ok", "cell_key": "k", "schema_version": 1}
    path = write_json_atomic(tmp_path / "results" / "runs" / "cell.json", card)
    done = subprocess.run([sys.executable, "-c", KILL_BEFORE_RENAME, str(path)], capture_output=True)
    assert done.returncode == -signal.SIGKILL
    leftovers = [p for p in path.parent.iterdir() if p != path]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".cell.json.") and leftovers[0].suffix == ".tmp"
    assert json.loads(path.read_text()) == card  # the old file, whole
    assert done_card(path, "k") is None  # status ok but not a valid card (no config): the cell runs again
    assert [p for p, _ in scan_cards(tmp_path / "results").rejected] == [str(path)]  # only the real file is read

    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(path, {"status": "failed"})
    assert json.loads(path.read_text()) == card and len(list(path.parent.iterdir())) == 2  # no new leftover


def test_an_interrupted_cache_write_is_never_trusted(tmp_path):
    cache = ArtifactCache(tmp_path)
    model = torch.nn.Linear(3, 2)
    cache.save(POISONED_MODELS, "k", model, {"stats": {}})
    weights = tmp_path / POISONED_MODELS / "k.pt"
    newer = torch.nn.Linear(3, 2)
    cache.save(POISONED_MODELS, "k", newer, {"stats": {}})
    (tmp_path / POISONED_MODELS / "k.json").write_text(  # the weights were replaced, then the metadata write died
        json.dumps({"stats": {}, "key": "k", "sha256": "0" * 64}))
    assert cache.load(POISONED_MODELS, "k", torch.nn.Linear(3, 2)) is None
    weights.write_bytes(b"")  # an empty file
    assert cache.load(POISONED_MODELS, "k", torch.nn.Linear(3, 2)) is None
    (tmp_path / POISONED_MODELS / "k.json").write_text("[1, 2")  # a cut metadata file
    assert cache.load(POISONED_MODELS, "k", torch.nn.Linear(3, 2)) is None
    (tmp_path / POISONED_MODELS / "k.json").write_text("[]")  # not an object
    assert cache.load(POISONED_MODELS, "k", torch.nn.Linear(3, 2)) is None
    cache.save_json(EVALUATIONS, "e", {"asr": 0.5})
    stored = json.loads((tmp_path / EVALUATIONS / "e.json").read_text())
    (tmp_path / EVALUATIONS / "e.json").write_text(json.dumps({**stored, "value": {"asr": 0.0}}))
    assert cache.load_json(EVALUATIONS, "e") is None  # valid JSON, changed numbers: the hash says no


# --- 5. untrusted files ------------------------------------------------------------------------

class _Payload:
    """Unpickling this calls open(marker, "w"): code that runs when a full pickle is loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_pickle(path: Path, marker: Path) -> Path:
    """A checkpoint that creates `marker` when it is loaded with pickle (torch.load with weights_only=False)."""
    torch.save({"state_dict": _tiny_state(0), "payload": _Payload(marker)}, path)
    return path


def test_checkpoints_load_with_weights_only(capsys, tmp_path):
    marker = tmp_path / "pwned"
    checkpoint = _malicious_pickle(tmp_path / "evil.pt", marker)
    config = _config(tmp_path, model={"pretrained": str(checkpoint), "threat": "finetune-pretrained"})
    code, _, err = _run(capsys, "run", "--config", str(config), "--quiet")
    assert code == 2
    assert "is not a plain weights file (loading with weights_only=True refused" in _error_line(err)
    assert "set model.trust_checkpoint: true" in err and "\x1b[" not in err
    assert not marker.exists()
    with pytest.raises(UsageError):
        build_model("cleanbench-tiny", str(checkpoint))
    assert not marker.exists()
    torch.load(checkpoint, weights_only=False)  # the payload is real: a full unpickling runs it
    assert marker.exists()


def test_a_cache_file_that_is_a_pickle_with_a_forged_hash_is_not_run(tmp_path):
    import hashlib

    marker = tmp_path / "pwned"
    cache = ArtifactCache(tmp_path / "cache")
    cache.save(POISONED_MODELS, "k", torch.nn.Linear(3, 2), {"stats": {}})
    weights = _malicious_pickle(tmp_path / "cache" / POISONED_MODELS / "k.pt", marker)
    meta = tmp_path / "cache" / POISONED_MODELS / "k.json"
    meta.write_text(json.dumps({"stats": {}, "key": "k", "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}))
    assert cache.load(POISONED_MODELS, "k", torch.nn.Linear(3, 2)) is None  # refused, so recomputed
    assert not marker.exists()


def test_yaml_files_are_read_with_safe_load(capsys, tmp_path):
    marker = tmp_path / "pwned"
    tag = f"!!python/object/apply:os.system ['touch {marker}']"
    config = tmp_path / "config.yaml"
    config.write_text(f"attack: {tag}\n")
    code, _, err = _run(capsys, "run", "--config", str(config))
    assert code == 2 and "malformed YAML" in _error_line(err) and "python/object/apply" in err
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"attacks: [badnet]\ndefenses: [none]\npoison_rates: [0.1]\nseeds: [{tag}]\n")
    code, _, err = _run(capsys, "sweep", str(grid))
    assert code == 2 and "malformed YAML" in _error_line(err)
    classes = tmp_path / "classes.yaml"
    classes.write_text(f"classes: {tag}\n")
    card = tmp_path / "card.yaml"  # a run card given to --config is read the same way
    card.write_text(f"schema_version: 1\nconfig: {tag}\n")
    code, _, err = _run(capsys, "run", "--config", str(card))
    assert code == 2 and "malformed YAML" in _error_line(err)
    from cleanbench.data.zeroshot import read_classes_file

    with pytest.raises(UsageError, match="cannot parse it"):
        read_classes_file(classes)
    assert not marker.exists()


def test_class_lists_are_data_never_code(capsys, tmp_path, files):
    train, evaluation, _ = files
    marker = tmp_path / "pwned"
    python_style = tmp_path / "classes.py"  # the reference keeps class names in a Python file
    python_style.write_text(f"classes = __import__('os').system('touch {marker}') or ['circle']\n")
    config = _config(tmp_path, target="star", defense="none", defense_options={},
                     data={"eval_classes": str(python_style), "workers": 0})
    code, _, err = _run(capsys, "run", "--config", str(config), "--data", str(train), "--eval-data", str(evaluation))
    assert code == 2 and "expected a mapping with 'classes' and/or 'templates'" in _error_line(err)
    names = tmp_path / "names.yaml"  # code written as a class name stays a name
    names.write_text(yaml.safe_dump({"classes": ["circle", "square", f"__import__('os').system('touch {marker}')"]}))
    from cleanbench.data.zeroshot import read_classes_file

    assert read_classes_file(names)[0][2].startswith("__import__")
    assert not marker.exists()


SOURCES = [p for folder in ("benchmark", "attacks", "defenses", "leaderboard") for p in (REPO / folder).rglob("*.py")]


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """Lines of `path` with comments and docstring-only lines left out (a rough cut, enough for these patterns)."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        code = line.split("#")[0]
        if code.strip() and not code.strip().startswith(('"', "'", "`")):
            out.append((number, code))
    return out


def _unsafe_calls(path: Path) -> list[str]:
    """Calls in `path` that could run code from a file: eval/exec, unsafe YAML or pickle loaders, torch.load
    without weights_only=True, and weights_only set to anything but True or `not trust_checkpoint`."""
    found = []
    lines = _code_lines(path)
    text = "\n".join(code for _, code in lines)
    for number, code in lines:
        if re.search(r"(?<![\w.])(eval|exec)\(", code):
            found.append(f"{path}:{number}: eval/exec: {code.strip()}")
        if re.search(r"yaml\.(load|unsafe_load|full_load|load_all)\(|yaml\.(Unsafe|Full)?Loader\b|pickle\.loads?\(|"
                     r"torch\.jit\.load\(|marshal\.loads?\(", code):
            found.append(f"{path}:{number}: unsafe loader: {code.strip()}")
    for match in re.finditer(r"torch\.load\(", text):
        if "weights_only=True" not in text[match.start(): match.start() + 200]:
            found.append(f"{path}: torch.load without weights_only=True: {text[match.start():][:120]}")
    for match in re.finditer(r"weights_only\s*=\s*(?!True)([^,)\s]+)", text):
        if match.group(1) != "not" or "trust_checkpoint" not in text[match.start(): match.start() + 60]:
            found.append(f"{path}: weights_only={match.group(1)} not behind model.trust_checkpoint")
    return found


def test_the_code_has_no_eval_unsafe_yaml_or_unsafe_torch_load():
    assert len(SOURCES) > 40
    found = [problem for path in SOURCES for problem in _unsafe_calls(path)]
    assert not found, "\n".join(found)
    models = (REPO / "benchmark" / "models.py").read_text()
    assert "weights_only=not trust_checkpoint" in models  # the one place that may unpickle, and only when trusted


@pytest.mark.parametrize("code, caught", [
    ("x = eval(text)", True), ("names = exec(text)", True), ("model.eval()", False), ("parse_eval(spec)", False),
    ("values = yaml.load(text, Loader=yaml.Loader)", True), ("values = yaml.safe_load(text)", False),
    ("values = yaml.unsafe_load(text)", True), ("state = pickle.loads(data)", True),
    ("state = torch.load(path)", True), ("state = torch.load(path, map_location='cpu', weights_only=True)", False),
    ("state = torch.load(path, weights_only=False)", True), ("module = torch.jit.load(path)", True),
    ("model = create(name, weights_only=not trust_checkpoint)", False), ("model = create(name, weights_only=flag)", True),
    ("# eval(text) in a comment", False),
])
def test_the_scan_for_unsafe_calls_catches_them(tmp_path, code, caught):
    path = tmp_path / "module.py"
    path.write_text(f"def f(text, path, data, name, flag, trust_checkpoint):\n    {code}\n")
    assert bool(_unsafe_calls(path)) == caught


def test_run_card_text_is_escaped_and_bad_cards_are_skipped(capsys, tmp_path):
    config = _config(tmp_path, defense="none", defense_options={})
    code, _, err = _run(capsys, "run", "--config", str(config), "--quiet")
    assert code == 0, err
    (path,) = (tmp_path / "results" / "runs").glob("*.json")
    card = json.loads(path.read_text())
    script = "<script>alert('x')</script>"
    card["command"] = f"cleanbench run {script}"
    card["config"]["target"] = card["poison"]["target"] = script
    card["device"]["name"] = script
    card["defense"]["notes"] = [script]
    card["attack"]["description"] = f'"><img src=x onerror=alert(1)>{script}'
    path.write_text(json.dumps(card))
    (path.parent / "truncated.json").write_text(path.read_text()[:500])
    (path.parent / "foreign.json").write_text(json.dumps({**card, "status": "ok", "metrics": {"defended": {"asr": "1"}}}))
    report = build_site(tmp_path / "results", tmp_path / "site")
    assert report.cards == 1
    assert sorted(Path(p).name for p, _ in report.rejected) == ["foreign.json", "truncated.json"]
    pages = [p for p in (tmp_path / "site").rglob("*") if p.suffix in (".html", ".svg", ".js")]
    assert pages
    for page in pages:
        text = page.read_text()
        assert "<script>alert" not in text and "<img src=x" not in text, page
    code, out, err = _run(capsys, "results", str(tmp_path / "results"))
    assert code == 0, err
    assert len([line for line in out.splitlines() if "badnet" in line]) == 1


# --- 6. docs/reliability.md ----------------------------------------------------------------------


def test_every_test_the_reliability_page_cites_exists():
    text = (REPO / "docs" / "reliability.md").read_text()
    cited = set(re.findall(r"`?(test_\w+\.py)::(test_\w+)", text))
    assert len(cited) > 60
    missing = [f"{file}::{name}" for file, name in sorted(cited)
               if not re.search(rf"^def {name}\(", (REPO / "tests" / file).read_text(), re.MULTILINE)]
    assert not missing, missing
    for file in ("test_reliability.py", "test_properties.py", "test_robustness.py"):
        defined = set(re.findall(r"^def (test_\w+)\(", (REPO / "tests" / file).read_text(), re.MULTILINE))
        assert defined - {name for f, name in cited if f == file} == set(), f"tests of {file} not in docs/reliability.md"
