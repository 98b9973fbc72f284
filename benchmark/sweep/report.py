"""What a sweep prints: progress bars and lines, JSON events, the work counts and the summary table."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import click
import pandas as pd
from tqdm.auto import tqdm

from cleanbench.sweep.cells import Cell


class Reporter:
    """Progress output: a bar for cells and a line per cell (default), lines only (`quiet`), or one
    JSON object per event on stdout (`json`)."""

    def __init__(self, mode: str, total: int) -> None:
        self.mode = mode
        self.total = total
        self.bar = tqdm(total=total, desc="cells", unit="cell", disable=mode != "bars", dynamic_ncols=True)

    def event(self, kind: str, **values: Any) -> None:
        if self.mode == "json":
            click.echo(json.dumps({"event": kind, "time": round(time.time(), 3), **values}, default=str))

    def line(self, text: str) -> None:
        if self.mode == "bars":
            self.bar.write(text, file=sys.stdout)
        elif self.mode == "quiet":
            click.echo(text)

    def cell_done(self, cell: Cell, result: dict[str, Any]) -> None:
        self.bar.update()
        self.event("cell", cell=cell.index, attack=cell.attack, defense=cell.defense, budget=cell.budget,
                   seed=cell.seed, cell_key=cell.cell_key, **{k: v for k, v in result.items() if k != "index"})
        self.line(f"[{cell.index}/{self.total}] {cell.label()}: {_describe(result)}")

    def close(self) -> None:
        self.bar.close()


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _describe(result: dict[str, Any]) -> str:
    if result["status"] == "failed":
        return f"FAILED after {result['seconds']:.1f} s: {result.get('error')}"
    text = (f"{result['status']} in {result['seconds']:.1f} s  CA {_percent(result.get('ca_poisoned'))} -> "
            f"{_percent(result.get('ca_defended'))}  ASR {_percent(result.get('asr_poisoned'))} -> "
            f"{_percent(result.get('asr_defended'))}")
    reused = [name for name in result.get("reused", []) if name.endswith("_model")]
    return text + (f"  (reused {', '.join(reused)})" if reused and result["status"] == "ok" else "")


def summary_table(cells: Sequence[Cell], results: dict[int, dict[str, Any]]) -> str:
    """One row per cell: status, CA and ASR before -> after the defense, seconds, reused models."""
    rows = []
    for cell in cells:
        result = results.get(cell.index, {"status": "not run", "seconds": 0.0})
        rows.append({
            "#": cell.index, "attack": cell.attack, "defense": cell.defense, "budget": cell.budget, "seed": cell.seed,
            "status": result["status"],
            "CA %": f"{_percent(result.get('ca_poisoned'))} -> {_percent(result.get('ca_defended'))}",
            "ASR %": f"{_percent(result.get('asr_poisoned'))} -> {_percent(result.get('asr_defended'))}",
            "seconds": round(result["seconds"], 1),
            "reused": ", ".join(r.removesuffix("_model") for r in result.get("reused", []) if r.endswith("_model")) or "-",
        })
    return pd.DataFrame(rows).to_string(index=False)


def counts_text(counts: dict[str, int]) -> str:
    """The work counts of `cells.count_work` as one line."""
    return (f"{counts['cells']} cells ({counts['cells_done']} done); "
            f"{counts['poisoned_models']} poisoned models ({counts['poisoned_models_cached']} cached), "
            f"{counts['defended_models']} defended models ({counts['defended_models_cached']} cached)")


def dry_run_event(cells: Sequence[Cell], counts: dict[str, int]) -> str:
    """The JSON line `--dry-run --json-log` prints: the counts and every cell's keys."""
    return json.dumps({"event": "dry-run", **counts, "cells_list": [
        {"cell": c.index, "attack": c.attack, "defense": c.defense, "budget": c.budget, "seed": c.seed,
         "cell_key": c.cell_key, "poisoned_key": c.poisoned_key} for c in cells]})
