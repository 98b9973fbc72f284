"""`cleanbench verify RESULTS`: re-run run cards from a cold cache and check that every metric matches.

Each selected card's cell is re-run from its own config (the card's `threads` and plugin options
included) in a fresh cache, in a pool of worker processes. A card matches when every metric it records is
exactly equal in the re-run (timings excluded; metrics added to cards since are not counted); otherwise the report names the
metrics that differ, the recorded environment facts that differ from this machine's, and the
plugin options that resolve differently now (e.g. a default that changed since the card was made).
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from cleanbench.errors import RunError, UsageError

TIMING_KEYS = frozenset({"seconds", "images_per_second"})
"""Metric entries that measure time, not the model: never compared."""


def comparable_metrics(card: dict[str, Any]) -> dict[str, Any]:
    """The card's metrics without timings."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in TIMING_KEYS}
        return value

    return strip(card.get("metrics", {}))


def metrics_bytes(card: dict[str, Any]) -> bytes:
    """The canonical JSON bytes of the card's comparable metrics (what "matches exactly" compares)."""
    return json.dumps(comparable_metrics(card), sort_keys=True, separators=(",", ":")).encode()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def differing_metrics(expected: dict[str, Any], actual: dict[str, Any], recorded_only: bool = False) -> list[str]:
    """`["defended.asr.value 0.127 -> 0.131", ...]`: the metric entries whose values differ
    (`recorded_only`: only the entries `expected` has, so metrics added since it was made are not counted)."""
    before, after = _flatten(comparable_metrics(expected)), _flatten(comparable_metrics(actual))
    out = []
    for key in sorted(set(before) if recorded_only else set(before) | set(after)):
        if before.get(key, "absent") != after.get(key, "absent"):
            out.append(f"{key} {before.get(key, 'absent')} -> {after.get(key, 'absent')}")
    return out


def _headline(diffs: list[str]) -> list[str]:
    """The differing `value`s of CA, ASR and RA first (the numbers a reader compares), then a count of the rest."""
    main = [d for d in diffs if d.split(" ")[0].endswith(".value") and d.split(".")[1] in ("ca_top1", "asr", "ra")]
    rest = len(diffs) - len(main)
    return main + ([f"and {rest} other entries"] if rest else [])


@dataclass
class Outcome:
    """One card's verification: `match`, `differ` or `failed`, with what differs."""

    path: str
    label: str
    status: str
    metrics: list[str] = field(default_factory=list)
    environment: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def line(self) -> str:
        """One line (plus indented detail lines) for the report."""
        head = f"{self.status.upper():<7} {self.label}  ({self.path}, {self.seconds:.0f} s)"
        if self.status == "failed":
            return f"{head}\n        error: {self.error}"
        details = []
        if self.metrics:
            details.append("metrics: " + "; ".join(_headline(self.metrics)))
        if self.status == "differ" or self.environment:
            details.append("environment: " + ("; ".join(self.environment) or "no recorded fact differs"))
        if self.options:
            details.append("options now: " + "; ".join(self.options))
        return "\n".join([head, *(f"        {d}" for d in details)])


def _label(card: dict[str, Any]) -> str:
    c = card.get("config", {})
    budget = "clean" if c.get("attack") == "none" else (
        f"n{c['poison_count']}" if c.get("poison_count") is not None else f"p{c.get('poison_rate')}")
    return f"{c.get('attack')} x {c.get('defense')} {budget} s{c.get('seed')}"


def _option_changes(card: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """Resolved plugin options that differ between the recorded card and the re-run."""
    out = []
    for role in ("attack", "defense"):
        before = (card.get(role) or {}).get("options") or {}
        after = (fresh.get(role) or {}).get("options") or {}
        for key in sorted(set(before) | set(after)):
            if before.get(key, "absent") != after.get(key, "absent"):
                out.append(f"{role} {key} {before.get(key, 'absent')} -> {after.get(key, 'absent')}")
        if (card.get(role) or {}).get("version") != (fresh.get(role) or {}).get("version"):
            out.append(f"{role} version {(card.get(role) or {}).get('version')} -> {(fresh.get(role) or {}).get('version')}")
    return out


def verify_card(path: str, workdir: str, plugins: tuple[str, ...] = ()) -> Outcome:
    """Re-run the cell of the card at `path` in a cold cache under `workdir`; never raises."""
    from cleanbench import environment, runcard
    from cleanbench.config import RunConfig, from_dict
    from cleanbench.registry import load_plugin_file
    from cleanbench.runner import run_cell

    start = time.perf_counter()
    card: dict[str, Any] = {}
    try:
        card = json.loads(Path(path).read_text())
        for plugin in plugins:
            load_plugin_file(plugin)
        values = {k: v for k, v in card["config"].items() if k not in ("results_dir", "cache_dir", "use_cache")}
        config = from_dict(RunConfig, {**values, "results_dir": str(Path(workdir) / "results"),
                                       "cache_dir": str(Path(workdir) / "cache")}, f"{path}: config")
        fresh, _ = run_cell(config, progress=False, log=lambda message: None, command="cleanbench verify")
    except Exception as error:  # reported per card; the other cards go on
        return Outcome(path, _label(card) if card else path, "failed", error=f"{type(error).__name__}: {error}",
                       seconds=time.perf_counter() - start)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    diffs = differing_metrics(card, fresh, recorded_only=True)
    env = environment.differences(environment.recorded(card), fresh["environment"],
                                  ("cleanbench", *environment.FACTS))
    commit = runcard.git_commit()
    if card.get("git_commit") != commit:
        env.append(f"commit {card.get('git_commit') or 'not recorded'} (now {commit or 'unknown'})")
    return Outcome(path, _label(card), "differ" if diffs else "match", diffs, env, _option_changes(card, fresh),
                   seconds=time.perf_counter() - start)


def card_paths(results_dir: Path) -> list[Path]:
    """The run cards under `results_dir` (its runs/ folder, or the folder itself), in name order."""
    folder = results_dir / "runs" if (results_dir / "runs").is_dir() else results_dir
    return sorted(p for p in folder.rglob("*.json") if ".locks" not in p.parts)


def select(paths: list[Path], sample: int | None, seed: int) -> list[Path]:
    """All `paths`, or a seeded random `sample` of them in name order."""
    if sample is None or sample >= len(paths):
        return paths
    return sorted(random.Random(seed).sample(paths, sample))


@click.command("verify")
@click.argument("results_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--sample", type=click.IntRange(min=1), default=None, help="Re-run a seeded random sample of N cards [default: all].")
@click.option("--seed", type=int, default=0, help="Seed of the sample.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Cards re-run at once [default: CPU cores / the cards' threads].")
@click.option("--plugin", multiple=True, type=click.Path(dir_okay=False), help="Python file that registers plugins the cards use; repeatable.")
def verify_command(results_dir: str, sample: int | None, seed: int, workers: int | None, plugin: tuple[str, ...]) -> None:
    """Re-run the run cards in RESULTS_DIR from a cold cache and check that every metric matches exactly."""
    paths = card_paths(Path(results_dir))
    if not paths:
        raise UsageError(f"no run cards under {results_dir!r}; give a results folder, e.g. results/sweeps/standard")
    chosen = select(paths, sample, seed)
    threads = max(_threads(p) for p in chosen)
    workers = workers or max(1, min(len(chosen), (os.cpu_count() or 1) // threads))
    click.echo(f"verifying {len(chosen)} of {len(paths)} run cards from a cold cache, {workers} at a time")
    start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="cleanbench-verify-"))
    context = multiprocessing.get_context("spawn")
    counts = {"match": 0, "differ": 0, "failed": 0}
    try:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(verify_card, str(p), str(root / str(i)), plugin) for i, p in enumerate(chosen)]
            for future in concurrent.futures.as_completed(futures):
                outcome = future.result()
                counts[outcome.status] += 1
                click.echo(outcome.line())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    click.echo(f"{len(chosen)} cards: {counts['match']} match, {counts['differ']} differ, {counts['failed']} failed; "
               f"{time.perf_counter() - start:.0f} s")
    if counts["match"] != len(chosen):
        raise RunError(f"{len(chosen) - counts['match']} of {len(chosen)} cards did not reproduce exactly (details above)")


def _threads(path: Path) -> int:
    """The torch threads a card's cell runs with (1 when unreadable or not recorded)."""
    try:
        threads = json.loads(path.read_text()).get("config", {}).get("threads", 1)
    except (OSError, ValueError, AttributeError):
        return 1
    return threads if isinstance(threads, int) and threads >= 1 else 1
