"""`cleanbench leaderboard RESULTS_DIR... -o SITE_DIR`: build the static leaderboard site."""

from __future__ import annotations

from pathlib import Path

import click

from cleanbench.errors import UsageError


@click.command("leaderboard")
@click.argument("results_dirs", metavar="RESULTS_DIR...", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("-o", "--output", "site_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for the site (created; a previous build there is replaced) [default: the first RESULTS_DIR/site].")
@click.option("--tradeoff", "tradeoff_dirs", multiple=True, type=click.Path(file_okay=False),
              help="A strength-grid sweep's results folder whose cards draw the trade-off plots "
                   "(e.g. results/sweeps/standard-tradeoff); repeatable [default: the RESULTS_DIRs' own cards].")
def leaderboard(results_dirs: tuple[str, ...], site_dir: str | None, tradeoff_dirs: tuple[str, ...]) -> None:
    """Build the static leaderboard site from the run cards under each RESULTS_DIR/runs.

    Several folders (e.g. one per setting) make one site, each setting in its own tables, in the
    order given. Open SITE_DIR/index.html in a browser; it needs no network. Invalid card files
    are skipped and listed.
    """
    from cleanbench.leaderboard.site import build_site

    for results_dir in results_dirs:
        if not Path(results_dir).is_dir():
            raise UsageError(f"results dir {results_dir!r} does not exist; run `cleanbench run` first")
    for tradeoff_dir in tradeoff_dirs:
        if not Path(tradeoff_dir).is_dir():
            raise UsageError(f"--tradeoff folder {tradeoff_dir!r} does not exist; run its sweep first "
                             "(e.g. cleanbench sweep results/standard-tradeoff.yaml)")
    target = Path(site_dir) if site_dir is not None else Path(results_dirs[0]) / "site"
    report = build_site(list(results_dirs), target, list(tradeoff_dirs) or None)
    for path, reason in report.rejected:
        click.echo(f"skipped {path}: {reason}", err=True)
    click.echo(f"{report.cards} run cards -> {report.rows} rows, {report.figures} plots, {report.pages} pages; "
               f"{len(report.rejected)} files skipped")
    click.echo(f"site: {target / 'index.html'}")
