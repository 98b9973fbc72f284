"""Measure the GPU path: CleanCLIP finetuning images/s and zero-shot evaluation images/s (RN50, 224 px).

    scripts/gpu_check.sh   # python -m cleanbench.gpu_check --model RN50-quickgelu --device cuda

Runs the stages a real run uses (`cleanbench.stages`), on synthetic files written to a temporary folder (smooth random
JPEGs of 320 x 240, so that decoding and resizing cost about what photos cost) and random weights
(nothing is downloaded): file-backed pairs read by DataLoader worker processes into pinned memory,
CleanCLIP with the reference's settings (AutoAugment and EDA views, AMP, channels-last for RN50) for
`--steps` steps, and `evaluate` on an ImageNet-style folder (1000 classes, 80 templates) with the
reference's BadNet trigger applied on the device. Also times one pass of the data loader alone, to
show whether reading files limits training. Prints one JSON object (and writes it to `--out`).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cleanbench.data.batches import Batches
from cleanbench.data.pairs import load_pairs
from cleanbench.data.zeroshot import load_eval_set


def write_files(folder: Path, rows: int, eval_rows: int, classes: int, distinct: int, seed: int = 0) -> tuple[Path, Path]:
    """A pairs CSV and an evaluation folder (labels.csv, `classes` classes and a classes.json) over
    `distinct` smooth random JPEGs; everything in `folder`."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(distinct):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((320, 240), Image.BICUBIC).save(folder / "images" / f"{i}.jpg", quality=90)
    with open(folder / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        for row in range(rows):
            writer.writerow([f"images/{row % distinct}.jpg", f"a photo of thing number {row % 97} on a table"])
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label"])
        for row in range(eval_rows):
            writer.writerow([f"images/{row % distinct}.jpg", int(rng.integers(classes))])
    (folder / "classes.json").write_text(json.dumps({"classes": [f"class {i}" for i in range(classes)]}))
    return folder / "train.csv", folder


def run(args: argparse.Namespace) -> dict:
    """Build the files, the model and the defense, and time training and evaluation."""
    from cleanbench.attacks.badnet import BadNet, BadNetOptions
    from cleanbench import stages
    from cleanbench.defenses.cleanclip import REFERENCE_OPTIONS, CleanCLIP, CleanCLIPOptions
    from cleanbench.evaluation import class_embeddings
    from cleanbench.models import build_model

    device = torch.device(args.device)
    result: dict = {"model": args.model, "device": str(device), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "bf16": device.type == "cuda" and torch.cuda.is_bf16_supported(),
                    "batch_size": args.batch, "steps": args.steps, "workers": args.workers}
    bundle = build_model(args.model, device=str(device))
    size = bundle.image_size
    result.update(image_size=size, channels_last=bundle.channels_last)
    with tempfile.TemporaryDirectory(prefix="cleanbench-gpu-check-") as temporary:
        folder = Path(temporary)
        train_csv, eval_folder = write_files(folder, args.batch * args.steps, args.eval_images, args.classes, args.distinct)
        pairs = load_pairs(train_csv, size, workers=args.workers)

        start = time.perf_counter()
        read = sum(len(b["index"]) for b in Batches({"images": pairs.images.to(device)}, args.batch).in_order())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result["loader_images_per_second"] = read / (time.perf_counter() - start)

        options = CleanCLIPOptions(**{**REFERENCE_OPTIONS, "epochs": 1, "batch_size": args.batch, "synonyms": "none"})
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        defended = stages.defend(stages.DefendInput(CleanCLIP(options), bundle, pairs, 0, device, CleanCLIP.name))
        stats = defended.context.stats[0]
        result["cleanclip"] = {"pairs_per_second": stats.steps * args.batch / stats.seconds,
                               "images_per_second": stats.items_per_second, "seconds": stats.seconds,
                               "note": "images = originals + AutoAugment views (2 per pair)"}
        if device.type == "cuda":
            result["cleanclip"]["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30

        test = load_eval_set(str(eval_folder), size, classes_file=str(eval_folder / "classes.json"), workers=args.workers)
        attack = BadNet(BadNetOptions(patch_size=16, location="random", noise="fresh"), size, seed=0)
        start = time.perf_counter()
        class_embeddings(bundle, test.classnames, test.templates, device)
        prompts = time.perf_counter() - start
        metrics = stages.evaluate(stages.EvaluateInput(bundle, test, attack, 0, 0, device))
        images = len(test) + metrics["asr"]["total"]
        result["evaluation"] = {"images_per_second": images / max(metrics["seconds"] - prompts, 1e-9),
                                "images_per_second_with_prompts": metrics["images_per_second"],
                                "prompt_seconds": prompts, "images": images,
                                "note": "images = clean + triggered; prompts = classes x 80 templates, encoded once"}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="RN50-quickgelu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64, help="CleanCLIP batch (the reference: 64)")
    parser.add_argument("--steps", type=int, default=60, help="CleanCLIP steps to time")
    parser.add_argument("--eval-images", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--distinct", type=int, default=256, help="distinct image files the rows cycle through")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
