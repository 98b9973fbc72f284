"""`cleanbench check-plugin NAME --kind attack`: does an attack keep the contract? On the tiny
embedded data (256 pairs, 32 px) on the CPU, in seconds.

Checks, in order; the first failure stops the check and is the one reported:
1. `loads`: NAME resolves to an `Attack` subclass whose `Options` build from its defaults (plus
   `--attack-opt`).
2. `fits` (attacks with `needs_surrogate` only): `fit` on a tiny surrogate returns a `FittedTrigger`
   whose record is JSON with `steps` and `final_losses`, and sets `fitted`; the poison stage refuses
   the attack before it.
3. `triggers`: the trigger keeps the images' shape and dtype, leaves its input unchanged, and changes
   some non-target test image.
4. `deterministic`: a second instance with the same seed (fitted again from the same seed, after the
   global random generators were scrambled) gives the same triggered bytes and poisoned pairs.
5. `restores` (attacks with `needs_surrogate` only): a fresh instance given the fitted trigger through
   `restore` (as from the cache) triggers and poisons the same bytes and captions.
6. `poisons`: the poison stage poisons the budget's pairs among the attack's candidates.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import click
import torch

from cleanbench import stages
from cleanbench.attacks.base import Attack, FittedTrigger, trigger_uint8
from cleanbench.config import DataConfig, build_options
from cleanbench.conformance import TINY_DATA, TINY_POISON_RATE, ConformanceFailure, Report
from cleanbench.errors import RunError
from cleanbench.models import build_model
from cleanbench.registry import ATTACKS
from cleanbench.seeding import derive_seed, seed_everything, torch_generator


def check_attack(name: str, overrides: dict[str, Any] | None = None, seed: int = 0,
                 log: Callable[[str], None] = lambda line: None) -> Report:
    """Run the conformance checks on attack `name`; raises `ConformanceFailure` at the first failure."""
    report = Report(name)

    def passed(check: str, detail: str) -> None:
        report.record(check, detail, log)

    cls = ATTACKS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise ConformanceFailure(name, "loads", f"{cls!r} is not an Attack subclass")
    options = build_options(cls.Options, overrides or {}, f"attack {name!r} options")
    passed("loads", f"{cls.__name__}, needs a surrogate: {'yes' if cls.needs_surrogate else 'no'}")
    cell = stages.load(DataConfig(**TINY_DATA), seed, "star")
    surrogate = _tiny_surrogate(seed) if cls.needs_surrogate else None

    def build(scramble: int) -> tuple[Attack, FittedTrigger | None]:
        random.seed(scramble)
        torch.manual_seed(scramble)
        attack = cls(options, TINY_DATA["image_size"], seed)
        if surrogate is None:
            return attack, None
        try:
            fitted = stages.fit_trigger(stages.FitInput(attack, surrogate, cell.data.pretrain, cell.target_index,
                                                        cell.target_name, seed))
        except Exception as error:
            raise ConformanceFailure(name, "fits", f"fit raised {type(error).__name__}: {error}") from error
        return attack, fitted

    def poison(attack: Attack) -> stages.Poisoned:
        return stages.poison(stages.PoisonInput(cell.data.pretrain, attack, cell.target_index, cell.target_name,
                                                cell.data.test.templates, seed, TINY_POISON_RATE))

    if cls.needs_surrogate:
        try:
            poison(cls(options, TINY_DATA["image_size"], seed))
            raise ConformanceFailure(name, "fits", "the poison stage accepted the attack before `fit`")
        except RunError as error:
            if isinstance(error, ConformanceFailure):
                raise
    attack, fitted = build(1)
    if fitted is not None:
        _check_fitted(name, attack, fitted)
        passed("fits", f"{fitted.record['seconds']:.1f} s, tensors {', '.join(fitted.tensors)}; record is JSON")

    test = cell.data.test.images[cell.data.test.labels != cell.target_index][:16]
    before = test.clone()
    out = trigger_uint8(attack, test, torch_generator(derive_seed(seed, "check")))
    if out.shape != test.shape or out.dtype != test.dtype or not torch.equal(test, before):
        raise ConformanceFailure(name, "triggers", "the trigger must return new uint8 images of the input's shape "
                                                   "and leave its input unchanged")
    if torch.equal(out, test) and name != "none":
        raise ConformanceFailure(name, "triggers", "the trigger changed none of 16 test images")
    passed("triggers", f"{int((out != test).any(dim=(1, 2, 3)).sum())} of {len(test)} test images changed")

    first = poison(attack)
    again, _ = build(2)
    _same(name, "deterministic", attack, again, test, first, poison(again), seed)
    passed("deterministic", f"the same seed gave the same trigger and poisoned pairs ({first.plan.count} poisoned)")

    if fitted is not None:
        restored = cls(options, TINY_DATA["image_size"], seed)
        restored.restore(FittedTrigger({k: v.clone() for k, v in fitted.tensors.items()}, json.loads(json.dumps(
            fitted.record))))
        if not restored.fitted:
            raise ConformanceFailure(name, "restores", "`restore` must set `fitted`")
        _same(name, "restores", attack, restored, test, first, poison(restored), seed)
        passed("restores", "the restored trigger triggers and poisons as the fitted one")

    candidates = set(attack.candidates(cell.data.pretrain, cell.target_index, cell.target_name).tolist())
    expected = 0 if name == "none" else max(1, round(TINY_POISON_RATE * len(cell.data.pretrain)))
    if first.plan.count != expected or not set(first.plan.indices) <= candidates:
        raise ConformanceFailure(name, "poisons", f"{first.plan.count} pairs poisoned, {expected} expected, "
                                                  "all among the attack's candidates")
    passed("poisons", f"{first.plan.count} of {len(cell.data.pretrain)} pairs, all among its candidates")
    return report


def _tiny_surrogate(seed: int) -> Any:
    """A tiny CLIP trained for one epoch on the clean tiny pairs, as the clean control is trained."""
    cell = stages.load(DataConfig(**TINY_DATA), seed, "star")
    seed_everything(derive_seed(seed, "init"))
    bundle = build_model(device="cpu")
    from cleanbench.trainer import TrainConfig

    stages.pretrain(stages.PretrainInput(bundle, cell.data.pretrain, TrainConfig(epochs=1, batch_size=64, warmup_steps=1),
                                         seed, torch.device("cpu")))
    return stages.surrogate(bundle, torch.device("cpu"))


def _check_fitted(name: str, attack: Attack, fitted: Any) -> None:
    if not isinstance(fitted, FittedTrigger) or not all(isinstance(v, torch.Tensor) for v in fitted.tensors.values()):
        raise ConformanceFailure(name, "fits", "fit must return a FittedTrigger of tensors")
    try:
        json.dumps(fitted.record, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ConformanceFailure(name, "fits", f"the fitted record is not JSON ({error})") from error
    if not isinstance(fitted.record.get("steps"), int) or not isinstance(fitted.record.get("final_losses"), dict):
        raise ConformanceFailure(name, "fits", "the fitted record must hold `steps` (an int) and `final_losses` "
                                               "(loss name -> value)")
    if not attack.fitted:
        raise ConformanceFailure(name, "fits", "`fit` must set `fitted` (through `restore`)")


def _same(name: str, check: str, one: Attack, other: Attack, test: torch.Tensor, poisoned: stages.Poisoned,
          again: stages.Poisoned, seed: int) -> None:
    """ConformanceFailure at `check` unless the two attacks trigger `test` and poison the pairs alike."""
    stream = derive_seed(seed, "check")
    if not torch.equal(trigger_uint8(one, test, torch_generator(stream)), trigger_uint8(other, test, torch_generator(stream))):
        raise ConformanceFailure(name, check, "the triggered images differ; derive every random draw from the seed "
                                              "or the generator the attack is given")
    if not torch.equal(poisoned.pairs.images[:], again.pairs.images[:]) or list(poisoned.pairs.captions) != list(again.pairs.captions):
        raise ConformanceFailure(name, check, "the poisoned pairs differ")


def report_attack(name: str, overrides: dict[str, Any], seed: int) -> None:
    """`check-plugin NAME --kind attack`: print each passed check, then PASS."""
    click.echo(f"check-plugin {name!r} (attack): tiny embedded data on cpu, seed {seed}")
    check_attack(name, overrides, seed, log=click.echo)
    click.echo(f"PASS {name}")
