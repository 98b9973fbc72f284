"""The static leaderboard site: Jinja2 templates (autoescaped) rendered from run cards alone.

The site opens from file:// with no network: relative links, one small hand-written script and
style sheet, SVG plots, and CSV/JSON downloads of the full table.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from cleanbench.errors import UsageError
from cleanbench.leaderboard.cards import CardScan, scan_cards
from cleanbench.leaderboard.costs import card_cost_rows
from cleanbench.leaderboard.detections import detection_views, load_detection_cards
from cleanbench.leaderboard.display import (
    attack_ranking_view,
    defense_ranking_view,
    defense_stages,
    stage_label,
    matrix_view,
    missing,
    number,
    row_anchor,
)
from cleanbench.leaderboard.gallery import draw_gallery
from cleanbench.leaderboard.papers import linked
from cleanbench.leaderboard.plots import Figure, draw_all
from cleanbench.leaderboard.setting import setting_facts
from cleanbench.leaderboard.table import METRICS, NOT_RUN, Analysis, analyse, slug
from cleanbench.leaderboard.tradeoff import draw_tradeoffs
from cleanbench.leaderboard.views import attack_ranking, defense_ranking, matrices

MARKER = ".cleanbench-site"
GENERATED = ("index.html", "add-defense.html", "leaderboard.csv", "leaderboard.json", "cards", "attacks", "defenses",
             "plots", "static", "gallery")
METHODS = {
    "bootstrap": "95% bootstrap interval over seeds and test images",
    "seeds": "no interval (not a proportion)",
    "none": "no interval",
}
HELP = {
    "ca": "Clean accuracy: zero-shot top-1 on clean test images, after the defense.",
    "asr": "Attack success rate: triggered non-target test images predicted as the target class, after the defense.",
    "ra": "Robust accuracy: triggered non-target test images predicted as their true class, after the defense.",
    "d_ca": "Change in CA against the undefended model (defended - undefended), in percentage points.",
    "d_asr": "Change in ASR against the undefended model (defended - undefended), in percentage points.",
    "der": "Defense effectiveness rating, [max(0, ASR drop) - max(0, CA drop) + 1] / 2: 1 best, 0.5 no change.",
    "seconds": ("Cost: wall time of the defense stage, in seconds (mean over seeds); a defense that acts during "
                "pretraining trains a whole model, so its cost is a full pretraining. The setting box gives every stage's cost."),
}


@dataclass
class BuildReport:
    """What a build produced, and which card files it skipped and why."""

    site_dir: Path
    cards: int
    rows: int
    figures: int
    pages: int
    rejected: list[tuple[str, str]] = field(default_factory=list)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cleanbench.leaderboard", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["pct"] = lambda v: "N/A" if missing(v) else f"{100 * v:.1f}%"
    env.filters["pretty"] = lambda v: json.dumps(_plain(v), indent=2, ensure_ascii=False)
    env.filters["secs"] = lambda v: "N/A" if missing(v) else f"{v:.1f} s"
    env.filters["slug"] = slug
    env.filters["db"] = lambda v: "n/a" if missing(v) or math.isinf(v) else f"{v:.1f} dB"
    env.filters["unit"] = lambda v: "n/a" if missing(v) else f"{v:.3f}"
    return env


def _plain(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, private `_` keys are dropped."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _metric_cell(row: pd.Series, prefix: str) -> dict[str, Any]:
    """Display of one metric: mean, std, interval, sort key, best mark, or N/A with its reason."""
    mean = row[f"{prefix}_mean"]
    if missing(mean):
        reason = row["status"] if row["status"] != "ok" else ("no undefended reference" if prefix in ("d_ca", "d_asr", "der")
                                                             else "not recorded")
        return {"na": True, "reason": reason, "title": row["note"] or reason, "sort": ""}
    std, low, high, method = (row[f"{prefix}_{p}"] for p in ("std", "low", "high", "method"))
    interval = None if missing(low) or missing(high) else f"[{number(prefix, low)}, {number(prefix, high)}]"
    n = row["n_seeds"]
    spread = "" if missing(std) else f", sd across seeds {number(prefix, std).lstrip('+')}"
    title = f"mean of {n} seed{'s' if n != 1 else ''}{spread}; {METHODS[method]}"
    return {"na": False, "text": number(prefix, mean), "ci": interval, "sort": repr(float(mean)),
            "best": bool(row[f"{prefix}_best"]), "title": title}


def _display_rows(table: pd.DataFrame, card_pages: dict[str, str], card_seeds: dict[str, tuple[int, str]]) -> list[dict]:
    rows = []
    for _, row in table.iterrows():
        rank = row["rank"]
        implanted = row["implanted"]
        rows.append({
            "id": row_anchor(row["setting_key"], row["attack"], row["poison_rate"], row["defense"]),
            "setting": row["setting"], "attack": row["attack"], "rate": row["poison_rate"], "rate_value": row["rate"],
            "defense": row["defense"], "status": row["status"], "note": row["note"],
            "attack_page": f"attacks/{slug(row['attack'])}.html", "defense_page": f"defenses/{slug(row['defense'])}.html",
            "rank": None if missing(rank) else int(rank), "tied": bool(row["rank_tied"]), "tied_with": row["tied_with"],
            "role": row["role"], "implanted": None if missing(implanted) else bool(implanted),
            "implant_p": None if missing(row["implant_p"]) else float(row["implant_p"]),
            "implant_gain": None if missing(row["implant_gain"]) else float(row["implant_gain"]),
            "implant_gain_text": number("d_asr", row["implant_gain"]),
            "metrics": {prefix: _metric_cell(row, prefix) for prefix, _, _ in METRICS},
            "seeds": [{"page": card_pages[path], "seed": card_seeds[path][0], "status": card_seeds[path][1]}
                      for path in row["cards"]],
            "n_seeds": int(row["n_seeds"]),
        })
    return rows


def _prepare(site_dir: Path) -> None:
    """Empty the generated parts of `site_dir`; refuse a non-empty folder that is not a cleanbench site."""
    if site_dir.exists() and not site_dir.is_dir():
        raise UsageError(f"{str(site_dir)!r} is a file; pass a folder to -o")
    if site_dir.exists() and any(site_dir.iterdir()) and not (site_dir / MARKER).exists():
        raise UsageError(f"{str(site_dir)!r} is not empty and was not built by `cleanbench leaderboard`; "
                         "choose an empty or new folder")
    for name in GENERATED:
        path = site_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    site_dir.mkdir(parents=True, exist_ok=True)
    (site_dir / MARKER).write_text("built by `cleanbench leaderboard`; rebuilt files here are replaced\n")


def _copy_static(site_dir: Path) -> None:
    target = site_dir / "static"
    target.mkdir(parents=True, exist_ok=True)
    for item in resources.files("cleanbench.leaderboard").joinpath("static").iterdir():
        if item.is_file():
            (target / item.name).write_bytes(item.read_bytes())


def export_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as downloaded: plain columns, card paths joined by spaces."""
    out = table.copy()
    out["cards"] = out["cards"].map(lambda paths: " ".join(paths))
    out["rank"] = out["rank"].astype("float")
    return out


def _plugin_info(cards: list[dict], role: str, label: str) -> dict[str, Any]:
    card = next(c for c in cards if c["_cell"][1 if role == "attack" else 3] == label)
    plugin = card[role]
    return {"name": label, "plugin": plugin["name"], "description": plugin.get("description"),
            "reference": linked(plugin.get("paper") if role == "attack" else plugin.get("source")),
            "stage": plugin.get("stage"), "options": plugin.get("options", {})}


def build_site(results_dir: str | Path | Sequence[str | Path], site_dir: str | Path,
               tradeoff_dir: str | Path | Sequence[str | Path] | None = None) -> BuildReport:
    """Build the leaderboard site in `site_dir` from the run cards under `results_dir/runs`.

    `results_dir` may be several folders (e.g. one per setting): their cards join one site, each
    setting in its own tables, in the order of the folders. `tradeoff_dir`, when given, is one or
    more results folders (strength-grid sweeps such as `results/standard-tradeoff.yaml`'s) whose
    cards feed only the trade-off plots; without it the trade-off plots come from the site's own cards."""
    results_dirs, site_dir = _folders(results_dir), Path(site_dir)
    scans = [scan_cards(folder) for folder in results_dirs]
    scan = CardScan([c for found in scans for c in found.cards], [r for found in scans for r in found.rejected])
    if not scan.cards:
        skipped = f"; {len(scan.rejected)} files skipped, e.g. {scan.rejected[0][0]}: {scan.rejected[0][1]}" if scan.rejected else ""
        where = " or ".join(repr(str(folder / "runs")) for folder in results_dirs)
        raise UsageError(f"no valid run cards under {where}{skipped}")
    analysis = analyse(scan.cards)
    table = analysis.table
    detections = [load_detection_cards(folder) for folder in results_dirs]
    detection_cards = [c for cards, _ in detections for c in cards]
    detection_rejected = [r for _, rejected in detections for r in rejected]
    _prepare(site_dir)
    _copy_static(site_dir)
    env = _environment()
    figures = draw_all(table, site_dir)
    tradeoffs = _tradeoffs(table, scan, None if tradeoff_dir is None else _folders(tradeoff_dir), site_dir)
    gallery = draw_gallery(scan.cards, site_dir)

    card_pages = {c["_path"]: f"cards/{slug(Path(c['_path']).stem, c['_path'])}.html" for c in scan.cards}
    card_seeds = {c["_path"]: (c["config"]["seed"], c["status"]) for c in scan.cards}
    rows = _display_rows(table, card_pages, card_seeds)
    settings = list(dict.fromkeys(table["setting"]))
    common = {"metrics": METRICS, "help": HELP, "methods": METHODS, "multi_setting": len(settings) > 1,
              "settings": settings, "gallery": gallery}
    pages = 0

    def render(template: str, relative: str, **values: Any) -> None:
        nonlocal pages
        depth = relative.count("/")
        path = site_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(env.get_template(template).render(root="../" * depth, **common, **values), encoding="utf-8")
        pages += 1

    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    render("index.html", "index.html", title="Leaderboard", rows=rows, figures=figures, tradeoffs=tradeoffs, attacks=attacks,
           defenses=defenses, rates=list(dict.fromkeys(r["rate"] for r in sorted(rows, key=lambda r: r["rate_value"]))),
           statuses=["ok", "failed", NOT_RUN], rejected=scan.rejected + detection_rejected, n_cards=len(scan.cards),
           detections=detection_views(detection_cards), n_detection_cards=len(detection_cards),
           n_ok=sum(c["status"] == "ok" for c in scan.cards), views=_views(analysis, scan.cards))
    render("add-defense.html", "add-defense.html", title="Add your defense", sweep=_sweep_facts([found.cards for found in scans], defenses, site_dir))
    for attack in attacks:
        info = _plugin_info(scan.cards, "attack", attack)
        render("plugin.html", f"attacks/{slug(attack)}.html", title=f"Attack: {attack}", role="attack", info=info,
               rows=[r for r in rows if r["attack"] == attack],
               figures=[f for f in figures + tradeoffs if f.attack == attack or f.kind == "heatmap"])
    for defense in defenses:
        info = _plugin_info(scan.cards, "defense", defense)
        render("plugin.html", f"defenses/{slug(defense)}.html", title=f"Defense: {defense}", role="defense", info=info,
               rows=[r for r in rows if r["defense"] == defense],
               figures=[f for f in figures if f.defense == defense or f.kind == "heatmap"])
    cells: dict[tuple, list[dict]] = {}
    for card in scan.cards:
        cells.setdefault(card["_cell"], []).append(card)
    for card in scan.cards:
        page = card_pages[card["_path"]]
        raw = page.removesuffix(".html") + ".json"
        (site_dir / raw).parent.mkdir(parents=True, exist_ok=True)
        (site_dir / raw).write_text(json.dumps(_plain(card), indent=2, ensure_ascii=False), encoding="utf-8")
        setting_key, attack, rate, defense = card["_cell"]
        reproduce = card.get("reproduce") or f"cleanbench run --config {card['_path']}"
        siblings = [{"page": card_pages[c["_path"]], "seed": c["config"]["seed"], "status": c["status"]}
                    for c in sorted(cells[card["_cell"]], key=lambda c: c["config"]["seed"]) if c is not card]
        render("card.html", page, title=f"Run card {Path(card['_path']).name}", card=card, raw=Path(raw).name,
               file=Path(card["_path"]).name, reproduce=reproduce,
               produced=card.get("command") if card.get("command") != reproduce else None,
               attack_page=f"attacks/{slug(attack)}.html", defense_page=f"defenses/{slug(defense)}.html",
               attack=attack, defense=defense, rate=rate, setting=_setting_label(table, card),
               poison=_poison_summary(card), row_anchor=row_anchor(setting_key, attack, rate, defense), siblings=siblings,
               costs=card_cost_rows(card), stage=stage_label((card.get("defense") or {}).get("stage")))

    exported = export_table(table)
    exported.to_csv(site_dir / "leaderboard.csv", index=False)
    (site_dir / "leaderboard.json").write_text(
        json.dumps(_plain(exported.to_dict(orient="records")), indent=1, ensure_ascii=False), encoding="utf-8")
    return BuildReport(site_dir, len(scan.cards), len(table), len(figures) + len(tradeoffs), pages,
                       scan.rejected + detection_rejected)


def _folders(value: str | Path | Sequence[str | Path]) -> list[Path]:
    """One folder or several, as a list of paths."""
    return [Path(value)] if isinstance(value, (str, Path)) else [Path(v) for v in value]


def _tradeoffs(table: pd.DataFrame, scan: CardScan, tradeoff_dirs: list[Path] | None, site_dir: Path) -> list[Figure]:
    """The trade-off plots, from the `tradeoff_dirs` folders' cards when given (their invalid files
    join the scan's skipped list), else from the site's own table."""
    if tradeoff_dirs is None:
        return draw_tradeoffs(table, scan.cards, site_dir)
    cards = []
    for folder in tradeoff_dirs:
        grid = scan_cards(folder)
        scan.rejected.extend(grid.rejected)
        if not grid.cards:
            raise UsageError(f"no valid run cards under {str(folder / 'runs')!r} (a --tradeoff folder)")
        cards += grid.cards
    return draw_tradeoffs(analyse(cards).table, cards, site_dir)


def _sweep_facts(cards_by_folder: list[list[dict]], defenses: list[str], site_dir: Path) -> dict[str, Any]:
    """Where the cards came from, for the "add your defense" page: the grid file named by the first
    folder's `cleanbench sweep` commands, its results folder and defenses, how many cells one more
    defense adds there, and every folder of the site (as the cards record them) for the rebuild."""
    cards = next((folder for folder in cards_by_folder if folder), [])
    grid = _most_common(c["command"].split()[2] for c in cards if isinstance(c.get("command"), str)
                        and c["command"].startswith("cleanbench sweep ") and len(c["command"].split()) > 2)
    recorded = [_most_common(str(c["config"]["results_dir"]) for c in folder if c["config"].get("results_dir"))
                for folder in cards_by_folder]
    reference = [c for c in cards if c["config"]["defense"] == "none"]
    own = {c["_cell"][3] for c in cards}
    return {"grid": grid, "results_dir": recorded[0],
            "folders": [f for f in recorded if f] or ["RESULTS_DIR"],
            "site": site_dir.as_posix() if not site_dir.is_absolute() else "SITE_DIR",
            "defenses": list(dict.fromkeys(d.split(" (")[0] for d in defenses if d in own)), "new_cells": len(reference)}


def _most_common(values: Iterable[str]) -> str | None:
    counts = Counter(values)
    return counts.most_common(1)[0][0] if counts else None


def _views(analysis: Analysis, cards: list[dict]) -> list[dict[str, Any]]:
    """Per setting: its matrices (one per poison rate) and its defense and attack rankings."""
    table = analysis.table
    labels = dict(zip(table["setting_key"], table["setting"]))
    settings = list(dict.fromkeys(labels[c["_cell"][0]] for c in cards if c["_cell"][0] in labels))
    all_matrices = matrices(table)
    stages = defense_stages(cards)
    out = []
    for setting in settings:
        defenses, n_groups, n_implanted = defense_ranking(analysis, setting)
        attacks, top_rate = attack_ranking(analysis, setting, cards)
        rates = list(table[(table["setting"] == setting) & (table["attack"] != "none")]
                     .drop_duplicates("poison_rate").sort_values("rate")["poison_rate"])
        key = table.loc[table["setting"] == setting, "setting_key"].iloc[0]
        out.append({"setting": setting, "facts": setting_facts([c for c in cards if c["_cell"][0] == key]),
                    "n_groups": n_groups, "n_implanted": n_implanted, "top_rate": top_rate, "rates": rates,
                    "matrices": [matrix_view(m, len(settings) > 1, stages) for m in all_matrices if m.setting == setting],
                    "defenses": defense_ranking_view(defenses, stages), "attacks": attack_ranking_view(attacks, rates)})
    return out


def _poison_summary(card: dict) -> dict | None:
    """The card's poison block without the (long) list of indices, which stays in the raw card."""
    poison = card.get("poison")
    if not isinstance(poison, dict):
        return None
    summary = {k: v for k, v in poison.items() if k != "indices"}
    if isinstance(poison.get("indices"), list):
        summary["indices"] = f"{len(poison['indices'])} indices (listed in the raw card)"
    return summary


def _setting_label(table: pd.DataFrame, card: dict) -> str:
    match = table.loc[table["setting_key"] == card["_cell"][0], "setting"]
    return str(match.iloc[0]) if len(match) else ""
