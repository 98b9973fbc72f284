"""Who are the poisoned images' neighbours? A diagnostic of the neighbourhood detectors on one cell.

For each reference batch that `k-distance`, `slof` and `dao` draw (same seed, same batching), it
prints how many poisoned pairs the batch holds, the share of a poisoned image's k nearest references
that are other poisoned images, the share of all images' k nearest references that are captions,
and how many references have a distance at the floor (repeated embeddings).

    python examples/neighbour_mix.py --attack badnet --seed 0

Uses the cell's cached poisoned model (trains it when absent, as `cleanbench detect` does), in the
setting `cleanbench detect` uses by default (`--preset`).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from cleanbench.config import RunConfig, from_dict, merge
from cleanbench.detection import DetectionPlan, prepare_cell, resolve_detectors
from cleanbench.detectors.base import DetectionContext
from cleanbench.detectors.neighbourhood import DISTANCE_FLOOR, neighbourhoods, reference_batches
from cleanbench.presets import DEFAULT_SETTING, preset_values
from cleanbench.seeding import derive_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attack", default="badnet")
    parser.add_argument("--poison-rate", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--preset", default=DEFAULT_SETTING, help="named setting of the cell [default: %(default)s]")
    args = parser.parse_args()
    values = merge(preset_values(args.preset), {"attack": args.attack, "poison_rate": args.poison_rate, "seed": args.seed})
    config = from_dict(RunConfig, values, "config")
    plan = DetectionPlan(config, resolve_detectors(["k-distance"]))
    cell = prepare_cell(plan, progress=False, log=print)
    seed = derive_seed(args.seed, "detect")  # the seed `cleanbench detect` hands its detectors
    embeddings = DetectionContext(cell.bundle, cell.pairs, plan.cell.device, seed, progress=False).embeddings()
    poisoned = np.zeros(len(cell.pairs), dtype=bool)
    poisoned[cell.poison["indices"]] = True
    poisoned = poisoned[embeddings.rows]
    print("batch  poisoned  poisoned-neighbours-of-poisoned  caption-neighbours-of-images  floored-references")
    for number, batch in enumerate(reference_batches(len(embeddings), args.batch_size, seed)):
        rows = torch.from_numpy(batch)
        hood = neighbourhoods(embeddings.images[rows], embeddings.texts[rows], args.k)
        images = hood.indices[: hood.queries]
        in_batch = poisoned[batch]
        of_poisoned = np.isin(images[torch.from_numpy(in_batch)].numpy(), np.flatnonzero(in_batch)).mean()
        captions = float((images >= hood.queries).double().mean())
        references = torch.cat([embeddings.images[rows], embeddings.texts[rows]]).double()
        floor = DISTANCE_FLOOR * float(torch.cdist(references, references).sum()) / (len(references) * (len(references) - 1))
        floored = int((hood.distances <= floor).any(dim=1).sum())
        print(f"{number:>5}  {int(in_batch.sum()):>8}  {of_poisoned:>31.3f}  {captions:>28.3f}  {floored:>18}")


if __name__ == "__main__":
    main()
