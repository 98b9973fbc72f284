"""Shared fixtures: offline hub, a private cache, and a tiny configuration that trains in seconds."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from cleanbench.config import DataConfig, RunConfig  # noqa: E402
from cleanbench.trainer import TrainConfig  # noqa: E402


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Every test gets its own artifact cache, so no test reuses another's models."""
    monkeypatch.setenv("CLEANBENCH_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(min(2, torch.get_num_threads()))


def tiny_config(tmp_path, **overrides) -> RunConfig:
    """A cell that runs end to end in a few seconds (numbers are meaningless at this size)."""
    values = dict(
        data=DataConfig(n_pretrain=256, n_clean=128, n_test=100),
        pretrain=TrainConfig(epochs=1, batch_size=64, warmup_steps=1),
        defense_options={"epochs": 1, "batch_size": 64},
        poison_rate=0.05,
        results_dir=str(tmp_path / "results"),
        cache_dir=str(tmp_path / "cache"),
    )
    values.update(overrides)
    return RunConfig(**values)


@pytest.fixture
def tiny(tmp_path):
    """Factory for tiny run configs rooted in this test's temporary folder."""
    return lambda **overrides: tiny_config(tmp_path, **overrides)


@pytest.fixture
def device_copies(monkeypatch):
    """Call it to start recording the `Tensor.to` calls that name a device (each a synchronising
    host-to-device copy on CUDA); it returns the list they are recorded in."""

    def start() -> list:
        copies, to = [], torch.Tensor.to

        def counting(self, *args, **kwargs):
            if any(isinstance(a, torch.device) for a in args) or "device" in kwargs:
                copies.append(args)
            return to(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "to", counting)
        return copies

    return start
