"""Draw docs/setting-pretraining.svg, the standard setting's pretraining-length curve, from run cards.

Series: zero-shot CA after every epoch of one 3-epoch run (the `pretraining_curve` points of
results/calibration/standard.json), and, per pretraining lr, the clean-model control's CA at the end
of schedules of different lengths (one run card each: results/calibration/runs/ and the published
sweep's clean control). The schedule-length points are rewritten into standard.json from the cards, so the file
and the figure cannot disagree.

Usage: python scripts/plot_pretraining_curve.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "results" / "calibration" / "standard.json"
FIGURE = ROOT / "docs" / "setting-pretraining.svg"
CONTROL_CARDS = ("results/calibration/runs/none__*__clean__s0__*.json", "results/sweeps/standard/runs/none__none__clean__s0__*.json")


SETTING_LR = 2e-3


def schedule_points() -> dict[float, list[dict]]:
    """Per pretraining lr, one point per clean-control card of seed 0 on the standard data: epochs,
    CA, base rate, card."""
    points: dict[float, dict[int, dict]] = {}
    for pattern in CONTROL_CARDS:
        for path in sorted(ROOT.glob(pattern)):
            card = json.loads(path.read_text())
            config = card["config"]
            if card["status"] != "ok" or config["data"]["n_pretrain"] != 40000:
                continue
            metrics = card["metrics"]["poisoned"]
            lr, epochs = config["pretrain"]["lr"], config["pretrain"]["epochs"]
            points.setdefault(lr, {}).setdefault(epochs, {"epochs": epochs, "clean_ca": metrics["ca_top1"]["value"],
                                                          "base_rate": metrics["asr"]["value"], "card": str(path.relative_to(ROOT))})
    return {lr: [by_epochs[e] for e in sorted(by_epochs)] for lr, by_epochs in sorted(points.items())}


def main() -> None:
    record = json.loads(RECORD.read_text())
    by_lr = schedule_points()
    record["schedule_length"]["points"] = by_lr[SETTING_LR]
    record["schedule_length_other_lrs"] = {
        "what": "the same clean-model control with another pretraining lr (the setting's: 2e-3)",
        "points": {f"{lr:g}": points for lr, points in by_lr.items() if lr != SETTING_LR}}
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    curve = record["pretraining_curve"]["points"]
    figure, axes = plt.subplots(figsize=(6.4, 3.8))
    axes.plot([p["epoch"] for p in curve], [100 * p["ca"] for p in curve], "o-", color="#0072B2",
              label="one 3-epoch run (badnet 2 %), after each epoch")
    styles = {SETTING_LR: ("D--", "#D55E00")} | dict(zip([lr for lr in by_lr if lr != SETTING_LR],
                                                          [("s:", "#009E73"), ("^:", "#CC79A7"), ("v:", "#56B4E9")]))
    for lr, schedule in by_lr.items():
        marker, colour = styles[lr]
        label = f"clean model at the end of an n-epoch schedule, lr {lr:g}" + (" (the setting)" if lr == SETTING_LR else "")
        axes.plot([p["epochs"] for p in schedule], [100 * p["clean_ca"] for p in schedule], marker, color=colour, label=label)
        for point in schedule:
            axes.annotate(f"{100 * point['clean_ca']:.1f}", (point["epochs"], 100 * point["clean_ca"]),
                          textcoords="offset points", xytext=(0, -14 if lr == SETTING_LR else 6), ha="center",
                          fontsize=8, color=colour)
    axes.axvline(3, color="0.6", linewidth=0.8, linestyle=":")
    axes.set_xlabel("pretraining epochs over 40,000 pairs")
    axes.set_ylabel("zero-shot CA (%)")
    axes.set_xticks(range(1, max(p["epochs"] for points in by_lr.values() for p in points) + 1))
    axes.legend(frameon=False, fontsize=7, loc="lower right")
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    figure.savefig(FIGURE, metadata={"Date": None})
    print(f"wrote {FIGURE.relative_to(ROOT)} and {RECORD.relative_to(ROOT)}: " + "; ".join(
        f"lr {lr:g}: " + ", ".join(f"{p['epochs']} ep {100 * p['clean_ca']:.1f} %" for p in points)
        for lr, points in by_lr.items()))


if __name__ == "__main__":
    main()
