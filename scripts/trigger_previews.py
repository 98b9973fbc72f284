"""Draw a row of trigger previews: the first non-target test image of the standard setting, clean and
with each named attack's trigger as the evaluation of seed 0 applies it, enlarged without smoothing.

    python scripts/trigger_previews.py docs/structured-triggers.png badnet-stripes blended-stripes blended-triangles
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image

from cleanbench.attacks import trigger_preview
from cleanbench.presets import STANDARD
from cleanbench.registry import ATTACKS

SCALE = 6
GAP = 4


def main(output: str, names: list[str]) -> None:
    data, size = STANDARD["data"], STANDARD["data"]["image_size"]
    images = []
    for name in names:
        cls = ATTACKS.get(name)
        clean, triggered = trigger_preview(cls(cls.Options(), size, 0), data, STANDARD["target"])
        images = images or [clean[0]]
        images.append(triggered[0])
    row = np.full((size * SCALE, len(images) * (size * SCALE + GAP) - GAP, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        big = image.permute(1, 2, 0).numpy().repeat(SCALE, axis=0).repeat(SCALE, axis=1)
        left = i * (size * SCALE + GAP)
        row[:, left : left + size * SCALE] = big
    Image.fromarray(row).save(output, format="PNG")
    print(f"{output}: clean, " + ", ".join(names))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python scripts/trigger_previews.py OUTPUT.png ATTACK [ATTACK ...]")
    main(sys.argv[1], sys.argv[2:])
