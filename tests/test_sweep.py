"""`cleanbench sweep`: grid validation, the least work, resume after SIGKILL, failures, concurrency, executors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cleanbench.cli import main
from cleanbench.errors import UsageError
from cleanbench.executors import LocalExecutor
from cleanbench.sweep import expand, load_grid

EXAMPLES = Path(__file__).parent.parent / "examples"
TINY_BASE = {"device": "cpu", "data": {"n_pretrain": 256, "n_clean": 128, "n_test": 100},
             "pretrain": {"epochs": 1, "batch_size": 64, "warmup_steps": 1}}
CLEANCLIP = {"name": "cleanclip", "options": {"epochs": 1, "batch_size": 64}}


def write_grid(tmp_path: Path, name: str = "grid.yaml", **values) -> Path:
    grid = {"results_dir": str(tmp_path / "results"), "base": TINY_BASE, "attacks": ["badnet"],
            "defenses": ["none", CLEANCLIP], "poison_rates": [0.05], "seeds": [0], **values}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(grid))
    return path


def cards(tmp_path: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((tmp_path / "results" / "runs").glob("*.json"))}


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def sweep_process(grid: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cleanbench", "sweep", str(grid), "--json-log", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_example_grids_expand():
    example = expand(load_grid(EXAMPLES / "grid.yaml"))
    assert len(example) == 4 and len({c.poisoned_key for c in example}) == 2
    tiny = expand(load_grid(EXAMPLES / "grid-tiny.yaml"))
    assert [c.defense for c in tiny[:3]] == ["none", "cleanclip[lr=0.001]", "cleanclip[lr=0.002]"]
    assert len({c.poisoned_key for c in tiny}) == 2 and len({c.cell_key for c in tiny}) == 6


@pytest.mark.parametrize("change, expected", [
    ({"attacks": []}, "attacks: empty"),
    ({"seeds": 0}, "seeds: expected a list"),
    ({"defences": ["none"]}, "unknown key 'defences'; did you mean 'defenses'?"),
    ({"attacks": ["badnett"]}, "attacks[0].name: unknown attack 'badnett'; did you mean 'badnet'"),
    ({"defenses": [{"name": "cleanclip", "grid": {"lrr": [1.0e-3]}}]}, "defenses[0].grid: unknown key 'lrr'; did you mean 'lr'?"),
    ({"defenses": [{"name": "cleanclip", "grid": {"lr": []}}]}, "defenses[0].grid.lr: empty"),
    ({"defenses": [{"name": "cleanclip", "options": {"epochs": "ten"}}]}, "defenses[0].options.epochs: expected int"),
    ({"defenses": [{"name": "cleanclip", "option": {}}]}, "defenses[0]: unknown key 'option'; did you mean 'options'?"),
    ({"base": {"seed": 3}}, "base.seed: set by the `seeds` list"),
    ({"base": {"data": {"n_pretrian": 10}}}, "base.data: unknown key 'n_pretrian'; did you mean 'n_pretrain'?"),
    ({"poison_rates": [2.0]}, "poison rate 2.0 is outside (0, 1]"),
    ({"executor": {"name": "ray"}}, "executor.name: unknown executor 'ray'"),
    ({"attacks": [{"name": "badnet", "poison_rates": [1.5]}]}, "poison rate 1.5 is outside (0, 1]"),
    ({"attacks": [{"name": "badnet", "poison_rates": []}]}, "attacks[0]: poison_rates: empty"),
    ({"defenses": [{"name": "cleanclip", "poison_rates": [0.01]}]}, "defenses[0]: unknown key 'poison_rates'"),
])
def test_bad_grids_are_refused_before_any_work(tmp_path, capsys, change, expected):
    grid = write_grid(tmp_path, **change)
    with pytest.raises(UsageError) as error:
        expand(load_grid(grid))
    assert str(grid) in str(error.value) and expected in str(error.value)
    assert main(["sweep", str(grid)]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_unknown_slurm_parameter_is_refused(tmp_path, capsys):
    grid = write_grid(tmp_path, executor={"name": "slurm", "slurm": {"timeout_mn": 5}})
    assert main(["sweep", str(grid)]) == 2
    assert "executor.slurm" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_cells_sharing_a_poisoned_model_are_adjacent_and_duplicates_merge(tmp_path):
    grid = write_grid(tmp_path, attacks=["none", "badnet"], poison_rates=[0.05, 0.1], seeds=[0, 1])
    cells = expand(load_grid(grid))
    # `none` ignores the rate: 2 seeds x 2 defenses, plus badnet: 2 seeds x 2 rates x 2 defenses
    assert len(cells) == 4 + 8
    order = [c.poisoned_key for c in cells]
    assert len(set(order)) == 2 + 4
    for key in set(order):
        where = [i for i, k in enumerate(order) if k == key]
        assert where == list(range(where[0], where[-1] + 1))


def test_an_attack_entry_runs_at_its_own_poison_rates(tmp_path):
    grid = load_grid(write_grid(tmp_path, attacks=["none", "badnet", {"name": "blended", "poison_rates": [0.2]}],
                                poison_rates=[0.05, 0.1], defenses=["none"]))
    assert grid.size() == 1 * (2 + 2 + 1) and grid.all_budgets() == [(0.05, None), (0.1, None), (0.2, None)]
    cells = expand(grid)
    assert sorted((c.attack, c.budget) for c in cells) == [
        ("badnet", "p0.05"), ("badnet", "p0.1"), ("blended", "p0.2"), ("none", "clean")]


def test_sweep_trains_each_poisoned_model_once_then_reruns_without_work(tmp_path, capsys, monkeypatch):
    grid = write_grid(tmp_path, attacks=["badnet", "blended"], defenses=[{**CLEANCLIP, "grid": {"lr": [1.0e-3, 2.0e-3]}}])
    assert main(["sweep", str(grid), "--json-log"]) == 0
    log = events(capsys.readouterr().out)
    assert [e["event"] for e in log] == ["start"] + ["cell"] * 4 + ["end"]
    assert log[0]["poisoned_models"] == 2 and log[0]["defended_models"] == 4 and log[-1]["ok"] == 4
    cache = Path(os.environ["CLEANBENCH_CACHE"])
    assert len(list((cache / "poisoned-models").glob("*.pt"))) == 2
    assert len(list((cache / "defended-models").glob("*.pt"))) == 4
    written = cards(tmp_path)
    assert len(written) == 4 and all(c["status"] == "ok" for c in written.values())
    assert sorted(c["artifacts"]["poisoned_model_reused"] for c in written.values()) == [False, False, True, True]
    assert {c["config"]["defense_options"]["lr"] for c in written.values()} == {1.0e-3, 2.0e-3}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished sweep trained again")

    monkeypatch.setattr("cleanbench.stages.train", no_training)
    monkeypatch.setattr("cleanbench.defenses.base.train", no_training)
    start = time.perf_counter()
    assert main(["sweep", str(grid), "--quiet"]) == 0
    assert time.perf_counter() - start < 5
    out = capsys.readouterr().out
    assert "4 cells: 0 ran, 4 skipped (already done), 0 failed" in out
    assert cards(tmp_path) == written
    assert main(["sweep", str(grid), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 cells (4 done); 2 poisoned models (2 cached), 4 defended models (4 cached)" in out


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    plugin = tmp_path / "explode.py"
    plugin.write_text(
        "from cleanbench.attacks.base import NoOptions\n"
        "from cleanbench.defenses.base import Defense\n"
        "from cleanbench.registry import register_defense\n\n"
        "@register_defense\n"
        "class Explode(Defense):\n"
        "    name = 'explode'\n    description = 'raises'\n    source = 'test'\n    Options = NoOptions\n\n"
        "    def apply(self, bundle, context):\n        raise ValueError('boom')\n"
    )
    grid = write_grid(tmp_path, plugins=[str(plugin)], defenses=["explode", "none"])
    assert main(["sweep", str(grid), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "2 cells: 1 ran, 0 skipped (already done), 1 failed" in captured.out
    assert "1 of 2 cells failed" in captured.err
    by_defense = {c["defense"]["name"]: c for c in cards(tmp_path).values()}
    assert by_defense["explode"]["status"] == "failed" and "boom" in by_defense["explode"]["error"]
    assert by_defense["none"]["status"] == "ok"
    assert by_defense["none"]["artifacts"]["poisoned_model_reused"] is True  # trained by the failed cell
    assert main(["sweep", str(grid), "--quiet"]) == 1  # a failed cell is retried, a finished one is not
    assert "2 cells: 0 ran, 1 skipped (already done), 1 failed" in capsys.readouterr().out


def test_sigkill_during_training_then_resume_loses_and_repeats_nothing(tmp_path):
    slow = {**TINY_BASE, "data": {"n_pretrain": 256, "n_clean": 512, "n_test": 100}}
    grid = write_grid(tmp_path, base=slow, defenses=["none", {"name": "cleanclip", "options": {"epochs": 4, "batch_size": 64}}])
    process = sweep_process(grid)
    first = json.loads(next(line for line in process.stdout if '"event": "cell"' in line))
    assert first["status"] == "ok" and first["cell"] == 1
    time.sleep(2)  # cell 2 is now finetuning with CleanCLIP
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = cards(tmp_path)
    assert len(before) == 1  # no half-written or "running" card is left behind

    process = sweep_process(grid)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    log = {e["cell"]: e for e in events(stdout) if e["event"] == "cell"}
    assert log[1]["status"] == "skipped"  # finished before the kill: not recomputed
    assert log[2]["status"] == "ok" and "poisoned_model" in log[2]["reused"]  # trained once, before the kill
    after = cards(tmp_path)
    assert len(after) == 2 and all(c["status"] == "ok" for c in after.values())
    assert {name: after[name] for name in before} == before


def test_two_sweeps_on_one_results_folder_run_each_cell_once(tmp_path):
    grid = write_grid(tmp_path)
    processes = [sweep_process(grid), sweep_process(grid)]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err for _, err in outputs]
    ran = [e["cell"] for out, _ in outputs for e in events(out) if e["event"] == "cell" and e["status"] == "ok"]
    assert sorted(ran) == [1, 2]
    written = cards(tmp_path)
    assert len(written) == 2 and all(c["status"] == "ok" for c in written.values())
    assert not list((tmp_path / "results" / "runs").glob(".*.tmp"))


def test_local_executor_runs_the_leader_first(tmp_path, capsys):
    grid = write_grid(tmp_path, attacks=["badnet", "blended"])
    assert main(["sweep", str(grid), "--executor", "local", "--workers", "2", "--quiet"]) == 0
    assert "local pool: 2 CPU worker(s)" in capsys.readouterr().out
    written = cards(tmp_path)
    assert len(written) == 4
    assert sorted(c["artifacts"]["poisoned_model_reused"] for c in written.values()) == [False, False, True, True]


def test_local_executor_gives_each_worker_one_gpu():
    executor = LocalExecutor(workers=2, gpus=["3", "5"])
    try:
        assert executor.slots == 2
        handles = [executor.submit(os.getenv, "CUDA_VISIBLE_DEVICES") for _ in range(6)]
        seen = {handle.result() for handle in handles}
    finally:
        executor.close()
    assert seen and seen <= {"3", "5"}


def test_slurm_executor_through_submitit(tmp_path, capsys):
    pytest.importorskip("submitit")
    grid = write_grid(tmp_path, executor={"name": "slurm", "slurm": {"cluster": "debug"}})
    assert main(["sweep", str(grid), "--quiet"]) == 0
    assert "submitit (debug)" in capsys.readouterr().out
    assert len(cards(tmp_path)) == 2

    local = write_grid(tmp_path, "local.yaml", attacks=["none"], defenses=["none"],
                       executor={"name": "slurm", "slurm": {"cluster": "local", "timeout_min": 10}})
    assert main(["sweep", str(local), "--quiet"]) == 0
    assert "submitit (local)" in capsys.readouterr().out
    assert len(cards(tmp_path)) == 3
    assert list((tmp_path / "results" / ".submitit").glob("*_log.out"))
