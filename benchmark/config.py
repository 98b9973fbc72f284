"""Run configuration: dataclasses, strict parsing from YAML and command-line options.

Every key is checked before any work starts: unknown keys get a did-you-mean hint, values must
have the declared type. Command-line options override the YAML file, which overrides the defaults.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cleanbench.errors import UsageError
from cleanbench.fileio import read_input_file


@dataclass
class TrainConfig:
    """Optimisation hyper-parameters of one training stage."""

    epochs: int = 8
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 62
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    max_logit_scale: float = 100.0


@dataclass
class DataConfig:
    """Which data a cell uses: `embedded` (procedural shapes, made in memory) or `csv` (files on disk).

    Embedded: `preset`, `image_size` and the sizes say what to generate (`n_validation`: the
    validation split that `cleanbench tune` scores, never the test set). CSV (docs/real-data.md):
    `train` is a CSV of image-caption pairs (the training set that gets poisoned), `clean` a CSV for
    the defense (default: a seeded random subset of `limit_clean` rows of `train`), `eval` the
    zero-shot test set (a folder with labels.csv or class sub-folders, or torchvision:NAME:ROOT).
    For file data, validation sets `image_size` to the model's input resolution and `n_pretrain`,
    `n_clean`, `n_test` to the counts found.
    """

    source: str = "embedded"
    preset: str = "easy"
    image_size: int = 32
    n_pretrain: int = 10_000
    n_clean: int = 2_000
    n_test: int = 2_000
    n_validation: int = 1_000
    train: str | None = None
    clean: str | None = None
    eval: str | None = None
    eval_classes: str | None = None
    eval_split: str | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    delimiter: str = ","
    root: str | None = None
    allow_outside_root: bool = False
    on_bad_image: str = "error"
    limit_pretrain: int | None = None
    limit_clean: int | None = 100_000
    limit_test: int | None = None
    workers: int | None = None
    squash_triggered: bool = False


THREATS = ("scratch", "finetune-pretrained")

FINETUNE_PRETRAINED_TRAINING: dict[str, Any] = dict(
    epochs=5, batch_size=128, lr=1e-6, warmup_steps=50, weight_decay=0.1, beta1=0.9, beta2=0.999, eps=1e-8
)
"""The reference's schedule for poisoning a pretrained CLIP (docs/reference.md §3.4: 5 epochs, lr 1e-6,
cosine with 50 warm-up steps, AdamW; batch and betas are its parser defaults). Users report that
1e-6 implants a weak backdoor and 1e-5 a strong one (issue #3). Pretraining options that a config
with `model.threat: finetune-pretrained` does not give come from here."""


@dataclass
class ModelConfig:
    """An open_clip model: a name (or `local-dir:PATH`), optional weights, and the threat setting.

    `pretrained` is an open_clip pretrained tag (resolved through open_clip's cache) or a checkpoint
    file; `threat` is how the attacker gets the poisoned model: `scratch` (train a randomly
    initialised model on the poisoned data, the paper's first setting) or `finetune-pretrained`
    (finetune pretrained weights on it, the second). Checkpoints load with `weights_only=True`;
    `trust_checkpoint` allows a full pickle or TorchScript file (e.g. OpenAI's RN50.pt), which can
    run code: only for files you trust.
    """

    name: str = "cleanbench-tiny"
    pretrained: str | None = None
    threat: str = "scratch"
    trust_checkpoint: bool = False


DEFAULT_RESULTS_DIR = "results/local"
"""Where a run writes its card unless told otherwise: untracked (.gitignore), apart from the published
cards under results/ (docs/results.md)."""


@dataclass
class RunConfig:
    """One benchmark cell: attack x defense x poison budget x seed, and the settings around it.

    `threads` is torch's intra-op thread count on the CPU: float sums run in another order with
    another count, so it changes the trained model and is part of the cache key."""

    attack: str = "badnet"
    attack_options: dict[str, Any] = field(default_factory=dict)
    defense: str = "cleanclip"
    defense_options: dict[str, Any] = field(default_factory=dict)
    poison_rate: float | None = 0.02
    poison_count: int | None = None
    target: str = "star"
    seed: int = 0
    device: str = "auto"
    threads: int = 1
    results_dir: str = DEFAULT_RESULTS_DIR
    cache_dir: str | None = None
    use_cache: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    defense_defaults: dict[str, Any] = field(default_factory=dict)
    """Per-defense option defaults of the setting ({defense name: {option: value}}), under `defense_options`."""
    tuning: str | None = None
    """A tuning record (`cleanbench tune`; a file, or the name of a setting's shipped record): the
    defense's strength option comes from it."""
    setting: str | None = None
    """The named setting (`--preset NAME`) this configuration starts from; recorded in the card."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def check_keys(values: dict[str, Any], known: typing.Sequence[str], where: str) -> None:
    """UsageError naming `where` and the first key of `values` not in `known`, with a did-you-mean hint."""
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}" if known else (
                "; it takes no options: remove it")
            raise UsageError(f"{where}: unknown key {key!r}{hint}")


def check_value(value: Any, tp: Any, where: str) -> Any:
    """`value` converted to type `tp` (int -> float allowed), or UsageError naming `where`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        errors = []
        for option in typing.get_args(tp):
            if option is type(None):
                continue
            try:
                return check_value(value, option, where)
            except UsageError as error:
                errors.append(str(error))
        raise UsageError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise UsageError(f"{where}: expected a list, got {value!r} ({type(value).__name__})")
        item = (typing.get_args(tp) or (Any,))[0]
        return [check_value(v, item, where) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-5 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp is Any:
        return value
    raise UsageError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def check_budget(rate: float | None, count: int | None, total: int | None = None) -> None:
    """The poison budget's one rule: at most one of a rate in (0, 1] and a count in 0..`total` (the
    pretraining pairs; only >= 0 while they are not counted yet). UsageError for anything else."""
    if rate is not None and count is not None:
        raise UsageError("give either poison_rate or poison_count, not both")
    if rate is not None and not 0 < rate <= 1:
        raise UsageError(f"poison rate {rate} is outside (0, 1]; e.g. --poison-rate 0.02 for 2 %")
    if count is not None and total is None and count < 0:
        raise UsageError(f"poison count {count} must be >= 0")
    if count is not None and total is not None and not 0 <= count <= total:
        raise UsageError(f"poison count {count} is outside 0..{total} (the training set size)")


def budget_label(poison_rate: float | None, poison_count: int | None) -> str:
    """A poison budget as it names run cards and table rows: `n25` for a count, `p0.02` for a rate."""
    return f"n{poison_count}" if poison_count is not None else f"p{poison_rate:g}"


def _threat_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """A run config's values with the pretraining options that `model.threat` implies, where not given."""
    model = values.get("model")
    if isinstance(model, dict) and model.get("threat") == "finetune-pretrained":
        given = values.get("pretrain")
        if given is None or isinstance(given, dict):
            return {**values, "pretrain": {**FINETUNE_PRETRAINED_TRAINING, **(given or {})}}
    return values


@functools.cache
def _fields(cls: type) -> tuple[list[str], dict[str, Any]]:
    """The field names and resolved type hints of dataclass `cls` (resolving them is slow: once per class)."""
    return [f.name for f in dataclasses.fields(cls)], typing.get_type_hints(cls)


def from_dict(cls: type, values: Any, where: str = "config") -> Any:
    """Build dataclass `cls` from a mapping, refusing unknown keys and wrong types.

    For a `RunConfig`, `model.threat: finetune-pretrained` brings the reference's schedule for the
    pretraining options that are not given (`FINETUNE_PRETRAINED_TRAINING`).
    """
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise UsageError(f"{where}: expected a mapping of options, got {values!r}")
    if cls is RunConfig:
        values = _threat_defaults(values)
    names, hints = _fields(cls)
    check_keys(values, names, where)
    kwargs = {key: check_value(value, hints[key], f"{where}.{key}") for key, value in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{where}: {error}") from error


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; values of `override` win, nested mappings merge."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not key.endswith("_options"):
            out[key] = merge(out[key], value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from `path` (safe_load), or UsageError naming the file and the problem."""
    path = Path(path)
    text = read_input_file(path, "config file")
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UsageError(f"{path}: malformed YAML{at}: {getattr(error, 'problem', error)}") from error
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UsageError(f"{path}: expected a mapping of options at the top level")
    return values


def values_from_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The settings in a YAML config; or, from a run card, its `config` section (to reproduce it, writing
    to this run's results folder) and the card."""
    values = load_yaml(path)
    if "schema_version" in values and "config" in values and isinstance(values["config"], dict):
        where = ("results_dir", "cache_dir")  # where the card's run wrote, not part of the cell: this run writes here
        return {k: v for k, v in values["config"].items() if k not in where}, values
    return values, None


def parse_key_values(items: tuple[str, ...] | list[str], flag: str) -> dict[str, Any]:
    """`["lr=1e-5", "epochs=3"]` -> `{"lr": 1e-05, "epochs": 3}`; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} lr=1e-5")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise UsageError(f"{flag} {item!r}: cannot parse the value: {error}") from error
    return out


def build_options(cls: type, values: dict[str, Any], where: str) -> Any:
    """An options dataclass of a plugin from user values, validated."""
    return from_dict(cls, values, where)


def _validate_model(model: ModelConfig) -> None:
    """The threat setting fits the weights: scratch starts from random weights, finetuning from trained ones."""
    if model.threat not in THREATS:
        close = difflib.get_close_matches(model.threat, THREATS, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UsageError(f"model.threat {model.threat!r} is not known; {hint}use {' or '.join(THREATS)}")
    has_weights = bool(model.pretrained) or model.name.startswith("local-dir:")
    if model.threat == "finetune-pretrained" and not has_weights:
        raise UsageError(
            "model.threat finetune-pretrained poisons a pretrained model: give its weights with --pretrained "
            "TAG or PATH (e.g. --model RN50-quickgelu --pretrained openai), or a local-dir: model"
        )
    if model.threat == "scratch" and has_weights:
        raise UsageError(
            "pretrained weights are given but model.threat is scratch (training from random weights); add "
            "--threat finetune-pretrained (model.threat) to poison the pretrained model, or drop the weights"
        )


def validate(config: RunConfig) -> RunConfig:
    """Range checks that need more than a type (the files a config names are checked by
    `stages.resolve_file_data`)."""
    check_budget(config.poison_rate, config.poison_count)
    if config.device not in ("auto", "cpu") and not config.device.startswith("cuda"):
        raise UsageError(f"device {config.device!r}: use auto, cpu, cuda or cuda:N")
    if config.threads < 1:
        raise UsageError(f"threads {config.threads} must be >= 1; e.g. --threads 1 (the default)")
    if Path(config.results_dir).exists() and not Path(config.results_dir).is_dir():
        raise UsageError(f"results dir {config.results_dir!r} is a file; pass a folder to --results-dir")
    for name in ("n_pretrain", "n_clean", "n_test", "n_validation", "image_size"):
        if getattr(config.data, name) < 1:
            raise UsageError(f"data.{name} must be >= 1")
    _validate_model(config.model)
    for name in ("epochs", "batch_size"):
        if getattr(config.pretrain, name) < 1:
            raise UsageError(f"pretrain.{name} must be >= 1")
    return config
