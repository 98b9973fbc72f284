"""`cleanbench bench`: what each stage of a cell costs on this device, against the bare model.

Every stage is timed through the code a cell runs: the shared trainer (`trainer.train`) with the
runner's pretraining batches and objective, the contrastive defenses' `prepare` (their batches with
the text views, and their objective with the image views), `evaluation.evaluate`, and
`attacks.base.trigger_uint8`. The data are the embedded shapes at `--image-size` (default: the
model's input size), drawn once and repeated to the sizes needed.

The bare model is the encoders alone, on inputs already converted and on the device: the image
encoder's forward (eval mode, no gradients), and both encoders' forward plus backward (from the sum
of the matched image-text feature products, a scalar that needs no loss) in training mode: no data,
triggers, views, loss or optimizer. A training stage is compared with the bare model on the same
encoded items (CleanCLIP encodes each pair's originals and views: twice the batch).

Each probe runs once as warm-up (under `FlopCounterMode`, which counts its FLOPs), then the probes
run in turn, `repeats` times (the stages first, each close to its bare baseline), so that a change
of machine load hits all of them alike. A row shows the median and the spread ((max - min) /
median) of its repetitions. A stage's comparison (`compared`) is the median over repetitions of
(stage time / bare time) from the same repetition: the overhead of a training step is that minus 1
(target: at most `TRAINING_TARGET`), the speed of the evaluation its inverse (target: at least
`EVAL_TARGET`). The breakdown times each part of a step on its own (batching, input conversion,
image views, loss, optimizer); what the parts and the bare model leave unexplained is `other`
(Python, the trainer's bookkeeping, and timing noise). Text views and triggers of in-memory data
are made once before training: their cost is in the setup rows.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode`: matrix products, convolutions and
attention, forward and backward; element-wise work (normalisation, activations, the optimizer) is
not counted. Achieved GFLOP/s = counted FLOPs / median seconds; "of peak" divides it by the
device's peak: `--peak-tflops`, else on CUDA the data sheet's (`PEAK_TFLOPS`, shown as MFU), else
the measured float32 matmul peak of this device on these threads (`cleanbench.peak`).

The cell estimate takes the defaults of `cleanbench run` (data sizes, epochs, CleanCLIP) with this
model, batch size and image size: data generation, model build, poisoning and tokenisation scale
with the number of pairs; pretraining and the defense are steps times the median step; the two
evaluations are images over the evaluation's speed; the synonym table is read once per process.

`--reference-triggers` adds the comparison of `cleanbench.trigger_bench`: the reference's per-image
PIL triggers at 224 px on the CPU against cleanbench's batched uint8 path with the options that
reproduce them.
"""

from __future__ import annotations

import math
import os
import platform
import random
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms.functional import to_pil_image, to_tensor

from cleanbench import stages
from cleanbench.attacks.base import Attack, trigger_uint8
from cleanbench.augment import ImageView, image_view
from cleanbench.config import RunConfig, from_dict
from cleanbench.data.base import ClassificationSet, PairSet, class_index
from cleanbench.data.embedded import load_embedded
from cleanbench.defenses.base import DefenseContext
from cleanbench.defenses.contrastive import ContrastiveFinetune
from cleanbench.errors import UsageError
from cleanbench.evaluation import EVAL_TRIGGER_STREAM, IMAGE_BATCH, autocast, class_embeddings, evaluate
from cleanbench.losses import cleanclip_loss, clip_loss, clip_objective
from cleanbench.peak import MATMUL_SIDE, matmul_peak_tflops
from cleanbench.presets import DEFAULT_SETTING, preset_values
from cleanbench.metrics import proportion, stealthiness
from cleanbench.models import TINY_MODEL, build_model, check_model, input_size
from cleanbench.registry import ATTACKS, DEFENSES
from cleanbench.runner import resolve_device
from cleanbench.seeding import derive_seed, seed_everything, torch_generator
from cleanbench.synonyms import embedded_table
from cleanbench.trainer import Batch, InMemoryBatches, TrainConfig, decay_groups, train
from cleanbench.trigger_bench import REFERENCE_OPTIONS, SIDE, reference_triggers

TRAINING_TARGET = 0.10
"""A training step may cost at most 10 % more than the bare model on the same encoded items."""
EVAL_TARGET = 0.9
"""The evaluation should score images at least 0.9 times as fast as the bare image-encoder forward."""
NOISY_SPREAD = 0.25
"""A stage row whose repetitions spread more than this was timed on a busy device."""
STAGE_GROUPS = ("model", "training", "evaluation")
POOL = 256
"""Distinct images drawn per split; larger sets repeat them (content does not change speed)."""

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _tile_pairs(pairs: PairSet, count: int) -> PairSet:
    index = torch.arange(count) % len(pairs)
    return PairSet(pairs.images[index], [pairs.captions[i] for i in index.tolist()], pairs.labels[index], pairs.classnames)


def _tile_test(test: ClassificationSet, count: int) -> ClassificationSet:
    index = torch.arange(count) % len(test)
    return replace(test, images=test.images[index], labels=test.labels[index])


def _bare_step(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor, device: torch.device) -> None:
    """The bare model's training work on one batch: both encoders forward, then backward."""
    model.zero_grad(set_to_none=True)
    with autocast(device):
        scalar = (model.encode_image(images, normalize=True) * model.encode_text(tokens, normalize=True)).sum()
    scalar.backward()


@torch.no_grad()
def _bare_forward(model: torch.nn.Module, chunks: list[torch.Tensor], device: torch.device) -> None:
    with autocast(device):
        for images in chunks:
            model.encode_image(images, normalize=True)


class _Bench:
    """Builds the probes of one bench; `run` times them."""

    def __init__(self, config: BenchConfig, log: Callable[[str], None]) -> None:
        self.config = config
        self.log = log
        self.device = resolve_device(config.device)
        self.cell = from_dict(RunConfig, preset_values(DEFAULT_SETTING))
        self.size = config.image_size or input_size(config.model)
        self.batch = config.batch_size
        self.probes: dict[str, tuple[Measure, Callable[[], object]]] = {}
        self.once: dict[str, float] = {}

    def add(self, key: str, measure: Measure, fn: Callable[[], object]) -> None:
        self.probes[key] = (measure, fn)

    # --- data, model and setup ---

    def prepare(self) -> None:
        c, cfg = self.cell, self.config
        pairs = cfg.steps * self.batch
        pool = min(POOL, max(pairs, cfg.eval_images))
        start = time.perf_counter()
        data = load_embedded(cfg.seed, pool, pool, pool, self.size, c.data.preset)
        self.once["data_seconds_per_image"] = (time.perf_counter() - start) / (3 * pool)
        self.pretrain, self.clean = _tile_pairs(data.pretrain, pairs), _tile_pairs(data.clean, pairs)
        self.test = _tile_test(data.test, cfg.eval_images)
        self.target = class_index(self.test.classnames, c.target)
        self.attack = ATTACKS.get(c.attack)(ATTACKS.get(c.attack).Options(), self.size, cfg.seed)
        start = time.perf_counter()
        seed_everything(derive_seed(cfg.seed, "init"))
        self.bundle = build_model(cfg.model, None, str(self.device))
        self.once["model_build_seconds"] = time.perf_counter() - start
        if embedded_table.cache_info().currsize == 0:
            start = time.perf_counter()
            embedded_table()
            self.once["synonyms_load_seconds"] = time.perf_counter() - start
        else:
            self.once["synonyms_load_seconds"] = 0.0  # already read by this process
        inputs = stages.PoisonInput(self.pretrain, self.attack, self.target, self.test.classnames[self.target],
                                    self.test.templates, cfg.seed, c.poison_rate, c.poison_count)

        def poison() -> PairSet:
            return stages.poison(inputs).pairs

        self.poisoned = poison()
        self.add("setup:poison", Measure("setup", f"poisoning ({c.attack}, rate {c.poison_rate:g})", pairs), poison)
        self.add("setup:tokenise", Measure("setup", "tokenise captions", pairs),
                 lambda: self.bundle.tokenizer(self.poisoned.captions))

    # --- bare model ---

    def bare(self, items: int) -> str:
        """The bare training probe on batches of `items` pairs (added once per size); its key."""
        key = f"bare:train:{items}"
        if key not in self.probes:
            index = torch.arange(items) % len(self.pretrain)
            images = self.bundle.model_input(self.pretrain.images[index].to(self.device))
            tokens = self.bundle.tokenizer([self.pretrain.captions[i] for i in index.tolist()]).to(self.device)
            model, device, steps = self.bundle.model, self.device, self.config.steps

            def run() -> None:
                model.train()
                for _ in range(steps):
                    _bare_step(model, images, tokens, device)

            self.add(key, Measure("model", f"bare CLIP forward+backward, batch {items}", items * steps, steps), run)
        return key

    def bare_forward(self) -> None:
        steps = self.config.steps
        chunk = self.bundle.model_input(self.pretrain.images[: self.batch].to(self.device))
        model, device = self.bundle.model, self.device

        def run() -> None:
            model.eval()
            _bare_forward(model, [chunk] * steps, device)

        self.add("bare:forward", Measure("model", f"bare image-encoder forward, batch {self.batch}",
                                         self.batch * steps, steps), run)

    # --- training stages ---

    def pretraining(self) -> None:
        bundle, steps = self.bundle, self.config.steps
        batches = stages.pretrain_batches(bundle, self.poisoned, self.device, self.batch)
        objective = clip_objective(bundle)
        stage_config = replace(self.cell.pretrain, epochs=1, batch_size=self.batch)
        seed = derive_seed(self.config.seed, "pretrain")
        baseline = self.bare(self.batch)

        def run() -> None:
            train(bundle.model, batches, objective, stage_config, seed=seed, stage="pretrain", device=self.device,
                  progress=False)

        self.add("train:pretrain", Measure("training", "poisoned pretraining step", self.batch * steps, steps,
                                           baseline), run)
        self.parts("pretrain", batches, stage_config, None, lambda i, t, iv, tv, s: clip_loss(i, t, s), 1)

    def defense(self, name: str, label: str) -> None:
        cls = DEFENSES.get(name)
        defense = cls(cls.Options(batch_size=self.batch, epochs=1))
        if not isinstance(defense, ContrastiveFinetune):
            raise UsageError(f"defense {name!r} is not a contrastive finetuning defense")
        inputs = stages.DefendInput(defense, self.bundle, self.clean, self.config.seed, self.device, name)

        def context() -> DefenseContext:
            return stages.defense_context(inputs)

        live = context()
        batches, objective, per_pair = defense.prepare(self.bundle, live)
        self.add(f"setup:{name}", Measure("setup", f"{name}: tokenise and text views", len(self.clean)),
                 lambda: defense.prepare(self.bundle, context()))
        options = defense.options
        stage_config = options.train_config()
        items = self.batch * per_pair
        baseline = self.bare(items)
        model = self.bundle.model

        def run() -> None:
            live.finetune(model, batches, objective, stage_config, f"defense:{name}", per_pair)

        self.add(f"train:{name}", Measure("training", label, items * self.config.steps, self.config.steps, baseline),
                 run)
        view = image_view(options.image_view) if per_pair == 2 else None
        weights = defense.objective_weights()
        self.parts(name, batches, stage_config, view, lambda *features: cleanclip_loss(*features, *weights)["loss"],
                   per_pair)

    def parts(self, stage: str, batches: InMemoryBatches, stage_config: TrainConfig, view: ImageView | None,
              loss_fn: Callable[..., torch.Tensor], per_pair: int) -> None:
        """Probes of each part of a training step of `stage`, timed on their own over `steps` steps:
        `loss_fn(images, texts, image_views, text_views, scale)` is the stage's loss."""
        bundle, device, steps = self.bundle, self.device, self.config.steps
        model = bundle.model
        order = torch_generator(0)
        batch: Batch = next(batches.epoch(torch_generator(0)))
        generator = torch_generator(1)
        images = batch["images"]
        encoded = torch.cat([images, view(images, generator)]) if view is not None else images
        tokens = torch.cat([batch["tokens"], batch["text_views"]]) if view is not None else batch["tokens"]
        with torch.no_grad():
            features = (model.encode_image(bundle.model_input(encoded), normalize=True).float(),
                        model.encode_text(tokens, normalize=True).float())
        count = len(images)
        optimizer = torch.optim.AdamW(decay_groups(model, stage_config.weight_decay), lr=stage_config.lr,
                                      betas=(stage_config.beta1, stage_config.beta2), eps=stage_config.eps)
        _bare_step(model, bundle.model_input(images), batch["tokens"], device)  # gradients for the optimizer

        def batching() -> None:
            for _ in batches.epoch(order):
                pass

        def model_input() -> None:
            for _ in range(steps):
                bundle.model_input(encoded)

        def augmentation() -> None:
            for _ in range(steps):
                view(images, generator)

        def loss() -> None:
            for _ in range(steps):
                image, text = (f.detach().requires_grad_() for f in features)
                scale = model.logit_scale.detach().exp()
                loss_fn(image[:count], text[:count], image[count:], text[count:], scale).backward()

        def step() -> None:
            for _ in range(steps):
                optimizer.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(stage_config.max_logit_scale))

        parts = {"batching": batching, "input conversion": model_input, "image views": augmentation,
                 "loss": loss, "optimizer": step}
        if view is None:
            del parts["image views"]
        for part, fn in parts.items():
            self.add(f"part:{stage}:{part}", Measure(f"part:{stage}", part, count * per_pair * steps, steps), fn)

    # --- evaluation and triggers ---

    def evaluation(self) -> None:
        bundle, device, test = self.bundle, self.device, self.test
        keep = test.labels != self.target
        everything = torch.cat([test.images, test.images[keep]])
        chunks = [bundle.model_input(everything[i : i + IMAGE_BATCH].to(device))
                  for i in range(0, len(everything), IMAGE_BATCH)]
        model = bundle.model

        def bare() -> None:
            model.eval()
            _bare_forward(model, chunks, device)

        def run() -> None:
            evaluate(bundle, test, self.attack, self.target, self.config.seed, device)

        self.add("eval:bare", Measure("model", f"bare image-encoder forward, batch {IMAGE_BATCH}", len(everything)),
                 bare)
        self.add("eval:evaluate", Measure("evaluation", "zero-shot evaluation (CA, ASR, RA)", len(everything),
                                          baseline="eval:bare"), run)
        generator = torch_generator(derive_seed(self.config.seed, EVAL_TRIGGER_STREAM))
        triggered = trigger_uint8(self.attack, test.images[keep], generator)

        def metrics() -> None:
            stealthiness(test.images[keep], triggered)
            for _ in range(4):
                proportion(int(keep.sum()) // 2, int(keep.sum()))

        parts = {
            "class embeddings": lambda: class_embeddings(bundle, test.classnames, test.templates, device),
            "input conversion": lambda: [bundle.model_input(everything[i : i + IMAGE_BATCH].to(device))
                                         for i in range(0, len(everything), IMAGE_BATCH)],
            "triggers": lambda: trigger_uint8(self.attack, test.images[keep], generator),
            "metrics": metrics,
        }
        for part, fn in parts.items():
            self.add(f"part:evaluation:{part}", Measure("part:evaluation", part, len(everything)), fn)

    def triggers(self) -> None:
        images = self.pretrain.images[: self.batch].to(self.device)
        generator = torch_generator(2)
        for entry in ATTACKS.entries():
            if entry.error:
                self.log(f"skipping attack {entry.name}: {entry.error}")
                continue
            attack: Attack = entry.target(entry.target.Options(), self.size, self.config.seed)
            self.add(f"trigger:{entry.name}", Measure("trigger", f"trigger {entry.name}", len(images)),
                     lambda attack=attack: trigger_uint8(attack, images, generator))

    def reference_triggers(self) -> None:
        """The reference's per-image PIL path against cleanbench's batched path, at 224 px on the CPU."""
        count = self.batch
        arrays = np.random.default_rng(0).integers(0, 256, (count, SIDE, SIDE, 3), dtype=np.uint8)
        pil_images = [Image.fromarray(a) for a in arrays]
        tensors = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()
        generator = torch_generator(3)
        random.seed(0)
        for name, trigger in reference_triggers().items():
            if name not in ATTACKS.names():
                continue
            cls = ATTACKS.get(name)
            attack = cls(cls.Options(**REFERENCE_OPTIONS[name]), SIDE, self.config.seed)

            def reference(trigger: Callable[[torch.Tensor], torch.Tensor] = trigger) -> None:
                for image in pil_images:
                    to_pil_image(trigger(to_tensor(image.resize((SIDE, SIDE)))))

            key = f"reference:{name}"
            self.add(key, Measure("reference trigger", f"reference per-image {name}, {SIDE} px, CPU", count), reference)
            self.add(f"batched:{name}", Measure("reference trigger", f"batched {name}, {SIDE} px, CPU", count,
                                                baseline=key),
                     lambda attack=attack: trigger_uint8(attack, tensors, generator))

    # --- timing ---

    def run(self) -> dict[str, Measure]:
        """Warm every probe up (counting its FLOPs), then time them in turn `repeats` times: the stages
        first, each close to its bare baseline, then the parts, setup and triggers."""
        for measure, fn in self.probes.values():
            if measure.group in STAGE_GROUPS:
                measure.flops = count_flops(fn)
            else:
                fn()
        order = sorted(self.probes.values(), key=lambda probe: probe[0].group not in STAGE_GROUPS)
        for repeat in range(self.config.repeats):
            self.log(f"repetition {repeat + 1}/{self.config.repeats}")
            for measure, fn in order:
                measure.seconds.append(_timed(fn, self.device))
        return {key: measure for key, (measure, _) in self.probes.items()}


def _breakdown(result: BenchResult) -> dict[str, dict[str, float]]:
    """Milliseconds per step of each stage: the stage, the bare model, each part, and what is left."""
    out: dict[str, dict[str, float]] = {}
    stages = {"pretrain": "train:pretrain", "cleanclip": "train:cleanclip", "finetune": "train:finetune",
              "evaluation": "eval:evaluate"}
    for stage, key in stages.items():
        measure = result.measures.get(key)
        if measure is None:
            continue
        per_step = lambda m: 1000 * m.median / m.steps  # noqa: E731
        table = {"stage": per_step(measure), "bare model": per_step(result.measures[measure.baseline])}
        for m in result.measures.values():
            if m.group == f"part:{stage}":
                table[m.name] = per_step(m)
        table["other"] = table["stage"] - sum(v for k, v in table.items() if k != "stage")
        out[stage] = table
    return out


def _estimate(result: BenchResult, bench: _Bench) -> dict[str, float]:
    """Seconds of one default cell with this model, batch and image size (module docstring)."""
    c, m, once = bench.cell, result.measures, bench.once
    step = lambda key: m[key].median / m[key].steps  # noqa: E731
    per_item = lambda key: m[key].median / m[key].items  # noqa: E731
    n_pretrain, n_clean, n_test = c.data.n_pretrain, c.data.n_clean, c.data.n_test
    defense = DEFENSES.get("cleanclip").Options(**c.defense_defaults.get("cleanclip", {}))
    per_defense_step = defense.batch_size / bench.batch  # the step was timed at the bench's batch; cost ~ items
    evaluated = n_test * m["eval:evaluate"].items / bench.config.eval_images
    parts = {
        "data": once["data_seconds_per_image"] * (n_pretrain + n_clean + n_test),
        "model build": once["model_build_seconds"],
        "poisoning": per_item("setup:poison") * n_pretrain,
        "tokenise": per_item("setup:tokenise") * n_pretrain,
        "pretraining": c.pretrain.epochs * (n_pretrain // bench.batch) * step("train:pretrain"),
        "evaluations (2)": 2 * evaluated * per_item("eval:evaluate"),
        "defense setup": once["synonyms_load_seconds"] + per_item("setup:cleanclip") * n_clean,
        "defense (cleanclip)": defense.epochs * (n_clean // defense.batch_size) * per_defense_step
                                * step("train:cleanclip"),
    }
    parts["total"] = sum(parts.values())
    return parts


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _environment(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {"device": str(device), "device_name": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "load_average_start": list(os.getloadavg())}


def run_bench(config: BenchConfig, log: Callable[[str], None] = lambda message: None) -> BenchResult:
    """Measure every stage of a cell on `config.device` (see the module docstring)."""
    check_model(config.model)
    bench = _Bench(config, log)
    environment = _environment(bench.device)
    log(f"preparing data and model ({config.model}, {bench.size} px, batch {config.batch_size}, {bench.device})")
    bench.prepare()
    bench.bare_forward()
    bench.pretraining()
    bench.defense("finetune", "finetuning step")
    bench.defense("cleanclip", "CleanCLIP step (originals + views)")
    bench.evaluation()
    bench.triggers()
    if config.reference_triggers:
        bench.reference_triggers()
    measures = bench.run()
    environment["load_average_end"] = list(os.getloadavg())
    peak = device_peak_tflops(bench.device, config.peak_tflops)
    environment["peak_source"] = "given" if config.peak_tflops else "data sheet" if peak else "measured"
    environment["matmul_peak_tflops"] = matmul_peak_tflops(bench.device)
    if peak is None:
        peak = environment["matmul_peak_tflops"]
        environment["peak_source"] = f"measured: float32 {MATMUL_SIDE}x{MATMUL_SIDE} matmul"
    result = BenchResult(config, environment | {"image_size": bench.size}, measures, {}, {}, peak)
    result.breakdown = _breakdown(result)
    result.estimate = _estimate(result, bench)
    return result


def _fmt(value: float | None, pattern: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def _compared(row: dict[str, Any]) -> str:
    if row["overhead"] is not None:
        return f"{row['overhead']:+.1%} vs bare"
    if row["speed_ratio"] is not None:
        return f"{row['speed_ratio']:.2f}x " + ("reference" if row["group"] == "reference trigger" else "bare")
    return ""


def format_result(result: BenchResult) -> str:
    """The tables `cleanbench bench` prints: stages, breakdown per step, cell estimate."""
    import pandas as pd

    cuda = result.environment["device"].startswith("cuda")
    lines = []
    env = result.environment
    lines.append(f"{env['device']} ({env['device_name']}), torch {env['torch']}, {env['threads']} threads, "
                 f"{result.config.model} at {env['image_size']} px, batch {result.config.batch_size}, "
                 f"{result.config.repeats} repetitions of {result.config.steps} steps, load average "
                 f"{env['load_average_start'][0]:.2f} -> {env['load_average_end'][0]:.2f}")
    table = []
    for row in result.rows():
        if row["group"].startswith("part:"):
            continue
        training = row["group"] in ("training", "model") and row["key"].startswith(("train:", "bare:train"))
        entry = {
            "group": row["group"], "stage": row["name"], "items/call": row["items"],
            "ms/call": _fmt(1000 * row["median_seconds"], "{:.1f}"), "spread": _fmt(row["spread"], "{:.0%}"),
            "images/s": _fmt(row["images_per_second"], "{:.0f}"),
            "compared": _compared(row),
            "target": "" if row["met"] is None else ("met" if row["met"] else "MISSED"),
            "GFLOP/step": _fmt(row["flops"] / row["steps"] / 1e9 if training and row["flops"] else None, "{:.2f}"),
        }
        entry["GFLOP/s"] = _fmt(row["achieved_tflops"] * 1e3 if row["achieved_tflops"] else None, "{:.0f}")
        data_sheet = cuda and not str(env.get("peak_source", "")).startswith("measured")
        entry["MFU" if data_sheet else "of peak"] = _fmt(row["mfu"], "{:.1%}")
        table.append(entry)
    lines.append(pd.DataFrame(table).to_string(index=False))
    if result.peak_tflops is None:
        lines.append("peak: unknown for this device; pass --peak-tflops")
    elif "matmul_peak_tflops" in env:
        lines.append(f"peak {1e3 * result.peak_tflops:.0f} GFLOP/s ({env.get('peak_source')}); "
                     f"measured float32 matmul {1e3 * env['matmul_peak_tflops']:.0f} GFLOP/s")
    noisy = [m.name for m in result.measures.values() if m.group in STAGE_GROUPS and m.spread > NOISY_SPREAD]
    if noisy:
        lines.append(f"noisy: {len(noisy)} stage rows spread over {NOISY_SPREAD:.0%} (the device was busy); "
                     "comparisons pair repetitions, but rerun on a quiet device for reliable figures")
    lines.append("")
    lines.append("where a step's time goes (ms per step; parts timed on their own, `other` is what is left):")
    breakdown = pd.DataFrame(result.breakdown).fillna(float("nan"))
    lines.append(breakdown.to_string(float_format=lambda v: f"{v:.1f}", na_rep=""))
    lines.append("")
    lines.append("one default cell (`cleanbench run` defaults with this model and batch), estimated seconds:")
    lines.append("  " + ", ".join(f"{k} {v:.1f}" for k, v in result.estimate.items()))
    return "\n".join(lines)
