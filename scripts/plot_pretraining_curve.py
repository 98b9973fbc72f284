"""Draw docs/setting-pretraining.svg, the standard setting's pretraining-length curve, from run cards.

Two series: zero-shot CA after every epoch of one 3-epoch run (the `pretraining_curve` points of
results/calibration/standard.json), and the clean-model control's CA at the end of schedules of
different lengths (one run card each: results/calibration/runs/ and the published sweep's clean
control). The schedule-length points are rewritten into standard.json from the cards, so the file
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


def schedule_points() -> list[dict]:
    """One point per clean-control card of seed 0 on the standard data: epochs, CA, base rate, card."""
    points = {}
    for pattern in CONTROL_CARDS:
        for path in sorted(ROOT.glob(pattern)):
            card = json.loads(path.read_text())
            config = card["config"]
            if card["status"] != "ok" or config["data"]["n_pretrain"] != 40000:
                continue
            metrics = card["metrics"]["poisoned"]
            epochs = config["pretrain"]["epochs"]
            points.setdefault(epochs, {"epochs": epochs, "clean_ca": metrics["ca_top1"]["value"],
                                       "base_rate": metrics["asr"]["value"], "card": str(path.relative_to(ROOT))})
    return [points[e] for e in sorted(points)]


def main() -> None:
    record = json.loads(RECORD.read_text())
    record["schedule_length"]["points"] = schedule_points()
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    curve = record["pretraining_curve"]["points"]
    schedule = record["schedule_length"]["points"]
    figure, axes = plt.subplots(figsize=(6.4, 3.8))
    axes.plot([p["epoch"] for p in curve], [100 * p["ca"] for p in curve], "o-", color="#0072B2",
              label="one 3-epoch run (badnet 2 %), after each epoch")
    axes.plot([p["epochs"] for p in schedule], [100 * p["clean_ca"] for p in schedule], "D--", color="#D55E00",
              label="clean model at the end of an n-epoch schedule")
    for point in schedule:
        axes.annotate(f"{100 * point['clean_ca']:.1f}", (point["epochs"], 100 * point["clean_ca"]),
                      textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8, color="#D55E00")
    axes.axvline(3, color="0.6", linewidth=0.8, linestyle=":")
    axes.set_xlabel("pretraining epochs over 40,000 pairs")
    axes.set_ylabel("zero-shot CA (%)")
    axes.set_xticks(range(1, max(p["epochs"] for p in schedule) + 1))
    axes.legend(frameon=False, fontsize=8, loc="lower right")
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    figure.savefig(FIGURE, metadata={"Date": None})
    print(f"wrote {FIGURE.relative_to(ROOT)} and {RECORD.relative_to(ROOT)}: "
          + ", ".join(f"{p['epochs']} ep {100 * p['clean_ca']:.1f} %" for p in schedule))


if __name__ == "__main__":
    main()
