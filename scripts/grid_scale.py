"""Time and memory of a sweep's expansion, done check and dry-run table inside one process.

    python scripts/grid_scale.py GRID.yaml

Imports are excluded (load them once, then measure); memory is the growth of the resident set
(/proc/self/status). The grid's --max-cells limit is lifted to its size. docs/sweeps.md has the numbers.
"""

from __future__ import annotations

import sys
import time

from cleanbench.sweep.cells import count_work, dry_run_table, expand
from cleanbench.sweep.grid import load_grid


def resident_mb() -> float:
    """This process's resident memory in MB (Linux)."""
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS")).split()[1]) / 1024


def main(path: str) -> None:
    grid = load_grid(path)
    memory, start = resident_mb(), time.perf_counter()
    cells = expand(grid, max_cells=grid.size())
    expanded, grown = time.perf_counter(), resident_mb()
    count_work(cells)
    dry_run_table(cells)
    done = time.perf_counter()
    n = len(cells)
    print(f"{n} cells: expansion {expanded - start:.1f} s ({1e3 * (expanded - start) / n:.2f} ms/cell), "
          f"+{grown - memory:.0f} MB ({1024 * (grown - memory) / n:.1f} KB/cell); done check and table "
          f"{done - expanded:.1f} s, +{resident_mb() - grown:.0f} MB")


if __name__ == "__main__":
    main(sys.argv[1])
