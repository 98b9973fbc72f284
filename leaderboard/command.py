"""`cleanbench leaderboard RESULTS_DIR -o SITE_DIR`: build the static leaderboard site."""

from __future__ import annotations

from pathlib import Path

import click

from cleanbench.errors import UsageError


@click.command("leaderboard")
@click.argument("results_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", "site_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for the site (created; a previous build there is replaced) [default: RESULTS_DIR/site].")
@click.option("--tradeoff", "tradeoff_dir", default=None, type=click.Path(file_okay=False),
              help="A strength-grid sweep's results folder whose cards draw the trade-off plots "
                   "(e.g. results/sweeps/standard-tradeoff) [default: RESULTS_DIR's own cards].")
def leaderboard(results_dir: str, site_dir: str | None, tradeoff_dir: str | None) -> None:
    """Build the static leaderboard site from the run cards under RESULTS_DIR/runs.

    Open SITE_DIR/index.html in a browser; it needs no network. Invalid card files are skipped
    and listed.
    """
    from cleanbench.leaderboard.site import build_site

    if not Path(results_dir).is_dir():
        raise UsageError(f"results dir {results_dir!r} does not exist; run `cleanbench run` first")
    if tradeoff_dir is not None and not Path(tradeoff_dir).is_dir():
        raise UsageError(f"--tradeoff folder {tradeoff_dir!r} does not exist; run its sweep first "
                         "(e.g. cleanbench sweep results/standard-tradeoff.yaml)")
    target = Path(site_dir) if site_dir is not None else Path(results_dir) / "site"
    report = build_site(results_dir, target, tradeoff_dir)
    for path, reason in report.rejected:
        click.echo(f"skipped {path}: {reason}", err=True)
    click.echo(f"{report.cards} run cards -> {report.rows} rows, {report.figures} plots, {report.pages} pages; "
               f"{len(report.rejected)} files skipped")
    click.echo(f"site: {target / 'index.html'}")
