"""The trade-off view: a defense run at several strengths on the same poisoned models, plotted as ASR
against CA drop, one curve per defense.

A strength grid is found in the cards themselves: within one setting, attack and poison rate, the
rows of one defense plugin whose resolved options differ in exactly one numeric option (the knob,
e.g. `lr`) form a curve when there are at least two values. Each point is a row of the leaderboard
table: the mean over seeds and its 95 % bootstrap interval (seeds and test images) of the ASR after
the defense and of the CA drop against the undefended model of the same seeds. The undefended model
is the curve's common start (CA drop 0). A folder without such rows gets no trade-off plot.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib import ticker

from cleanbench.leaderboard.plots import LINESTYLES, MARKERS, STYLE, Figure, _error, _save, _span, _text, colours
from cleanbench.leaderboard.table import REFERENCE, slug


@dataclass
class Curve:
    """One defense's strength grid in one group: the knob, its values and the table rows, by value."""

    defense: str
    knob: str
    values: list[float] = field(default_factory=list)
    rows: list[pd.Series] = field(default_factory=list)


def _options(card: dict) -> dict:
    section = card.get("defense") or {}
    return {**(section.get("options") or {}), **(card["config"].get("defense_options") or {})}


def _knob(options: list[dict]) -> str | None:
    """The one option whose value differs among `options`, if it is numeric in all of them."""
    keys = sorted({k for o in options for k in o})
    differing = [k for k in keys if len({json.dumps(o.get(k), sort_keys=True, default=str) for o in options}) > 1]
    if len(differing) != 1:
        return None
    key = differing[0]
    numeric = all(isinstance(o.get(key), (int, float)) and not isinstance(o.get(key), bool) for o in options)
    return key if numeric else None


def strength_curves(table: pd.DataFrame, cards: list[dict]) -> dict[tuple[str, str, str], list[Curve]]:
    """Per (setting key, attack, rate label): the defenses that ran at two or more strengths."""
    labels: dict[tuple, dict[str, dict]] = {}
    for card in cards:
        if card["status"] != "ok" or card["config"]["defense"] == REFERENCE or card["config"]["attack"] == REFERENCE:
            continue
        setting, attack, rate, label = card["_cell"]
        labels.setdefault((setting, attack, rate, card["config"]["defense"]), {}).setdefault(label, _options(card))
    indexed = table.set_index(["setting_key", "attack", "poison_rate", "defense"])
    out: dict[tuple[str, str, str], list[Curve]] = {}
    for (setting, attack, rate, defense), variants in sorted(labels.items()):
        knob = _knob(list(variants.values())) if len(variants) > 1 else None
        if knob is None:
            continue
        curve = Curve(defense, knob)
        for label, options in sorted(variants.items(), key=lambda kv: kv[1][knob]):
            row = indexed.loc[(setting, attack, rate, label)]
            if row["status"] == "ok" and not (math.isnan(row["d_ca_mean"]) or math.isnan(row["asr_mean"])):
                curve.values.append(float(options[knob]))
                curve.rows.append(row)
        if len(curve.rows) > 1:
            out.setdefault((setting, attack, rate), []).append(curve)
    return out


def _reference(table: pd.DataFrame, key: tuple[str, str, str]) -> pd.Series | None:
    rows = table[(table["setting_key"] == key[0]) & (table["attack"] == key[1]) & (table["poison_rate"] == key[2])
                 & (table["defense"] == REFERENCE) & (table["status"] == "ok")]
    return rows.iloc[0] if len(rows) else None


def tradeoff_plot(table: pd.DataFrame, key: tuple[str, str, str], curves: list[Curve], site_dir: Path) -> Figure:
    """ASR (y) against CA drop in points (x), one curve per defense with 95 % intervals on both axes."""
    setting = str(table.loc[table["setting_key"] == key[0], "setting"].iloc[0])
    palette = colours([c.defense for c in curves])
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    reference = _reference(table, key)
    xs, ys = [], []
    for i, curve in enumerate(curves):
        frame = pd.DataFrame(curve.rows)
        drop = -frame["d_ca_mean"]
        x_err = _error(drop, -frame["d_ca_high"], -frame["d_ca_low"])
        y_err = _error(frame["asr_mean"], frame["asr_low"], frame["asr_high"])
        ax.errorbar(drop * 100, frame["asr_mean"], xerr=x_err * 100, yerr=y_err, color=palette[curve.defense],
                    marker=MARKERS[i % len(MARKERS)], linestyle=LINESTYLES[i % len(LINESTYLES)], capsize=2,
                    label=f"{_text(curve.defense)} ({_text(curve.knob)} {min(curve.values):g}–{max(curve.values):g})")
        for value, x, y in zip(curve.values, drop * 100, frame["asr_mean"]):
            ax.annotate(f"{value:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7.5,
                        color=palette[curve.defense])
        xs += list(drop * 100) + list(-frame["d_ca_low"] * 100) + list(-frame["d_ca_high"] * 100)
        ys += list(frame["asr_low"]) + list(frame["asr_high"])
    if reference is not None:
        ax.errorbar([0.0], [reference["asr_mean"]], yerr=_error(*(pd.Series([reference[f"asr_{p}"]]) for p in ("mean", "low", "high"))),
                    marker="s", color="#000000", linestyle="none", capsize=2, label="undefended")
        xs.append(0.0)
        ys += [reference["asr_low"], reference["asr_high"]]
    finite = [x for x in xs if not math.isnan(x)]
    low, high = min(finite + [0.0]), max(finite + [1.0])
    ax.set_xlim(low - 0.08 * (high - low) - 0.5, high + 0.08 * (high - low) + 0.5)
    ax.set_ylim(*_span(ys, minimum=0.1))
    ax.yaxis.set_major_formatter(ticker.PercentFormatter(1.0, decimals=0))
    ax.set_xlabel("CA drop against the undefended model (points)")
    ax.set_ylabel("attack success rate (ASR) after the defense")
    ax.set_title(f"{_text(key[1])} at {_text(key[2])}: ASR against CA drop")
    ax.text(0.02, 0.03, "better ↙", transform=ax.transAxes, ha="left", va="bottom", color="0.3")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0)
    ax.grid(alpha=0.3)
    relative = f"plots/tradeoff-{slug(setting)}-{slug(key[1])}-{slug(key[2])}.svg"
    _save(fig, site_dir, relative)
    points = "; ".join(
        f"{c.defense}: " + ", ".join(f"{c.knob} {v:g} CA drop {-100 * r['d_ca_mean']:.1f} points ASR {100 * r['asr_mean']:.1f}%"
                                     for v, r in zip(c.values, c.rows)) for c in curves)
    alt = (f"Line plot for {key[1]} at poison rate {key[2]} ({setting}): for each defense run at several strengths, "
           f"the attack success rate (y) against the clean-accuracy drop (x), with 95% intervals. {points}.")
    caption = (f"{key[1]} at {key[2]}: each defense at every strength of its grid (labels: the {'/'.join(sorted({c.knob for c in curves}))} "
               "value), ASR against the CA drop; bars: 95% bootstrap intervals over seeds and test images; black square: "
               "the undefended model. Lower left is better; read off where each defense sits at a CA budget.")
    return Figure(relative, alt, caption, "tradeoff", setting, attack=key[1])


def draw_tradeoffs(table: pd.DataFrame, cards: list[dict], site_dir: Path) -> list[Figure]:
    """A trade-off plot for every group that holds a strength grid (none when there is none)."""
    figures = []
    with plt.rc_context(STYLE), sns.axes_style("ticks"):
        for key, curves in strength_curves(table, cards).items():
            figures.append(tradeoff_plot(table, key, curves, site_dir))
    return figures

