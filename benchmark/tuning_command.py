"""`cleanbench tune`: run each defense's strength grid on the clean-model control and write the record."""

from __future__ import annotations

from pathlib import Path

import click

from cleanbench.config import RunConfig, from_dict, load_yaml, merge
from cleanbench.errors import UsageError
from cleanbench.registry import DEFENSES, load_plugin_file
from cleanbench.tuning import (
    DEFAULT_BUDGET_POINTS, defense_record, load_record, merge_records, record, tuning_runs, write_record,
)


def _grid(text: str | None, default: tuple[float, ...]) -> list[float]:
    if not text:
        return list(default)
    try:
        return [float(v) for v in text.split(",")]
    except ValueError as error:
        raise UsageError(f"--grid {text!r}: expected comma-separated numbers, weakest first, e.g. 1e-4,2e-4,5e-4") from error


@click.command("tune")
@click.option("--defense", "defenses", multiple=True, help="Defense to tune; repeatable [default: every defense with a strength knob].")
@click.option("--seed", "seeds", multiple=True, type=int, help="Clean-model control seed; repeatable (drops are averaged) [default: 0].")
@click.option("--budget", type=float, default=DEFAULT_BUDGET_POINTS, help="Largest validation CA drop allowed, in points.")
@click.option("--grid", default=None, help="Values of the strength knob to try, weakest first, comma-separated [default: the defense's].")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False), help="YAML config of the setting.")
@click.option("--preset", default=None, help="Named setting, e.g. standard-v2.")
@click.option("--results-dir", default="results/tuning", help="Where the clean-control run cards go.")
@click.option("--output", default=None, type=click.Path(dir_okay=False), help="The tuning record [default: RESULTS_DIR/<setting>.json].")
@click.option("--update", is_flag=True, help="Add or replace the tuned defenses' entries in the record at --output "
              "(made under the same setting, seeds and budget) instead of writing a new record.")
@click.option("--plugin", multiple=True, type=click.Path(dir_okay=False), help="Python file that registers defenses; repeatable.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def tune_command(defenses, seeds, budget, grid, config_file, preset, results_dir, output, update, plugin, quiet) -> None:
    """Pick each defense's strength on the clean-model control's validation split (never test, never ASR)."""
    from cleanbench.defenses.base import acts_in_pretraining
    from cleanbench.runner import run_cell

    for path in plugin:
        load_plugin_file(path)
    values = load_yaml(config_file) if config_file else {}
    if preset:
        from cleanbench.presets import preset_values

        values = merge(preset_values(preset), values)
    base = from_dict(RunConfig, merge(values, {"results_dir": results_dir}), "config")
    if budget < 0:
        raise UsageError(f"--budget {budget}: a CA drop budget must be >= 0 points")
    setting = getattr(base, "setting", None) or preset or (Path(config_file).stem if config_file else "default")
    names = list(defenses) or [e.name for e in DEFENSES.entries() if not e.error and getattr(e.target, "strength", None)
                               and not acts_in_pretraining(e.target)]
    for name in names:  # every name checked before any cell runs
        _check_tunable(name)
    seeds = list(seeds) or [0]
    target = Path(output or Path(results_dir) / f"{setting}.json")
    existing = load_record(target) if update and target.exists() else None
    if existing is not None:  # refuse a record made under another protocol before any run
        merge_records(existing, record(setting, seeds, budget, {}))
    entries = {}
    for name in names:
        strength = DEFENSES.get(name).strength
        values_grid = _grid(grid, strength.grid)
        groups = []
        for i, config in enumerate(tuning_runs(base, name, strength.knob, values_grid, seeds)):
            card, _ = run_cell(config, progress=not quiet, command=f"cleanbench tune --defense {name}")
            if i % len(seeds) == 0:
                groups.append([])
            groups[-1].append(card)
        entries[name] = defense_record(strength.knob, values_grid, groups, budget)
        entry = entries[name]
        click.echo(f"{name}: {strength.knob}={entry['chosen']:g} "
                   f"({'within' if entry['within_budget'] else 'NOT within'} {budget:g} points); drops "
                   + ", ".join(f"{v:g}: {d:.1f}" for v, d in zip(values_grid, entry["validation_ca_drop_points"])))
    values = record(setting, seeds, budget, entries)
    path = write_record(target, merge_records(existing, values) if existing is not None else values)
    click.echo(f"tuning record: {path}")


def _check_tunable(name: str) -> None:
    """UsageError unless defense `name` can be tuned: a post-training defense with a strength knob."""
    from cleanbench.defenses.base import acts_in_pretraining

    cls = DEFENSES.get(name)
    if acts_in_pretraining(cls):
        raise UsageError(f"defense {name!r} acts during pretraining: the tuning protocol picks a post-training "
                         "defense's strength on the clean-model control and does not apply to it (each grid value "
                         f"would be a full pretraining); set its options with --defense-opt (docs/defenses.md)")
    if cls.strength is None:
        raise UsageError(f"defense {name!r} declares no strength knob (class attribute `strength`); it cannot be tuned")
