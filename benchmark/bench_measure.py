"""`cleanbench bench`'s measurements: what it is asked to measure (`BenchConfig`), one timed probe
(`Measure`), everything one bench measured with the figures derived from it (`BenchResult`), the
targets they are held to, FLOP counting, the devices' peaks, and timing a call on a device.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from cleanbench.config import RunConfig
from cleanbench.errors import UsageError
from cleanbench.models import TINY_MODEL

TRAINING_TARGET = 0.10
"""A training step may cost at most 10 % more than the bare model on the same encoded items."""
EVAL_TARGET = 0.9
"""The evaluation should score images at least 0.9 times as fast as the bare image-encoder forward."""
NOISY_SPREAD = 0.25
"""A stage row whose repetitions spread more than this was timed on a busy device."""
STAGE_GROUPS = ("model", "training", "evaluation")


PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"H100.*PCIe", 756.0),
    (r"H[12]00(?!.*NVL)", 989.0),
    (r"A100", 312.0),
    (r"L40S", 362.0),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
    (r"V100.*PCIE", 112.0),
    (r"V100", 125.0),
    (r"\bT4\b", 65.0),
)
"""Dense (no sparsity) bf16 tensor-core peak TFLOP/s (fp16 for V100 and T4, which autocast uses
there) from NVIDIA's data sheets, by a pattern of `torch.cuda.get_device_name` tried in order (SXM
parts unless named). Other devices need `--peak-tflops`."""


@dataclass
class BenchConfig:
    """What `cleanbench bench` measures: the model, device, batch and image size, and how long."""

    model: str = TINY_MODEL
    device: str = "auto"
    batch_size: int = RunConfig().pretrain.batch_size
    image_size: int | None = None
    repeats: int = 7
    steps: int = 2
    eval_images: int = RunConfig().data.n_test
    peak_tflops: float | None = None
    reference_triggers: bool = False
    speedups: bool = False
    """Time the candidate speed-ups of a pretraining step (`bench_speedups`) instead of the stages."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise UsageError("--batch-size must be at least 2 (contrastive losses compare pairs within a batch)")
        if self.repeats < 1 or self.steps < 1 or self.eval_images < 2:
            raise UsageError("--repeats and --steps must be at least 1, --eval-images at least 2")
        if self.image_size is not None and self.image_size < 8:
            raise UsageError("--image-size must be at least 8")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise UsageError("--peak-tflops must be positive")
        if self.speedups and (self.reference_triggers or self.peak_tflops is not None):
            raise UsageError("--speedups times a pretraining step against the measured matmul peak; "
                             "drop --reference-triggers and --peak-tflops")


@dataclass
class Measure:
    """One timed probe: the seconds of each repetition of a call that handles `items` images."""

    group: str
    name: str
    items: int
    steps: int = 1
    baseline: str | None = None
    """The key of the measure this one is compared with, on the same items."""
    seconds: list[float] = field(default_factory=list)
    flops: int | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median of the repetitions."""
        return (max(self.seconds) - min(self.seconds)) / self.median

    @property
    def rate(self) -> float:
        """Images per second at the median."""
        return self.items / self.median


@dataclass
class BenchResult:
    """Everything one bench measured, and the figures derived from it."""

    config: BenchConfig
    environment: dict[str, Any]
    measures: dict[str, Measure]
    breakdown: dict[str, dict[str, float]]
    estimate: dict[str, float]
    peak_tflops: float | None

    def slowdown(self, name: str) -> float:
        """Median over repetitions of (time of `name` / time of its bare baseline, same repetition)."""
        measure = self.measures[name]
        bare = self.measures[measure.baseline]
        return statistics.median(s / b for s, b in zip(measure.seconds, bare.seconds))

    def rows(self) -> list[dict[str, Any]]:
        """One dict per measure, with its derived figures (None where they do not apply)."""
        rows = []
        for key, m in self.measures.items():
            row: dict[str, Any] = {
                "key": key, "group": m.group, "name": m.name, "items": m.items, "steps": m.steps,
                "seconds": m.seconds, "median_seconds": m.median, "spread": m.spread,
                "images_per_second": m.rate, "baseline": m.baseline, "flops": m.flops,
                "overhead": None, "speed_ratio": None, "target": None, "met": None,
                "achieved_tflops": None, "mfu": None,
            }
            if m.baseline is not None:
                slowdown = self.slowdown(key)
                if m.group == "training":
                    row.update(overhead=slowdown - 1, target=f"overhead <= {TRAINING_TARGET:.0%}",
                               met=slowdown - 1 <= TRAINING_TARGET)
                else:
                    row["speed_ratio"] = 1 / slowdown
                if m.group == "evaluation":
                    row.update(target=f"speed >= {EVAL_TARGET}x bare", met=1 / slowdown >= EVAL_TARGET)
            if m.flops:
                row["achieved_tflops"] = m.flops / m.median / 1e12
                if self.peak_tflops:
                    row["mfu"] = row["achieved_tflops"] / self.peak_tflops
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "environment": self.environment, "peak_tflops": self.peak_tflops,
                "rows": self.rows(), "breakdown_ms_per_step": self.breakdown, "cell_estimate_seconds": self.estimate}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix products, convolutions and attention that `fn()` runs (forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def peak_for_name(name: str) -> float | None:
    """`PEAK_TFLOPS`' entry for a CUDA device name, or None for a device it does not know."""
    return next((peak for pattern, peak in PEAK_TFLOPS if re.search(pattern, name, re.IGNORECASE)), None)


def device_peak_tflops(device: torch.device, given: float | None = None) -> float | None:
    """The peak to compute MFU against: `given`, else the table's entry for this CUDA device; None off CUDA."""
    if device.type != "cuda":
        return None
    return given if given is not None else peak_for_name(torch.cuda.get_device_name(device))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start
