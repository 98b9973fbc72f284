"""What the pages show: numbers formatted for reading, row anchors, and the index's views (matrix
and rankings) turned into plain values for the templates."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from cleanbench.leaderboard.table import REFERENCE, slug
from cleanbench.leaderboard.uncertainty import IMPLANT_ALPHA, IMPLANT_MIN_GAIN
from cleanbench.leaderboard.views import Matrix, Ranked

PERCENT = {"ca", "asr", "ra"}
POINTS = {"d_ca", "d_asr"}


def missing(value: Any) -> bool:
    """None, NaN or pandas' NA."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def number(prefix: str, value: float) -> str:
    """A metric as shown: percent, signed points, DER to 3 places, seconds; never "-0.0"."""
    if missing(value):
        return "n/a"
    if prefix in PERCENT:
        text = f"{100 * value:.1f}"
    elif prefix in POINTS:
        text = f"{100 * value:+.1f}"
    elif prefix == "der":
        text = f"{value:.3f}"
    else:
        text = f"{value:.1f}"
    return text[1:] if text[0] in "+-" and text.lstrip("+-").strip("0.") == "" else text


def bracket(prefix: str, low: float, high: float) -> str:
    """An interval as shown, or "" where there is none."""
    return "" if missing(low) or missing(high) else f"[{number(prefix, low)}, {number(prefix, high)}]"


def stage_label(stage: Any) -> str:
    """A defense's stage as its tag shows it: pretraining, post-training, or the stage as declared."""
    text = str(stage or "")
    if text in ("", "none"):
        return ""
    if "pretrain" in text and "post" not in text:
        return "pretraining"
    return "post-training" if text.startswith("post") else text[:40]


def defense_stages(cards: list[dict]) -> dict[str, str]:
    """Each defense's row label -> its stage tag, from the cards' `defense.stage` (none for the
    undefended reference)."""
    out: dict[str, str] = {}
    for card in cards:
        label = card.get("_cell", (None,) * 4)[3]
        if label is not None and label not in out:
            out[label] = "" if label == REFERENCE else stage_label((card.get("defense") or {}).get("stage"))
    return out


def row_anchor(setting_key: str, attack: str, rate: str, defense: str) -> str:
    """A stable id for a table row, made from its fields (readable part + hash of all of them)."""
    return "row-" + slug(f"{attack}-{rate}-{defense}", json.dumps([setting_key, attack, rate, defense]))


def plugin_page(role: str, name: str) -> str:
    return f"{'attacks' if role == 'attack' else 'defenses'}/{slug(name)}.html"


def asr_bin(value: float) -> int:
    """Colour class 0..9 of an ASR (tenths)."""
    return 0 if missing(value) else min(9, max(0, int(value * 10)))


def _implant_title(p: float, gain: float) -> str:
    return (f"undefended ASR not clearly above the clean control's: one-sided Fisher test in every seed, p = {p:.2g} "
            f"(needs < {IMPLANT_ALPHA:g}); mean gain {number('d_asr', gain)} points (needs >= {IMPLANT_MIN_GAIN * 100:g})")


def matrix_view(matrix: Matrix, multi: bool, stages: dict[str, str] | None = None) -> dict[str, Any]:
    """One matrix for the template: per attack its cells (ASR colour bin, CA, DER, anchor, tooltip);
    `stages` gives each defense column its stage tag."""
    rows = []
    for attack, implanted, cells in matrix.rows:
        shown = []
        for cell in cells:
            if cell is None or cell["status"] != "ok":
                shown.append(None)
                continue
            reference = cell["role"] in ("reference", "control") and cell["defense"] == REFERENCE
            title = (f"{attack} · {matrix.rate} · {cell['defense']}: ASR {number('asr', cell['asr_mean'])}% "
                     f"{bracket('asr', cell['asr_low'], cell['asr_high'])}, CA {number('ca', cell['ca_mean'])}% "
                     f"{bracket('ca', cell['ca_low'], cell['ca_high'])}")
            if not reference and not missing(cell["der_mean"]):
                title += f", DER {number('der', cell['der_mean'])} {bracket('der', cell['der_low'], cell['der_high'])}"
            shown.append({
                "asr": number("asr", cell["asr_mean"]), "ca": number("ca", cell["ca_mean"]),
                "der": None if reference or cell["role"] == "control" or missing(cell["der_mean"]) else number("der", cell["der_mean"]),
                "bin": asr_bin(cell["asr_mean"]), "best": bool(cell["der_best"]), "reference": reference,
                "anchor": row_anchor(cell["setting_key"], cell["attack"], cell["poison_rate"], cell["defense"]),
                "title": title + (" (the undefended reference)" if reference and attack != REFERENCE else ""),
            })
        first = next((c for c in cells if c is not None), None)
        rows.append({"attack": attack, "control": attack == REFERENCE, "implanted": implanted, "cells": shown,
                     "page": plugin_page("attack", attack),
                     "implant_title": "" if first is None or missing(first["implant_p"]) else _implant_title(first["implant_p"], first["implant_gain"])})
    return {"setting": matrix.setting, "rate": matrix.rate, "defenses": matrix.defenses, "rows": rows, "multi": multi,
            "stages": {d: (stages or {}).get(d, "") for d in matrix.defenses}}


def _with_text(entry: Ranked, prefix: str) -> dict[str, Any]:
    return {"name": entry.name, "rank": entry.rank, "best": entry.best, "tied": entry.tied, "note": entry.note,
            "extra": entry.extra, "value_text": number(prefix, entry.value),
            "interval_text": bracket(prefix, entry.low, entry.high)}


def defense_ranking_view(entries: list[Ranked], stages: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The defense ranking's rows with their numbers as text and each defense's stage tag."""
    out = []
    for entry in entries:
        row = _with_text(entry, "der")
        row["stage"] = (stages or {}).get(entry.name, "")
        d_ca, asr = entry.extra["d_ca"], entry.extra["asr"]
        row["d_ca"] = f"{number('d_ca', d_ca[0])} {bracket('d_ca', d_ca[1], d_ca[2])}"
        row["asr"] = f"{number('asr', asr[0])} {bracket('asr', asr[1], asr[2])}"
        out.append(row)
    return out


def attack_ranking_view(entries: list[Ranked], rates: list[str]) -> list[dict[str, Any]]:
    """The attack ranking's rows: worst-case ASR, per-rate undefended -> worst, reach, stealthiness."""
    out = []
    for entry in entries:
        row = _with_text(entry, "asr")
        by_rate = {r["rate"]: r for r in entry.extra["rates"]}
        cells = []
        for rate in rates:
            r = by_rate.get(rate)
            if r is None:
                cells.append({"rate": rate, "text": "not run", "implanted": None})
                continue
            under = "n/a" if r["undefended"] is None else number("asr", r["undefended"][0])
            worst = "n/a" if r["worst"] is None else number("asr", r["worst"][0])
            cells.append({"rate": rate, "text": f"{under} → {worst}", "implanted": r["implanted"]})
        row["rate_cells"] = cells
        row["psnr"] = "n/a" if missing(entry.extra["psnr_db"]) else f"{entry.extra['psnr_db']:.1f}"
        row["linf"] = "n/a" if missing(entry.extra["linf"]) else f"{entry.extra['linf']:.3f}"
        row["l2"] = "n/a" if missing(entry.extra["l2"]) else f"{entry.extra['l2']:.2f}"
        out.append(row)
    return out
