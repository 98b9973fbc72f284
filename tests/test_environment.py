"""No hidden environment: threads and the synonym source are in the cache key; a run that reuses a
model, or re-runs a card, made in another environment says so in one line."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cleanbench import environment
from cleanbench.cli import main
from cleanbench.plan import Plan
from cleanbench.runner import run_cell


def test_threads_and_synonym_source_are_part_of_the_cell(tiny):
    base = Plan(tiny())
    assert base.config.threads == 1 and base.defense_options.synonyms == "embedded"
    assert Plan(tiny(threads=2)).poisoned_model_key() != base.poisoned_model_key()
    other = Plan(tiny(defense_options={"epochs": 1, "batch_size": 64, "synonyms": "none"}))
    assert other.poisoned_model_key() == base.poisoned_model_key()
    assert other.defended_model_key() != base.defended_model_key() and other.cell_key() != base.cell_key()


def test_run_uses_the_configured_threads_and_records_them(tiny):
    before = torch.get_num_threads()
    card, _ = run_cell(tiny(defense="none", defense_options={}, threads=1), progress=False, log=lambda m: None)
    env = card["environment"]
    assert env["threads"] == 1 and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["torch"] == torch.__version__ and card["config"]["threads"] == 1
    assert env["precision"] == "float32"
    assert torch.get_num_threads() == before


def test_precision_follows_the_device(monkeypatch):
    assert environment.precision("cpu") == "float32"
    assert not torch.is_autocast_enabled("cpu")
    with environment.autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert environment.precision("cuda") == "bfloat16 autocast"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert environment.precision(torch.device("cuda", 0)) == "float16 autocast"


def test_differences_name_each_fact():
    now = {"torch": "2.4.1", "cpu_capability": "AVX2", "threads": 1}
    assert environment.differences({"torch": "2.3.0", "threads": 1}, now) == [
        "torch 2.3.0 (now 2.4.1)", "cpu_capability not recorded (now AVX2)"]
    assert environment.mismatch_note("x", {"torch": "2.4.1", "threads": 1}, now) is None  # unrecorded facts: no note
    old_card = {"versions": {"torch": "2.3.0"}, "device": {"type": "cpu", "torch_threads": 2}}
    assert environment.recorded(old_card) == {"torch": "2.3.0", "device": "cpu", "threads": 2}


def test_reused_model_from_another_environment_is_reported_in_one_line(tiny, tmp_path):
    config = tiny(defense="none", defense_options={})
    run_cell(config, progress=False, log=lambda m: None)
    meta_path = next((tmp_path / "cache" / "poisoned-models").glob("*.json"))
    meta = json.loads(meta_path.read_text())
    meta["environment"]["torch"] = "1.0.0"
    meta_path.write_text(json.dumps(meta))
    lines: list[str] = []
    card, _ = run_cell(tiny(defense="none", defense_options={}), progress=False, log=lines.append)
    notes = [line for line in lines if line.startswith("note:")]
    assert len(notes) == 1 and f"torch 1.0.0 (now {torch.__version__})" in notes[0]
    assert card["environment_notes"] == notes


def test_rerunning_a_card_from_another_environment_says_so(tiny, tmp_path, capsys, monkeypatch):
    card, path = run_cell(tiny(defense="none", defense_options={}), progress=False, log=lambda m: None)
    values = json.loads(path.read_text())
    values["environment"]["cpu_capability"] = "VSX"
    edited = tmp_path / "card.json"
    edited.write_text(json.dumps(values))
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--config", str(edited), "--quiet"]) == 0
    err = capsys.readouterr().err
    note = [line for line in err.splitlines() if line.startswith("note: this run card")]
    assert len(note) == 1 and "cpu_capability VSX (now" in note[0]
    assert list(Path("results/local/runs").glob("*.json"))  # the re-run writes here, not where the card was
    assert len(list(path.parent.glob("*.json"))) == 1
