"""The `cleanbench check-plugin` command: the conformance check of a defense (`conformance`), a
detector (`detector_conformance`) or an attack (`attack_conformance`), with its report."""

from __future__ import annotations

import click

from cleanbench.config import parse_key_values
from cleanbench.conformance import check_defense
from cleanbench.registry import load_plugin_file


@click.command("check-plugin")
@click.argument("name")
@click.option("--plugin", multiple=True, type=click.Path(dir_okay=False), help="Python file that registers the defense; repeatable.")
@click.option("--defense-opt", multiple=True, metavar="KEY=VALUE", help="Defense option for the check, e.g. epochs=1; repeatable.")
@click.option("--seed", type=int, default=0, help="Seed of the tiny configuration.")
@click.option("--kind", type=click.Choice(["defense", "detector", "attack"]), default="defense",
              help="What kind of plugin NAME is.")
@click.option("--detector-opt", multiple=True, metavar="KEY=VALUE", help="Detector option for the check (--kind detector); repeatable.")
@click.option("--attack-opt", multiple=True, metavar="KEY=VALUE", help="Attack option for the check (--kind attack); repeatable.")
def check_plugin(name: str, plugin: tuple[str, ...], defense_opt: tuple[str, ...], seed: int, kind: str,
                 detector_opt: tuple[str, ...], attack_opt: tuple[str, ...]) -> None:
    """Check that defense (or detector, or attack) NAME keeps the contract, on a tiny configuration on the CPU (seconds).

    Prints each passed check and the cost, then PASS; or fails with the first check that did not
    pass and why (exit 1).
    """
    for path in plugin:
        load_plugin_file(path)
    if kind == "detector":
        from cleanbench.detector_conformance import report_detector  # imports torch: only when asked for

        return report_detector(name, parse_key_values(detector_opt, "--detector-opt"), seed)
    if kind == "attack":
        from cleanbench.attack_conformance import report_attack  # imports torch: only when asked for

        return report_attack(name, parse_key_values(attack_opt, "--attack-opt"), seed)
    overrides = parse_key_values(defense_opt, "--defense-opt")
    click.echo(f"check-plugin {name!r}: tiny badnet configuration on cpu, seed {seed}")
    report = check_defense(name, overrides, seed, log=click.echo)
    cost = report.cost
    training = (f"{cost['training_steps']} training steps at {cost['items_per_second']:.0f} items/s"
                if cost["training_steps"] else "no training")
    click.echo(
        f"  cost  {cost['apply_seconds']:.1f} s per apply ({cost['device']}, torch threads: {cost['threads']}), "
        f"{training}, {cost['tensors_changed']} of {cost['tensors']} tensors changed"
    )
    click.echo(f"PASS {name}")
