"""An attack's trigger optimised on its clean surrogate, through the cache (attacks with `needs_surrogate`).

The trigger is an artifact like a model (kind `attack-triggers`, `plan.Plan.trigger_key`). When it
must be computed, the surrogate is built: the `--pretrained` weights the victim starts from, or the
setting's clean-control model, loaded from the cache under the key `cleanbench run --attack none`
uses, else trained exactly as that run trains it and stored there, so the clean control and every
attack of the setting share it. Then `stages.fit_trigger` optimises the trigger on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cleanbench import stages
from cleanbench.artifacts import CellArtifacts
from cleanbench.attacks.base import Attack, FittedTrigger
from cleanbench.cache import ATTACK_TRIGGERS, POISONED_MODELS
from cleanbench.config import RunConfig

Log = Callable[[str], None]


def fit_attack(attack: Attack, config: RunConfig, surrogate_kind: str, cell: stages.CellData, cache: CellArtifacts,
               device: Any, progress: bool, log: Log) -> dict[str, Any]:
    """Give `attack` its optimised trigger (reused from the cache, or fitted and stored); returns the
    run card's `attack.trigger` record: the fitted record (`steps`, `final_losses`, whatever else the
    attack records), seconds, the surrogate, the trigger's key, whether it was reused, and the trigger's
    tensors as nested lists (so the card alone redraws the trigger: `attacks.attack_from_card`).

    `cache.keys` holds `surrogate_model` and `attack_trigger` (`Plan.artifact_keys`); when it also holds
    `surrogate_evaluation`, the record gains `on_surrogate`: CA, ASR and RA of the surrogate itself
    with the trigger (cached as an evaluation), the ASR the trigger reaches with no poisoning at all."""

    def compute() -> tuple[dict, dict]:
        bundle, pretrain_record = _surrogate_bundle(config, surrogate_kind, cell, cache, device, progress, log)
        fitted = stages.fit_trigger(stages.FitInput(attack, stages.surrogate(bundle, device), cell.data.pretrain,
                                                    cell.target_index, cell.target_name, config.seed))
        return fitted.tensors, {**fitted.record, "surrogate_pretrain": pretrain_record}

    tensors, record, reused = cache.tensors(ATTACK_TRIGGERS, "attack_trigger", compute)
    if reused:
        attack.restore(FittedTrigger(tensors, record))
    key = cache.keys["attack_trigger"]
    log(f"trigger: {'reused cached' if reused else 'optimised'} {attack.name} trigger {key[:12]} on the "
        f"{surrogate_kind} surrogate ({record['steps']} steps, {record['seconds']:.1f} s; final losses "
        + ", ".join(f"{k} {float(v):.4f}" for k, v in record["final_losses"].items()) + ")")
    on_surrogate = None
    if "surrogate_evaluation" in cache.keys:
        on_surrogate = cache.evaluation("surrogate_evaluation", lambda: _evaluate_on_surrogate(
            attack, config, surrogate_kind, cell, cache, device, log))
        log(f"trigger on its surrogate (no poisoning): CA {on_surrogate['ca_top1']['value']:.1%}  "
            f"ASR {on_surrogate['asr']['value']:.1%}")
    shown = {k: v for k, v in record.items() if k != "surrogate_pretrain"}
    if on_surrogate is not None:
        shown["on_surrogate"] = {name: on_surrogate[name] for name in ("ca_top1", "asr", "ra")}
    surrogate = {"kind": surrogate_kind, "key": cache.keys["surrogate_model"],
                 **({"pretrain": record["surrogate_pretrain"]} if record.get("surrogate_pretrain") else {})}
    return {**shown, "surrogate": surrogate, "key": key, "reused": reused,
            "tensors": {name: value.tolist() for name, value in tensors.items()}}


def _evaluate_on_surrogate(attack: Attack, config: RunConfig, kind: str, cell: stages.CellData,
                           cache: CellArtifacts, device: Any, log: Log) -> dict:
    """CA and ASR of the surrogate itself with the optimised trigger: how far the trigger alone, with
    no poisoning, moves a clean model towards the target (an adversarial patch's base rate)."""
    bundle, _ = _surrogate_bundle(config, kind, cell, cache, device, False, log)
    return stages.evaluate(stages.EvaluateInput(bundle, cell.data.test, attack, cell.target_index, config.seed, device))


def _surrogate_bundle(config: RunConfig, kind: str, cell: stages.CellData, cache: CellArtifacts, device: Any,
                      progress: bool, log: Log) -> tuple[Any, dict | None]:
    """The surrogate model and, for the clean control, its pretraining record (None for pretrained
    weights). The clean control is built and trained as the `none` cell does: the same seeds, the
    same pairs (attack `none` poisons nothing)."""
    bundle = stages.initial_model(config.model, config.seed, device)
    if kind == "pretrained":
        return bundle, None
    control = {**config.to_dict(), "attack": "none", "attack_options": {}}
    stored, reused = cache.run(POISONED_MODELS, "surrogate_model", lambda: {"stats": stages.pretrain(stages.PretrainInput(
        bundle, cell.data.pretrain, config.pretrain, config.seed, device, progress)).to_dict(), "config": control},
        bundle.model)
    key = cache.keys["surrogate_model"][:12]
    log(f"surrogate: {'reused' if reused else 'trained'} the clean-control model {key}")
    return bundle, {"seconds": stored["stats"]["seconds"], "reused": reused}
