"""The `cleanbench bench` command; the measuring itself (and torch) is imported when it runs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cleanbench.config import RunConfig

_RUN = RunConfig()
REPEATS = 7
STEPS = 2
"""Defaults of `cleanbench.bench_measure.BenchConfig` (tests/test_robustness.py keeps them equal)."""


@click.command("bench")
@click.option("--model", default=_RUN.model.name, help="open_clip model name.")
@click.option("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--batch-size", type=int, default=_RUN.pretrain.batch_size, help="Pairs per training step.")
@click.option("--image-size", type=int, default=None, help="Side of the data's images [default: the model's input size].")
@click.option("--repeats", type=int, default=REPEATS, help="Timed repetitions (after one warm-up).")
@click.option("--steps", type=int, default=STEPS, help="Training steps (batches) per timed call.")
@click.option("--eval-images", type=int, default=_RUN.data.n_test, help="Test images of the timed evaluation.")
@click.option("--peak-tflops", type=float, default=None, help="The device's peak TFLOP/s for MFU [default: from a table of known GPUs].")
@click.option("--reference-triggers", is_flag=True, help="Also time the reference's per-image PIL triggers at 224 px against the batched path.")
@click.option("--speedups", is_flag=True, help="Instead of the stages, time candidate speed-ups of a pretraining step "
              "(AdamW foreach/fused, channels-last, bfloat16 autocast, torch.compile, 1 and 2 threads) and whether "
              "each changes the numbers.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Also write the results as JSON here.")
def bench_command(model: str, device: str, batch_size: int, image_size: int | None, repeats: int, steps: int,
                  eval_images: int, peak_tflops: float | None, reference_triggers: bool, speedups: bool,
                  json_path: str | None) -> None:
    """Measure what each stage of a cell costs on this device, against the bare model (or, with
    --speedups, what candidate speed-ups of a pretraining step gain)."""
    from cleanbench.bench_measure import BenchConfig

    config = BenchConfig(model, device, batch_size, image_size, repeats, steps, eval_images, peak_tflops,
                         reference_triggers, speedups)
    log = lambda message: click.echo(message, err=True)  # noqa: E731
    if speedups:
        from cleanbench.bench_report import format_speedups
        from cleanbench.bench_speedups import run_speedups

        result = run_speedups(config, log)
        click.echo(format_speedups(result))
    else:
        from cleanbench.bench import run_bench
        from cleanbench.bench_report import format_result

        result = run_bench(config, log)
        click.echo(format_result(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n")
        click.echo(f"JSON: {json_path}")
