"""`cleanbench check-plugin NAME --kind detector`: does a detector keep the contract? Checked on the
tiny configuration of the defense check (a badnet-poisoned tiny CLIP on 256 pairs), in seconds.

Checks, in order; the first failure stops the check and is the one reported:
1. `loads`: NAME resolves to a `Detector` subclass with name, description and source, and an
   `Options` dataclass that builds from its defaults (plus `--detector-opt`).
2. `scores`: `score` returns one float per pair, finite (NaN only for pairs it could not score;
   the tiny pairs are all readable, so none here).
3. `read-only`: the model's weights are unchanged after scoring.
4. `deterministic`: a second run with the same seed, after the global random generators were
   scrambled, gives identical scores.
Then it reports the cost and the AUROC on the tiny configuration (which says nothing about the detector).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cleanbench.conformance import ConformanceFailure, Report, _scramble_global_generators, _tiny_setup
from cleanbench.errors import CleanbenchError


def _load(name: str, overrides: dict[str, Any]) -> tuple[type, Any]:
    from cleanbench.config import build_options
    from cleanbench.detectors.base import Detector
    from cleanbench.registry import DETECTORS

    try:
        cls = DETECTORS.get(name)
    except CleanbenchError as error:
        raise ConformanceFailure(name, "loads", str(error)) from error
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise ConformanceFailure(name, "loads", f"{cls!r} is not a subclass of cleanbench.detectors.Detector")
    for attribute in ("name", "description", "source"):
        if not isinstance(getattr(cls, attribute, None), str) or not getattr(cls, attribute):
            raise ConformanceFailure(name, "loads", f"class attribute `{attribute}` must be a non-empty string")
    if not dataclasses.is_dataclass(getattr(cls, "Options", None)):
        raise ConformanceFailure(name, "loads", "class attribute `Options` must be a dataclass of hyper-parameters")
    try:
        options = build_options(cls.Options, overrides, f"detector {name!r} options")
        cls(options)
    except Exception as error:
        raise ConformanceFailure(name, "loads", f"options do not build: {error}") from error
    return cls, options


def _score_once(cls: type, options: Any, setup: Any, seed: int, device: Any, scramble: int) -> tuple[Any, Any, float]:
    """Score the tiny pairs with a copy of the tiny model; returns the scores, that copy and the seconds."""
    from cleanbench.detectors.base import DetectionContext
    from cleanbench.seeding import derive_seed

    bundle = dataclasses.replace(setup.bundle, model=copy.deepcopy(setup.bundle.model))
    context = DetectionContext(bundle, setup.poisoned_pairs, device, derive_seed(seed, "detect"), progress=False)
    _scramble_global_generators(scramble)
    start = time.perf_counter()
    try:
        scores = cls(options).score(context)
    except Exception as error:
        raise ConformanceFailure(cls.name, "scores", f"score raised {type(error).__name__}: {error}") from error
    return scores, bundle, time.perf_counter() - start


def check_detector(name: str, overrides: dict[str, Any] | None = None, seed: int = 0,
                   log: Callable[[str], None] = lambda line: None) -> Report:
    """Run the conformance checks on detector `name`; raises `ConformanceFailure` at the first failure."""
    import torch

    from cleanbench.detection_metrics import auroc

    device = torch.device("cpu")
    report = Report(name)

    def passed(check: str, detail: str) -> None:
        report.record(check, detail, log)

    cls, options = _load(name, overrides or {})
    passed("loads", f"{cls.__name__}, options {dataclasses.asdict(options)}")
    setup = _tiny_setup(seed, device)
    scores, bundle, seconds = _score_once(cls, options, setup, seed, device, scramble=1)
    count = len(setup.poisoned_pairs)
    array = np.asarray(scores)
    if array.shape != (count,) or not np.issubdtype(array.dtype, np.floating):
        raise ConformanceFailure(name, "scores", f"score must return {count} floats (one per pair), "
                                                 f"got {type(scores).__name__} of shape {array.shape}")
    if not np.isfinite(array).all():
        raise ConformanceFailure(name, "scores", f"{int((~np.isfinite(array)).sum())} scores are not finite; "
                                                 "every readable pair needs a finite score")
    passed("scores", f"{count} finite scores in {seconds:.1f} s")

    reference = setup.bundle.model.state_dict()
    changed = [k for k, v in bundle.model.state_dict().items() if not torch.equal(v, reference[k])]
    if changed:
        raise ConformanceFailure(name, "read-only", f"scoring changed the model's weights ({', '.join(changed[:3])}); "
                                                    "work on a copy (copy.deepcopy(context.bundle.model))")
    passed("read-only", "the model's weights are unchanged")

    again, _, _ = _score_once(cls, options, setup, seed, device, scramble=2)
    if not np.array_equal(np.asarray(again), array):
        raise ConformanceFailure(name, "deterministic", f"two runs with seed {seed} gave different scores; derive "
                                 "every random draw from context.seed (e.g. cleanbench.seeding.derive_seed)")
    passed("deterministic", f"a second run with seed {seed} gave identical scores")

    positive = np.zeros(count, dtype=bool)
    positive[setup.poison_indices] = True
    report.cost = {"score_seconds": seconds, "pairs": count, "device": str(device),
                   "threads": torch.get_num_threads(), "auroc": auroc(array, positive)}
    return report


def report_detector(name: str, overrides: dict[str, Any], seed: int) -> None:
    """`check-plugin NAME --kind detector`: print each passed check, the cost, then PASS."""
    import click

    click.echo(f"check-plugin {name!r} (detector): tiny badnet configuration on cpu, seed {seed}")
    cost = check_detector(name, overrides, seed, log=click.echo).cost
    click.echo(f"  cost  {cost['score_seconds']:.1f} s for {cost['pairs']} pairs ({cost['device']}, torch threads: "
               f"{cost['threads']}); AUROC {cost['auroc']:.3f} on the tiny configuration (says nothing about the detector)")
    click.echo(f"PASS {name}")
