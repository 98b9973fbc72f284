"""The `cleanbench` command line: run, list, results.

Errors become one line on stderr and an exit code (2: bad input, 1: a run failed); `--debug`
shows the traceback. Help, usage errors and `list` answer in well under a second: this module and
the command modules attached below import no torch, open_clip or plotting library at the top; each
command imports what it uses when it runs (tests/test_robustness.py checks it).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from cleanbench.config import RunConfig, from_dict, merge, parse_key_values, values_from_file
from cleanbench.errors import CleanbenchError, Interrupted, RunError, UsageError
from cleanbench.fileio import RESOURCE_ERRNOS, StorageError
from cleanbench.registry import ATTACKS, DEFENSES, DETECTORS, load_plugin_file

DEFAULTS = RunConfig()


def _environment_note(card: dict, config: RunConfig) -> None:
    """One line on stderr when the card being re-run was made in another environment."""
    from cleanbench import environment
    from cleanbench.plan import resolve_device

    now = environment.current(resolve_device(config.device), config.threads)
    note = environment.mismatch_note("this run card", environment.recorded(card), now)
    if note:
        click.echo(note, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="cleanbench")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """cleanbench: backdoor attacks and defenses on CLIP-style models, reproducibly."""
    ctx.obj = {"debug": debug}


@cli.command()
@click.option("--attack", default=None, help=f"Attack name (see `cleanbench list attacks`) [default: {DEFAULTS.attack}].")
@click.option("--attack-opt", multiple=True, metavar="KEY=VALUE", help="Attack option, e.g. patch_size=16; repeatable.")
@click.option("--defense", default=None, help=f"Defense name (see `cleanbench list defenses`) [default: {DEFAULTS.defense}].")
@click.option("--defense-opt", multiple=True, metavar="KEY=VALUE", help="Defense option, e.g. lr=1e-3; repeatable.")
@click.option("--poison-rate", type=float, default=None, help=f"Fraction of training pairs poisoned, in (0, 1] [default: {DEFAULTS.poison_rate}].")
@click.option("--poison-count", type=int, default=None, help="Number of poisoned pairs (instead of a rate).")
@click.option("--target", default=None, help=f"Target class name or index [default: {DEFAULTS.target}].")
@click.option("--seed", type=int, default=None, help=f"Run seed [default: {DEFAULTS.seed}].")
@click.option("--device", default=None, help="auto (CUDA when present), cpu, cuda or cuda:N [default: auto].")
@click.option("--threads", type=int, default=None, help=f"torch threads on the CPU; part of the cell (another count gives slightly other numbers) [default: {DEFAULTS.threads}].")
@click.option("--model", default=None, help=f"open_clip model name [default: {DEFAULTS.model.name}].")
@click.option("--pretrained", default=None, help="open_clip pretrained tag or checkpoint path [default: none].")
@click.option("--threat", default=None, type=click.Choice(["scratch", "finetune-pretrained"]), help="Train the poisoned model from random weights, or finetune --pretrained weights [default: scratch].")
@click.option("--results-dir", default=None, help=f"Where run cards go [default: {DEFAULTS.results_dir}].")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False), help="YAML config (or a run card to reproduce); options override it.")
@click.option("--preset", default=None, help="Named settings under --config and the options: standard-v2 (docs/setting.md; the default without --config, --data or --model), standard (its first version), paper-cc3m-rn50-scratch, paper-openai-rn50-finetune (docs/real-data.md).")
@click.option("--data", default=None, type=click.Path(dir_okay=False), help="CSV of image-caption pairs (columns image,caption; paths relative to it): train on files (data.source csv).")
@click.option("--eval-data", default=None, help="Zero-shot test set: a folder with labels.csv or class sub-folders, or torchvision:NAME:ROOT.")
@click.option("--save-model", default=None, type=click.Path(file_okay=False), help="Folder to save the poisoned and defended models in, as open_clip folders (local-dir:).")
@click.option("--plugin", multiple=True, type=click.Path(dir_okay=False), help="Python file that registers attacks/defenses; repeatable.")
@click.option("--tuning", default=None, type=click.Path(dir_okay=False), help="Tuning record from `cleanbench tune`: the defense's strength option comes from it.")
@click.option("--no-cache", is_flag=True, help="Retrain the poisoned model even when a cached one exists.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--nproc", type=int, default=1, help="Train with DDP on N processes on this machine (torchrun: one GPU each, or CPU with gloo).")
def run(**options) -> None:
    """Run one cell: poison, pretrain, evaluate, defend, evaluate, write a run card."""
    if options["nproc"] > 1 and int(os.environ.get("WORLD_SIZE", 1)) <= 1:  # not yet launched by torchrun
        from cleanbench import distributed

        return distributed.relaunch(options["nproc"], distributed.without_option(sys.argv[1:], "--nproc"))
    for path in options["plugin"]:
        load_plugin_file(path)
    values, source_card = values_from_file(options["config_file"]) if options["config_file"] else ({}, None)
    preset = options["preset"] or _default_preset(options)
    if preset:
        from cleanbench.presets import preset_values

        values = merge(preset_values(preset), values)
    overrides: dict = {}
    for key in ("attack", "defense", "target", "seed", "device", "threads", "results_dir", "tuning"):
        if options[key] is not None:
            overrides[key] = options[key]
    if options["poison_rate"] is not None or options["poison_count"] is not None:
        overrides["poison_rate"] = options["poison_rate"]
        overrides["poison_count"] = options["poison_count"]
    if options["attack"] is not None and options["attack"] != values.get("attack", options["attack"]):
        values.pop("attack_options", None)
    if options["defense"] is not None and options["defense"] != values.get("defense", options["defense"]):
        values.pop("defense_options", None)
    if options["attack_opt"]:
        overrides["attack_options"] = parse_key_values(options["attack_opt"], "--attack-opt")
    if options["defense_opt"]:
        overrides["defense_options"] = parse_key_values(options["defense_opt"], "--defense-opt")
    model = {k: options[k] for k in ("model", "pretrained") if options[k] is not None}
    if "model" in model:
        overrides["model"] = {"name": model["model"], **({"pretrained": model["pretrained"]} if "pretrained" in model else {})}
    elif "pretrained" in model:
        overrides["model"] = {"pretrained": model["pretrained"]}
    if options["threat"]:
        overrides.setdefault("model", {})["threat"] = options["threat"]
    if options["no_cache"]:
        overrides["use_cache"] = False
    files = {key: options[option] for key, option in (("train", "data"), ("eval", "eval_data")) if options[option]}
    if files:
        overrides["data"] = {**({"source": "csv"} if "train" in files else {}), **files}
    config = from_dict(RunConfig, merge(values, overrides), "config")
    ATTACKS.check_name(config.attack)  # an unknown name is refused before torch is imported
    DEFENSES.check_name(config.defense)

    from cleanbench import distributed

    if source_card is not None and distributed.is_main():
        _environment_note(source_card, config)

    from cleanbench.export import saving_models
    from cleanbench.runner import run_cell
    from cleanbench.summary import cell_summary

    command = "cleanbench " + shlex.join(sys.argv[1:])
    with saving_models(config, options["save_model"]) as save:
        card, path = run_cell(config, progress=not options["quiet"], command=command)
        saved = save(card) if distributed.is_main() else {}
    if not distributed.is_main():
        return
    click.echo(cell_summary(card))
    click.echo(f"run card: {path}")
    for name, folder in saved.items():
        click.echo(f"{name} model: local-dir:{folder}")


def _default_preset(options: dict) -> str | None:
    """The default setting (`standard-v2`) for a run on the embedded data with the default model and
    no config file; None otherwise (a config file, file data or another model start from the plain
    option defaults)."""
    from cleanbench.presets import DEFAULT_SETTING

    own = ("config_file", "data", "eval_data", "model", "pretrained", "threat")
    return None if any(options[key] for key in own) else DEFAULT_SETTING


@cli.command("list")
@click.argument("kind", required=False, type=click.Choice(["attacks", "defenses", "detectors", "models"]))
@click.option("--plugin", multiple=True, type=click.Path(dir_okay=False), help="Python file that registers plugins.")
def list_(kind: str | None, plugin: tuple[str, ...]) -> None:
    """List registered attacks, defenses, detectors and models."""
    for path in plugin:
        try:
            load_plugin_file(path)
        except RunError as error:  # reported, and the rest is still listed
            click.echo(f"BROKEN: {error}")
    if kind in (None, "attacks"):
        click.echo("attacks:")
        for entry in ATTACKS.entries():
            click.echo(_entry_line(entry, "paper"))
    if kind in (None, "defenses"):
        click.echo("defenses:")
        for entry in DEFENSES.entries():
            click.echo(_entry_line(entry, "source"))
    if kind in (None, "detectors"):
        click.echo("detectors:")
        for entry in DETECTORS.entries():
            click.echo(_entry_line(entry, "source"))
    if kind == "models":
        from cleanbench.models import available_models

        click.echo("models (open_clip architectures; cleanbench-tiny is the offline default):")
        for name in available_models():
            click.echo(f"  {name}")


def _entry_line(entry, reference_attr: str) -> str:
    if entry.error:
        return f"  {entry.name:<20} BROKEN ({entry.source}): {entry.error}"
    cls = entry.target
    extra = f" [stage: {cls.stage}]" if hasattr(cls, "stage") and reference_attr == "source" else ""
    origin = "" if entry.source == "builtin" else f" ({entry.source})"
    return f"  {entry.name:<20} {cls.description}{extra}{origin}\n  {'':<20} source: {getattr(cls, reference_attr)}"


@cli.command()
@click.argument("results_dir", default=DEFAULTS.results_dir, type=click.Path(file_okay=False))
def results(results_dir: str) -> None:
    """Print a table of the run cards in RESULTS_DIR (a folder with a runs/ folder, e.g. a published
    sweep such as results/sweeps/standard-v2, or a runs/ folder itself); files that are not valid cards
    are listed on stderr with the reason."""
    from cleanbench.leaderboard.cards import cards_table, scan_cards

    folder = Path(results_dir)
    scan = scan_cards(folder.parent if not (folder / "runs").is_dir() and folder.name == "runs" else folder)
    cards = [c for c in scan.cards if Path(c["_path"]).is_relative_to(folder)]
    rejected = [(path, reason) for path, reason in scan.rejected if Path(path).is_relative_to(folder)]
    for path, reason in rejected:
        click.echo(f"skipped {path}: {reason}", err=True)
    if not cards:
        skipped = f" ({len(rejected)} files skipped, listed above)" if rejected else ""
        raise UsageError(f"no valid run cards under {results_dir!r}{skipped}; run `cleanbench run` first, or name a "
                         "results folder, e.g. `cleanbench results results/sweeps/standard-v2`")
    click.echo(cards_table(cards).to_string(index=False))
    if rejected:
        click.echo(f"{len(cards)} run cards; {len(rejected)} files skipped (listed on stderr)")


# Commands defined in their own modules are attached here, one line each. A command's module imports
# torch, open_clip, pandas and plotting inside the command's function, never at the top.
from cleanbench.check_plugin_command import check_plugin; cli.add_command(check_plugin)  # noqa: E402, E702
from cleanbench.leaderboard.command import leaderboard; cli.add_command(leaderboard)  # noqa: E402, E702
from cleanbench.sweep.command import sweep_command; cli.add_command(sweep_command)  # noqa: E402, E702
from cleanbench.bench_command import bench_command; cli.add_command(bench_command)  # noqa: E402, E702
from cleanbench.cache_command import cache_command; cli.add_command(cache_command)  # noqa: E402, E702
from cleanbench.verify import verify_command; cli.add_command(verify_command)  # noqa: E402, E702
from cleanbench.doctables import doc_tables_command; cli.add_command(doc_tables_command)  # noqa: E402, E702
from cleanbench.tuning_command import tune_command; cli.add_command(tune_command)  # noqa: E402, E702
from cleanbench.detect_command import detect_command, detections_command; cli.add_command(detect_command); cli.add_command(detections_command)  # noqa: E402, E702, E501


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the CLI and turn cleanbench errors into one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="cleanbench", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except Interrupted as interrupt:
        cancelled = ", ".join(f"#{i}" for i in interrupt.cancelled) or "none"
        click.echo(f"interrupted by {interrupt.name}: {interrupt.finished} cells finished (their run cards are kept); "
                   f"cancelled the running cells ({cancelled}), whose partial work is discarded; "
                   "run the same command again to resume", err=True)
        return interrupt.exit_code
    except click.ClickException as error:
        command = getattr(getattr(error, "ctx", None), "command_path", "cleanbench")
        click.echo(f"error: {error.format_message()} (see `{command} --help`)", err=True)
        return error.exit_code
    except CleanbenchError as error:
        if debug:
            raise
        cause = error.__cause__  # a run failure raised by other code (a plugin, a library): its traceback helps
        unexpected = isinstance(error, RunError) and cause is not None and not isinstance(cause, CleanbenchError)
        hint = " (`cleanbench --debug ...` shows the traceback)" if unexpected else ""
        click.echo(f"error: {error}{hint}", err=True)
        return error.exit_code
    except Exception as error:  # a bug, not bad input: still one line, the traceback behind --debug
        if debug:
            raise
        if isinstance(error, OSError) and error.filename and error.errno in RESOURCE_ERRNOS:
            click.echo(f"error: {StorageError(Path(error.filename), error, action='use')}", err=True)
            return 1
        click.echo(f"error: unexpected {type(error).__name__}: {error}; this is a bug in cleanbench or a plugin: "
                   "run again with `cleanbench --debug ...` and report the traceback", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
