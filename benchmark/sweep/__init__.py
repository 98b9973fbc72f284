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
command that ties them together).
"""

from cleanbench.sweep.cells import Cell, done_card, expand
from cleanbench.sweep.command import sweep_command
from cleanbench.sweep.grid import Grid, load_grid

__all__ = ["Cell", "Grid", "done_card", "expand", "load_grid", "sweep_command"]
