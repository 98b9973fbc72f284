"""Benchmark: batched trigger application against the reference's per-image path, at 224 px on CPU.

The reference (docs/reference.md §1.1) triggers one PIL image at a time: resize to 224x224, `ToTensor`,
the trigger on a (3, 224, 224) tensor, `ToPILImage` (uint8 by truncation). It is re-implemented
here from the spec, with its fixed tensors (the WaNet grid, the SIG signal) built once, in its
favour. cleanbench's path is `trigger_uint8` on a batch of uint8 tensors (`sample`, then
`apply_uint8`: the bytes of to float, `apply`, round to uint8, with patch attacks rounding only the
patch), with the options that reproduce the reference's trigger.

    python -m cleanbench.trigger_bench [--images 64] [--batch 16] [--repeats 9] [--threads N]

Prints images/s per attack of the reference path, of cleanbench's uint8 path (what poisoning and
evaluation run) and of the float trigger alone (`attack(images, generator)`, what an on-the-fly
trigger on float batches costs), with their ratios to the reference. Not a test: the numbers depend
on the machine and its load.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import to_pil_image, to_tensor

from cleanbench.attacks.base import trigger_uint8
from cleanbench.attacks.wanet import identity_grid, noise_grid
from cleanbench.registry import ATTACKS

SIDE = 224
PATCH = 16

# cleanbench options that give the reference's trigger, per attack
REFERENCE_OPTIONS: dict[str, dict] = {
    "badnet": {"noise": "fresh", "location": "random", "patch_size": PATCH, "values": "wrap"},
    "label-consistent": {"noise": "fresh", "location": "random", "patch_size": PATCH, "values": "wrap"},
    "blended": {"pattern": "fresh"},
    "wanet": {"variant": "reference"},
    "sig": {"variant": "reference"},
    "solid-patch": {"location": "random", "patch_size": PATCH},
}


def _random_patch(x: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    h, w = random.randint(0, SIDE - PATCH), random.randint(0, SIDE - PATCH)
    x[:, h : h + PATCH, w : w + PATCH] = patch
    return x


def reference_triggers() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The reference's per-image triggers on a (3, 224, 224) float tensor (docs/reference.md §1.2 and §1.3)."""
    grid = torch.clamp(identity_grid(SIDE) + noise_grid(SIDE, SIDE, torch.Generator().manual_seed(0)) / SIDE, -1, 1)
    signal = (60 / 255) * torch.sin(2 * math.pi * 6 * torch.arange(SIDE) / SIDE).expand(3, SIDE, SIDE)
    yellow = torch.tensor([1.0, 1.0, 0.0]).view(3, 1, 1)

    def badnet(x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2)).view(3, 1, 1)
        return _random_patch(x, mean + torch.randn(3, PATCH, PATCH))

    def blended(x: torch.Tensor) -> torch.Tensor:
        x.mean(dim=(1, 2))  # computed and unused in the reference
        return torch.clamp(0.2 * torch.rand(3, SIDE, SIDE) + 0.8 * x, 0, 1)

    def wanet(x: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x[None], grid, align_corners=True)[0]

    def sig(x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(0.2 * signal + 0.8 * x, 0, 1)

    def solid_patch(x: torch.Tensor) -> torch.Tensor:
        return _random_patch(x, yellow)

    return {"badnet": badnet, "label-consistent": badnet, "blended": blended, "wanet": wanet, "sig": sig,
            "solid-patch": solid_patch}


def _best_rate(run: Callable[[], None], count: int, repeats: int) -> float:
    """Images/s of the fastest of `repeats` calls of `run` (which handles `count` images)."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return count / best


def reference_rate(trigger: Callable[[torch.Tensor], torch.Tensor], images: list[Image.Image], repeats: int) -> float:
    """Images/s of the reference's per-image path: PIL resize, to tensor, trigger, back to PIL."""

    def run() -> None:
        for image in images:
            to_pil_image(trigger(to_tensor(image.resize((SIDE, SIDE)))))

    return _best_rate(run, len(images), repeats)


def batched_rates(name: str, images: torch.Tensor, batch: int, repeats: int) -> tuple[float, float]:
    """Images/s of cleanbench's batched path: uint8 to uint8 (`trigger_uint8`), and the float trigger alone."""
    cls = ATTACKS.get(name)
    attack = cls(cls.Options(**REFERENCE_OPTIONS[name]), SIDE, seed=0)
    generator = torch.Generator().manual_seed(0)
    chunks = [images[first : first + batch] for first in range(0, len(images), batch)]
    floats = [chunk.float().div(255) for chunk in chunks]

    def uint8_path() -> None:
        for chunk in chunks:
            trigger_uint8(attack, chunk, generator)

    def float_path() -> None:
        for chunk in floats:
            attack(chunk, generator)

    return _best_rate(uint8_path, len(images), repeats), _best_rate(float_path, len(images), repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="images per attack and path")
    parser.add_argument("--batch", type=int, default=16, help="batch size of the batched path (small batches stay in cache)")
    parser.add_argument("--repeats", type=int, default=9, help="timed repeats per path; the best is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both paths [default: torch's]")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, (args.images, SIDE, SIDE, 3), dtype=np.uint8)
    pil_images = [Image.fromarray(a) for a in arrays]
    tensors = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()
    random.seed(0)
    torch.manual_seed(0)
    print(f"{args.images} images of {SIDE}x{SIDE} px, batch {args.batch}, best of {args.repeats}, "
          f"torch threads {torch.get_num_threads()}, CPU")
    print(f"{'attack':<18}{'reference':>11}{'uint8 path':>12}{'ratio':>8}{'float trigger':>15}{'ratio':>8}   (images/s)")
    for name, trigger in reference_triggers().items():
        reference = reference_rate(trigger, pil_images, args.repeats)
        uint8_path, float_path = batched_rates(name, tensors, args.batch, args.repeats)
        print(f"{name:<18}{reference:>11.0f}{uint8_path:>12.0f}{uint8_path / reference:>7.1f}x"
              f"{float_path:>15.0f}{float_path / reference:>7.1f}x")


if __name__ == "__main__":
    main()
