"""Seeds: one run seed, and named sub-seeds derived from it for each stage."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(seed: int, *names: str) -> int:
    """A 63-bit seed derived from `seed` and a stage name, stable across runs and platforms."""
    text = ":".join([str(int(seed)), *names]).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1


def torch_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator on `device` seeded with `seed`."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch's global generators (model initialisation uses these)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
