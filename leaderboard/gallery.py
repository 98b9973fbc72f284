"""The trigger gallery: for every attack, a clean test image and the same image triggered, drawn
again from the run's own seed and attack options through the attacks' public API
(`cleanbench.attacks.trigger_preview`), at the setting's resolution and enlarged without smoothing."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cleanbench.leaderboard.table import REFERENCE, slug
from cleanbench.metrics import stealthiness

SHOWN_PIXELS = 128
"""Images are enlarged by a whole factor (nearest neighbour) to at least this width."""


@dataclass
class Trigger:
    """One attack's gallery entry: image paths (relative to the site root) or why there are none."""

    attack: str
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    scale: int = 1
    clean: str | None = None
    triggered: str | None = None
    psnr_db: float = math.nan
    linf: float = math.nan
    test_psnr_db: float = math.nan
    test_linf: float = math.nan
    note: str = ""


def _png(image: Any, scale: int, path: Path) -> None:
    """Write a uint8 (3, H, W) tensor as a PNG enlarged `scale` times by nearest neighbour."""
    array = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    picture = Image.fromarray(array)
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, format="PNG")


def _test_means(cards: list[dict]) -> tuple[float, float]:
    """Mean PSNR and L-inf of the triggered test images over the cards that report them."""
    values = [c.get("metrics", {}).get(stage, {}).get("stealthiness") for c in cards for stage in ("poisoned", "defended")]
    blocks = [v for v in values if isinstance(v, dict)]
    psnr = [b["psnr_db"] for b in blocks if isinstance(b.get("psnr_db"), (int, float)) and math.isfinite(b["psnr_db"])]
    linf = [b["linf"] for b in blocks if isinstance(b.get("linf"), (int, float)) and math.isfinite(b["linf"])]
    return (float(np.mean(psnr)) if psnr else math.nan, float(np.mean(linf)) if linf else math.nan)


def _render(card: dict, entry: Trigger, site_dir: Path) -> None:
    """Draw the entry's two images from `card`; on any failure leave a note saying why."""
    from cleanbench.attacks import attack_from_card, trigger_preview
    from cleanbench.registry import ATTACKS

    config = card["config"]
    data = config.get("data") or {}
    entry.image_size = int(data.get("image_size", 32))
    entry.options = dict(card["attack"].get("options") or config.get("attack_options") or {})
    try:
        attack = attack_from_card(ATTACKS.get(config["attack"]), entry.options, entry.image_size, entry.seed,
                                  card["attack"].get("trigger"))
        clean, triggered = trigger_preview(attack, data, str(config.get("target", "")))
    except Exception as error:  # noqa: BLE001 - cards and plugins are untrusted: a gallery gap, never a failed build
        entry.note = f"no preview: {type(error).__name__}: {str(error)[:200]}"
        return
    if not len(clean):
        entry.note = "no preview: the test set has no non-target image"
        return
    entry.scale = max(1, math.ceil(SHOWN_PIXELS / entry.image_size))
    name = slug(entry.attack, f"{entry.attack}|{entry.seed}")
    entry.clean, entry.triggered = f"gallery/{name}-clean.png", f"gallery/{name}-triggered.png"
    _png(clean[0], entry.scale, site_dir / entry.clean)
    _png(triggered[0], entry.scale, site_dir / entry.triggered)
    own = stealthiness(clean[:1], triggered[:1])
    entry.psnr_db, entry.linf = own["psnr_db"], own["linf"]


def draw_gallery(cards: list[dict], site_dir: Path) -> dict[str, Trigger]:
    """One entry per attack label of the cards (the clean control excepted), from its finished card
    with the lowest seed (the options are the same for all seeds of a label)."""
    by_attack: dict[str, list[dict]] = {}
    for card in cards:
        label = card["_cell"][1]
        if label != REFERENCE:
            by_attack.setdefault(label, []).append(card)
    gallery = {}
    for label, group in by_attack.items():
        finished = sorted((c for c in group if c["status"] == "ok"), key=lambda c: c["config"]["seed"]) or group
        entry = Trigger(label, seed=finished[0]["config"]["seed"])
        entry.test_psnr_db, entry.test_linf = _test_means(group)
        _render(finished[0], entry, site_dir)
        gallery[label] = entry
    return gallery
