"""`cleanbench bench --speedups`: candidate speed-ups of one pretraining step, how fast each runs on
this device, and whether it changes the numbers.

The step is the trainer's (`trainer.train`): the pretraining objective (`losses.clip_objective`) on
pretraining batches of the embedded data at `--batch-size` and `--image-size`, then `zero_grad`,
backward, the trainer's AdamW (`trainer.adamw`, the standard setting's hyperparameters at a constant
learning rate) and the logit-scale clamp; the loss is read back every step, as the trainer does for
its NaN check. The `float32` row is the step as the trainer runs it on the CPU (on CUDA the trainer
autocasts to bfloat16: the `bfloat16 autocast` row). Every other variant (`VARIANTS`) changes one
thing: AdamW's `foreach` or `fused` implementation, channels-last images (`ModelBundle.channels_last`),
bfloat16 autocast around the objective, `torch.compile` (default mode) of the objective with the
model's forward in it, or torch's thread count (set for the call, restored after). A variant that
cannot run here (building its optimizer, compiling, or its first step raises) is reported as
unavailable with the error's first line.

Timing: each variant runs once as warm-up (the float32 step under `FlopCounterMode`, which counts the
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
import copy
import math
import os
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from cleanbench import stages
from cleanbench.bench import bench_environment
from cleanbench.bench_measure import BenchConfig, Measure, count_flops, timed
from cleanbench.config import RunConfig, TrainConfig, from_dict
from cleanbench.data.batches import Batch
from cleanbench.data.embedded import load_embedded
from cleanbench.environment import torch_threads
from cleanbench.losses import clip_objective
from cleanbench.models import ModelBundle, build_model, check_model, input_size
from cleanbench.peak import matmul_peak_tflops
from cleanbench.plan import resolve_device
from cleanbench.presets import DEFAULT_SETTING, preset_values
from cleanbench.seeding import derive_seed, seed_everything
from cleanbench.trainer import adamw

CHECK_CALLS = 2
"""Calls (of `--steps` steps each) run from the same weights and seed to compare a variant's numbers."""


@dataclass(frozen=True)
class Variant:
    """One way of running the pretraining step; the defaults are the float32 step."""

    name: str
    optimizer: tuple[tuple[str, bool], ...] = ()
    """AdamW keyword arguments that pick its implementation (`foreach`, `fused`)."""
    channels_last: bool = False
    bfloat16: bool = False
    compiled: bool = False
    threads: int | None = None


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


class VariantStep:
    """`variant`'s training step: a call runs one step per batch and returns the losses; `reset`
    gives it a fresh optimizer."""

    def __init__(self, variant: Variant, bundle: ModelBundle, batches: list[Batch], config: TrainConfig,
                 device: torch.device) -> None:
        self.variant, self.model, self.batches, self.config = variant, bundle.model, batches, config
        self.device = device
        objective = clip_objective(replace(bundle, channels_last=True) if variant.channels_last else bundle)
        self.objective = torch.compile(objective) if variant.compiled else objective
        self.max_log_scale = math.log(config.max_logit_scale)
        self.reset()

    def reset(self) -> None:
        self.optimizer = adamw(self.model, self.config, **dict(self.variant.optimizer))

    def __call__(self) -> list[float]:
        threads = torch_threads(self.variant.threads) if self.variant.threads else contextlib.nullcontext()
        losses = []
        with threads:
            for batch in self.batches:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.variant.bfloat16):
                    loss = self.objective(self.model, batch)["loss"]
                losses.append(float(loss.detach()))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                with torch.no_grad():
                    self.model.logit_scale.clamp_(0, self.max_log_scale)
        return losses


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


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _warm_up(rows: list[SpeedupRow], make: Callable[[Variant], VariantStep], device: torch.device,
             log: Callable[[str], None]) -> tuple[dict[str, VariantStep], int]:
    """Build and run each variant once; the steps that ran, and the float32 step's FLOPs per call."""
    steps: dict[str, VariantStep] = {}
    flops = 0
    for row in rows:
        log(f"warm-up: {row.variant.name}")
        try:
            step = make(row.variant)
            if row.variant == FLOAT32:
                flops = count_flops(step)
            else:
                row.warm_up_seconds = timed(step, device)
        except Exception as error:  # a variant this device or build cannot run: reported, not raised
            if row.variant == FLOAT32:
                raise
            row.unavailable = _first_line(error)
            log(f"{row.variant.name}: unavailable ({row.unavailable})")
            continue
        steps[row.variant.name] = step
    return steps, flops


def _check_numbers(rows: list[SpeedupRow], steps: dict[str, VariantStep], model: torch.nn.Module,
                   initial: dict[str, torch.Tensor], seed: int) -> None:
    """Each variant's largest loss and parameter difference from the float32 reference (module docstring)."""

    def run(step: VariantStep) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.load_state_dict(initial)
        seed_everything(seed)
        step.reset()
        losses = [loss for _ in range(CHECK_CALLS) for loss in step()]
        return torch.tensor(losses, dtype=torch.float64), [p.detach().clone() for p in model.parameters()]

    reference_losses, reference = run(steps[FLOAT32.name])
    for row in rows:
        if row.variant.name in steps:
            losses, parameters = run(steps[row.variant.name])
            row.loss_difference = float((losses - reference_losses).abs().max())
            row.parameter_difference = max(float((p - q).abs().max()) for p, q in zip(parameters, reference))


def run_speedups(config: BenchConfig, log: Callable[[str], None] = lambda message: None) -> SpeedupResult:
    """Time every variant of the pretraining step and compare its numbers (see the module docstring)."""
    check_model(config.model)
    device = resolve_device(config.device)
    environment = bench_environment(device)
    cell = from_dict(RunConfig, preset_values(DEFAULT_SETTING))
    size = config.image_size or input_size(config.model)
    train_config = replace(cell.pretrain, batch_size=config.batch_size)
    log(f"preparing data and model ({config.model}, {size} px, batch {config.batch_size}, {device})")
    pairs = load_embedded(config.seed, config.steps * config.batch_size, 2, 2, size, cell.data.preset, 2).pretrain
    seed_everything(derive_seed(config.seed, "init"))
    bundle = build_model(config.model, None, str(device))
    batches = list(stages.pretrain_batches(bundle, pairs, device, config.batch_size).in_order())
    initial = copy.deepcopy(bundle.model.state_dict())
    rows = [SpeedupRow(variant) for variant in VARIANTS]
    steps, flops = _warm_up(rows, lambda v: VariantStep(v, bundle, batches, train_config, device), device, log)
    peaks = {name: matmul_peak_tflops(device, dtype) for name, dtype in
             (("float32", torch.float32), ("bfloat16", torch.bfloat16))}
    timing = [row for row in rows if row.variant.name in steps]
    for row in timing:
        row.measure = Measure("speedup", row.variant.name, config.batch_size * len(batches), len(batches))
    for repeat in range(config.repeats):
        log(f"timing: repetition {repeat + 1} of {config.repeats}")
        for row in timing:
            row.measure.seconds.append(timed(steps[row.variant.name], device))
    log("comparing the numbers with float32")
    _check_numbers(rows, steps, bundle.model, initial, config.seed)
    environment.update(image_size=size, load_average_end=list(os.getloadavg()))
    return SpeedupResult(config, environment, flops // len(batches), peaks, rows)
