"""`cleanbench check-plugin NAME`: does a defense keep the contract? A check on a tiny
configuration (a badnet-poisoned tiny CLIP on 256 pairs) that takes seconds on a CPU.

Checks, in order; the first failure stops the check and is the one reported:
1. `loads`: NAME resolves to a `Defense` subclass with name, description, source and stage, an
   `Options` dataclass that builds from its defaults (plus `--defense-opt`), and `needs` drawn
   from `KNOWN_NEEDS`.
2. `reads`: it read none of the guarded run data (pretraining pairs, poison indices, poisoned test
   set) that it does not declare in `needs`. Every provider is wrapped to record reads, so reading
   `context.restricted` directly is caught too.
3. `applies`: `apply` returns an `nn.Module` without raising.
4. `architecture`: the same class as the model it was given, with the same tensors and shapes.
5. `evaluates`: zero-shot evaluation runs on it and its embeddings are finite.
6. `deterministic`: a second run with the same seed, after the global random generators were
   scrambled, gives bit-identical weights.
7. `files`: the same clean pairs, written as PNG files with a CSV and read back as a run on file
   data reads them (`context.clean.images` is then an image column read from files instead of one
   held in memory: the same `ImageColumn` interface), still apply and give the same architecture;
   a defense that only uses the `PairSet` and `ImageColumn` interfaces passes on both paths.
Then it reports the cost: seconds per apply, training steps and throughput.

A pretraining-stage defense (`stage = "pretraining"`) must also declare `pretrain_pairs` (`loads`);
it is given a freshly initialised tiny model and a two-epoch tiny pretraining configuration, and
`pretrains` checks that it read the poisoned pairs and returned a trained model (neither the
poisoned model nor the initial weights). Its `files` check reads the poisoned pairs from files.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cleanbench.errors import RunError
from cleanbench.registry import DEFENSES

TINY_DATA = dict(n_pretrain=256, n_clean=128, n_test=100, image_size=32, preset="easy")
TINY_POISON_RATE = 0.05
TINY_PRETRAIN = dict(epochs=2, batch_size=64, warmup_steps=1)
"""A pretraining-stage defense's tiny pretraining (two epochs: a schedule that alternates epochs runs both)."""


class ConformanceFailure(RunError):
    """A defense failed one conformance check."""

    def __init__(self, name: str, check: str, reason: str) -> None:
        super().__init__(f"check-plugin {name!r} FAILED at {check}: {reason}")
        self.check = check
        self.reason = reason


@dataclass
class Report:
    """What the check found: passed checks as (check, detail) lines, and the cost."""

    name: str
    passed: list[tuple[str, str]] = field(default_factory=list)
    cost: dict[str, Any] = field(default_factory=dict)

    def record(self, check: str, detail: str, log: Callable[[str], None]) -> None:
        """Note that `check` passed, and say so through `log`."""
        self.passed.append((check, detail))
        log(f"  ok    {check}: {detail}")


@dataclass
class _Setup:
    """The tiny poisoned world every apply starts from."""

    data: Any
    bundle: Any
    attack: Any
    target_index: int
    poisoned: Any

    @property
    def poisoned_pairs(self) -> Any:
        """The poisoned pretraining pairs."""
        return self.poisoned.pairs

    @property
    def poison_indices(self) -> list[int]:
        """Which of them are poisoned."""
        return self.poisoned.plan.indices


def _tiny_setup(seed: int, device: Any) -> _Setup:
    """The run's own stages on the tiny configuration: data, badnet poison, one epoch of pretraining."""
    from cleanbench import stages
    from cleanbench.config import DataConfig, ModelConfig
    from cleanbench.registry import ATTACKS
    from cleanbench.trainer import TrainConfig

    cell = stages.load(DataConfig(**TINY_DATA), seed, "star")
    attack_cls = ATTACKS.get("badnet")
    attack = attack_cls(attack_cls.Options(), TINY_DATA["image_size"], seed)
    poisoned = stages.poison(stages.PoisonInput(cell.data.pretrain, attack, cell.target_index, cell.target_name,
                                                cell.data.test.templates, seed, TINY_POISON_RATE))
    bundle = stages.initial_model(ModelConfig(), seed, device)
    stages.pretrain(stages.PretrainInput(bundle, poisoned.pairs, TrainConfig(epochs=1, batch_size=64, warmup_steps=1),
                                         seed, device))
    return _Setup(cell.data, bundle, attack, cell.target_index, poisoned)


def _check_files(name: str, cls: type, options: Any, setup: _Setup, seed: int, device: Any, state: dict) -> str:
    """The `files` check: apply on the clean pairs (a pretraining-stage defense: the poisoned pairs)
    read from image files; its detail line."""
    import torch

    from cleanbench.defenses.base import acts_in_pretraining

    pretraining = acts_in_pretraining(cls)
    which, accessor = ("poisoned", "context.pretrain_pairs()") if pretraining else ("clean", "context.clean")
    with tempfile.TemporaryDirectory(prefix="cleanbench-check-plugin-") as folder:
        if pretraining:
            pairs = _pairs_from_files(setup.poisoned_pairs, folder)
            files = dataclasses.replace(setup, poisoned=dataclasses.replace(setup.poisoned, pairs=pairs))
        else:
            files = dataclasses.replace(setup, data=dataclasses.replace(setup.data, clean=_pairs_from_files(
                setup.data.clean, folder)))
        _, model, _, _, _, error = _apply_once(cls, options, files, seed, device, scramble=3)
    if error is not None:
        raise ConformanceFailure(name, "files", f"on {which} pairs read from image files (the CSV path), apply raised "
                                 f"{type(error).__name__}: {error}; use only the PairSet interface of {accessor}")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if not isinstance(model, torch.nn.Module) or {k: tuple(v.shape) for k, v in model.state_dict().items()} != shapes:
        raise ConformanceFailure(name, "files", f"on {which} pairs read from image files it did not return the model's "
                                 "architecture")
    same = all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    return (f"the same {which} pairs read from PNG files through a CSV: applies, same architecture"
            + (", identical weights" if same else ""))


def _pairs_from_files(pairs: Any, folder: str) -> Any:
    """`pairs` written as PNG files with a CSV and read back as a run on file data reads them
    (lazily, at the model's resolution); same images, captions and labels."""
    import csv

    from PIL import Image

    from cleanbench.data.base import PairSet
    from cleanbench.data.pairs import load_pairs

    with open(f"{folder}/pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        for i, (image, caption) in enumerate(zip(pairs.images, pairs.captions)):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(f"{folder}/{i}.png")
            writer.writerow([f"{i}.png", caption])
    read = load_pairs(f"{folder}/pairs.csv", TINY_DATA["image_size"])
    return PairSet(read.images, read.captions, pairs.labels.clone(), pairs.classnames)


def _scramble_global_generators(value: int) -> None:
    """Different global random states, so a defense that does not seed itself shows up."""
    import numpy as np
    import torch

    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def _load(name: str, overrides: dict[str, Any]) -> tuple[type, Any, str]:
    from cleanbench.config import build_options
    from cleanbench.defenses.base import KNOWN_NEEDS, PRETRAIN_PAIRS, Defense, acts_in_pretraining

    try:
        cls = DEFENSES.get(name)
    except RunError as error:
        raise ConformanceFailure(name, "loads", str(error)) from error
    if not (isinstance(cls, type) and issubclass(cls, Defense)):
        raise ConformanceFailure(name, "loads", f"{cls!r} is not a subclass of cleanbench.defenses.Defense")
    for attribute in ("name", "description", "source", "stage"):
        if not isinstance(getattr(cls, attribute, None), str) or not getattr(cls, attribute):
            raise ConformanceFailure(name, "loads", f"class attribute `{attribute}` must be a non-empty string")
    if not dataclasses.is_dataclass(getattr(cls, "Options", None)):
        raise ConformanceFailure(name, "loads", "class attribute `Options` must be a dataclass of hyper-parameters")
    needs = getattr(cls, "needs", None)
    if not isinstance(needs, (set, frozenset)) or not set(needs) <= KNOWN_NEEDS:
        raise ConformanceFailure(
            name, "loads", f"`needs` must be a frozenset drawn from {', '.join(sorted(KNOWN_NEEDS))}; got {needs!r}"
        )
    if acts_in_pretraining(cls) and PRETRAIN_PAIRS not in needs:
        raise ConformanceFailure(name, "loads", f"it acts during pretraining, so `needs` must include {PRETRAIN_PAIRS!r} "
                                 "(it trains on the poisoned pairs)")
    try:
        options = build_options(cls.Options, overrides, f"defense {name!r} options")
    except Exception as error:
        raise ConformanceFailure(name, "loads", f"options do not build: {error}") from error
    entry = next((e for e in DEFENSES.entries() if e.name == name), None)
    return cls, options, entry.source if entry else "plugin"


def _check_pretrains(name: str, model: Any, poisoned: Any, context: Any, seed: int, device: Any) -> str:
    """The `pretrains` check of a pretraining-stage defense: it read the poisoned pairs and returned a
    model trained from the initial weights (not the poisoned model, not the untouched initial model)."""
    import torch

    from cleanbench import stages
    from cleanbench.config import ModelConfig
    from cleanbench.defenses.base import PRETRAIN_PAIRS

    if PRETRAIN_PAIRS not in context.reads:
        raise ConformanceFailure(name, "pretrains", "it never read the poisoned pairs (context.pretrain_pairs()); "
                                 "a pretraining-stage defense trains the model on them")
    if model is poisoned:
        raise ConformanceFailure(name, "pretrains", "it returned the poisoned model; train the freshly initialised "
                                 "model it is given instead")
    initial = stages.initial_model(ModelConfig(), seed, device).model.state_dict()
    if all(torch.equal(v, initial[k]) for k, v in model.state_dict().items()):
        raise ConformanceFailure(name, "pretrains", "the returned model still has its initial weights; train it")
    steps = sum(s.steps for s in context.stats)
    return f"read the poisoned pairs, trained from the initial weights ({steps} steps recorded)"


def _apply_once(cls: type, options: Any, setup: _Setup, seed: int, device: Any, scramble: int):
    from cleanbench import stages
    from cleanbench.config import ModelConfig
    from cleanbench.trainer import TrainConfig

    recorded: list[str] = []

    def recording(key: str, provide: Callable[[], Any]) -> Callable[[], Any]:
        def read() -> Any:
            recorded.append(key)
            return provide()

        return read

    providers = stages.guarded_data(setup.poisoned, setup.data.test, setup.attack, seed)
    bundle = dataclasses.replace(setup.bundle, model=copy.deepcopy(setup.bundle.model))
    inputs = stages.DefendInput(cls(options), bundle, setup.data.clean, seed, device, cls.name,
                                {k: recording(k, v) for k, v in providers.items()},
                                pretrain=TrainConfig(**TINY_PRETRAIN),
                                initial=lambda: stages.initial_model(ModelConfig(), seed, device))
    context = stages.defense_context(inputs)
    _scramble_global_generators(scramble)
    start = time.perf_counter()
    error: Exception | None = None
    try:
        model = stages.defend(inputs, context).model
    except Exception as raised:  # reported below, after the reads are known
        model, error = None, raised
    seconds = time.perf_counter() - start
    undeclared = sorted((set(recorded) | set(context.reads)) - set(cls.needs))
    return bundle, model, context, seconds, undeclared, error


def check_defense(name: str, overrides: dict[str, Any] | None = None, seed: int = 0,
                  log: Callable[[str], None] = lambda line: None) -> Report:
    """Run the conformance checks on defense `name`; raises `ConformanceFailure` at the first failure."""
    import torch

    from cleanbench import stages
    from cleanbench.defenses.base import acts_in_pretraining

    device = torch.device("cpu")
    report = Report(name)

    def passed(check: str, detail: str) -> None:
        report.record(check, detail, log)

    cls, options, source = _load(name, overrides or {})
    passed("loads", f"{cls.__name__} ({source}), stage {cls.stage!r}, needs {', '.join(sorted(cls.needs)) or 'nothing'}")
    setup = _tiny_setup(seed, device)
    reference = copy.deepcopy(setup.bundle.model.state_dict())

    bundle, model, context, seconds, undeclared, error = _apply_once(cls, options, setup, seed, device, scramble=1)
    if undeclared:
        raise ConformanceFailure(name, "reads", f"read {', '.join(undeclared)} without declaring it in `needs`")
    declared = sorted(set(cls.needs) - {"clean_pairs"})
    passed("reads", "only what it declares" + (f" ({', '.join(declared)})" if declared else " (the clean pairs)"))
    if error is not None:
        raise ConformanceFailure(name, "applies", f"apply raised {type(error).__name__}: {error}")
    if not isinstance(model, torch.nn.Module):
        raise ConformanceFailure(name, "applies", f"apply must return an nn.Module, not {type(model).__name__}")
    passed("applies", f"returned a {type(model).__name__} in {seconds:.1f} s")
    if acts_in_pretraining(cls):
        passed("pretrains", _check_pretrains(name, model, bundle.model, context, seed, device))

    expected = type(setup.bundle.model)
    if type(model) is not expected:
        raise ConformanceFailure(name, "architecture", f"returned a {type(model).__name__}, not a {expected.__name__}")
    state = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    wanted = {k: tuple(v.shape) for k, v in reference.items()}
    if shapes != wanted:
        missing, extra = sorted(set(wanted) - set(shapes)), sorted(set(shapes) - set(wanted))
        changed = sorted(k for k in set(wanted) & set(shapes) if wanted[k] != shapes[k])
        detail = "; ".join(f"{label}: {', '.join(keys[:3])}" for label, keys in
                           (("missing", missing), ("unexpected", extra), ("reshaped", changed)) if keys)
        raise ConformanceFailure(name, "architecture", f"the state dict differs from the input model's ({detail})")
    passed("architecture", f"same class, {len(state)} tensors of the same shapes")

    bundle.model = model
    try:
        metrics = stages.evaluate(stages.EvaluateInput(bundle, setup.data.test, setup.attack, setup.target_index,
                                                       seed, device))
        with torch.no_grad():
            images = model.encode_image(bundle.model_input(setup.data.test.images[:16]), normalize=True)
            texts = model.encode_text(bundle.tokenizer(setup.data.clean.captions[:16]), normalize=True)
    except Exception as raised:
        raise ConformanceFailure(name, "evaluates", f"evaluation raised {type(raised).__name__}: {raised}") from raised
    if not (torch.isfinite(images).all() and torch.isfinite(texts).all()):
        raise ConformanceFailure(name, "evaluates", "the defended model's embeddings are not finite")
    passed("evaluates", f"CA {metrics['ca_top1']['value']:.1%}, ASR {metrics['asr']['value']:.1%} "
                        "(tiny configuration: the numbers say nothing about the defense)")

    _, again, _, _, _, error = _apply_once(cls, options, setup, seed, device, scramble=2)
    if error is not None:
        raise ConformanceFailure(name, "deterministic", f"the second run raised {type(error).__name__}: {error}")
    for key, value in again.state_dict().items():
        if not torch.equal(value, state[key]):
            diff = (value.float() - state[key].float()).abs().max().item()
            raise ConformanceFailure(
                name, "deterministic", f"two runs with seed {seed} differ in {key} (max |diff| {diff:.3g}); derive "
                "every random draw from context.seed (e.g. cleanbench.seeding.torch_generator(derive_seed(...)))"
            )
    passed("deterministic", f"a second run with seed {seed} gave identical weights")

    passed("files", _check_files(name, cls, options, setup, seed, device, state))

    steps = sum(s.steps for s in context.stats)
    train_seconds = sum(s.seconds for s in context.stats)
    items = sum(s.items_per_second * s.seconds for s in context.stats)
    changed = sum(not torch.equal(v, reference[k]) for k, v in state.items())
    report.cost = {"apply_seconds": seconds, "training_steps": steps, "training_seconds": train_seconds,
                   "items_per_second": items / train_seconds if train_seconds else math.nan,
                   "tensors_changed": changed, "tensors": len(state), "device": str(device),
                   "threads": torch.get_num_threads()}
    return report
