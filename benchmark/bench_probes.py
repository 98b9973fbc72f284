"""The probes of `cleanbench bench`: each stage of a cell built through `cleanbench.stages` and the
code a cell runs (trainer, defenses' `prepare`, evaluation, triggers), the bare model it is compared
with, the parts of each step, and `CellProbes.run`, which times them in turn.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import to_pil_image, to_tensor

from cleanbench import stages
from cleanbench.attacks.base import Attack, Seeded, trigger_uint8
from cleanbench.augment import ImageView, image_view
from cleanbench.bench_measure import STAGE_GROUPS, BenchConfig, Measure, count_flops, timed
from cleanbench.config import RunConfig, from_dict
from cleanbench.data.base import ClassificationSet, PairSet, class_index
from cleanbench.data.embedded import load_embedded
from cleanbench.defenses.base import DefenseContext
from cleanbench.defenses.contrastive import ContrastiveFinetune
from cleanbench.errors import UsageError
from cleanbench.environment import autocast
from cleanbench.evaluation import EVAL_TRIGGER_STREAM, IMAGE_BATCH, class_embeddings, evaluate
from cleanbench.losses import cleanclip_loss, clip_loss, clip_objective
from cleanbench.metrics import proportion, stealthiness
from cleanbench.models import build_model, input_size
from cleanbench.presets import DEFAULT_SETTING, preset_values
from cleanbench.registry import ATTACKS, DEFENSES
from cleanbench.plan import resolve_device
from cleanbench.seeding import derive_seed, seed_everything, torch_generator
from cleanbench.synonyms import embedded_table
from cleanbench.trainer import Batch, Batches, TrainConfig, adamw, train
from cleanbench.trigger_bench import REFERENCE_OPTIONS, SIDE, reference_triggers

POOL = 256
"""Distinct images drawn per split; larger sets repeat them (content does not change speed)."""

def _tile_pairs(pairs: PairSet, count: int) -> PairSet:
    return pairs.select(torch.arange(count) % len(pairs))


def _tile_test(test: ClassificationSet, count: int) -> ClassificationSet:
    index = torch.arange(count) % len(test)
    return replace(test, images=test.images.select(index), labels=test.labels[index])


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


class CellProbes:
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

    def parts(self, stage: str, batches: Batches, stage_config: TrainConfig, view: ImageView | None,
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
        optimizer = adamw(model, stage_config)
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
        everything = torch.cat([test.images[:], test.images[keep]])
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
        trigger, rows = Seeded(self.attack, self.config.seed, EVAL_TRIGGER_STREAM), torch.nonzero(keep).flatten()
        triggered = trigger(test.images[rows], rows)

        def metrics() -> None:
            stealthiness(test.images[keep], triggered)
            for _ in range(4):
                proportion(int(keep.sum()) // 2, int(keep.sum()))

        parts = {
            "class embeddings": lambda: class_embeddings(bundle, test.classnames, test.templates, device),
            "input conversion": lambda: [bundle.model_input(everything[i : i + IMAGE_BATCH].to(device))
                                         for i in range(0, len(everything), IMAGE_BATCH)],
            "triggers": lambda: trigger(test.images[rows], rows),
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
                measure.seconds.append(timed(fn, self.device))
        return {key: measure for key, (measure, _) in self.probes.items()}
