"""Run cards: one JSON file per benchmark cell, the only input of tables and the leaderboard.

A card holds the resolved config, seeds, poisoned indices, metrics of the poisoned and defended
model with intervals, costs per stage, versions, device, git commit and artifact keys. Cards are
written atomically; the file name is stable for a given config, so re-running a cell replaces it.
"""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cleanbench
from cleanbench.fileio import write_json_atomic

if TYPE_CHECKING:
    import torch

SCHEMA_VERSION = 1
MAX_CARD_BYTES = 20_000_000
"""Readers skip larger files: a run card is a few hundred kilobytes at most."""


def versions() -> dict[str, str]:
    """Versions of the software that determines the numbers."""
    import numpy as np
    import open_clip
    import torch

    return {
        "cleanbench": cleanbench.__version__,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def git_commit() -> str | None:
    """The commit of the cleanbench checkout, when it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(cleanbench.__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(cleanbench.__file__).parent,
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_info(device: torch.device) -> dict[str, Any]:
    """The device a run used."""
    import torch

    info: dict[str, Any] = {"type": device.type, "torch_threads": torch.get_num_threads(), "machine": platform.machine()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def card_path(results_dir: str | Path, attack: str, defense: str, budget: str, seed: int, key: str) -> Path:
    """results_dir/runs/<attack>__<defense>__<budget>__s<seed>__<key8>.json"""
    safe = lambda s: "".join(c if c.isalnum() or c in "-." else "_" for c in s)  # noqa: E731
    name = f"{safe(attack)}__{safe(defense)}__{safe(budget)}__s{seed}__{key[:8]}.json"
    return Path(results_dir) / "runs" / name


def write_card(path: str | Path, card: dict[str, Any]) -> Path:
    """Write `card` atomically."""
    return write_json_atomic(path, card)
