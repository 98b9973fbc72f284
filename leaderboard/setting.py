"""The setting box of the index: what the numbers of one setting were measured on, from its cards.

Data, model, threat model, the defender's budget, the tuning rule, the device, the commits the
cards came from, and what the numbers are and are not comparable to.
"""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources
from typing import Any

from cleanbench.leaderboard.costs import stage_costs

DATA: dict[str, str] = {
    "embedded-shapes": (
        "Procedural images drawn by the benchmark itself: one of 10 shapes (the class: circle, square, triangle, "
        "star, cross, ring, diamond, hexagon, crescent, arrow) in one of 10 colours and 3 sizes, at one of 9 "
        "positions, on a plain, noisy, gradient or striped background; each caption comes from 16 templates that "
        "name the shape and often its colour, size, position or background"),
}
"""What the images and captions of a data source (the card's `data.name`) are."""

THREATS: dict[str, str] = {
    "scratch": "the model is trained from scratch on them",
    "finetune-pretrained": "pretrained weights are finetuned on them",
}


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _model(model: dict, image_size: int) -> str:
    """The model in words: its open_clip config where the package ships it, else its name."""
    name = str(model.get("name", "?"))
    text = name + (f" with weights {model['pretrained']}" if model.get("pretrained") else "")
    path = resources.files("cleanbench").joinpath("model_configs", f"{name}.json")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        vision, text_cfg = spec["vision_cfg"], spec["text_cfg"]
    except (OSError, ValueError, KeyError, TypeError):
        return text
    tower = vision.get("timm_model_name") or f"ViT/ResNet (layers {vision.get('layers', '?')})"
    return (f"{text}: an open_clip CLIP with a {tower} image tower at {vision.get('image_size', image_size)} px and a "
            f"{text_cfg.get('layers', '?')}-layer text transformer ({text_cfg.get('width', '?')} wide, "
            f"{text_cfg.get('heads', '?')} heads, {text_cfg.get('vocab_size', '?')}-token vocabulary), "
            f"{spec.get('embed_dim', '?')}-d joint embedding")


def _commits(cards: list[dict]) -> dict[str, Any]:
    counts = Counter(str(c.get("git_commit") or "unknown") for c in cards)
    dirty = sum(n for commit, n in counts.items() if commit.endswith("+dirty"))
    listed = [{"commit": commit.removesuffix("+dirty")[:12], "dirty": commit.endswith("+dirty"), "cards": n}
              for commit, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return {"n": len({c.removesuffix("+dirty") for c in counts}), "dirty_cards": dirty, "list": listed}


def _defender(cards: list[dict]) -> list[dict[str, Any]]:
    """Per defense: its training budget as the cards record it (epochs, learning rate, steps)."""
    out: dict[str, dict[str, Any]] = {}
    for card in cards:
        defense = card.get("defense") or {}
        name = defense.get("name")
        if not name or name == "none" or name in out:
            continue
        options = defense.get("options") or {}
        training = defense.get("training") if isinstance(defense.get("training"), list) else []
        steps = training[0].get("steps") if training and isinstance(training[0], dict) else None
        out[name] = {"name": name, "epochs": options.get("epochs"), "lr": options.get("lr"), "steps": steps,
                     "tuning": defense.get("tuning") if isinstance(defense.get("tuning"), dict) else None}
    return sorted(out.values(), key=lambda d: d["name"])


def _devices(cards: list[dict]) -> list[str]:
    found = Counter()
    for card in cards:
        device = card.get("device") or {}
        threads = device.get("torch_threads")
        found[f"{device.get('type', '?')} ({device.get('name') or device.get('machine') or '?'})"
              + (f", {threads} torch thread{'s' if threads != 1 else ''}" if threads else "")] += 1
    return [f"{name}: {n} cards" for name, n in found.most_common()]


def setting_facts(cards: list[dict]) -> dict[str, Any]:
    """Everything the setting box says about the cards of one setting."""
    first = cards[0]
    config = first["config"]
    data = {**(config.get("data") or {}), **(first.get("data") or {})}
    pretrain = config.get("pretrain") or {}
    size = data.get("image_size", "?")
    targets = sorted({str(c["config"].get("target", "?")) for c in cards})
    n_test, n_clean = _count(data.get("n_test", "?")), _count(data.get("n_clean", "?"))
    triggered = next((c["metrics"]["defended"]["asr"]["total"] for c in cards if c["status"] == "ok"
                      and c["config"]["attack"] != "none"), None)
    named = first.get("setting") if isinstance(first.get("setting"), dict) else None
    tunings = [d["tuning"] for d in _defender(cards) if d["tuning"]]
    embedded = data.get("source", "embedded") == "embedded" and data.get("name", "embedded-shapes") == "embedded-shapes"
    model_name = str((config.get("model") or {}).get("name", "?"))
    trained = "trained from scratch" if (config.get("model") or {}).get("threat", "scratch") == "scratch" else "finetuned"
    return {
        "headline": (f"Measured on {size}-px procedural shapes with a small CLIP ({model_name}) {trained} on "
                     f"{_count(data.get('n_pretrain', '?'))} pairs: not comparable to CC3M or ImageNet numbers."
                     if embedded else f"Measured on {data.get('name') or data.get('source', '?')} with {model_name}."),
        "named": named.get("name") if named else None,
        "data": DATA.get(str(data.get("name")), f"data source {data.get('source', '?')} ({data.get('name', 'unnamed')})"),
        "sizes": {"pretrain": _count(data.get("n_pretrain", "?")), "clean": n_clean, "test": n_test,
                  "triggered": None if triggered is None else _count(triggered),
                  "image_size": size, "preset": data.get("preset")},
        "model": _model(config.get("model") or {}, size),
        "pretraining": f"{pretrain.get('epochs', '?')} epochs, batch {pretrain.get('batch_size', '?')}, learning rate {pretrain.get('lr', '?')}",
        "threat": (f"The attacker poisons a share of the pretraining pairs (the poison rate): a trigger on the image and a "
                   f"caption naming the target class ({', '.join(targets)}); "
                   f"{THREATS.get(str((config.get('model') or {}).get('threat', 'scratch')), 'the model is trained on them')}. "
                   f"The defender gets the poisoned model and {n_clean} clean image-caption pairs; it never sees a trigger, "
                   f"the poisoned pairs or the test set."),
        "defenses": _defender(cards),
        "tuning": tunings[0]["rule"] if tunings else None,
        "devices": _devices(cards),
        "costs": stage_costs(cards),
        "commits": _commits(cards),
        "comparable": (
            f"The numbers compare the attacks and defenses of this table with each other, in this setting: {size}-px "
            f"procedural shapes, a small model {trained} on "
            f"{_count(data.get('n_pretrain', '?'))} pairs. They are not comparable to numbers reported on CC3M, ImageNet or other "
            "real data, neither in value nor in the size of an effect; a ranking here is evidence about the methods, "
            "to be checked at scale.") if embedded else (
            "The numbers compare the attacks and defenses of this table with each other, on the data and model above; "
            "compare them with published numbers only where data, model, poison rates and protocol are the same."),
    }
