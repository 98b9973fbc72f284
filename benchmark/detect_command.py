"""`cleanbench detect` (score a cell's pretraining pairs with detectors) and `cleanbench detections`
(the table of detection cards, pooled over seeds)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from cleanbench.config import RunConfig, from_dict, merge, parse_key_values, values_from_file
from cleanbench.errors import UsageError
from cleanbench.registry import load_plugin_file


def detector_options(items: tuple[str, ...], detectors: list[str]) -> dict[str, dict[str, Any]]:
    """`--detector-opt NAME.KEY=VALUE` (or `KEY=VALUE` when one detector is named) -> {NAME: {KEY: VALUE}}."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_key_values(items, "--detector-opt").items():
        name, dot, option = key.rpartition(".")
        if not dot:
            if len(detectors) != 1 or detectors == ["all"]:
                raise UsageError(f"--detector-opt {key}=...: say which detector it is for, e.g. "
                                 f"--detector-opt dao.{key}=... (several detectors run)")
            name, option = detectors[0], key
        out.setdefault(name, {})[option] = value
    return out


def _config(options: dict[str, Any]) -> dict[str, Any]:
    """The run config values from --config, --preset and the options (as `cleanbench run` merges them)."""
    from cleanbench.presets import DEFAULT_SETTING, preset_values

    values, _ = values_from_file(options["config_file"]) if options["config_file"] else ({}, None)
    preset = options["preset"] or (None if options["config_file"] else DEFAULT_SETTING)  # as `cleanbench run`
    if preset:
        values = merge(preset_values(preset), values)
    overrides: dict[str, Any] = {k: options[k] for k in ("attack", "target", "device", "results_dir")
                                 if options[k] is not None}
    if options["attack"] is not None and options["attack"] != values.get("attack", options["attack"]):
        values.pop("attack_options", None)
    if options["poison_rate"] is not None or options["poison_count"] is not None:
        overrides |= {"poison_rate": options["poison_rate"], "poison_count": options["poison_count"]}
    if options["attack_opt"]:
        overrides["attack_options"] = parse_key_values(options["attack_opt"], "--attack-opt")
    return merge(values, overrides)


@click.command("detect")
@click.option("--attack", default=None, help="Attack of the cell (see `cleanbench list attacks`) [default: badnet].")
@click.option("--attack-opt", multiple=True, metavar="KEY=VALUE", help="Attack option; repeatable.")
@click.option("--poison-rate", type=float, default=None, help="Fraction of training pairs poisoned [default: 0.02].")
@click.option("--poison-count", type=int, default=None, help="Number of poisoned pairs (instead of a rate).")
@click.option("--target", default=None, help="Target class name or index [default: star].")
@click.option("--seed", "seeds", type=int, multiple=True, help="Run seed; repeat for several [default: 0].")
@click.option("--detector", "detectors", multiple=True, default=("all",),
              help="Detector name (see `cleanbench list detectors`), or all; repeatable.")
@click.option("--detector-opt", multiple=True, metavar="NAME.KEY=VALUE",
              help="Detector option, e.g. dao.k=32 (KEY=VALUE when one detector runs); repeatable.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N [default: auto].")
@click.option("--results-dir", default=None, help="Where detection cards go (its detections/ folder) [default: results].")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              help="YAML config or run card of the cell (model, data, pretraining); options override it.")
@click.option("--preset", default=None, help="Named settings under --config, as for `cleanbench run` [default: standard-v2 without --config].")
@click.option("--plugin", multiple=True, type=click.Path(dir_okay=False), help="Python file that registers plugins; repeatable.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def detect_command(**options: Any) -> None:
    """Score every pretraining pair of a cell with detectors, given its poisoned model.

    The poisoned model is the one `cleanbench run` trains for the same attack, rate, seed and
    setting (reused from the cache, or trained and cached). Writes one detection card per detector
    and seed under RESULTS_DIR/detections and prints AUROC, AUPRC and TPR at 1 % FPR against the
    recorded poison indices (with 95 % intervals over seeds when several are given).
    """
    from cleanbench.detection import DetectionPlan, resolve_detectors, score_cell
    from cleanbench.detection_report import card_rows, pooled_table

    for path in options["plugin"]:
        load_plugin_file(path)
    names = list(options["detectors"])
    runs = resolve_detectors(names, detector_options(options["detector_opt"], names))
    values = _config(options)
    seeds = list(dict.fromkeys(options["seeds"])) or [values.get("seed", RunConfig().seed)]
    plans = [DetectionPlan(from_dict(RunConfig, values | {"seed": seed}, "config"), runs) for seed in seeds]
    command = "cleanbench " + shlex.join(sys.argv[1:])
    cards = []
    for plan in plans:
        click.echo(f"seed {plan.config.seed}: {plan.config.attack} at {plan.cell.budget_label}, "
                   f"{len(runs)} detector(s)", err=True)
        for card, path in score_cell(plan, progress=not options["quiet"], command=command):
            cards.append(card)
            click.echo(f"detection card: {path}", err=True)
    click.echo(card_rows(cards).to_string(index=False))
    if len(plans) > 1:
        click.echo("\nmean [95 % interval] over seeds:")
        click.echo(pooled_table(cards).to_string(index=False))


@click.command("detections")
@click.argument("results_dir", default="results", type=click.Path(file_okay=False))
@click.option("--per-seed", is_flag=True, help="One row per card instead of one per setting and detector.")
def detections_command(results_dir: str, per_seed: bool) -> None:
    """Print the detection cards under RESULTS_DIR/detections: mean and 95 % interval over seeds."""
    from cleanbench.detection_report import card_rows, load_detection_cards, pooled_table

    cards, unreadable = load_detection_cards(results_dir)
    for path in unreadable:
        click.echo(f"skipped {path}: not a readable detection card", err=True)
    if not cards:
        raise UsageError(f"no detection cards under {str(Path(results_dir, 'detections'))!r}; "
                         "run `cleanbench detect` first")
    table = card_rows(cards) if per_seed else pooled_table(cards)
    click.echo(table.to_string(index=False))
