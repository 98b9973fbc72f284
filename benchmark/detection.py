"""The detection track: score every pretraining pair of a cell with detectors, given its poisoned model.

A detection reuses the cell's poisoned model: the same data, poison plan and cache key as
`cleanbench run` (the defense plays no part), so a model trained by a run is found here and one
trained here is found by a run. Each detector gets a detection card, JSON written atomically to
`results_dir/detections/`, holding its metrics against the recorded poison indices (AUROC, AUPRC,
TPR at 1 % FPR), the detector's options, the artifact key of the model it scored, costs and
versions. A card's name is stable for its inputs, so re-running a detection replaces it.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cleanbench import environment, runcard, stages
from cleanbench.cache import POISONED_MODELS, content_key
from cleanbench.artifacts import CellArtifacts
from cleanbench.config import RunConfig, build_options
from cleanbench.data.base import PairSet
from cleanbench.detection_metrics import detection_metrics, poisoned_ranks
from cleanbench.detectors.base import DetectionContext, Detector
from cleanbench.errors import CleanbenchError, RunError, UsageError
from cleanbench.fileio import write_json_atomic
from cleanbench.models import ModelBundle, build_model
from cleanbench.registry import DETECTORS
from cleanbench.plan import Plan
from cleanbench.seeding import derive_seed, seed_everything
from cleanbench.trigger_fit import fit_attack

Log = Callable[[str], None]
CARD_KIND = "detection"
CARD_FOLDER = "detections"
_SEEDLESS = ("seed", "results_dir", "cache_dir", "use_cache", "device", "defense", "defense_options")
"""Config fields that do not define a detection setting: cards that differ only in these pool over seeds."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class DetectorRun:
    """One detector to run: its registered name, class and validated options."""

    name: str
    cls: type[Detector]
    options: Any

    def build(self) -> Detector:
        return self.cls(self.options)


def resolve_detectors(names: list[str], options: dict[str, dict[str, Any]] | None = None) -> list[DetectorRun]:
    """The detectors named (`all`: every registered one), with options built and checked before any work.

    `options` maps a detector name to its option overrides; a name that is not among `names` is an error."""
    options = options or {}
    chosen = DETECTORS.names() if names == ["all"] else list(dict.fromkeys(names))
    unused = sorted(set(options) - set(chosen))
    if unused:
        raise UsageError(f"options given for detector {unused[0]!r}, which is not run; add --detector {unused[0]}")
    runs = []
    for name in chosen:
        cls = DETECTORS.get(name)
        if not (isinstance(cls, type) and issubclass(cls, Detector)):
            raise UsageError(f"detector {name!r} is {cls!r}, not a subclass of cleanbench.detectors.Detector")
        run = DetectorRun(name, cls, build_options(cls.Options, options.get(name, {}), f"detector {name!r} options"))
        run.build()  # option checks that need more than a type
        runs.append(run)
    return runs


class DetectionPlan:
    """A validated detection: the cell's poisoned model (as `cleanbench run` keys it) and the detectors."""

    def __init__(self, config: RunConfig, detectors: list[DetectorRun]) -> None:
        if config.attack == "none":
            raise UsageError("attack 'none' poisons no pairs, so there is nothing to detect; pass --attack NAME")
        self.cell = Plan(dataclasses.replace(config, defense="none", defense_options={}))
        self.config = self.cell.config
        self.detectors = detectors

    def setting(self) -> dict[str, Any]:
        """The config without the seed and what does not change the numbers: cards of one setting pool over seeds."""
        return {k: v for k, v in self.config.to_dict().items() if k not in _SEEDLESS}

    def card_key(self, detector: DetectorRun) -> str:
        """Hash of everything that determines a detector's card: the scored model and the detector."""
        return content_key({"artifact": CARD_KIND, "cleanbench": runcard.versions()["cleanbench"],
                            "poisoned_model": self.cell.poisoned_model_key(), "detector": detector.name,
                            "detector_version": detector.cls.version,
                            "detector_options": dataclasses.asdict(detector.options)})

    def group_key(self, detector: DetectorRun) -> str:
        """Hash of the setting and the detector without the seed: the cards that pool into one interval."""
        return content_key({"setting": self.setting(), "detector": detector.name,
                            "detector_version": detector.cls.version,
                            "detector_options": dataclasses.asdict(detector.options)})

    def card_path(self, detector: DetectorRun) -> Path:
        c = self.config
        name = runcard.card_path(c.results_dir, c.attack, detector.name, self.cell.budget_label, c.seed,
                                 self.card_key(detector)).name
        return Path(c.results_dir) / CARD_FOLDER / name


@dataclass
class PoisonedCell:
    """What the detectors score: the poisoned pairs, which of them are poisoned, and the trained model."""

    pairs: PairSet
    poison: dict[str, Any]
    bundle: ModelBundle
    model_reused: bool
    pretrain_seconds: float
    data_seconds: float


def prepare_cell(plan: DetectionPlan, progress: bool, log: Log) -> PoisonedCell:
    """The cell's data and poisoned pairs as `cleanbench run` makes them (the same stages), and its
    poisoned model: loaded from the cache under the run's key, or trained and stored there."""
    cell, c = plan.cell, plan.config
    start = time.perf_counter()
    loaded = stages.load(c.data, c.seed, c.target)
    data = loaded.data
    keys = {name: key for name, key in cell.artifact_keys().items()
            if name in ("surrogate_model", "attack_trigger", "poisoned_model")}
    cache = CellArtifacts(c, keys, environment.current(cell.device), log)
    attack = cell.attack_cls(cell.attack_options, c.data.image_size, c.seed)
    if cell.surrogate_kind:
        fit_attack(attack, c, cell.surrogate_kind, loaded, cache, cell.device, progress, log)
    poisoned = stages.poison(stages.PoisonInput(data.pretrain, attack, loaded.target_index, loaded.target_name,
                                                data.test.templates, c.seed, c.poison_rate, c.poison_count))
    pairs, poison = poisoned.pairs, poisoned.plan
    data_seconds = time.perf_counter() - start
    log(f"data: {len(pairs)} pretraining pairs, {poison.count} poisoned -> target {loaded.target_name!r} ({c.attack})")

    seed_everything(derive_seed(c.seed, "init"))
    bundle = build_model(c.model.name, c.model.pretrained, str(cell.device), c.model.trust_checkpoint)
    key = cell.poisoned_model_key()
    meta, reused = cache.run(POISONED_MODELS, "poisoned_model", lambda: {"stats": stages.pretrain(stages.PretrainInput(
        bundle, pairs, c.pretrain, c.seed, cell.device, progress)).to_dict(), "config": c.to_dict()}, bundle.model)
    seconds = float(meta["stats"]["seconds"])
    if reused:
        log(f"model: reused cached poisoned model {key[:12]}")
    else:
        log(f"model: trained the poisoned model ({meta['stats']['steps']} steps, {seconds:.1f} s), cached as {key[:12]}")
    record = {"target": loaded.target_name, "target_index": loaded.target_index, "count": poison.count,
              "rate": poison.count / len(pairs), "indices": poison.indices, "indices_sha256": poison.indices_sha256()}
    return PoisonedCell(pairs, record, bundle, reused, seconds, data_seconds)


def _base_card(plan: DetectionPlan, run: DetectorRun, cell: PoisonedCell, command: str | None) -> dict[str, Any]:
    c = plan.config
    return {
        "schema_version": runcard.SCHEMA_VERSION, "kind": CARD_KIND, "status": "running", "created": runcard.now(),
        "command": command, "config": c.to_dict(), "seed": c.seed,
        "card_key": plan.card_key(run), "group_key": plan.group_key(run),
        "versions": runcard.versions(), "git_commit": runcard.git_commit(),
        "device": runcard.device_info(plan.cell.device),
        "attack": {"name": c.attack, "description": plan.cell.attack_cls.description},
        "detector": {"name": run.name, "description": run.cls.description, "source": run.cls.source,
                     **run.build().describe()},
        "poison": {k: v for k, v in cell.poison.items() if k != "indices"},
        "artifacts": {"poisoned_model": plan.cell.poisoned_model_key(), "poisoned_model_reused": cell.model_reused},
        "costs": {"data_seconds": cell.data_seconds, "pretrain_seconds": cell.pretrain_seconds},
    }


def _scores(detector: Detector, context: DetectionContext) -> np.ndarray:
    scores = np.asarray(detector.score(context), dtype=np.float64)
    if scores.shape != (len(context.pairs),):
        raise RunError(f"detector {detector.name!r} returned {scores.shape} scores for {len(context.pairs)} pairs; "
                       "return one score per pair")
    if np.isinf(scores).any():
        raise RunError(f"detector {detector.name!r} returned infinite scores; scores must be finite (NaN: not scored)")
    return scores


def score_cell(plan: DetectionPlan, progress: bool = True, log: Log = _stderr,
               command: str | None = None) -> list[tuple[dict[str, Any], Path]]:
    """Run every detector of `plan` on its cell and write one card each; returns (card, path) pairs.

    A detector that fails gets a failed card and the others still run; the first failure is raised
    after all of them ran."""
    c = plan.config
    cell = prepare_cell(plan, progress, log)
    context = DetectionContext(cell.bundle, cell.pairs, plan.cell.device, derive_seed(c.seed, "detect"), progress)
    positive = np.zeros(len(cell.pairs), dtype=bool)
    positive[cell.poison["indices"]] = True
    written, failures = [], []
    for run in plan.detectors:
        card, path = _base_card(plan, run, cell, command), plan.card_path(run)
        try:
            embedding_before, start = context.embedding_seconds, time.perf_counter()
            scores = _scores(run.build(), context)
            seconds = time.perf_counter() - start - (context.embedding_seconds - embedding_before)
            scored = ~np.isnan(scores)
            metrics = detection_metrics(scores[scored], positive[scored])
        except CleanbenchError as error:
            failures.append(error)
            write_json_atomic(path, card | {"status": "failed", "error": str(error)})
            continue
        except Exception as error:
            failures.append(RunError(f"detector {run.name!r} raised {type(error).__name__}: {error}"))
            failures[-1].__cause__ = error
            write_json_atomic(path, card | {"status": "failed", "error": str(failures[-1])})
            continue
        card["costs"] |= {"embedding_seconds": context.embedding_seconds, "detector_seconds": seconds}
        card["scored_pairs"] = int(scored.sum())
        card["metrics"] = metrics.to_dict()
        card["score_quantiles"] = _quantiles(scores[scored], positive[scored])
        card["poisoned_ranks"] = poisoned_ranks(scores[scored], positive[scored])
        card["status"] = "ok"
        card["finished"] = runcard.now()
        write_json_atomic(path, card)
        written.append((card, path))
        log(f"{run.name}: AUROC {metrics.auroc:.3f}  AUPRC {metrics.auprc:.3f}  "
            f"TPR@1%FPR {metrics.tpr_at_1pct_fpr:.3f} ({seconds:.1f} s)")
    if failures:
        raise failures[0]
    return written


def _quantiles(scores: np.ndarray, positive: np.ndarray) -> dict[str, list[float]]:
    """Quartiles of the scores of poisoned and clean pairs: where the two groups lie."""
    q = [0.25, 0.5, 0.75]
    return {group: [float(v) for v in np.quantile(scores[mask], q)] if mask.any() else []
            for group, mask in (("poisoned", positive), ("clean", ~positive))}

