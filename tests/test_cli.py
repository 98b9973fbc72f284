"""The command line: validation before work, one-line errors, exit codes, help with defaults."""

import json

import pytest
import yaml

from cleanbench.cli import main


def _run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--attack", "badnett"], "did you mean 'badnet'"),
        (["run", "--defense", "cleanclp"], "did you mean 'cleanclip'"),
        (["run", "--poison-rate", "1.5"], "outside (0, 1]"),
        (["run", "--poison-rate", "0"], "outside (0, 1]"),
        (["run", "--poison-count", "50000"], "outside 0..40000"),
        (["run", "--target", "banana"], "'banana' is not in the class list"),
        (["run", "--defense-opt", "lrr=1"], "unknown key 'lrr'; did you mean 'lr'"),
        (["run", "--defense-opt", "lr"], "expected KEY=VALUE"),
        (["run", "--defense-opt", "lr=fast"], "defense 'cleanclip' options.lr: expected float"),
        (["run", "--seed", "1.5"], "is not a valid integer"),
        (["run", "--attack-opt", "location=middle"], "location must be 'fixed' or 'random'"),
        (["run", "--device", "tpu"], "use auto, cpu, cuda"),
        (["run", "--model", "ViT-B-322"], "did you mean"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, args, message):
    code, out, err = _run(capsys, *args, "--results-dir", str(tmp_path / "r"))
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # nothing started


def test_results_dir_that_is_a_file(capsys, tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    code, _, err = _run(capsys, "run", "--results-dir", str(path))
    assert code == 2 and "is a file" in err


def test_malformed_and_unknown_yaml(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("attack: [badnet\n")
    code, _, err = _run(capsys, "run", "--config", str(bad))
    assert code == 2 and "malformed YAML" in err and "line" in err
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump({"pretrian": {"epochs": 1}}))
    code, _, err = _run(capsys, "run", "--config", str(unknown))
    assert code == 2 and "unknown key 'pretrian'; did you mean 'pretrain'" in err
    typed = tmp_path / "typed.yaml"
    typed.write_text(yaml.safe_dump({"seed": "zero"}))
    code, _, err = _run(capsys, "run", "--config", str(typed))
    assert code == 2 and "config.seed: expected int" in err


def test_help_shows_defaults(capsys):
    code, out, _ = _run(capsys, "run", "--help")
    assert code == 0
    for text in ("--attack", "default: badnet", "--defense", "default: cleanclip", "0.02", "--plugin", "--config"):
        assert text in out


def test_list_shows_attacks_and_defenses(capsys):
    code, out, _ = _run(capsys, "list")
    assert code == 0 and "badnet" in out and "cleanclip" in out


def test_run_end_to_end_on_tiny_config_and_reproduce_from_card(capsys, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"n_pretrain": 200, "n_clean": 64, "n_test": 60},
        "pretrain": {"epochs": 1, "batch_size": 50, "warmup_steps": 1},
        "defense_options": {"epochs": 1, "batch_size": 32},
        "poison_rate": 0.05,
        "results_dir": str(tmp_path / "results"),
    }))
    code, out, err = _run(capsys, "run", "--config", str(config), "--quiet", "--seed", "3")
    assert code == 0, err
    assert "poisoned (badnet)" in out and "after cleanclip" in out
    cards = list((tmp_path / "results" / "runs").glob("*.json"))
    assert len(cards) == 1
    card = json.loads(cards[0].read_text())
    assert card["status"] == "ok" and card["seed"] == 3 and card["poison"]["count"] == 10
    code, _, err = _run(capsys, "run", "--config", str(cards[0]), "--quiet", "--results-dir", str(tmp_path / "again"))
    assert code == 0, err
    assert "note:" not in err  # same environment: nothing to say
    assert [p.name for p in cards[0].parent.glob("*.json")] == [cards[0].name]  # the card's folder is untouched
    again = json.loads(next((tmp_path / "again" / "runs").glob("*.json")).read_text())
    for stage in ("poisoned", "defended"):
        for metric in ("ca_top1", "ca_top5", "asr", "ra"):
            assert again["metrics"][stage][metric] == card["metrics"][stage][metric]
    assert again["artifacts"]["poisoned_model_reused"] is True
