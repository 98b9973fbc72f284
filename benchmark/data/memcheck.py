"""How much resident memory building the training pairs of a large CSV adds.

    python -m cleanbench.data.memcheck --rows 1000000

writes a CSV of that many rows pointing at a few small PNGs into a temporary folder (or `--folder`),
then, in a fresh Python process, reads VmRSS from /proc/self/status, builds the pairs as a run does
(`load_pairs` at 224 px), reads VmRSS again, and prints the growth, and the peak growth during the
build (VmHWM, after resetting it through /proc/self/clear_refs where the kernel allows). A second
figure is the RSS after one pass over every caption (what choosing dirty-label candidates does).
The growth is split into anonymous memory (the row index) and file-backed pages (the memory-mapped
CSV, shared with DataLoader workers and reclaimable by the kernel).
Issue 7 asks for a growth under 300 MB at 1,000,000 rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

_WORDS = ("a photo of", "a dog", "a red car", "two people", "the beach", "at night", "on a table", "in the snow",
          "near a river", "with a hat", "playing football", "an old house", "a bowl of soup", "city street")


def write_big_csv(folder: str | Path, rows: int, images: int = 8, seed: int = 0) -> Path:
    """A CSV of `rows` image-caption rows over `images` small PNGs; captions of 5-9 phrases (~60 characters)."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(images):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / "images" / f"{i}.png")
    picks = rng.integers(0, len(_WORDS), size=(rows, 9))
    lengths = rng.integers(5, 10, size=rows)
    path = folder / "train.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        for row in range(rows):
            caption = " ".join(_WORDS[k] for k in picks[row, : lengths[row]]) + f" #{row}"
            writer.writerow([f"images/{row % images}.png", caption])
    return path


def memory_kib() -> dict[str, int]:
    """VmRSS, VmHWM (its peak), RssAnon and RssFile of this process, in KiB, from /proc/self/status."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            values[key] = int(rest.split()[0])
    return values


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(path: str | Path, size: int = 224) -> dict[str, float]:
    """Build the pairs of `path` in this process and report the memory it added (MiB)."""
    import torch  # noqa: F401  (imported before the baseline: a run has it loaded already)

    from cleanbench.data.pairs import load_pairs

    before = memory_kib()
    peak_reset = _reset_peak()
    start = time.perf_counter()
    pairs = load_pairs(path, size)
    seconds = time.perf_counter() - start
    after = memory_kib()
    characters = sum(len(caption) for caption in pairs.captions)
    scanned = memory_kib()
    mib = 1024.0
    return {
        "rows": len(pairs),
        "build_seconds": round(seconds, 2),
        "rss_before_mib": round(before["VmRSS"] / mib, 1),
        "rss_after_mib": round(after["VmRSS"] / mib, 1),
        "growth_mib": round((after["VmRSS"] - before["VmRSS"]) / mib, 1),
        "growth_anonymous_mib": round((after["RssAnon"] - before["RssAnon"]) / mib, 1),
        "growth_file_backed_mib": round((after["RssFile"] - before["RssFile"]) / mib, 1),
        "peak_growth_mib": round((after["VmHWM"] - before["VmRSS"]) / mib, 1) if peak_reset else None,
        "growth_after_caption_pass_mib": round((scanned["VmRSS"] - before["VmRSS"]) / mib, 1),
        "caption_characters": characters,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--folder", help="where to write the CSV and images (default: a temporary folder)")
    parser.add_argument("--measure", metavar="CSV", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0
    with tempfile.TemporaryDirectory(prefix="cleanbench-memcheck-") as temporary:
        folder = Path(args.folder or temporary)
        start = time.perf_counter()
        path = write_big_csv(folder, args.rows, args.images)
        written = time.perf_counter() - start
        child = subprocess.run([sys.executable, "-m", "cleanbench.data.memcheck", "--measure", str(path)],
                               capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        result.update(csv_mib=round(path.stat().st_size / 2**20, 1), csv_write_seconds=round(written, 1))
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
