"""Leaderboard plots (matplotlib on the Agg backend, seaborn styling), written as SVG with alt text.

Every figure is drawn from the aggregated leaderboard table alone:
- an ASR heatmap, attack x defense, one panel per poison rate;
- CA against ASR per defense, with an arrow from the undefended model (lower right is better);
- ASR against poison rate per attack, one line per defense, with 95 % intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from cleanbench.leaderboard.table import slug  # noqa: E402

STYLE = {"svg.fonttype": "none", "svg.hashsalt": "cleanbench", "font.size": 9, "axes.titlesize": 10}


@dataclass(frozen=True)
class Figure:
    """One plot file (path relative to the site root) and what a reader needs to know about it."""

    path: str
    alt: str
    caption: str
    kind: str
    setting: str
    attack: str | None = None
    defense: str | None = None


def _text(name: str) -> str:
    """An untrusted name made safe for matplotlib (no mathtext)."""
    return str(name).replace("$", r"\$")


def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def _save(fig: plt.Figure, site_dir: Path, relative: str) -> None:
    path = site_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)


def _error(mean: pd.Series, low: pd.Series, high: pd.Series) -> np.ndarray:
    """Asymmetric error bars; zero where there is no interval."""
    below = (mean - low).fillna(0).clip(lower=0).to_numpy()
    above = (high - mean).fillna(0).clip(lower=0).to_numpy()
    return np.vstack([below, above])


def _rate_order(table: pd.DataFrame) -> list[str]:
    rates = table.drop_duplicates("poison_rate").sort_values("rate")
    return rates["poison_rate"].tolist()


def asr_heatmap(table: pd.DataFrame, setting: str, site_dir: Path) -> Figure | None:
    """Mean ASR after each defense: rows attacks, columns defenses, one panel per poison rate.

    The clean control (attack none), where there is one, is repeated as the top row of every panel:
    its ASR is the base rate of target predictions that a backdoor has to beat.
    """
    rows = table[table["setting"] == setting]
    if rows.empty:
        return None
    clean = rows[rows["attack"] == "none"]
    poisoned = rows[rows["attack"] != "none"]
    rates = _rate_order(poisoned) if not poisoned.empty else ["clean"]
    defenses = list(dict.fromkeys(rows["defense"]))
    labels = (["clean model"] if not clean.empty else []) + list(dict.fromkeys(poisoned["attack"]))
    panels = []
    for rate in rates:
        panel = pd.concat([clean.assign(attack="clean model"), poisoned[poisoned["poison_rate"] == rate]])
        grid = panel.pivot_table(index="attack", columns="defense", values="asr_mean", aggfunc="first", dropna=False)
        panels.append((rate, grid.reindex(index=labels, columns=defenses).astype(float) * 100))
    width = 1.8 + len(panels) * (0.4 + 0.7 * len(defenses))
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(width, 1.3 + 0.42 * len(labels)),
                             gridspec_kw={"wspace": 0.08, "width_ratios": [1] * len(panels) + [0.05]})
    colorbar = axes[-1]
    axes = axes[None, :-1]
    for ax, (rate, grid) in zip(axes[0], panels):
        last = ax is axes[0][-1]
        sns.heatmap(grid, ax=ax, vmin=0, vmax=100, cmap="Reds", cbar=last, cbar_ax=colorbar if last else None,
                    annot=True, fmt=".0f", linewidths=0.5, linecolor="white",
                    cbar_kws={"label": "ASR (%)"} if last else None)
        for i, attack in enumerate(grid.index):
            for j, defense in enumerate(grid.columns):
                if math.isnan(grid.loc[attack, defense]):
                    ax.text(j + 0.5, i + 0.5, "n/a", ha="center", va="center", color="0.45", fontsize=7)
        ax.set_title(f"poison rate {_text(rate)}")
        ax.set_xlabel("defense")
        ax.set_ylabel("attack" if ax is axes[0][0] else "")
        ax.set_xticklabels([_text(d) for d in grid.columns], rotation=30, ha="right")
        ax.set_yticklabels([_text(a) for a in grid.index], rotation=0)
        if ax is not axes[0][0]:
            ax.tick_params(axis="y", left=False, labelleft=False)
    relative = f"plots/heatmap-{slug(setting)}.svg"
    _save(fig, site_dir, relative)
    attacks = list(dict.fromkeys(poisoned["attack"]))
    ok = poisoned.dropna(subset=["asr_mean"])
    extremes = ""
    if not ok.empty:
        top, low = ok.loc[ok["asr_mean"].idxmax()], ok.loc[ok["asr_mean"].idxmin()]
        extremes = (f" Highest: {top['attack']} with {top['defense']} at {top['poison_rate']} ({_pct(top['asr_mean'])});"
                    f" lowest: {low['attack']} with {low['defense']} at {low['poison_rate']} ({_pct(low['asr_mean'])}).")
    base = clean.dropna(subset=["asr_mean"])
    if not base.empty:
        extremes += f" Clean model without a defense: {_pct(base['asr_mean'].iloc[0])} (the base rate)."
    alt = (f"Heatmap of the mean attack success rate (ASR, in %) after each defense for {setting}: rows are attacks "
           f"({', '.join(attacks) or 'none'}), columns are defenses ({', '.join(defenses)}), one panel per poison rate "
           f"({', '.join(rates)}); darker red means a stronger backdoor.{extremes} The table holds the same numbers.")
    return Figure(relative, alt, "ASR after each defense (cells: mean ASR in %, darker = stronger backdoor; "
                  "top row: the clean model's base rate; n/a: not run or failed).", "heatmap", setting)


def ca_vs_asr(table: pd.DataFrame, setting: str, defense: str, site_dir: Path) -> Figure | None:
    """Defended CA (x) against ASR (y) for every attack and rate; arrows start at the undefended model."""
    rows = table[(table["setting"] == setting) & (table["defense"] == defense)].dropna(subset=["ca_mean", "asr_mean"])
    if rows.empty:
        return None
    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    palette = dict(zip(dict.fromkeys(rows["attack"]), sns.color_palette("colorblind", rows["attack"].nunique())))
    markers = dict(zip(_rate_order(rows), "o^sDvP*X"))
    for _, row in rows.iterrows():
        color = palette[row["attack"]]
        start = (row["ca_mean"] - row["d_ca_mean"], row["asr_mean"] - row["d_asr_mean"])
        if not (math.isnan(start[0]) or math.isnan(start[1])) and (row["d_ca_mean"] or row["d_asr_mean"]):
            ax.annotate("", xy=(row["ca_mean"], row["asr_mean"]), xytext=start,
                        arrowprops={"arrowstyle": "->", "color": color, "alpha": 0.5, "lw": 1})
            ax.plot(*start, marker=markers.get(row["poison_rate"], "o"), color=color, alpha=0.35, linestyle="none")
        ax.errorbar(row["ca_mean"], row["asr_mean"],
                    xerr=_error(*(rows.loc[[row.name], f"ca_{p}"] for p in ("mean", "low", "high"))),
                    yerr=_error(*(rows.loc[[row.name], f"asr_{p}"] for p in ("mean", "low", "high"))),
                    marker=markers.get(row["poison_rate"], "o"), color=color, capsize=2, linestyle="none")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("clean accuracy (CA) after the defense")
    ax.set_ylabel("attack success rate (ASR)")
    ax.set_title(f"defense: {_text(defense)}")
    ax.text(0.98, 0.03, "better ↘", transform=ax.transAxes, ha="right", va="bottom", color="0.4")
    handles = [Line2D([], [], color=c, marker="o", linestyle="none", label=_text(a)) for a, c in palette.items()]
    handles += [Line2D([], [], color="0.4", marker=m, linestyle="none", label=_text(r)) for r, m in markers.items()
                if r in set(rows["poison_rate"])]
    ax.legend(handles=handles, fontsize=7, loc="upper left", frameon=False, ncol=2)
    ax.grid(alpha=0.3)
    relative = f"plots/ca-asr-{slug(setting)}-{slug(defense)}.svg"
    _save(fig, site_dir, relative)
    points = "; ".join(f"{r['attack']} at {r['poison_rate']}: CA {_pct(r['ca_mean'])}, ASR {_pct(r['asr_mean'])}"
                       for _, r in rows.head(12).iterrows())
    alt = (f"Scatter plot of clean accuracy (x) against attack success rate (y) after defense {defense} for {setting}, "
           f"one point per attack and poison rate with 95% intervals, a faded point and arrow from the undefended "
           f"model; lower right is better. {points}.")
    return Figure(relative, alt, f"CA against ASR after {defense} (lower right is better; faded marker and arrow: "
                  "the undefended model).", "ca-asr", setting, defense=defense)


def asr_vs_rate(table: pd.DataFrame, setting: str, attack: str, site_dir: Path) -> Figure | None:
    """Mean ASR (with 95 % intervals) against the poison rate, one line per defense."""
    rows = table[(table["setting"] == setting) & (table["attack"] == attack)].dropna(subset=["asr_mean"])
    if rows.empty or attack == "none":
        return None
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    defenses = list(dict.fromkeys(rows["defense"]))
    palette = dict(zip(defenses, sns.color_palette("colorblind", len(defenses))))
    for defense in defenses:
        line = rows[rows["defense"] == defense].sort_values("rate")
        ax.errorbar(line["rate"] * 100, line["asr_mean"], yerr=_error(line["asr_mean"], line["asr_low"], line["asr_high"]),
                    marker="o", capsize=3, color=palette[defense], label=_text(defense))
    clean = table[(table["setting"] == setting) & (table["attack"] == "none") & (table["defense"] == "none")]
    clean = clean.dropna(subset=["asr_mean"])
    if not clean.empty:
        ax.axhline(clean["asr_mean"].iloc[0], color="0.5", linestyle=":", label="clean model (base rate)")
    rates = sorted(rows["rate"].unique())
    if len(rates) > 1 and rates[0] > 0:
        ax.set_xscale("log")
    ax.set_xticks([r * 100 for r in rates])
    ax.set_xticklabels([f"{100 * r:g}%" for r in rates])
    ax.minorticks_off()
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("poison rate (share of pretraining pairs)")
    ax.set_ylabel("attack success rate (ASR)")
    ax.set_title(f"attack: {_text(attack)}")
    ax.legend(fontsize=7, frameon=False)
    ax.grid(alpha=0.3)
    relative = f"plots/asr-rate-{slug(setting)}-{slug(attack)}.svg"
    _save(fig, site_dir, relative)
    lines = "; ".join(
        f"{d}: " + ", ".join(f"{r['poison_rate']} {_pct(r['asr_mean'])}" for _, r in rows[rows['defense'] == d].sort_values('rate').iterrows())
        for d in defenses)
    alt = (f"Line plot of the attack success rate of {attack} against the poison rate for {setting}, one line per "
           f"defense with 95% intervals. {lines}.")
    return Figure(relative, alt, f"ASR of {attack} against the poison rate, per defense (bars: 95% intervals; dotted: "
                  "the clean model's base rate of target predictions).", "asr-rate", setting, attack=attack)


def draw_all(table: pd.DataFrame, site_dir: Path) -> list[Figure]:
    """Every plot of the site, per setting: the heatmap, CA-ASR per defense, ASR-rate per attack."""
    figures: list[Figure] = []
    with plt.rc_context(STYLE), sns.axes_style("ticks"):
        for setting in dict.fromkeys(table["setting"]):
            rows = table[table["setting"] == setting]
            candidates = [asr_heatmap(table, setting, site_dir)]
            candidates += [ca_vs_asr(table, setting, d, site_dir) for d in dict.fromkeys(rows["defense"])]
            candidates += [asr_vs_rate(table, setting, a, site_dir) for a in dict.fromkeys(rows["attack"])]
            figures += [f for f in candidates if f is not None]
    return figures
