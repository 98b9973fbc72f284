"""`cleanbench sweep grid.yaml`: attacks x defenses x poison budgets x seeds, with the least work.

A grid file (schema in docs/sweeps.md) is read and every cell is validated before any work starts:
unknown keys, wrong types, empty axes, unknown plugins and bad options are refused naming the file
and the key. Cells are ordered so that the cells sharing a poisoned model follow each other; the
first of them trains it and the others load it from the content-addressed cache, so a sweep of
A attacks x D defenses x R rates trains A x R poisoned models. A cell whose run card exists with
status ok and the same cell key is skipped, so a finished sweep re-runs in seconds and an
interrupted one resumes where it stopped. A cell that raises gets a failed card; the sweep goes on.

The parts: `grid` (the grid file's schema), `cells` (expansion into validated cells and what is
already done), `schedule` (the worker that runs one cell and the scheduler that feeds an
executor), `report` (progress lines, JSON events and the summary table) and `command` (the click
command that ties them together). Its names are imported on first use, so that `cleanbench sweep
--help` starts without torch.
"""

import importlib
from typing import Any

_HOMES = {"Cell": "cells", "done_card": "cells", "expand": "cells", "sweep_command": "command",
          "Grid": "grid", "load_grid": "grid"}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
