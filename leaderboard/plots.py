"""Leaderboard plots (matplotlib on the Agg backend, seaborn styling), written as SVG with alt text.

Every figure is drawn from the aggregated leaderboard table alone:
- heatmaps, attack x defense, one row of panels per poison rate: ASR and, beside it, CA;
- CA against ASR per defense, with an arrow from the undefended model (lower right is better);
- ASR against poison rate per attack, one line per defense, with 95 % intervals.
Axes are zoomed to the data; colours come from the Okabe-Ito palette (distinct for colour-blind
readers) and every attack and defense keeps its colour across figures; ASR uses the same
sequential yellow-to-brown scale as the site's matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import colors as mcolors, ticker  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from cleanbench.leaderboard.table import slug  # noqa: E402

STYLE = {"svg.fonttype": "none", "svg.hashsalt": "cleanbench", "font.size": 10, "axes.titlesize": 11,
         "axes.labelsize": 10, "xtick.labelsize": 9.5, "ytick.labelsize": 9.5, "legend.fontsize": 9}
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000")
MARKERS = "o^sDvP*X"
LINESTYLES = ("-", "--", "-.", ":")


def colours(names: list[str]) -> dict[str, str]:
    """A fixed Okabe-Ito colour per name, in order (repeating after eight)."""
    return {name: OKABE_ITO[i % len(OKABE_ITO)] for i, name in enumerate(names)}


def _span(values: list[float], pad: float = 0.08, minimum: float = 0.05, bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """Axis limits around `values`, padded, at least `minimum` wide, inside `bounds`."""
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return bounds
    low, high = min(finite), max(finite)
    margin = max(pad * (high - low), (minimum - (high - low)) / 2, 0.005)
    return max(bounds[0], low - margin), min(bounds[1], high + margin)


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


def _grid(panel: pd.DataFrame, column: str, labels: list[str], defenses: list[str]) -> pd.DataFrame:
    grid = panel.pivot_table(index="attack", columns="defense", values=column, aggfunc="first", dropna=False)
    return grid.reindex(index=labels, columns=defenses).astype(float) * 100


def _draw_panel(ax: plt.Axes, grid: pd.DataFrame, cmap: str, limits: tuple[float, float], title: str,
                first_column: bool) -> None:
    sns.heatmap(grid, ax=ax, vmin=limits[0], vmax=limits[1], cmap=cmap, cbar=False, annot=True, fmt=".0f",
                linewidths=0.5, linecolor="white", annot_kws={"fontsize": 9.5})
    for i, attack in enumerate(grid.index):
        for j, defense in enumerate(grid.columns):
            if math.isnan(grid.loc[attack, defense]):
                ax.text(j + 0.5, i + 0.5, "n/a", ha="center", va="center", color="0.45", fontsize=8.5)
    ax.set_title(title)
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.set_xticklabels([_text(d) for d in grid.columns], rotation=30, ha="right")
    ax.set_yticklabels([_text(a) for a in grid.index], rotation=0)
    if not first_column:
        ax.tick_params(axis="y", left=False, labelleft=False)


def asr_heatmap(table: pd.DataFrame, setting: str, site_dir: Path) -> Figure | None:
    """Mean ASR and, beside it, mean CA after each defense: rows attacks, columns defenses, one row of
    panels per poison rate. The clean control (attack none), where there is one, is the top row of
    every panel: its ASR is the base rate of target predictions that a backdoor has to beat. The CA
    scale is zoomed to the CA values shown."""
    rows = table[table["setting"] == setting]
    if rows.empty:
        return None
    clean = rows[rows["attack"] == "none"]
    poisoned = rows[rows["attack"] != "none"]
    rates = _rate_order(poisoned) if not poisoned.empty else ["clean"]
    defenses = sorted(dict.fromkeys(rows["defense"]), key=lambda d: (d != "none", d))
    labels = (["clean model"] if not clean.empty else []) + list(dict.fromkeys(poisoned["attack"]))
    panels = []
    for rate in rates:
        panel = pd.concat([clean.assign(attack="clean model"), poisoned[poisoned["poison_rate"] == rate]])
        panels.append((rate, _grid(panel, "asr_mean", labels, defenses), _grid(panel, "ca_mean", labels, defenses)))
    ca_values = [v for _, _, ca in panels for v in ca.to_numpy().ravel() if not math.isnan(v)]
    ca_limits = (math.floor(min(ca_values, default=0) / 5) * 5, math.ceil(max(ca_values, default=100) / 5) * 5 or 100)
    width = 2.2 + 2 * (0.35 + 0.62 * len(defenses))
    fig, axes = plt.subplots(len(panels), 2, figsize=(width, 0.9 + len(panels) * (0.9 + 0.36 * len(labels))),
                             squeeze=False, gridspec_kw={"wspace": 0.1, "hspace": 0.55})
    for row, (rate, asr, ca) in enumerate(panels):
        last = row == len(panels) - 1
        _draw_panel(axes[row][0], asr, "YlOrBr", (0, 100), f"ASR % · poison rate {_text(rate)}", True)
        _draw_panel(axes[row][1], ca, "cividis", ca_limits, f"CA % · poison rate {_text(rate)}", False)
        if not last:
            for ax in axes[row]:
                ax.tick_params(axis="x", bottom=False, labelbottom=False)
    for column, (cmap, limits, label) in enumerate((("YlOrBr", (0, 100), "ASR (%), darker = stronger backdoor"),
                                                    ("cividis", ca_limits, "CA (%), brighter = higher"))):
        mappable = plt.cm.ScalarMappable(norm=mcolors.Normalize(*limits), cmap=cmap)
        fig.colorbar(mappable, ax=list(axes[:, column]), orientation="horizontal", location="bottom",
                     fraction=0.04, pad=0.1 / max(1, len(panels)) + 0.06, aspect=30, label=label)
    relative = f"plots/heatmap-{slug(setting)}.svg"
    _save(fig, site_dir, relative)
    attacks = list(dict.fromkeys(poisoned["attack"]))
    ok = poisoned.dropna(subset=["asr_mean"])
    extremes = ""
    if not ok.empty:
        top, low = ok.loc[ok["asr_mean"].idxmax()], ok.loc[ok["asr_mean"].idxmin()]
        extremes = (f" Highest ASR: {top['attack']} with {top['defense']} at {top['poison_rate']} ({_pct(top['asr_mean'])});"
                    f" lowest: {low['attack']} with {low['defense']} at {low['poison_rate']} ({_pct(low['asr_mean'])}).")
        worst_ca = ok.loc[ok["ca_mean"].idxmin()]
        extremes += f" Lowest CA: {worst_ca['defense']} on {worst_ca['attack']} at {worst_ca['poison_rate']} ({_pct(worst_ca['ca_mean'])})."
    base = clean.dropna(subset=["asr_mean"])
    if not base.empty:
        extremes += f" Clean model without a defense: ASR {_pct(base['asr_mean'].iloc[0])} (the base rate)."
    alt = (f"Heatmap of the mean attack success rate (ASR, in %) after each defense for {setting}, with the clean "
           f"accuracy (CA, in %) beside it: rows are attacks ({', '.join(attacks) or 'none'}), columns are defenses "
           f"({', '.join(defenses)}), one row of panels per poison rate ({', '.join(rates)}); darker means a stronger "
           f"backdoor.{extremes} The table holds the same numbers.")
    return Figure(relative, alt, "ASR (left) and CA (right) after each defense, one row per poison rate (cells: mean "
                  "in %; top row: the clean model; n/a: not run or failed).", "heatmap", setting)


def ca_vs_asr(table: pd.DataFrame, setting: str, defense: str, site_dir: Path, palette: dict[str, str]) -> Figure | None:
    """Defended CA (x) against ASR (y) for every attack and rate; arrows start at the undefended model.
    The axes are zoomed to the points, their intervals and the arrows' starts."""
    rows = table[(table["setting"] == setting) & (table["defense"] == defense)].dropna(subset=["ca_mean", "asr_mean"])
    if rows.empty:
        return None
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    markers = dict(zip(_rate_order(rows), MARKERS))
    palette = {**palette, "none": "#000000"}
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
    starts_x = (rows["ca_mean"] - rows["d_ca_mean"]).tolist()
    starts_y = (rows["asr_mean"] - rows["d_asr_mean"]).tolist()
    ax.set_xlim(*_span(rows["ca_low"].tolist() + rows["ca_high"].tolist() + rows["ca_mean"].tolist() + starts_x))
    ax.set_ylim(*_span(rows["asr_low"].tolist() + rows["asr_high"].tolist() + rows["asr_mean"].tolist() + starts_y))
    ax.xaxis.set_major_formatter(ticker.PercentFormatter(1.0, decimals=0))
    ax.yaxis.set_major_formatter(ticker.PercentFormatter(1.0, decimals=0))
    ax.set_xlabel("clean accuracy (CA) after the defense")
    ax.set_ylabel("attack success rate (ASR)")
    ax.set_title(f"defense: {_text(defense)}")
    ax.text(0.98, 0.03, "better ↘", transform=ax.transAxes, ha="right", va="bottom", color="0.3")
    handles = [Line2D([], [], color=c, marker="o", linestyle="none", label="clean control" if a == "none" else _text(a))
               for a, c in palette.items() if a in set(rows["attack"])]
    handles += [Line2D([], [], color="0.4", marker=m, linestyle="none", label=_text(r)) for r, m in markers.items()
                if r in set(rows["poison_rate"])]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0)
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


def asr_vs_rate(table: pd.DataFrame, setting: str, attack: str, site_dir: Path, palette: dict[str, str]) -> Figure | None:
    """Mean ASR (with 95 % intervals) against the poison rate, one line per defense; y zoomed to the data."""
    rows = table[(table["setting"] == setting) & (table["attack"] == attack)].dropna(subset=["asr_mean"])
    if rows.empty or attack == "none":
        return None
    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    defenses = [d for d in palette if d in set(rows["defense"])]
    for i, defense in enumerate(defenses):
        line = rows[rows["defense"] == defense].sort_values("rate")
        ax.errorbar(line["rate"] * 100, line["asr_mean"], yerr=_error(line["asr_mean"], line["asr_low"], line["asr_high"]),
                    marker=MARKERS[i % len(MARKERS)], linestyle=LINESTYLES[i % len(LINESTYLES)], capsize=3,
                    color=palette[defense], label=_text(defense) + (" (undefended)" if defense == "none" else ""))
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
    base = clean["asr_mean"].tolist() if not clean.empty else []
    ax.set_ylim(*_span(rows["asr_low"].tolist() + rows["asr_high"].tolist() + base, minimum=0.1))
    ax.yaxis.set_major_formatter(ticker.PercentFormatter(1.0, decimals=0))
    ax.set_xlabel("poison rate (share of pretraining pairs)")
    ax.set_ylabel("attack success rate (ASR)")
    ax.set_title(f"attack: {_text(attack)}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0)
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
            attacks = sorted(dict.fromkeys(rows[rows["attack"] != "none"]["attack"]))
            defenses = sorted(dict.fromkeys(rows["defense"]), key=lambda d: (d != "none", d))
            attack_colours, defense_colours = colours(attacks), colours(defenses)
            candidates = [asr_heatmap(table, setting, site_dir)]
            candidates += [ca_vs_asr(table, setting, d, site_dir, attack_colours) for d in defenses]
            candidates += [asr_vs_rate(table, setting, a, site_dir, defense_colours) for a in attacks]
            figures += [f for f in candidates if f is not None]
    return figures
