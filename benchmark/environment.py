"""The environment facts that can change a number without being in the config, and how to compare them.

A run records them in its card (`environment`) and with each model it stores in the cache; a run
that reuses a model, or re-runs a card, made under other facts says so in one line. The thread
count is both a config setting (`threads`, in the cache key) and a recorded fact.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

import cleanbench

FACTS: tuple[str, ...] = ("torch", "open_clip", "numpy", "python", "cpu_capability", "device", "threads")
"""The facts compared between a recorded environment and this one (the cleanbench version and the
commit are reported by `cleanbench verify`, not compared on every run: the cache key holds the version)."""


def device_name(device: torch.device) -> str:
    """`cpu` or the CUDA device's name."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def precision(device: torch.device | str) -> str:
    """The arithmetic a run uses on `device`: float32 on the CPU; on CUDA, bfloat16 autocast where the GPU
    supports it, else float16 autocast (training and evaluation alike)."""
    if torch.device(device).type != "cuda":
        return "float32"
    return "bfloat16 autocast" if torch.cuda.is_bf16_supported() else "float16 autocast"


def autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """The autocast context of `precision(device)`: none on the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision(device).startswith("bfloat16") else torch.float16)


def current(device: torch.device, threads: int | None = None) -> dict[str, Any]:
    """This process's environment facts on `device` (`threads`: torch's intra-op thread count, default now)."""
    import open_clip  # here, not at the top: `cleanbench list` imports this module and must stay fast

    return {
        "cleanbench": cleanbench.__version__,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "device": device_name(device),
        "precision": precision(device),
        "threads": torch.get_num_threads() if threads is None else threads,
    }


def recorded(card: dict[str, Any]) -> dict[str, Any]:
    """The environment a run card records; for cards written before `environment` existed, what its
    `versions` and `device` sections say (facts they lack are absent)."""
    if isinstance(card.get("environment"), dict):
        return card["environment"]
    versions = card.get("versions") if isinstance(card.get("versions"), dict) else {}
    device = card.get("device") if isinstance(card.get("device"), dict) else {}
    facts = {k: versions[k] for k in ("cleanbench", "torch", "open_clip", "numpy", "python") if k in versions}
    if "type" in device:
        facts["device"] = "cpu" if device["type"] == "cpu" else device.get("name")
    if "torch_threads" in device:
        facts["threads"] = device["torch_threads"]
    return facts


def differences(before: dict[str, Any], now: dict[str, Any], facts: tuple[str, ...] = FACTS) -> list[str]:
    """`["torch 2.3.0 (now 2.4.1)", "cpu_capability not recorded (now AVX2)"]` for the facts that differ."""
    out = []
    for fact in facts:
        if fact not in now:
            continue
        if fact not in before:
            out.append(f"{fact} not recorded (now {now[fact]})")
        elif before[fact] != now[fact]:
            out.append(f"{fact} {before[fact]} (now {now[fact]})")
    return out


def mismatch_note(what: str, before: dict[str, Any] | None, now: dict[str, Any]) -> str | None:
    """One line saying that `what` was made in another environment, or None when the facts agree."""
    if not before:
        return None
    found = differences(before, now, tuple(f for f in FACTS if f in before))
    if not found:
        return None
    return f"note: {what} was made with {', '.join(found)}; its numbers can differ from a run here"


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to `count` for the block, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
