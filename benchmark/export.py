"""Save a run's poisoned and defended models as open_clip folders (`cleanbench run --save-model DIR`).

`DIR/poisoned` and `DIR/defended` each hold `open_clip_config.json` (the model and preprocessing
configuration, plus where the model came from) and `open_clip_pytorch_model.bin` (the state dict),
so both of these load them back, bit for bit:

    open_clip.create_model("local-dir:DIR/defended")
    open_clip.create_model("RN50-quickgelu", pretrained="DIR/defended/open_clip_pytorch_model.bin")

and a run can start from one (`model: {name: "local-dir:DIR/poisoned", threat: finetune-pretrained}`).
(`cleanbench-tiny` folders need `import cleanbench` first, which registers its image tower.) The
weights are read back from the artifact cache, where the run stored them; with `use_cache: false`
the run uses a temporary cache that is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import open_clip
import torch

from cleanbench.cache import DEFENDED_MODELS, POISONED_MODELS, ArtifactCache
from cleanbench.config import RunConfig
from cleanbench.errors import RunError
from cleanbench.fileio import write_bytes_atomic, write_json_atomic
from cleanbench.models import CONFIG_FILE, quiet_root_logger, base_model, model_config
from cleanbench.runcard import RunCard

WEIGHTS_FILE = "open_clip_pytorch_model.bin"


def _architecture(name: str) -> torch.nn.Module:
    """Model `name` with random weights (a `local-dir:` folder's own weights), to load a state dict into."""
    with quiet_root_logger(True):
        return open_clip.create_model(name)


def export_models(card: RunCard, config: RunConfig, folder: str | Path) -> dict[str, Path]:
    """Write the card's poisoned and defended models under `folder`; returns the two folders."""
    folder = Path(folder)
    cache = ArtifactCache(config.cache_dir)
    model = _architecture(config.model.name)
    size = model.visual.image_size
    preprocess = dict(getattr(model.visual, "preprocess_cfg", {}))
    preprocess.update(size=size[0] if isinstance(size, (tuple, list)) else size)
    out = {}
    for name in ("poisoned", "defended"):
        key = (card.artifacts or {})[f"{name}_model"]
        if not any(cache.load(kind, key, model) is not None for kind in (DEFENDED_MODELS, POISONED_MODELS)):
            raise RunError(f"the {name} model {key[:12]} is not in the artifact cache {cache.root}; rerun the cell")
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, buffer)
        target = folder / name
        write_bytes_atomic(target / WEIGHTS_FILE, buffer.getvalue())
        write_json_atomic(target / CONFIG_FILE, {
            "model_cfg": model_config(config.model.name),
            "preprocess_cfg": preprocess,
            "cleanbench": {
                "base_model": base_model(config.model.name), "model": name, "artifact_key": key,
                "cell_key": card.cell_key, "attack": card.config["attack"],
                "defense": card.config["defense"] if name == "defended" else None,
                "target": (card.poison or {}).get("target"),
            },
        })
        out[name] = target
    (folder / "README.txt").write_text(
        "Models saved by cleanbench (open_clip folders).\n"
        "  import open_clip; model = open_clip.create_model('local-dir:" + str(folder / "defended") + "')\n"
        + json.dumps({k: str(v) for k, v in out.items()}, indent=2) + "\n"
    )
    return out


@contextlib.contextmanager
def saving_models(config: RunConfig, folder: str | None) -> Iterator[Callable[[RunCard], dict[str, Path]]]:
    """Around a run: yields `save(card)`, which exports its models to `folder` (nothing when None).

    With `use_cache: false` the run gets a temporary artifact cache (nothing to reuse, as asked) that
    holds the models until they are exported.
    """
    if folder is None:
        yield lambda card: {}
        return
    with contextlib.ExitStack() as stack:
        if not config.use_cache:
            config.use_cache = True
            config.cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="cleanbench-models-"))
        yield lambda card: export_models(card, config, folder)
