"""The device's measured matrix-multiply peak, the yardstick for achieved FLOP/s off the GPU table.

A CPU has no data-sheet figure that its threads, vector units and memory reach in practice, so
`cleanbench bench` measures one: the best of a few square float32 matmuls (2048 x 2048 by default:
2 n^3 FLOPs each), on the same threads the stages use.
"""

from __future__ import annotations

import time

import torch

MATMUL_SIDE = 2048
MATMUL_REPEATS = 5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype = torch.float32, side: int = MATMUL_SIDE,
                       repeats: int = MATMUL_REPEATS) -> float:
    """TFLOP/s of the fastest of `repeats` `side` x `side` matmuls in `dtype` on `device` (after a warm-up)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(side, side, generator=generator).to(device, dtype)
    b = torch.randn(side, side, generator=generator).to(device, dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * side**3 / best / 1e12
