"""Model factory: every model is an open_clip CLIP, built offline or from local weights.

`cleanbench-tiny` (the default) is registered as an open_clip model config whose image tower is the
timm-registered `cleanbench_tinycnn`; its tokenizer is open_clip's BPE tokenizer remapped onto the
embedded dataset's vocabulary. Any other name goes to `open_clip.create_model`, with `pretrained`
one of:

- an open_clip pretrained tag (e.g. `RN50-quickgelu` + `openai`), resolved through open_clip's cache
  (the Hugging Face hub cache, or `~/.cache/clip` for URL weights). When the weights are not cached
  and `HF_HUB_OFFLINE` is set, `check_model` fails at once with a message that says how to provide
  them, instead of a network time-out;
- a checkpoint file: a state dict, or a dict with `state_dict` (the reference's checkpoints, whose
  `module.` prefix open_clip strips), loaded with `weights_only=True`. A full pickle or a TorchScript
  archive (OpenAI's original `RN50.pt`) can run code when loaded, and needs `trust_checkpoint`.

A name `local-dir:PATH` is an open_clip folder (`open_clip_config.json` and weights), such as the
ones `cleanbench.export` writes for poisoned and defended models.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME, get_pretrained_cfg, list_pretrained_tags_by_model
from torch import nn

from cleanbench import tiny_tower  # noqa: F401  (registers the timm tower)
from cleanbench.data.embedded import vocabulary_words
from cleanbench.data.pairs import Captions, TokenColumn
from cleanbench.errors import RunError, UsageError
from cleanbench.text import CompactTokenizer

TINY_MODEL = "cleanbench-tiny"
LOCAL_DIR = "local-dir:"
CONFIG_FILE = "open_clip_config.json"
_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(_CONFIG_DIR)

Tokenizer = Callable[[Sequence[str]], torch.Tensor]


class ColumnTokenizer:
    """A model's tokenizer that leaves captions read on demand (`Captions`) to be tokenised as batches
    are read, and tokenises lists and strings at once."""

    def __init__(self, base: Tokenizer) -> None:
        self.base = base

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor | TokenColumn:
        if isinstance(texts, Captions):
            return TokenColumn(texts, self.base)
        return self.base(texts)

    def __getattr__(self, name: str) -> Any:
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)


@dataclass
class ModelBundle:
    """An open_clip CLIP with the tokenizer and input normalisation that belong to it.

    `channels_last` (set on CUDA for convolutional image towers) makes `model_input` hand the model
    channels-last tensors, which convolutions with AMP run faster on.
    """

    model: nn.Module
    tokenizer: Tokenizer
    name: str
    image_size: int
    mean: tuple[float, float, float] = OPENAI_DATASET_MEAN
    std: tuple[float, float, float] = OPENAI_DATASET_STD
    channels_last: bool = False
    _statistics: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] -> the model's normalised input.

        Mean and std are made once per device and dtype: made per batch, they were two synchronising
        host-to-device copies per batch on CUDA."""
        key = (images.device, images.dtype)
        if key not in self._statistics:
            self._statistics[key] = tuple(
                torch.tensor(values, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
                for values in (self.mean, self.std)
            )
        mean, std = self._statistics[key]
        return (images - mean) / std

    def model_input(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 images -> normalised float input at the model's resolution."""
        return self.float_input(images_uint8.float().div_(255))

    def float_input(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] -> normalised float input at the model's resolution."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = nn.functional.interpolate(
                images, size=(self.image_size, self.image_size), mode="bicubic", antialias=True
            ).clamp_(0, 1)
        images = self.normalize(images)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


@contextlib.contextmanager
def quiet_root_logger(enabled: bool):
    """Silence open_clip's "no pretrained weights loaded" warning for models built from scratch."""
    logger = logging.getLogger()
    level = logger.level
    if enabled:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def available_models() -> list[str]:
    """Model names open_clip can build (cleanbench-tiny included)."""
    return open_clip.list_models()


def _local_dir(name: str) -> Path | None:
    return Path(name[len(LOCAL_DIR):]) if name.startswith(LOCAL_DIR) else None


def _local_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UsageError(f"{LOCAL_DIR}{folder}: cannot read {CONFIG_FILE}: {error}") from error


def base_model(name: str) -> str:
    """The model name a `local-dir:` folder was saved from (recorded by cleanbench), else `name`."""
    folder = _local_dir(name)
    if folder is None:
        return name
    return _local_config(folder).get("cleanbench", {}).get("base_model", name)


def tokenizer_for(name: str) -> Tokenizer:
    """The tokenizer that belongs to model `name`."""
    if base_model(name) == TINY_MODEL:
        return CompactTokenizer(vocabulary_words(), context_length=24)
    return open_clip.get_tokenizer(name)


def model_config(name: str) -> dict[str, Any]:
    """open_clip's configuration of model `name` (or of a `local-dir:` folder)."""
    check_model(name)
    folder = _local_dir(name)
    config = _local_config(folder).get("model_cfg") if folder is not None else open_clip.get_model_config(name)
    if not config:
        raise UsageError(f"no open_clip configuration for model {name!r}")
    return config


def input_size(name: str) -> int:
    """The image side length model `name` takes, read from its configuration (no weights built)."""
    size = model_config(name)["vision_cfg"].get("image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def offline() -> bool:
    """Whether downloads are forbidden (HF_HUB_OFFLINE set, as huggingface_hub reads it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache that open_clip downloads into, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _hub_location(cfg: dict[str, Any]) -> tuple[str, list[str]] | None:
    """The hub repository of a pretrained tag's weights and the file names open_clip tries, in order."""
    hub = cfg.get("hf_hub")
    if not hub:
        return None
    repo, filename = os.path.split(hub)
    filename = filename or HF_WEIGHTS_NAME
    names = [HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else []
    if filename != HF_WEIGHTS_NAME and filename.endswith((".bin", ".pth")):
        names.append(filename[:-4] + ".safetensors")
    return repo, [*names, filename]


def cached_weights(name: str, tag: str) -> str | None:
    """The cached file of pretrained tag `tag` of `name`, or None when open_clip would have to download it."""
    cfg = get_pretrained_cfg(name, tag)
    if "file" in cfg:
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    location = _hub_location(cfg)
    if location is not None and open_clip.pretrained.has_hf_hub():
        from huggingface_hub import try_to_load_from_cache

        repo, names = location
        for filename in names:
            found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache_dir())
            if isinstance(found, str):
                return found
        return None
    url = cfg.get("url")
    if url:
        path = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        return str(path) if path.is_file() else None
    return None


def _weights_missing(name: str, tag: str) -> UsageError:
    cfg = get_pretrained_cfg(name, tag)
    location = _hub_location(cfg)
    if location is not None:
        repo, names = location
        where = f"the Hugging Face cache {hub_cache_dir()} (repository {repo}, file {names[-1]})"
        fetch = (f"copy {hub_cache_dir()}/models--{repo.replace('/', '--')} from a machine where "
                 f"`python -c \"import open_clip; open_clip.create_model('{name}', pretrained='{tag}')\"` ran, "
                 "or set HF_HUB_CACHE to a cache that has it")
    else:
        where = "~/.cache/clip"
        fetch = f"put {os.path.basename(cfg.get('url', ''))} (from {cfg.get('url')}) in ~/.cache/clip"
    return UsageError(
        f"weights {name} / {tag} are not in {where}, and HF_HUB_OFFLINE forbids downloading them. Either {fetch}; "
        "or pass the weights file itself with --pretrained PATH (a TorchScript file such as OpenAI's RN50.pt also "
        "needs model.trust_checkpoint: true)"
    )


def is_torchscript(path: str | Path) -> bool:
    """Whether `path` is a TorchScript archive (loading it runs the code it contains)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def check_model(name: str, pretrained: str | None = None, trust_checkpoint: bool | None = None) -> None:
    """UsageError unless model `name` and its weights can be had; reads no weights.

    A pretrained tag must be cached when downloads are forbidden. With `trust_checkpoint` given, a
    TorchScript checkpoint is refused unless trusted.
    """
    folder = _local_dir(name)
    if folder is not None:
        if not (folder / CONFIG_FILE).is_file():
            raise UsageError(f"{name}: expected an open_clip folder with {CONFIG_FILE} and weights")
        if pretrained:
            raise UsageError(f"{name} holds its own weights; drop --pretrained")
        return
    if name.startswith("hf-hub:"):
        raise UsageError(
            f"{name}: hub models are not loaded directly; download the repository (e.g. `huggingface-cli download "
            f"{name[7:]} --local-dir DIR`) and use --model local-dir:DIR"
        )
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `cleanbench list models`"
        raise UsageError(f"unknown model {name!r}{hint}")
    if not pretrained:
        return
    if os.path.isfile(pretrained):
        if trust_checkpoint is False and is_torchscript(pretrained):
            raise UsageError(
                f"{pretrained} is a TorchScript archive (such as OpenAI's RN50.pt); loading it runs code it contains. "
                "If you trust the file, set model.trust_checkpoint: true"
            )
        return
    if name == TINY_MODEL:
        raise UsageError(f"{TINY_MODEL} has no pretrained tags; pass a checkpoint file with --pretrained PATH")
    if get_pretrained_cfg(name, pretrained):
        if cached_weights(name, pretrained) is None and offline():
            raise _weights_missing(name, pretrained)
        return
    tags = list_pretrained_tags_by_model(name)
    known = f"its pretrained tags are {', '.join(tags)}" if tags else "it has no pretrained tags"
    raise UsageError(f"--pretrained {pretrained!r} is neither a file nor a pretrained tag of {name} ({known})")


def prefers_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Whether to run the image tower channels-last: on CUDA, for convolutional towers (a ResNet, not a
    ViT, whose only convolution is the patch embedding); cuDNN's AMP kernels are faster that way."""
    return device.type == "cuda" and sum(isinstance(m, nn.Conv2d) for m in model.visual.modules()) > 1


def _mismatch(error: BaseException) -> str:
    """One line saying how a checkpoint differs from the model (torch lists every key, on many lines)."""
    text = str(error)
    parts = []
    for label, pattern in (("missing", r"Missing key\(s\) in state_dict: ([^\n]*)"),
                           ("unexpected", r"Unexpected key\(s\) in state_dict: ([^\n]*)")):
        found = re.search(pattern, text)
        keys = re.findall(r'"([^"]+)"', found.group(1)) if found else []
        if keys:
            parts.append(f"{len(keys)} {label} key(s), e.g. {keys[0]!r}")
    shapes = re.findall(r"size mismatch for ([^:\s]+):", text)
    if shapes:
        parts.append(f"{len(shapes)} tensor(s) of another shape, e.g. {shapes[0]!r}")
    first = text.strip().splitlines()[0] if text.strip() else ""
    return "; ".join(parts) or f"{type(error).__name__}: {first[:200]}".rstrip(": ")


def build_model(
    name: str = TINY_MODEL, pretrained: str | None = None, device: str = "cpu", trust_checkpoint: bool = False
) -> ModelBundle:
    """Build model `name` (random init, or `pretrained` tag/file) on `device`."""
    check_model(name, pretrained, trust_checkpoint)
    random_init = pretrained is None and _local_dir(name) is None
    try:
        with quiet_root_logger(random_init):
            model = open_clip.create_model(name, pretrained=pretrained, device=device, weights_only=not trust_checkpoint)
    except (pickle.UnpicklingError, RuntimeError, ValueError, FileNotFoundError, EOFError, AssertionError, KeyError,
            TypeError, AttributeError) as error:
        text = str(error)
        first = re.sub(r"\x1b\[[0-9;]*m", "", text.strip().splitlines()[0]) if text.strip() else type(error).__name__
        if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in text:
            raise UsageError(
                f"{pretrained or name} is not a plain weights file (loading with weights_only=True refused: "
                f"{first}). If you trust the file, set model.trust_checkpoint: true"
            ) from error
        file = pretrained if pretrained and os.path.isfile(pretrained) else name if _local_dir(name) else None
        if file and ("Error(s) in loading state_dict" in text or isinstance(error, AssertionError)):
            raise UsageError(
                f"checkpoint {file!r} does not fit model {name}: {_mismatch(error)}; pass the --model it was "
                "trained with, or a checkpoint of this model"
            ) from error
        if file:
            raise UsageError(
                f"checkpoint {file!r} cannot be read as weights of {name} ({type(error).__name__}: "
                f"{first.split('. ')[0][:160]}); "
                "it may be truncated or damaged: download or export it again"
            ) from error
        if not isinstance(error, (RuntimeError, ValueError, FileNotFoundError)):
            raise
        raise RunError(
            f"could not load weights {pretrained or name!r} for {name}: {error}. Offline, put the weights in "
            "open_clip's cache or pass a local file with --pretrained PATH"
        ) from error
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, (tuple, list)) else int(image_size)
    mean = getattr(model.visual, "image_mean", None) or OPENAI_DATASET_MEAN
    std = getattr(model.visual, "image_std", None) or OPENAI_DATASET_STD
    channels_last = prefers_channels_last(model, torch.device(device))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return ModelBundle(model, ColumnTokenizer(tokenizer_for(name)), name, image_size, tuple(mean), tuple(std),
                       channels_last)
