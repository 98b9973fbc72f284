"""`cleanbench bench --speedups`: candidate speed-ups of one pretraining step, how fast each runs on
this device, and whether it changes the numbers.

The step (`bench_step`) is the trainer's pretraining step at `--batch-size` and `--image-size`. The
`float32` row is the step as the trainer runs it on the CPU (on CUDA the trainer autocasts to
bfloat16: the `bfloat16 autocast` row). Every other variant (`VARIANTS`) changes one thing: AdamW's
`foreach` or `fused` implementation, channels-last images (`ModelBundle.channels_last`), bfloat16
autocast around the objective, `torch.compile` (default mode) of the objective with the model's
forward in it, or torch's thread count (in a child process started with it, `bench_step.ChildStep`).
A variant that cannot run here (building its optimizer, compiling, its first step, or its child
process raises) is reported as unavailable with the error's first line.

Timing: the child processes start and warm up first, then each variant in this process runs once as
warm-up (the float32 step under `FlopCounterMode`, which counts the
step's FLOPs; `torch.compile`'s warm-up compiles, and its compile time is that call's seconds less
its median call), then the variants run in turn, `--repeats` times, each call `--steps` steps on the
same batches, so that a change of machine load hits them alike. Achieved GFLOP/s = the float32
step's counted FLOPs / the median seconds per step (every variant runs the same products); "of peak"
divides it by the device's measured matmul peak on the bench's threads (`cleanbench.peak`): the
bfloat16 peak for the bfloat16 row, the float32 peak for the others. "vs float32" is the median over
repetitions of (float32 time / variant time) in the same repetition.

Numbers: after the timing, the float32 step runs `CHECK_CALLS` calls from the initial weights and
seed as the reference; then each variant does the same with a fresh optimizer, and its row shows the
largest absolute difference of its losses and of its final parameters from the reference's. The
float32 row's own difference says whether the step repeats exactly on this device.
"""

from __future__ import annotations

import contextlib
import os
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from cleanbench.bench import bench_environment
from cleanbench.bench_measure import BenchConfig, Measure, count_flops
from cleanbench.bench_step import ChildStep, StepData, Variant, VariantStep, first_line
from cleanbench.models import check_model, input_size
from cleanbench.peak import matmul_peak_tflops

CHECK_CALLS = 2
"""Calls (of `--steps` steps each) run from the same weights and seed to compare a variant's numbers."""

FLOAT32 = Variant("float32")
VARIANTS: tuple[Variant, ...] = (
    FLOAT32,
    Variant("AdamW foreach", optimizer=(("foreach", True),)),
    Variant("AdamW fused", optimizer=(("fused", True),)),
    Variant("channels-last images", channels_last=True),
    Variant("bfloat16 autocast", bfloat16=True),
    Variant("torch.compile", compiled=True),
    Variant("1 thread", threads=1),
    Variant("2 threads", threads=2),
)

Step = VariantStep | ChildStep


@dataclass
class SpeedupRow:
    """One variant: its timing (None when unavailable), why it is unavailable, its numbers check."""

    variant: Variant
    measure: Measure | None = None
    warm_up_seconds: float | None = None
    unavailable: str | None = None
    loss_difference: float | None = None
    parameter_difference: float | None = None


@dataclass
class SpeedupResult:
    """Everything `cleanbench bench --speedups` measured."""

    config: BenchConfig
    environment: dict[str, Any]
    flops_per_step: int
    peak_tflops: dict[str, float]
    """The measured matmul peak by precision: `float32`, `bfloat16`."""
    rows: list[SpeedupRow]

    @property
    def check_steps(self) -> int:
        """Steps of each run that compares a variant's numbers with float32's."""
        return CHECK_CALLS * self.config.steps

    def figures(self) -> list[dict[str, Any]]:
        """One dict per variant with its derived figures (None where they do not apply)."""
        base = self.rows[0].measure
        out = []
        for row in self.rows:
            m = row.measure
            entry: dict[str, Any] = {
                "variant": row.variant.name, "options": asdict(row.variant), "unavailable": row.unavailable,
                "seconds": None, "steps": None, "ms_per_step": None, "spread": None, "achieved_gflops": None,
                "peak": None, "of_peak": None, "vs_float32": None, "compile_seconds": None,
                "max_loss_difference": row.loss_difference, "max_parameter_difference": row.parameter_difference,
            }
            if m is not None:
                per_step = m.median / m.steps
                gflops = self.flops_per_step / per_step / 1e9
                peak = "bfloat16" if row.variant.bfloat16 else "float32"
                entry.update(seconds=m.seconds, steps=m.steps, ms_per_step=1000 * per_step, spread=m.spread,
                             achieved_gflops=gflops, peak=peak, of_peak=gflops / (1000 * self.peak_tflops[peak]),
                             vs_float32=statistics.median(b / s for b, s in zip(base.seconds, m.seconds)))
                if row.variant.compiled:
                    entry["compile_seconds"] = row.warm_up_seconds - m.median
            out.append(entry)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "environment": self.environment, "flops_per_step": self.flops_per_step,
                "peak_tflops": self.peak_tflops, "check_steps": self.check_steps,
                "variants": self.figures()}


def _warm_up(rows: list[SpeedupRow], data: StepData, config: BenchConfig, children: contextlib.ExitStack,
             log: Callable[[str], None]) -> tuple[dict[str, Step], int]:
    """Build and run each variant once; the steps that ran, and the float32 step's FLOPs per call.
    The thread counts' child processes start first, together, and are stopped by `children`."""
    steps: dict[str, Step] = {}
    started = {}
    for row in rows:
        if row.variant.threads is not None:
            log(f"starting a process with {row.variant.threads} threads")
            started[row.variant.name] = child = ChildStep(row.variant, config)
            children.callback(child.close)
            child.start()
    flops = 0
    for row in rows:
        log(f"warm-up: {row.variant.name}")
        try:
            if row.variant.name in started:
                step = started[row.variant.name]
                row.warm_up_seconds = step.ready()
            else:
                step = VariantStep(row.variant, data)
                if row.variant == FLOAT32:
                    flops = count_flops(step)
                else:
                    row.warm_up_seconds = step.time()
        except Exception as error:  # a variant this device or build cannot run: reported, not raised
            if row.variant == FLOAT32:
                raise
            row.unavailable = first_line(error)
            log(f"{row.variant.name}: unavailable ({row.unavailable})")
            continue
        steps[row.variant.name] = step
    return steps, flops


def _check_numbers(rows: list[SpeedupRow], steps: dict[str, Step], seed: int) -> None:
    """Each variant's largest loss and parameter difference from the float32 reference (module docstring)."""
    reference_losses, reference = steps[FLOAT32.name].numbers(CHECK_CALLS, seed)
    for row in rows:
        if row.variant.name in steps:
            losses, parameters = steps[row.variant.name].numbers(CHECK_CALLS, seed)
            row.loss_difference = float((losses - reference_losses).abs().max())
            row.parameter_difference = max(float((p - q).abs().max()) for p, q in zip(parameters, reference))


def run_speedups(config: BenchConfig, log: Callable[[str], None] = lambda message: None) -> SpeedupResult:
    """Time every variant of the pretraining step and compare its numbers (see the module docstring)."""
    check_model(config.model)
    size = config.image_size or input_size(config.model)
    log(f"preparing data and model ({config.model}, {size} px, batch {config.batch_size}, {config.device})")
    data = StepData.build(config)
    environment = bench_environment(data.device)
    rows = [SpeedupRow(variant) for variant in VARIANTS]
    with contextlib.ExitStack() as children:
        steps, flops = _warm_up(rows, data, config, children, log)
        peaks = {name: matmul_peak_tflops(data.device, dtype) for name, dtype in
                 (("float32", torch.float32), ("bfloat16", torch.bfloat16))}
        timing = [row for row in rows if row.variant.name in steps]
        for row in timing:
            row.measure = Measure("speedup", row.variant.name, config.batch_size * len(data.batches),
                                  len(data.batches))
        for repeat in range(config.repeats):
            log(f"timing: repetition {repeat + 1} of {config.repeats}")
            for row in timing:
                row.measure.seconds.append(steps[row.variant.name].time())
        log("comparing the numbers with float32")
        _check_numbers(rows, steps, config.seed)
    environment.update(image_size=size, load_average_end=list(os.getloadavg()))
    return SpeedupResult(config, environment, flops // len(data.batches), peaks, rows)
