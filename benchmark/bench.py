"""`cleanbench bench`: what each stage of a cell costs on this device, against the bare model.

Every stage is timed through the code a cell runs: the shared trainer (`trainer.train`) with the
runner's pretraining batches and objective, the contrastive defenses' `prepare` (their batches with
the text views, and their objective with the image views), `evaluation.evaluate`, and
`attacks.base.trigger_uint8`. The data are the embedded shapes at `--image-size` (default: the
model's input size), drawn once and repeated to the sizes needed.

The bare model is the encoders alone, on inputs already converted and on the device: the image
encoder's forward (eval mode, no gradients), and both encoders' forward plus backward (from the sum
of the matched image-text feature products, a scalar that needs no loss) in training mode: no data,
triggers, views, loss or optimizer. A training stage is compared with the bare model on the same
encoded items (CleanCLIP encodes each pair's originals and views: twice the batch).

Each probe runs once as warm-up (under `FlopCounterMode`, which counts its FLOPs), then the probes
run in turn, `repeats` times (the stages first, each close to its bare baseline), so that a change
of machine load hits all of them alike. A row shows the median and the spread ((max - min) /
median) of its repetitions. A stage's comparison (`compared`) is the median over repetitions of
(stage time / bare time) from the same repetition: the overhead of a training step is that minus 1
(target: at most `bench_measure.TRAINING_TARGET`), the speed of the evaluation its inverse
(target: at least `bench_measure.EVAL_TARGET`). The breakdown times each part of a step on its own
(batching, input conversion, image views, loss, optimizer); what the parts and the bare model leave
unexplained is `other` (Python, the trainer's bookkeeping, and timing noise). Text views and triggers of in-memory data
are made once before training: their cost is in the setup rows.

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode`: matrix products, convolutions and
attention, forward and backward; element-wise work (normalisation, activations, the optimizer) is
not counted. Achieved GFLOP/s = counted FLOPs / median seconds; "of peak" divides it by the
device's peak: `--peak-tflops`, else on CUDA the data sheet's (`bench_measure.PEAK_TFLOPS`, shown
as MFU), else the measured float32 matmul peak of this device on these threads (`cleanbench.peak`).

The cell estimate takes the defaults of `cleanbench run` (data sizes, epochs, CleanCLIP) with this
model, batch size and image size: data generation, model build, poisoning and tokenisation scale
with the number of pairs; pretraining and the defense are steps times the median step; the two
evaluations are images over the evaluation's speed; the synonym table is read once per process.

`--reference-triggers` adds the comparison of `cleanbench.trigger_bench`: the reference's per-image
PIL triggers at 224 px on the CPU against cleanbench's batched uint8 path with the options that
reproduce them.

This module runs a bench (`run_bench`) and derives the per-step breakdown and the cell estimate;
`bench_probes` builds and times the probes, `bench_measure` holds what is measured and the figures
derived from it, and `bench_report` prints the tables.
"""


from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cleanbench.bench_measure import BenchConfig, BenchResult, device_peak_tflops
from cleanbench.bench_probes import CellProbes
from cleanbench.models import check_model
from cleanbench.peak import MATMUL_SIDE, matmul_peak_tflops
from cleanbench.registry import DEFENSES


def _breakdown(result: BenchResult) -> dict[str, dict[str, float]]:
    """Milliseconds per step of each stage: the stage, the bare model, each part, and what is left."""
    out: dict[str, dict[str, float]] = {}
    stages = {"pretrain": "train:pretrain", "cleanclip": "train:cleanclip", "finetune": "train:finetune",
              "evaluation": "eval:evaluate"}
    for stage, key in stages.items():
        measure = result.measures.get(key)
        if measure is None:
            continue
        per_step = lambda m: 1000 * m.median / m.steps  # noqa: E731
        table = {"stage": per_step(measure), "bare model": per_step(result.measures[measure.baseline])}
        for m in result.measures.values():
            if m.group == f"part:{stage}":
                table[m.name] = per_step(m)
        table["other"] = table["stage"] - sum(v for k, v in table.items() if k != "stage")
        out[stage] = table
    return out


def _estimate(result: BenchResult, bench: CellProbes) -> dict[str, float]:
    """Seconds of one default cell with this model, batch and image size (module docstring)."""
    c, m, once = bench.cell, result.measures, bench.once
    step = lambda key: m[key].median / m[key].steps  # noqa: E731
    per_item = lambda key: m[key].median / m[key].items  # noqa: E731
    n_pretrain, n_clean, n_test = c.data.n_pretrain, c.data.n_clean, c.data.n_test
    defense = DEFENSES.get("cleanclip").Options(**c.defense_defaults.get("cleanclip", {}))
    per_defense_step = defense.batch_size / bench.batch  # the step was timed at the bench's batch; cost ~ items
    evaluated = n_test * m["eval:evaluate"].items / bench.config.eval_images
    parts = {
        "data": once["data_seconds_per_image"] * (n_pretrain + n_clean + n_test),
        "model build": once["model_build_seconds"],
        "poisoning": per_item("setup:poison") * n_pretrain,
        "tokenise": per_item("setup:tokenise") * n_pretrain,
        "pretraining": c.pretrain.epochs * (n_pretrain // bench.batch) * step("train:pretrain"),
        "evaluations (2)": 2 * evaluated * per_item("eval:evaluate"),
        "defense setup": once["synonyms_load_seconds"] + per_item("setup:cleanclip") * n_clean,
        "defense (cleanclip)": defense.epochs * (n_clean // defense.batch_size) * per_defense_step
                                * step("train:cleanclip"),
    }
    parts["total"] = sum(parts.values())
    return parts


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_environment(device: torch.device) -> dict[str, Any]:
    """The device, its name, torch, threads, OpenMP's wait policy (idle threads spin or sleep: on a busy
    CPU it decides how much waiting threads take from the work), CPUs and the load average as a bench
    starts."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {"device": str(device), "device_name": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "cpus": os.cpu_count(),
            "load_average_start": list(os.getloadavg())}


def run_bench(config: BenchConfig, log: Callable[[str], None] = lambda message: None) -> BenchResult:
    """Measure every stage of a cell on `config.device` (see the module docstring)."""
    check_model(config.model)
    bench = CellProbes(config, log)
    environment = bench_environment(bench.device)
    log(f"preparing data and model ({config.model}, {bench.size} px, batch {config.batch_size}, {bench.device})")
    bench.prepare()
    bench.bare_forward()
    bench.pretraining()
    bench.defense("finetune", "finetuning step")
    bench.defense("cleanclip", "CleanCLIP step (originals + views)")
    bench.evaluation()
    bench.triggers()
    if config.reference_triggers:
        bench.reference_triggers()
    measures = bench.run()
    environment["load_average_end"] = list(os.getloadavg())
    peak = device_peak_tflops(bench.device, config.peak_tflops)
    environment["peak_source"] = "given" if config.peak_tflops else "data sheet" if peak else "measured"
    environment["matmul_peak_tflops"] = matmul_peak_tflops(bench.device)
    if peak is None:
        peak = environment["matmul_peak_tflops"]
        environment["peak_source"] = f"measured: float32 {MATMUL_SIDE}x{MATMUL_SIDE} matmul"
    result = BenchResult(config, environment | {"image_size": bench.size}, measures, {}, {}, peak)
    result.breakdown = _breakdown(result)
    result.estimate = _estimate(result, bench)
    return result
