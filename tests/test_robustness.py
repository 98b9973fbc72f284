"""Hostile folders, exhausted resources, shared folders, the cache's upkeep and a fast command line
(docs/reliability.md lists what each test proves).

Special files (FIFOs, devices, link loops, links out of the folder) must never hang or exhaust a reader;
a full disk or a read-only folder is one line naming the path; files get the umask's permissions.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_leaderboard import synthetic_card, write_cards

from cleanbench import fileio
from cleanbench.cache import EVALUATIONS, POISONED_MODELS, ArtifactCache
from cleanbench.cli import main
from cleanbench.config import load_yaml
from cleanbench.errors import UsageError
from cleanbench.fileio import RefusedFile, read_regular_file, write_bytes_atomic, write_json_atomic
from cleanbench.leaderboard.cards import scan_cards, validate_card
from cleanbench.sweep import done_card

SMALL = ["--device", "cpu", "--quiet", "--defense", "finetune", "--defense-opt", "epochs=1",
         "--defense-opt", "batch_size=32", "--poison-rate", "0.05"]
SMALL_DATA = {"data": {"n_pretrain": 64, "n_clean": 32, "n_test": 30},
              "pretrain": {"epochs": 1, "batch_size": 32, "warmup_steps": 1}}


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _hostile_folder(results: Path) -> None:
    """A valid card next to a FIFO, a link to /dev/zero, a link loop, a link out of the folder and a
    link to a folder outside it, all named like cards."""
    write_cards(results, [synthetic_card()])
    runs = results / "runs"
    os.mkfifo(runs / "fifo.json")
    (runs / "zero.json").symlink_to("/dev/zero")
    (runs / "loop-a.json").symlink_to(runs / "loop-b.json")
    (runs / "loop-b.json").symlink_to(runs / "loop-a.json")
    outside = results.parent / "outside"
    outside.mkdir()
    write_cards(outside, [synthetic_card(seed=7)])
    (runs / "escape.json").symlink_to(outside / "runs" / "card-000.json")
    (runs / "elsewhere").symlink_to(outside / "runs")
    (runs / "inside.json").symlink_to(runs / "card-000.json")  # a link inside the folder is followed


def test_special_files_in_a_results_folder_are_skipped_with_a_reason(tmp_path, capsys):
    results = tmp_path / "results"
    _hostile_folder(results)
    start = time.monotonic()
    scan = scan_cards(results)
    assert time.monotonic() - start < 10
    assert [Path(c["_path"]).name for c in scan.cards] == ["card-000.json", "inside.json"]
    reasons = {Path(p).name: r for p, r in scan.rejected}
    assert "FIFO" in reasons["fifo.json"]
    assert "outside" in reasons["zero.json"]
    assert "loop" in reasons["loop-a.json"] and "loop" in reasons["loop-b.json"]
    assert "outside" in reasons["escape.json"]
    assert "not followed" in reasons["elsewhere"]
    assert all(c["config"]["seed"] == 0 for c in scan.cards)  # the card behind the folder link was not read

    code, out, err = _run(capsys, "leaderboard", str(results), "-o", str(tmp_path / "site"))
    assert code == 0, err
    assert (tmp_path / "site" / "index.html").is_file()
    assert "6 files skipped" in out and "skipped " in err and "fifo.json" in err


def test_the_safe_reader_refuses_devices_large_files_and_fifos_without_blocking(tmp_path):
    with pytest.raises(RefusedFile, match="character device"):
        read_regular_file("/dev/zero", 1000)
    big = tmp_path / "big.json"
    big.write_bytes(b"x" * 1001)
    with pytest.raises(RefusedFile, match="larger than 1000 bytes"):
        read_regular_file(big, 1000)
    assert read_regular_file(big, 1001) == b"x" * 1001
    os.mkfifo(tmp_path / "grid.yaml")
    with pytest.raises(UsageError, match="FIFO"):
        load_yaml(tmp_path / "grid.yaml")
    os.mkfifo(tmp_path / "card.json")
    assert done_card(tmp_path / "card.json", "k") is None


def test_results_lists_what_it_skipped_and_why(tmp_path, capsys):
    results = tmp_path / "results"
    _hostile_folder(results)
    (results / "runs" / "broken.json").write_text("{not json")
    code, out, err = _run(capsys, "results", str(results))
    assert code == 0, err
    assert "7 files skipped" in out
    lines = [line for line in err.splitlines() if line.startswith("skipped ")]
    assert len(lines) == 7
    assert any("broken.json: unreadable: JSONDecodeError" in line for line in lines)
    assert any("fifo.json: skipped: a FIFO" in line for line in lines)


@pytest.mark.parametrize("path, value", [
    (("costs", "defense_seconds"), float("inf")),
    (("costs", "total_seconds"), 1e308),
    (("costs", "pretrain_seconds"), float("-inf")),
    (("costs", "defense_seconds"), float("nan")),
    (("wall_seconds",), 1e300),
    (("metrics", "defended", "seconds"), float("inf")),
    (("metrics", "defended", "ca_top1", "total"), 10**30),
    (("config", "seed"), 10**40),
    (("config", "poison_count"), 10**30),
    (("poison", "rate"), float("inf")),
])
def test_non_finite_and_absurd_numbers_are_refused(path, value):
    card = synthetic_card()
    card.setdefault("poison", {"count": 1, "rate": 0.01})
    target = card
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(Exception, match=path[-1]):
        validate_card(json.loads(json.dumps(card)))
    validate_card(synthetic_card())


def test_non_finite_costs_never_reach_the_cost_column(tmp_path, capsys):
    card = synthetic_card()
    card["costs"]["defense_seconds"] = float("inf")
    write_cards(tmp_path, [synthetic_card(seed=1), card])
    code, out, err = _run(capsys, "leaderboard", str(tmp_path), "-o", str(tmp_path / "site"))
    assert code == 0, err
    assert "costs.defense_seconds" in err
    html = (tmp_path / "site" / "index.html").read_text()
    assert "inf [" not in html and ", inf]" not in html


# --- exhausted resources ------------------------------------------------------------------------


def _failing_writes(monkeypatch, folder: Path, code: int = errno.ENOSPC) -> None:
    """Make every write under `folder` fail as a full disk (or `code`) does, after part of the data."""
    real = fileio._write_file

    def write(fd: int, data: bytes) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(folder.resolve()):
            os.write(fd, data[: len(data) // 2])
            os.close(fd)
            raise OSError(code, os.strerror(code))
        real(fd, data)

    monkeypatch.setattr(fileio, "_write_file", write)


def test_a_full_results_folder_is_one_line_naming_the_path_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    results = tmp_path / "results"
    _failing_writes(monkeypatch, results)
    config = tmp_path / "small.yaml"
    config.write_text(json.dumps(SMALL_DATA))
    code, out, err = _run(capsys, "run", "--config", str(config), "--results-dir", str(results), *SMALL)
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: cannot write ") and str(results / "runs") in line
    assert "disk is full" in line and "unexpected" not in line
    assert [p for p in results.rglob("*") if p.is_file()] == []  # nothing half-written
    cache = ArtifactCache(tmp_path / "cache")
    assert list((cache.root / POISONED_MODELS).glob("*.pt"))  # what was computed stays in the cache


def test_a_full_or_read_only_cache_warns_and_the_run_still_writes_its_card(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    _failing_writes(monkeypatch, cache)
    config = tmp_path / "small.yaml"
    config.write_text(json.dumps(SMALL_DATA))
    results = tmp_path / "results"
    code, out, err = _run(capsys, "run", "--config", str(config), "--results-dir", str(results), *SMALL)
    assert code == 0, err
    assert "warning: the poisoned model was not cached" in err and "disk is full" in err
    cards = list((results / "runs").glob("*.json"))
    assert len(cards) == 1 and json.loads(cards[0].read_text())["status"] == "ok"
    assert not [p for p in cache.rglob("*.tmp")]


@pytest.mark.parametrize("code, words", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only")])
def test_write_errors_name_the_path_and_the_resource(tmp_path, monkeypatch, code, words):
    _failing_writes(monkeypatch, tmp_path, code)
    with pytest.raises(fileio.StorageError, match=words) as caught:
        write_json_atomic(tmp_path / "runs" / "card.json", {"a": 1})
    assert str(tmp_path / "runs" / "card.json") in str(caught.value)
    assert caught.value.exit_code == 1
    assert list((tmp_path / "runs").iterdir()) == []


# --- shared folders -----------------------------------------------------------------------------


def test_files_get_the_umasks_permissions(tmp_path):
    old = os.umask(0o002)
    try:
        card = write_json_atomic(tmp_path / "runs" / "card.json", {"a": 1})
        model = ArtifactCache(tmp_path / "cache").save(POISONED_MODELS, "k" * 64, torch.nn.Linear(2, 2), {})
        with ArtifactCache(tmp_path / "cache").lock(POISONED_MODELS, "k" * 64):
            lock = model.with_suffix(".lock")
        os.umask(0o077)
        private = write_bytes_atomic(tmp_path / "private.bin", b"x")
    finally:
        os.umask(old)
    for path in (card, model, model.with_suffix(".json"), lock):
        assert stat.S_IMODE(path.stat().st_mode) == 0o664, path
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


# --- the cache's upkeep -------------------------------------------------------------------------


def test_cache_repairs_are_logged_with_the_artifact_and_the_reason(tmp_path):
    lines: list[str] = []
    cache = ArtifactCache(tmp_path, log=lines.append)
    model = torch.nn.Linear(2, 2)
    weights = cache.save(POISONED_MODELS, "a" * 64, model, {})
    assert cache.load(POISONED_MODELS, "a" * 64, model) is not None and lines == []
    weights.write_bytes(weights.read_bytes()[:-10])
    assert cache.load(POISONED_MODELS, "a" * 64, model) is None
    assert lines == [f"cache: {POISONED_MODELS}/{'a' * 12} rejected (its SHA-256 does not match the one stored "
                     "beside it: damaged or truncated); recomputing it"]
    path = cache.save_json(EVALUATIONS, "b" * 64, {"x": 1})
    path.write_text(path.read_text().replace('"x": 1', '"x": 2'))
    assert cache.load_json(EVALUATIONS, "b" * 64) is None
    assert "evaluations/bbbbbbbbbbbb rejected (the hash of its value does not match" in lines[-1]
    assert cache.load_json(EVALUATIONS, "c" * 64) is None and len(lines) == 2  # absent: a miss, not a repair


def test_stale_temporary_files_are_removed_at_start_up(tmp_path, capsys):
    cache = tmp_path / "cache"
    stale = cache / POISONED_MODELS / ".abc.pt.x1.tmp"
    fresh = cache / EVALUATIONS / ".def.json.x2.tmp"
    for path in (stale, fresh):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    old = time.time() - 2 * fileio.STALE_TEMPORARY_SECONDS
    os.utime(stale, (old, old))
    config = tmp_path / "small.yaml"
    config.write_text(json.dumps({**SMALL_DATA, "cache_dir": str(cache)}))
    code, out, err = _run(capsys, "run", "--config", str(config), "--results-dir", str(tmp_path / "results"), *SMALL)
    assert code == 0, err
    assert not stale.exists() and fresh.exists()  # a fresh one may belong to a write in progress
    assert "removed 1 temporary file(s) left by interrupted writes" in err


def test_a_corrupted_cached_model_is_named_when_it_is_retrained(tmp_path, capsys):
    config = tmp_path / "small.yaml"
    config.write_text(json.dumps({**SMALL_DATA, "cache_dir": str(tmp_path / "cache")}))
    args = ("run", "--config", str(config), "--results-dir", str(tmp_path / "results"), *SMALL)
    assert _run(capsys, *args)[0] == 0
    weights = next((tmp_path / "cache" / POISONED_MODELS).glob("*.pt"))
    weights.write_bytes(weights.read_bytes()[:100])
    code, out, err = _run(capsys, *args)
    assert code == 0, err
    assert f"cache: {POISONED_MODELS}/{weights.stem[:12]} rejected (its SHA-256 does not match" in err


def test_cache_command_shows_sizes_by_kind_and_prunes_by_age_or_key_with_a_dry_run(tmp_path, capsys):
    cache = ArtifactCache(tmp_path / "cache")
    old_model = cache.save(POISONED_MODELS, "a1" * 32, torch.nn.Linear(4, 4), {})
    cache.save(POISONED_MODELS, "b2" * 32, torch.nn.Linear(4, 4), {})
    evaluation = cache.save_json(EVALUATIONS, "c3" * 32, {"x": 1})
    old = time.time() - 40 * 86400
    for path in (old_model, old_model.with_suffix(".json")):
        os.utime(path, (old, old))
    root = ["--cache-dir", str(cache.root)]

    code, out, err = _run(capsys, "cache", *root)
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:] if line.split()}
    assert rows[POISONED_MODELS][1] == "2" and rows[EVALUATIONS][1] == "1" and rows["total"][1] == "3"
    assert "40.0d" in rows[POISONED_MODELS][4]  # the oldest

    code, out, err = _run(capsys, "cache", "prune", "--older-than", "30d", "--dry-run", *root)
    assert code == 0 and f"would remove {POISONED_MODELS}/{'a1' * 6}" in out and "would remove 1 artifacts" in out
    assert old_model.exists()
    code, out, err = _run(capsys, "cache", "prune", "--older-than", "30d", *root)
    assert code == 0 and "removed 1 artifacts" in out
    assert not old_model.exists() and not old_model.with_suffix(".json").exists()
    assert cache.has(POISONED_MODELS, "b2" * 32)

    code, out, err = _run(capsys, "cache", "prune", "--key", "c3c3", "--dry-run", *root)
    assert code == 0 and f"would remove {EVALUATIONS}/{'c3' * 6}" in out and evaluation.exists()
    code, out, err = _run(capsys, "cache", "prune", "--key", "c3c3", *root)
    assert code == 0 and not evaluation.exists() and cache.has(POISONED_MODELS, "b2" * 32)

    with cache.lock(POISONED_MODELS, "b2" * 32):  # a run computing or loading it: kept
        code, out, err = _run(capsys, "cache", "prune", "--key", "b2b2", *root)
    assert code == 0 and "in use" in out and cache.has(POISONED_MODELS, "b2" * 32)

    assert _run(capsys, "cache", "prune", *root)[0] == 2  # neither filter: refused
    assert _run(capsys, "cache", "prune", "--older-than", "soon", *root)[0] == 2


# --- a fast command line ------------------------------------------------------------------------

HEAVY = ("torch", "open_clip", "matplotlib", "seaborn", "pandas", "timm")


def _imported_after(args: list[str], tmp_path: Path) -> tuple[int, str, list[str]]:
    """Run `cleanbench ARGS` in a fresh interpreter; its exit code, stderr and the heavy modules it imported."""
    script = ("import sys\nfrom cleanbench.cli import main\ncode = main(sys.argv[1:])\n"
              f"print('IMPORTED', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)\nsys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    line = next(line for line in done.stderr.splitlines() if line.startswith("IMPORTED"))
    return done.returncode, done.stderr, ast.literal_eval(line.removeprefix("IMPORTED "))


@pytest.mark.parametrize("args, code", [
    (["--help"], 0), (["run", "--help"], 0), (["sweep", "--help"], 0), (["bench", "--help"], 0),
    (["leaderboard", "--help"], 0), (["results", "--help"], 0), (["cache", "--help"], 0), (["list", "--help"], 0),
    (["check-plugin", "--help"], 0), (["cache"], 0),
    (["run", "--attack", "badnett"], 2), (["run", "--defense", "nosuch"], 2), (["run", "--preset", "nosuch"], 2),
    (["run", "--no-such-option"], 2), (["run", "--config", "absent.yaml"], 2), (["sweep", "absent.yaml"], 2),
    (["nosuch-command"], 2),
])
def test_help_and_usage_errors_import_no_torch_open_clip_or_plotting(tmp_path, args, code):
    returncode, err, heavy = _imported_after(args, tmp_path)
    assert returncode == code, err
    assert heavy == [], f"`cleanbench {' '.join(args)}` imported {heavy}"


def test_a_malformed_grid_or_config_is_refused_before_torch_is_imported(tmp_path):
    (tmp_path / "grid.yaml").write_text("attacks: [badnet\nseeds: [0]\n")
    (tmp_path / "names.yaml").write_text("attacks: [badnett]\ndefenses: [none]\npoison_rates: [0.01]\nseeds: [0]\n")
    (tmp_path / "config.yaml").write_text("attack: [oops\n")
    for args in (["sweep", "grid.yaml"], ["sweep", "names.yaml"], ["run", "--config", "config.yaml"]):
        returncode, err, heavy = _imported_after(args, tmp_path)
        assert returncode == 2 and heavy == [], (args, err, heavy)


def test_list_imports_no_open_clip(tmp_path):
    returncode, err, heavy = _imported_after(["list"], tmp_path)
    assert returncode == 0, err
    assert "open_clip" not in heavy and "matplotlib" not in heavy and "pandas" not in heavy


def test_the_bench_commands_defaults_are_the_bench_configs():
    from cleanbench.bench_measure import BenchConfig
    from cleanbench.bench_command import bench_command

    defaults = {p.name: p.default for p in bench_command.params}
    config = BenchConfig()
    for name in ("model", "device", "batch_size", "image_size", "repeats", "steps", "eval_images", "peak_tflops"):
        assert defaults[name] == getattr(config, name), name


# --- no long silent step ------------------------------------------------------------------------


def test_class_embeddings_show_progress(capsys):
    from cleanbench.evaluation import class_embeddings
    from cleanbench.models import build_model

    bundle = build_model("cleanbench-tiny", device="cpu")
    names = [f"class {i}" for i in range(300)]
    templates = [f"a photo of a {{}}, view {i}." for i in range(20)]
    classes = class_embeddings(bundle, names, templates, "cpu", progress=True)
    err = capsys.readouterr().err
    assert classes.shape[0] == 300
    assert "class embeddings (20 templates)" in err and "300/300" in err
    class_embeddings(bundle, names, templates, "cpu")
    assert capsys.readouterr().err == ""  # quiet unless asked


def test_class_embeddings_are_computed_once_per_model_and_prompt_set(tiny, monkeypatch):
    from cleanbench import artifacts
    from cleanbench.runner import run_cell

    calls: list[int] = []
    real = artifacts.class_embeddings
    monkeypatch.setattr(artifacts, "class_embeddings",
                        lambda bundle, names, templates, device, progress=False:
                        calls.append(len(names)) or real(bundle, names, templates, device, progress))
    config = tiny(defense="finetune")
    card, _ = run_cell(config, progress=False)
    assert len(calls) == 2  # the poisoned and the defended model
    assert card["artifacts"]["poisoned_class_embeddings_reused"] is False
    evaluations = ArtifactCache(config.cache_dir).root / EVALUATIONS
    for path in evaluations.glob("*.json"):  # the evaluations must be redone: their class embeddings are not
        path.unlink()
    again, _ = run_cell(config, progress=False)
    assert len(calls) == 2, "class embeddings were computed again for the same model and prompt set"
    assert {"poisoned_class_embeddings", "defended_class_embeddings"} <= set(again["reused"])
    assert again["metrics"]["poisoned"]["ca_top1"] == card["metrics"]["poisoned"]["ca_top1"]
    assert again["metrics"]["defended"]["asr"] == card["metrics"]["defended"]["asr"]
    changed = tiny(defense="finetune", data=config.data.__class__(**{**config.data.__dict__, "n_test": 60}))
    run_cell(changed, progress=False)
    assert len(calls) == 2  # another test set of the same classes and templates: still reused


# --- interrupts ---------------------------------------------------------------------------------


def _slow_grid(tmp_path: Path, executor: str) -> Path:
    """Cell 1 (no defense) ends in seconds; cell 2 finetunes for minutes."""
    grid = {"results_dir": str(tmp_path / "results"), "attacks": ["badnet"], "poison_rates": [0.05], "seeds": [0],
            "base": {"device": "cpu", "data": {"n_pretrain": 128, "n_clean": 256, "n_test": 50},
                     "pretrain": {"epochs": 1, "batch_size": 64, "warmup_steps": 1}},
            "defenses": ["none", {"name": "finetune", "options": {"epochs": 500, "batch_size": 64}}],
            "executor": {"name": executor, "workers": 2} if executor != "slurm" else
                        {"name": "slurm", "slurm": {"cluster": "local", "folder": str(tmp_path / "submitit")}}}
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps(grid))
    return path


def _workers_of(pid: int) -> list[int]:
    """The workers of process `pid`: pool processes (multiprocessing spawn) and submitit's local jobs."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat_fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if entry.name.isdigit() and int(stat_fields[1]) == pid and any(
                    mark in (entry / "cmdline").read_bytes() for mark in (b"spawn_main", b"submitit")):
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("executor, signum, code", [
    ("local", signal.SIGINT, 130), ("sequential", signal.SIGTERM, 143), ("slurm", signal.SIGINT, 130),
])
def test_an_interrupt_stops_a_sweep_at_once_and_keeps_the_finished_cards(tmp_path, executor, signum, code):
    if executor == "slurm":
        pytest.importorskip("submitit")
    process = subprocess.Popen([sys.executable, "-m", "cleanbench", "sweep", str(_slow_grid(tmp_path, executor)),
                                "--json-log"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    first = json.loads(next(line for line in process.stdout if '"event": "cell"' in line))
    assert first["status"] == "ok" and first["cell"] == 1
    kept = {p.name: p.read_bytes() for p in (tmp_path / "results" / "runs").glob("*.json")}
    time.sleep(3)  # cell 2 is finetuning now
    workers = _workers_of(process.pid)
    assert (executor != "sequential") == bool(workers)
    start = time.monotonic()
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    stopped = time.monotonic() - start
    assert process.returncode == code, stderr
    assert stopped < 60  # today's code waited for the running cell: minutes here
    assert f"interrupted by {signal.Signals(signum).name}: 1 cells finished" in stderr and "#2" in stderr
    interrupted = [json.loads(line) for line in stdout.splitlines() if '"event": "interrupted"' in line]
    assert interrupted and interrupted[0]["cancelled"] == [2]
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if _alive(pid)], "a worker outlived the sweep"
    after = {p.name: p.read_bytes() for p in (tmp_path / "results" / "runs").glob("*.json")}
    assert after == kept  # the finished card is kept as it was; the cancelled cell wrote nothing


# --- huge grids ---------------------------------------------------------------------------------


def _option_grid(tmp_path: Path, attacks: int, defenses: int, rates: int, seeds: int) -> Path:
    grid = {"results_dir": str(tmp_path / "results"), "base": {"device": "cpu"},
            "attacks": [{"name": "badnet", "grid": {"patch_size": list(range(1, attacks + 1))}}],
            "defenses": [{"name": "finetune", "grid": {"lr": [1e-5 * (i + 1) for i in range(defenses)]}}],
            "poison_rates": [0.01 * (i + 1) for i in range(rates)], "seeds": list(range(seeds))}
    path = tmp_path / f"grid{attacks * defenses * rates * seeds}.yaml"
    path.write_text(json.dumps(grid))
    return path


def test_a_huge_grid_is_refused_before_any_cell_is_built(tmp_path, capsys, monkeypatch):
    from cleanbench.sweep import cells

    def no_cells(*args, **kwargs):
        raise AssertionError("a cell was built")

    monkeypatch.setattr(cells, "Plan", no_cells)
    code, out, err = _run(capsys, "sweep", str(_option_grid(tmp_path, 100, 100, 10, 10)), "--dry-run")
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert "1,000,000 cells (100 attacks x 100 defenses x 10 budgets x 10 seeds)" in line
    assert "above the limit of 10,000" in line and "--max-cells 1000000" in line
    small = _option_grid(tmp_path, 3, 2, 2, 1)
    code, out, err = _run(capsys, "sweep", str(small), "--dry-run", "--max-cells", "10")
    assert code == 2 and "12 cells" in err
    monkeypatch.undo()
    code, out, err = _run(capsys, "sweep", str(small), "--dry-run", "--max-cells", "12")
    assert code == 0, err
    assert "12 cells (0 done)" in out


def test_variant_labels_scale_linearly_with_the_option_grid():
    """Labelling the variants of an option grid compares each variant with one other, not with every
    other variant: counted comparisons, not time."""
    from cleanbench.registry import DEFENSES
    from cleanbench.sweep.grid import _variants

    compared = 0

    class Counting(float):
        def __ne__(self, other):
            nonlocal compared
            compared += 1
            return float.__ne__(self, other)

    counts = []
    for n in (200, 400):
        compared = 0
        variants = _variants([{"name": "finetune", "options": {"lr": Counting(1e-5)}, "grid": {"epochs": list(range(1, n + 1))}}],
                             "defenses", DEFENSES, "grid")
        assert len(variants) == n and variants[0].label == "finetune[epochs=1]"  # lr is the same everywhere
        counts.append(compared)
    assert counts[1] <= 2.5 * counts[0], counts  # twice the variants, about twice the comparisons
