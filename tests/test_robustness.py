"""Hostile folders, exhausted resources, shared folders, the cache's upkeep and a fast command line
(docs/reliability.md lists what each test proves).

Special files (FIFOs, devices, link loops, links out of the folder) must never hang or exhaust a reader;
a full disk or a read-only folder is one line naming the path; files get the umask's permissions.
"""

from __future__ import annotations

import errno
import json
import os
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
        os.umask(0o077)
        private = write_bytes_atomic(tmp_path / "private.bin", b"x")
    finally:
        os.umask(old)
    for path in (card, model, model.with_suffix(".json")):
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
