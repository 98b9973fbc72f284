"""`cleanbench doc-tables`: the tables of measured numbers in README.md and docs/ come from run cards.

A table is written between two markers (HTML comments, invisible on GitHub; indented alike inside
a list item):

    <!-- cleanbench-table cards results/cells where=config.attack=badnet columns=seed,poisoned_ca,defended_asr -->
    | ... generated ... |
    <!-- /cleanbench-table -->

The opening marker names the kind, a results folder (with a runs/ folder, or a runs/ folder itself)
and options (shell-quoted):

- `cards`: one row per matching card. `where=PATH=VALUE` (repeatable) keeps the cards whose field at
  the dotted PATH (e.g. `config.seed`, `defense.options.image_view`) prints as VALUE; `file=GLOB`
  (repeatable: any of them) matches the card's file name; `columns=` picks from `CARD_COLUMNS`; `headers=` renames them
  (comma-separated, same order).
- `leaderboard`: rows of the leaderboard table built from the folder (mean ± std over seeds, DER
  and rank), for `rates=` (e.g. `rates=clean,2%`), and only the `attacks=` and `defenses=` given
  (comma-separated names; default all).
- `detections`: the detection cards under the folder's detections/, one row per attack, detector
  and options with mean [95 % interval] over seeds; `where=PATH=VALUE` as for `cards`.

`cleanbench doc-tables` rewrites every marked table from the cards; `--check` changes nothing and
exits 1 naming the files whose committed tables differ (CI runs it). Paths are relative to the
current folder: run it from the repository root. A marker that matches no card is an error.
"""

from __future__ import annotations

import fnmatch
import glob
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cleanbench.errors import UsageError
from cleanbench.runcard import select_where

MARKER = re.compile(r"^(?P<indent> *)<!-- cleanbench-table (?P<spec>.*?) -->\n(?P<body>.*?)^(?P=indent)<!-- /cleanbench-table -->$",
                    re.M | re.S)
FENCE = re.compile(r"(^```.*?^```$)", re.M | re.S)
DEFAULT_FILES = ("README.md", "docs/*.md")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _metric(stage: str, name: str) -> Callable[[dict], str]:
    return lambda card: _percent(card.get("metrics", {}).get(stage, {}).get(name, {}).get("value"))


def _change(name: str, signed: bool = False) -> Callable[[dict], str]:
    def cell(card: dict) -> str:
        after = card["metrics"]["defended"][name]["value"]
        delta = card["metrics"]["change"][name]
        return f"{100 * delta:+.1f}" if signed else f"{100 * after:.1f} ({100 * delta:+.1f})"
    return cell


def _rate(card: dict) -> str:
    config = card["config"]
    if config["attack"] == "none":
        return "clean"
    if config.get("poison_count") is not None:
        return f"n={config['poison_count']}"
    return f"{100 * config['poison_rate']:g} %"


def _options(card: dict) -> str:
    given = {**card["config"].get("attack_options", {}), **card["config"].get("defense_options", {})}
    return ", ".join(f"{k}={v}" for k, v in sorted(given.items())) or "defaults"


CARD_COLUMNS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "attack": ("attack", lambda c: f"`{c['config']['attack']}`"),
    "defense": ("defense", lambda c: f"`{c['config']['defense']}`"),
    "rate": ("rate", _rate),
    "seed": ("seed", lambda c: str(c["config"]["seed"])),
    "pretrain_epochs": ("pretraining epochs", lambda c: str(c["config"]["pretrain"]["epochs"])),
    "pretrain_lr": ("pretraining lr", lambda c: f"{c['config']['pretrain']['lr']:g}"),
    "options": ("options", _options),
    "threads": ("threads", lambda c: str(c["config"].get("threads", c.get("device", {}).get("torch_threads", "?")))),
    "poisoned_ca": ("poisoned CA", _metric("poisoned", "ca_top1")),
    "poisoned_asr": ("poisoned ASR", _metric("poisoned", "asr")),
    "poisoned_ra": ("poisoned RA", _metric("poisoned", "ra")),
    "defended_ca": ("defended CA", _metric("defended", "ca_top1")),
    "defended_asr": ("defended ASR", _metric("defended", "asr")),
    "defended_ra": ("defended RA", _metric("defended", "ra")),
    "defended_ca_change": ("defended CA (change)", _change("ca_top1")),
    "defended_asr_change": ("defended ASR (change)", _change("asr")),
    "ca_change": ("CA change", _change("ca_top1", signed=True)),
    "asr_change": ("ASR change", _change("asr", signed=True)),
    "stealthiness": ("L-inf / PSNR", lambda c: "{linf:.2f} / {psnr_db:.1f} dB".format(**c["metrics"]["poisoned"]["stealthiness"])),
    "variant": ("defense (as it ran)", lambda c: c["_variant"]),
    "defense_seconds": ("defense time", lambda c: f"{c.get('costs', {}).get('defense_seconds', float('nan')):.0f} s"),
    "card": ("run card", lambda c: f"`{c['_path']}`"),
}
"""Columns of a `cards` table: (default header, cell text). `variant` is the defense's name with the
resolved options that tell it apart from the table's other cards (as the leaderboard labels rows)."""


def _load(folder: str) -> list[dict]:
    from cleanbench.leaderboard.cards import load_cards

    path = Path(folder)
    if not (path / "runs").is_dir() and path.name == "runs":
        return [c for c in load_cards(path.parent) if Path(c["_path"]).is_relative_to(path)]
    return load_cards(path)


def _markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _options_of(words: list[str]) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise UsageError(f"table option {word!r}: expected KEY=VALUE")
        options.setdefault(key, []).append(value)
    return options


def cards_table(folder: str, options: dict[str, list[str]]) -> str:
    """The markdown table of the matching cards in `folder`."""
    cards = [c for c in _load(folder) if c["status"] == "ok"]
    cards = select_where(cards, options.get("where", []), "config.seed=0")
    if "file" in options:
        cards = [c for c in cards if any(fnmatch.fnmatch(Path(c["_path"]).name, p) for p in options["file"])]
    if not cards:
        raise UsageError(f"no run card in {folder!r} matches {options}")
    names = ",".join(options.get("columns", ["attack,defense,rate,seed,poisoned_ca,poisoned_asr,defended_ca,defended_asr"])).split(",")
    unknown = [n for n in names if n not in CARD_COLUMNS]
    if unknown:
        raise UsageError(f"unknown table column {unknown[0]!r}; columns: {', '.join(CARD_COLUMNS)}")
    headers = options["headers"][0].split(",") if "headers" in options else [CARD_COLUMNS[n][0] for n in names]
    if len(headers) != len(names):
        raise UsageError(f"headers= gives {len(headers)} names for {len(names)} columns")
    from cleanbench.leaderboard.table import variant_labels

    labels = variant_labels(cards, "defense")
    for card in cards:
        card["_variant"] = labels[id(card)]
    cards.sort(key=lambda c: (c["config"]["attack"], _rate(c), c["_variant"], c["config"]["seed"], c["_path"]))
    return _markdown(headers, [[CARD_COLUMNS[n][1](c) for n in names] for c in cards])


def leaderboard_rows(folder: str, options: dict[str, list[str]]) -> str:
    """The markdown excerpt of the leaderboard built from `folder`, for the rates in `rates=`."""
    import pandas as pd

    from cleanbench.leaderboard.table import leaderboard_table

    table = leaderboard_table(_load(folder))
    rates = ",".join(options.get("rates", [])).split(",") if "rates" in options else None
    if rates:
        table = table[table["poison_rate"].isin(rates)]
    for axis in ("attack", "defense"):
        if f"{axis}s" in options:
            table = table[table[axis].isin(",".join(options[f"{axis}s"]).split(","))]
    if table.empty:
        raise UsageError(f"no leaderboard rows in {folder!r} for {options}")

    def spread(row: Any, prefix: str, scale: float = 100, digits: int = 1) -> str:
        mean, std = row[f"{prefix}_mean"], row[f"{prefix}_std"]
        if pd.isna(mean):
            return "n/a"
        return f"{scale * mean:.{digits}f}" + ("" if pd.isna(std) else f" ± {scale * std:.{digits}f}")

    rows = []
    for _, row in table[table["n_seeds"] > 0].iterrows():  # a row no card measured is not a result
        rank, tied = row.get("rank"), row.get("rank_tied")
        if row.get("role") in ("control", "reference"):
            rank = row["role"]  # the clean control and the undefended reference are never ranked
        elif row.get("implanted") is False:
            rank = "did not implant"
        else:
            rank = "" if pd.isna(rank) else f"{int(rank)}{'=' if not pd.isna(tied) and tied else ''}"
        rows.append([str(row["attack"]), str(row["poison_rate"]), str(row["defense"]), str(row["n_seeds"]),
                     spread(row, "ca"), spread(row, "asr"), spread(row, "ra"), spread(row, "der", 1, 2), rank])
    return _markdown(["attack", "rate", "defense", "seeds", "CA %", "ASR %", "RA %", "DER", "rank"], rows)


def detections_table(folder: str, options: dict[str, list[str]]) -> str:
    """The detection cards' table (mean [95 % interval] over seeds); see `cleanbench.detection_report`."""
    from cleanbench.detection_report import detections_markdown

    return detections_markdown(folder, options)


KINDS: dict[str, Callable[[str, dict[str, list[str]]], str]] = {"cards": cards_table, "leaderboard": leaderboard_rows,
                                                                  "detections": detections_table}


def render(text: str, where: str) -> str:
    """`text` with every marked table regenerated (outside fenced code blocks)."""

    def replace(match: re.Match) -> str:
        words = shlex.split(match.group("spec"))
        if len(words) < 2 or words[0] not in KINDS:
            raise UsageError(f"{where}: table marker {match.group('spec')!r}: expected KIND FOLDER [OPTIONS], "
                             f"KIND one of {', '.join(KINDS)}")
        try:
            body = KINDS[words[0]](words[1], _options_of(words[2:]))
        except UsageError as error:
            raise UsageError(f"{where}: {error}") from error
        indent = match.group("indent")
        body = "".join(indent + line for line in body.splitlines(keepends=True))
        return f"{indent}<!-- cleanbench-table {match.group('spec')} -->\n{body}{indent}<!-- /cleanbench-table -->"

    parts = FENCE.split(text)  # markers inside fenced code blocks are examples, not tables
    return "".join(part if part.startswith("```") else MARKER.sub(replace, part) for part in parts)


def markdown_files(patterns: tuple[str, ...]) -> list[Path]:
    """The files named by `patterns` (globs relative to the current folder) that hold a table marker."""
    files = sorted({Path(p) for pattern in patterns for p in glob.glob(pattern)})
    return [p for p in files if "<!-- cleanbench-table " in p.read_text()]


@click.command("doc-tables")
@click.argument("files", nargs=-1)
@click.option("--check", is_flag=True, help="Change nothing; exit 1 if a committed table differs from its cards.")
def doc_tables_command(files: tuple[str, ...], check: bool) -> None:
    """Regenerate the tables of measured numbers in FILES (default: README.md, docs/*.md) from run cards."""
    stale = []
    for path in markdown_files(files or DEFAULT_FILES):
        text = path.read_text()
        new = render(text, str(path))
        if new != text:
            stale.append(str(path))
            if not check:
                path.write_text(new)
        click.echo(f"{path}: {'differs from its cards' if new != text and check else 'rewritten' if new != text else 'up to date'}")
    if check and stale:
        from cleanbench.errors import RunError

        raise RunError(f"tables differ from their run cards in {', '.join(stale)}; run `cleanbench doc-tables`")
