"""The short console summary of one run card."""

from __future__ import annotations

import pandas as pd

from cleanbench.runcard import RunCard


def _percent(metric: dict) -> str:
    return f"{100 * metric['value']:5.1f}% [{100 * metric['low']:4.1f}, {100 * metric['high']:4.1f}]"


def cell_summary(card: RunCard) -> str:
    """A table of CA, ASR and RA before and after the defense, with 95 % Wilson intervals."""
    metrics = card.metrics or {}
    rows = {}
    for stage, label in (("poisoned", f"poisoned ({card.attack['name']})"), ("defended", f"after {card.defense['name']}")):
        m = metrics[stage]
        rows[label] = {"CA top-1": _percent(m["ca_top1"]), "CA top-5": _percent(m["ca_top5"]),
                       "ASR": _percent(m["asr"]), "RA": _percent(m["ra"])}
    change = metrics["change"]
    rows["change (points)"] = {"CA top-1": f"{100 * change['ca_top1']:+.1f}", "CA top-5": "",
                               "ASR": f"{100 * change['asr']:+.1f}", "RA": f"{100 * change['ra']:+.1f}"}
    table = pd.DataFrame(rows).T
    costs = card.costs
    timing = ", ".join(f"{k.removesuffix('_seconds')} {v:.0f} s" for k, v in costs.items())
    return f"{table.to_string()}\n(95% Wilson intervals; time: {timing})"
