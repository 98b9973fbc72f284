"""The pretraining step that `cleanbench bench --speedups` times, under one `Variant`: in this process
(`VariantStep`), or, for a thread count, in a child process started with that many threads
(`ChildStep`).

The step is the trainer's (`trainer.train`): the pretraining objective (`losses.clip_objective`) on
pretraining batches of the embedded data, then `zero_grad`, backward, the trainer's AdamW
(`trainer.adamw`, the standard setting's hyperparameters at a constant learning rate) and the
logit-scale clamp; the loss is read back every step, as the trainer does for its NaN check.

A thread count is measured in its own process, started with `OMP_NUM_THREADS` set and the count set
before any work, as a sweep worker starts: OpenMP builds its thread team for the count in use, and a
count changed back and forth inside one process is not what any run does.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

import torch

from cleanbench import stages
from cleanbench.bench_measure import BenchConfig, timed
from cleanbench.config import RunConfig, TrainConfig, from_dict
from cleanbench.data.batches import Batch
from cleanbench.data.embedded import load_embedded
from cleanbench.losses import clip_objective
from cleanbench.models import ModelBundle, build_model, input_size
from cleanbench.plan import resolve_device
from cleanbench.presets import DEFAULT_SETTING, preset_values
from cleanbench.seeding import derive_seed, seed_everything
from cleanbench.trainer import adamw

Numbers = tuple[torch.Tensor, list[torch.Tensor]]
"""The losses of a run of steps and the parameters after it."""


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
    """Run in a child process started with this many torch threads."""


@dataclass
class StepData:
    """The model (built from the bench's seed), the batches and the training hyperparameters of the step."""

    bundle: ModelBundle
    batches: list[Batch]
    train_config: TrainConfig
    device: torch.device
    initial: dict[str, torch.Tensor]
    """The model's weights as built."""

    @classmethod
    def build(cls, config: BenchConfig) -> StepData:
        cell = from_dict(RunConfig, preset_values(DEFAULT_SETTING))
        device = resolve_device(config.device)
        size = config.image_size or input_size(config.model)
        pairs = load_embedded(config.seed, config.steps * config.batch_size, 2, 2, size, cell.data.preset, 2).pretrain
        seed_everything(derive_seed(config.seed, "init"))
        bundle = build_model(config.model, None, str(device))
        batches = list(stages.pretrain_batches(bundle, pairs, device, config.batch_size).in_order())
        initial = {k: v.detach().clone() for k, v in bundle.model.state_dict().items()}
        return cls(bundle, batches, replace(cell.pretrain, batch_size=config.batch_size), device, initial)


class VariantStep:
    """`variant`'s step in this process: a call runs one step per batch and returns the losses."""

    def __init__(self, variant: Variant, data: StepData) -> None:
        self.variant, self.data, self.model = variant, data, data.bundle.model
        bundle = data.bundle
        objective = clip_objective(replace(bundle, channels_last=True) if variant.channels_last else bundle)
        self.objective = torch.compile(objective) if variant.compiled else objective
        self.max_log_scale = math.log(data.train_config.max_logit_scale)
        self.reset()

    def reset(self) -> None:
        """A fresh optimizer."""
        self.optimizer = adamw(self.model, self.data.train_config, **dict(self.variant.optimizer))

    def __call__(self) -> list[float]:
        losses = []
        for batch in self.data.batches:
            with torch.autocast(self.data.device.type, dtype=torch.bfloat16, enabled=self.variant.bfloat16):
                loss = self.objective(self.model, batch)["loss"]
            losses.append(float(loss.detach()))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                self.model.logit_scale.clamp_(0, self.max_log_scale)
        return losses

    def time(self) -> float:
        """Seconds of one call."""
        return timed(self, self.data.device)

    def numbers(self, calls: int, seed: int) -> Numbers:
        """From the initial weights, `seed` and a fresh optimizer, `calls` calls: losses and parameters."""
        self.model.load_state_dict(self.data.initial)
        seed_everything(seed)
        self.reset()
        losses = [loss for _ in range(calls) for loss in self()]
        return torch.tensor(losses, dtype=torch.float64), [p.detach().clone() for p in self.model.parameters()]


def _child(connection: Connection, variant: Variant, config: BenchConfig) -> None:
    """A child process's loop: build the step, warm it up, then answer `time` and `numbers` requests."""
    try:
        torch.set_num_threads(variant.threads)
        step = VariantStep(variant, StepData.build(config))
        connection.send(("ready", step.time()))
    except Exception as error:  # reported to the parent as the variant's reason for being unavailable
        connection.send(("error", first_line(error)))
        return
    while (request := connection.recv())[0] != "stop":
        name, *arguments = request
        connection.send((name, step.time() if name == "time" else step.numbers(*arguments)))


def first_line(error: BaseException) -> str:
    """The error's type and the first line of its message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


class ChildStep:
    """`variant`'s step in a child process started with `variant.threads` threads; same calls as
    `VariantStep` (`time`, `numbers`), answered by the child. `start` launches it, `ready` waits for
    its warm-up (raising RuntimeError with the child's error), `close` stops it."""

    def __init__(self, variant: Variant, config: BenchConfig) -> None:
        self.variant, self.config = variant, config
        self.connection: Connection | None = None
        self.process: Any = None

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, theirs = context.Pipe()
        self.process = context.Process(target=_child, args=(theirs, self.variant, self.config), daemon=True)
        before = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(self.variant.threads)
        try:
            self.process.start()
        finally:
            if before is None:
                del os.environ["OMP_NUM_THREADS"]
            else:
                os.environ["OMP_NUM_THREADS"] = before
        theirs.close()

    def _answer(self, *request: Any) -> Any:
        if request:
            self.connection.send(request)
        try:
            name, value = self.connection.recv()
        except EOFError:
            raise RuntimeError(f"the child process stopped (exit code {self.process.exitcode})") from None
        if name == "error":
            raise RuntimeError(value)
        return value

    def ready(self) -> float:
        """Seconds of the child's warm-up call."""
        return self._answer()

    def time(self) -> float:
        return self._answer("time")

    def numbers(self, calls: int, seed: int) -> Numbers:
        return self._answer("numbers", calls, seed)

    def close(self) -> None:
        if self.process is None:
            return
        if self.process.is_alive():
            try:
                self.connection.send(("stop",))
            except OSError:
                pass
            self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()
        self.connection.close()
